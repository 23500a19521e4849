//! Relay channels forwarded inside the XDP program (issue 16, stage 2, part A; IPv4 only).
//!
//! A BPF hash map holds each established channel: key = the channel's four bytes as the relay
//! frame carries them (big-endian), value = a [`RelayEntry`]. A frame to the node's UDP port
//! whose payload is a relay frame (marker 0x22, then the channel) from one end of its channel,
//! before the channel's expiry and within its byte limit, is rewritten in place to the other end
//! and sent back out of the interface it came in on (XDP_TX); the program adds its relay-frame
//! bytes (the UDP payload) and one packet to the entry's counters with atomic adds. Every other
//! frame goes on to the redirect logic unchanged, so user space (`relay::ForwardingTable`) still
//! handles, and rate-limits, whatever the map does not. See `docs/af-xdp.md`.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::asm::{Asm, Cmp, Label, Size, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};
use super::program::{Counter, XDP_TX};
use crate::frame::MacAddress;
use crate::relay::offload::{ChannelCounters, ChannelEntry};
use crate::relay::RELAY_MARKER;

/// The key size of the channel map: a `u32` channel in network byte order.
pub const KEY_SIZE: u32 = 4;
/// The value size of the channel map: a [`RelayEntry`].
pub const ENTRY_SIZE: usize = 56;
/// Channels the node's map holds at most (preallocated by the kernel: about 2 MB); a channel
/// that does not fit is forwarded by the cores.
pub const CHANNELS: u32 = 16_384;

/// Byte offsets inside a [`RelayEntry`] (as the program reads them).
pub mod offset {
    /// End a.
    pub const END_A: usize = 0;
    /// End b.
    pub const END_B: usize = 12;
    /// Inside an end: IPv4 address (network order).
    pub const ADDRESS: usize = 0;
    /// Inside an end: UDP port (network order).
    pub const PORT: usize = 4;
    /// Inside an end: next-hop MAC address.
    pub const MAC: usize = 6;
    /// Expiry, `bpf_ktime_get_ns` nanoseconds (CLOCK_MONOTONIC), host order.
    pub const EXPIRY: usize = 24;
    /// Byte limit, host order.
    pub const BYTE_LIMIT: usize = 32;
    /// Relay-frame bytes forwarded, host order.
    pub const BYTES: usize = 40;
    /// Frames forwarded, host order.
    pub const PACKETS: usize = 48;
}

/// One end of a channel as the map stores it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayEnd {
    /// IPv4 address, network order.
    pub address: [u8; 4],
    /// UDP port, network order.
    pub port: [u8; 2],
    /// The MAC address frames to this end are sent to (its own, or its next hop's).
    pub mac: MacAddress,
}

impl RelayEnd {
    /// The end at `address`, reached through `mac`.
    pub fn new(address: SocketAddrV4, mac: MacAddress) -> Self {
        Self { address: address.ip().octets(), port: address.port().to_be_bytes(), mac }
    }

    /// Its address and port.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.address), u16::from_be_bytes(self.port))
    }
}

/// The map's value for one channel: both ends, expiry, byte limit and the program's counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayEntry {
    /// One end.
    pub a: RelayEnd,
    /// The other end.
    pub b: RelayEnd,
    /// Frames are forwarded while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) is below this.
    pub expiry_ns: u64,
    /// Frames are forwarded while `bytes` plus the frame's relay bytes stays within this.
    pub byte_limit: u64,
    /// Relay-frame bytes (UDP payloads) forwarded in both directions.
    pub bytes: u64,
    /// Frames forwarded in both directions.
    pub packets: u64,
}

/// A map value of the wrong size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a relay channel entry is {ENTRY_SIZE} bytes, not {0}")]
pub struct EntrySizeError(pub usize);

impl RelayEntry {
    /// A new channel between `a` and `b` with zero counters.
    pub fn new(a: RelayEnd, b: RelayEnd, expiry_ns: u64, byte_limit: u64) -> Self {
        Self { a, b, expiry_ns, byte_limit, bytes: 0, packets: 0 }
    }

    /// The entry the core asked for ([`crate::relay::offload`]).
    pub fn from_channel(entry: &ChannelEntry) -> Self {
        let (a, b) = (RelayEnd::new(entry.a.0, entry.a.1), RelayEnd::new(entry.b.0, entry.b.1));
        let counters = entry.counters;
        Self { bytes: counters.bytes, packets: counters.packets, ..Self::new(a, b, entry.expiry_ns, entry.byte_limit) }
    }

    /// The entry as the core sees it.
    pub fn to_channel(&self) -> ChannelEntry {
        ChannelEntry {
            a: (self.a.socket_addr(), self.a.mac),
            b: (self.b.socket_addr(), self.b.mac),
            expiry_ns: self.expiry_ns,
            byte_limit: self.byte_limit,
            counters: ChannelCounters { bytes: self.bytes, packets: self.packets },
        }
    }

    /// The bytes the map stores.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut out = [0u8; ENTRY_SIZE];
        for (at, end) in [(offset::END_A, &self.a), (offset::END_B, &self.b)] {
            out[at + offset::ADDRESS..at + offset::PORT].copy_from_slice(&end.address);
            out[at + offset::PORT..at + offset::MAC].copy_from_slice(&end.port);
            out[at + offset::MAC..at + offset::MAC + 6].copy_from_slice(&end.mac);
        }
        for (at, value) in [
            (offset::EXPIRY, self.expiry_ns),
            (offset::BYTE_LIMIT, self.byte_limit),
            (offset::BYTES, self.bytes),
            (offset::PACKETS, self.packets),
        ] {
            out[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        }
        out
    }

    /// An entry from the map's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntrySizeError> {
        let bytes: &[u8; ENTRY_SIZE] = bytes.try_into().map_err(|_| EntrySizeError(bytes.len()))?;
        let array = |at: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            out.copy_from_slice(&bytes[at..at + 8]);
            out
        };
        let end = |at: usize| {
            let mut end = RelayEnd { address: [0; 4], port: [0; 2], mac: [0; 6] };
            end.address.copy_from_slice(&bytes[at + offset::ADDRESS..at + offset::PORT]);
            end.port.copy_from_slice(&bytes[at + offset::PORT..at + offset::MAC]);
            end.mac.copy_from_slice(&bytes[at + offset::MAC..at + offset::MAC + 6]);
            end
        };
        Ok(Self {
            a: end(offset::END_A),
            b: end(offset::END_B),
            expiry_ns: u64::from_ne_bytes(array(offset::EXPIRY)),
            byte_limit: u64::from_ne_bytes(array(offset::BYTE_LIMIT)),
            bytes: u64::from_ne_bytes(array(offset::BYTES)),
            packets: u64::from_ne_bytes(array(offset::PACKETS)),
        })
    }
}

/// The map key of `channel`.
pub fn key(channel: u32) -> [u8; 4] {
    channel.to_be_bytes()
}

// Helper function numbers (enum bpf_func_id).
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
// Frame offsets of an Ethernet/IPv4 (IHL 5)/UDP frame.
const ETH_SRC: i16 = 6;
const IP_CHECKSUM: i16 = 24;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const UDP: i16 = 34;
const UDP_SRC_PORT: i16 = 34;
const UDP_DST_PORT: i16 = 36;
const UDP_LEN: i16 = 38;
const UDP_CHECKSUM: i16 = 40;
const UDP_HLEN: i32 = 8;
const RELAY_AT: i16 = 42;
/// Marker and channel.
const RELAY_HEADER: i32 = 5;
/// Where the lookup key goes on the stack.
const KEY_AT: i16 = -4;

fn off(at: usize) -> i16 {
    i16::try_from(at).unwrap_or(i16::MAX)
}

/// `n` bytes from `src + src_off` to `dst + dst_off`, one byte at a time (no alignment needed).
fn copy_bytes(asm: &mut Asm, dst: super::asm::Reg, dst_off: i16, src: super::asm::Reg, src_off: i16, n: i16) {
    for i in 0..n {
        asm.load(Size::B, R4, src, src_off + i);
        asm.store(Size::B, dst, dst_off + i, R4);
    }
}

/// `r1` folded to 16 bits with end-around carry, then complemented: a checksum (r4 clobbered).
fn fold_complement(asm: &mut Asm) {
    for _ in 0..2 {
        asm.mov(R4, R1);
        asm.rsh_imm(R4, 16);
        asm.and_imm(R1, 0xffff);
        asm.add_reg(R1, R4);
    }
    asm.xor_imm(R1, 0xffff);
}

/// The relay path, placed where an IPv4 frame is known to be a UDP datagram to the node (r2 =
/// data, r3 = data_end checked up to the UDP header, r6 = ctx). A relayed frame leaves with
/// r7 = XDP_TX and r8 = the relayed counter at `count`; any other goes to `not_relayed`
/// untouched. r4, r5, r7, r8, r9 are used freely.
pub(super) fn relay_ipv4(asm: &mut Asm, channels: i32, not_relayed: Label, count: Label) {
    let (try_b, matched, udp_done, udp_store) = (asm.label(), asm.label(), asm.label(), asm.label());

    // The relay header is in the frame, and the UDP length covers it and lies within the frame
    // (a short datagram's frame may be padded to Ethernet's 60 bytes).
    asm.mov(R4, R2);
    asm.add_imm(R4, i32::from(RELAY_AT) + RELAY_HEADER);
    asm.jump_reg(Cmp::Gt, R4, R3, not_relayed);
    asm.load(Size::B, R5, R2, UDP_LEN);
    asm.lsh_imm(R5, 8);
    asm.load(Size::B, R4, R2, UDP_LEN + 1);
    asm.add_reg(R5, R4);
    asm.jump_imm(Cmp::Lt, R5, UDP_HLEN + RELAY_HEADER, not_relayed);
    asm.mov(R4, R2);
    asm.add_imm(R4, i32::from(UDP));
    asm.add_reg(R4, R5);
    asm.jump_reg(Cmp::Gt, R4, R3, not_relayed);
    asm.load(Size::B, R4, R2, RELAY_AT);
    asm.jump_imm(Cmp::Ne, R4, i32::from(RELAY_MARKER), not_relayed);
    // r8 = the relay frame's bytes (the UDP payload), kept across the helper calls.
    asm.mov(R8, R5);
    asm.add_imm(R8, -UDP_HLEN);

    // r9 = the channel's entry.
    copy_bytes(asm, R10, KEY_AT, R2, RELAY_AT + 1, 4);
    asm.load_map(R1, channels);
    asm.mov(R2, R10);
    asm.add_imm(R2, i32::from(KEY_AT));
    asm.call(BPF_FUNC_MAP_LOOKUP_ELEM);
    asm.jump_imm(Cmp::Eq, R0, 0, not_relayed);
    asm.mov(R9, R0);

    // Not expired, and within the byte limit with this frame.
    asm.call(BPF_FUNC_KTIME_GET_NS);
    asm.load(Size::DW, R1, R9, off(offset::EXPIRY));
    asm.jump_reg(Cmp::Ge, R0, R1, not_relayed);
    asm.load(Size::DW, R1, R9, off(offset::BYTES));
    asm.add_reg(R1, R8);
    asm.load(Size::DW, R2, R9, off(offset::BYTE_LIMIT));
    asm.jump_reg(Cmp::Gt, R1, R2, not_relayed);

    // The calls clobbered the packet pointers: load and check them again.
    asm.load(Size::W, R2, R6, 0);
    asm.load(Size::W, R3, R6, 4);
    asm.mov(R4, R2);
    asm.add_imm(R4, i32::from(RELAY_AT) + RELAY_HEADER);
    asm.jump_reg(Cmp::Gt, R4, R3, not_relayed);

    // r7 = the other end: the source must be end a or end b.
    let end = |end: usize, field: usize| off(end + field);
    asm.load(Size::W, R4, R2, IP_SRC);
    asm.load(Size::W, R5, R9, end(offset::END_A, offset::ADDRESS));
    asm.jump_reg(Cmp::Ne, R4, R5, try_b);
    asm.load(Size::H, R4, R2, UDP_SRC_PORT);
    asm.load(Size::H, R5, R9, end(offset::END_A, offset::PORT));
    asm.jump_reg(Cmp::Ne, R4, R5, try_b);
    asm.mov(R7, R9);
    asm.add_imm(R7, i32::from(off(offset::END_B)));
    asm.goto(matched);
    asm.place(try_b);
    asm.load(Size::W, R4, R2, IP_SRC);
    asm.load(Size::W, R5, R9, end(offset::END_B, offset::ADDRESS));
    asm.jump_reg(Cmp::Ne, R4, R5, not_relayed);
    asm.load(Size::H, R4, R2, UDP_SRC_PORT);
    asm.load(Size::H, R5, R9, end(offset::END_B, offset::PORT));
    asm.jump_reg(Cmp::Ne, R4, R5, not_relayed);
    asm.mov(R7, R9);
    asm.place(matched);

    // Checksums, incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). The node's address
    // moves from destination to source, so the sums change only by the source address (and, for
    // UDP, the source port) becoming the other end's. Words are summed as loaded: the
    // ones'-complement sum is the same in either byte order (RFC 1071 §2 (B)).
    // r5 = ~old source address + new destination address.
    asm.mov_imm(R5, 0);
    for half in [0, 2] {
        asm.load(Size::H, R4, R2, IP_SRC + half);
        asm.xor_imm(R4, 0xffff);
        asm.add_reg(R5, R4);
        asm.load(Size::H, R4, R7, off(offset::ADDRESS) + half);
        asm.add_reg(R5, R4);
    }
    asm.load(Size::H, R1, R2, IP_CHECKSUM);
    asm.xor_imm(R1, 0xffff);
    asm.add_reg(R1, R5);
    fold_complement(asm);
    asm.store(Size::H, R2, IP_CHECKSUM, R1);
    // UDP: a zero checksum (none, allowed over IPv4) stays zero; a computed zero is sent 0xffff.
    asm.load(Size::H, R1, R2, UDP_CHECKSUM);
    asm.jump_imm(Cmp::Eq, R1, 0, udp_done);
    asm.xor_imm(R1, 0xffff);
    asm.add_reg(R1, R5);
    asm.load(Size::H, R4, R2, UDP_SRC_PORT);
    asm.xor_imm(R4, 0xffff);
    asm.add_reg(R1, R4);
    asm.load(Size::H, R4, R7, off(offset::PORT));
    asm.add_reg(R1, R4);
    fold_complement(asm);
    asm.jump_imm(Cmp::Ne, R1, 0, udp_store);
    asm.mov_imm(R1, 0xffff);
    asm.place(udp_store);
    asm.store(Size::H, R2, UDP_CHECKSUM, R1);
    asm.place(udp_done);

    // Headers: from the node (the old destination) to the other end.
    copy_bytes(asm, R2, ETH_SRC, R2, 0, 6);
    copy_bytes(asm, R2, 0, R7, off(offset::MAC), 6);
    copy_bytes(asm, R2, IP_SRC, R2, IP_DST, 4);
    copy_bytes(asm, R2, IP_DST, R7, off(offset::ADDRESS), 4);
    copy_bytes(asm, R2, UDP_SRC_PORT, R2, UDP_DST_PORT, 2);
    copy_bytes(asm, R2, UDP_DST_PORT, R7, off(offset::PORT), 2);

    // Count, atomically: other CPUs forward the same channel's frames.
    asm.atomic_add64(R9, off(offset::BYTES), R8);
    asm.mov_imm(R1, 1);
    asm.atomic_add64(R9, off(offset::PACKETS), R1);
    asm.mov_imm(R7, XDP_TX as i32);
    asm.mov_imm(R8, Counter::Relayed as i32);
    asm.goto(count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_the_offsets_are_the_structs() {
        let a = RelayEnd::new("10.0.0.1:4000".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        let b = RelayEnd::new("192.168.1.9:65535".parse().unwrap(), [2, 0, 0, 0, 0, 2]);
        let mut entry = RelayEntry::new(a, b, 123_456_789, 1 << 40);
        entry.bytes = 77;
        entry.packets = 3;
        let bytes = entry.encode();
        assert_eq!(RelayEntry::decode(&bytes), Ok(entry));
        assert_eq!(&bytes[offset::END_B..offset::END_B + 4], &[192, 168, 1, 9], "network order");
        assert_eq!(&bytes[offset::END_B + offset::PORT..][..2], &[0xff, 0xff]);
        assert_eq!(&bytes[offset::END_A + offset::PORT..][..2], &4000u16.to_be_bytes());
        assert_eq!(b.socket_addr(), "192.168.1.9:65535".parse().unwrap());
        assert_eq!(u64::from_ne_bytes(bytes[offset::PACKETS..][..8].try_into().unwrap()), 3);
        assert_eq!(std::mem::size_of::<RelayEntry>(), ENTRY_SIZE);
        assert_eq!(std::mem::offset_of!(RelayEntry, b), offset::END_B);
        assert_eq!(std::mem::offset_of!(RelayEntry, expiry_ns), offset::EXPIRY);
        assert_eq!(std::mem::offset_of!(RelayEntry, byte_limit), offset::BYTE_LIMIT);
        assert_eq!(std::mem::offset_of!(RelayEntry, bytes), offset::BYTES);
        assert_eq!(std::mem::offset_of!(RelayEntry, packets), offset::PACKETS);
        assert_eq!(std::mem::offset_of!(RelayEnd, port), offset::PORT);
        assert_eq!(std::mem::offset_of!(RelayEnd, mac), offset::MAC);
        assert_eq!(RelayEntry::decode(&bytes[1..]), Err(EntrySizeError(ENTRY_SIZE - 1)));
        assert_eq!(key(0x0102_0304), [1, 2, 3, 4], "as the relay frame carries it");
    }
}
