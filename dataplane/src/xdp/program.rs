//! The XDP program: redirects the UDP datagrams addressed to the node to the AF_XDP socket of
//! the RX queue they arrived on, and passes every other frame to the kernel's stack (ARP, ICMP,
//! SSH, other UDP ports keep working).
//!
//! What is ours: an Ethernet II frame (no VLAN tag) carrying
//! - IPv4 with a 20-byte header (IHL 5), not a fragment (MF clear, offset 0), protocol UDP, or
//! - IPv6 whose next header is UDP directly (no extension headers),
//!
//! with the node's UDP port as destination and the node's address as destination address (any
//! address of the family when the node is bound to a wildcard). The program calls
//! `bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)`: with no socket at that queue the
//! frame is passed, not dropped.
//!
//! Every frame is counted in a per-CPU array ([`Counter`]). Every packet load is preceded by a
//! check of the frame's length against `data_end`, as the verifier requires.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::asm::{Asm, AsmError, Cmp, Size, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8};
use crate::sys::bpf::Insn;

/// XDP actions (enum xdp_action, include/uapi/linux/bpf.h).
pub const XDP_PASS: u32 = 2;
/// The frame goes back out of the interface it arrived on (a relayed frame).
pub const XDP_TX: u32 = 3;
/// The frame went to the map's target.
pub const XDP_REDIRECT: u32 = 4;
// Helper function numbers (enum bpf_func_id).
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
// struct xdp_md field offsets.
pub(crate) const MD_DATA: i16 = 0;
pub(crate) const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE_INDEX: i16 = 16;

pub(crate) const ETH_HLEN: i32 = 14;
pub(crate) const ETHERTYPE_AT: i16 = 12;
pub(crate) const IPV4_HLEN: i32 = 20;
const IPV6_HLEN: i32 = 40;
pub(crate) const UDP_HLEN: i32 = 8;
pub(crate) const IPPROTO_UDP: i32 = 17;
/// IPv4 version 4, IHL 5 in the first header byte.
pub(crate) const IPV4_VERSION_IHL5: i32 = 0x45;
/// IPv4 flags-and-offset: MF (0x2000) and the fragment offset (0x1fff); DF may be set.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// The counters the program keeps, by index in its counter map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Ours, and redirected to the queue's socket.
    Redirected = 0,
    /// Not ours: passed to the kernel.
    Passed = 1,
    /// Ours, but no socket at the RX queue it arrived on: passed to the kernel.
    NoSocket = 2,
    /// A relay frame forwarded to the other end of its channel (XDP_TX).
    Relayed = 3,
}

/// How many counters the counter map holds.
pub const COUNTERS: u32 = 4;

impl Counter {
    /// Every counter, in map order.
    pub const ALL: [Counter; COUNTERS as usize] = [Self::Redirected, Self::Passed, Self::NoSocket, Self::Relayed];

    /// What the counted frames had done to them, as a metric label value.
    pub fn verdict(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::Passed => "passed_not_ours",
            Self::NoSocket => "passed_no_socket",
            Self::Relayed => "relayed",
        }
    }
}

/// Which destination addresses of one IP family are the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<A> {
    /// None: the family's frames are all passed.
    Ignore,
    /// Any address (the node is bound to the wildcard).
    Any,
    /// This address only.
    Only(A),
}

/// The datagrams the program redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// UDP destination port.
    pub port: u16,
    /// IPv4 destinations.
    pub ipv4: Destination<Ipv4Addr>,
    /// IPv6 destinations.
    pub ipv6: Destination<Ipv6Addr>,
}

impl Filter {
    /// What a UDP socket bound to `bound` receives: an IPv4 address, an IPv6 address (an
    /// IPv4-mapped one is IPv4), `0.0.0.0` (any IPv4) or `[::]` (any address, dual-stack).
    pub fn for_bound(bound: SocketAddr) -> Self {
        let port = bound.port();
        let (ipv4, ipv6) = match bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => (Destination::Any, Destination::Ignore),
            IpAddr::V4(ip) => (Destination::Only(ip), Destination::Ignore),
            IpAddr::V6(ip) if ip.is_unspecified() => (Destination::Any, Destination::Any),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => (Destination::Only(v4), Destination::Ignore),
                None => (Destination::Ignore, Destination::Only(ip)),
            },
        };
        Self { port, ipv4, ipv6 }
    }
}

/// A 16-bit field in network order as a little- or big-endian load of it yields it.
pub(crate) fn loaded16(value: u16) -> i32 {
    i32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// Four bytes in network order as a 32-bit load of them yields them.
fn loaded32(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// The program for `filter`, redirecting into the XSKMAP `xsks` and counting into the per-CPU
/// array `counters` (map descriptors, which the kernel resolves when it loads the program).
/// With `relay_channels` (a hash map of [`super::relay::RelayEntry`]), IPv4 relay frames of
/// the channels in it are forwarded first (see [`super::relay`]); without it no frame is.
pub fn redirect_program(
    filter: &Filter,
    xsks: i32,
    counters: i32,
    relay_channels: Option<i32>,
) -> Result<Vec<Insn>, AsmError> {
    let mut asm = Asm::default();
    let (ipv4, ipv6, ours, pass, count, done) =
        (asm.label(), asm.label(), asm.label(), asm.label(), asm.label(), asm.label());

    // r6 = ctx, r2 = data, r3 = data_end.
    asm.mov(R6, R1);
    asm.load(Size::W, R2, R6, MD_DATA);
    asm.load(Size::W, R3, R6, MD_DATA_END);
    asm.mov(R4, R2);
    asm.add_imm(R4, ETH_HLEN);
    asm.jump_reg(Cmp::Gt, R4, R3, pass);
    asm.load(Size::H, R5, R2, ETHERTYPE_AT);
    if filter.ipv4 != Destination::Ignore {
        asm.jump_imm(Cmp::Eq, R5, loaded16(0x0800), ipv4);
    }
    if filter.ipv6 != Destination::Ignore {
        asm.jump_imm(Cmp::Eq, R5, loaded16(0x86dd), ipv6);
    }
    asm.goto(pass);

    if filter.ipv4 != Destination::Ignore {
        let ip = ETH_HLEN as i16;
        asm.place(ipv4);
        asm.mov(R4, R2);
        asm.add_imm(R4, ETH_HLEN + IPV4_HLEN + UDP_HLEN);
        asm.jump_reg(Cmp::Gt, R4, R3, pass);
        asm.load(Size::B, R5, R2, ip);
        asm.jump_imm(Cmp::Ne, R5, IPV4_VERSION_IHL5, pass);
        asm.load(Size::H, R5, R2, ip + 6);
        asm.and_imm(R5, loaded16(IPV4_FRAGMENT_MASK));
        asm.jump_imm(Cmp::Ne, R5, 0, pass);
        asm.load(Size::B, R5, R2, ip + 9);
        asm.jump_imm(Cmp::Ne, R5, IPPROTO_UDP, pass);
        if let Destination::Only(address) = filter.ipv4 {
            asm.load(Size::W, R5, R2, ip + 16);
            asm.jump32_imm(Cmp::Ne, R5, loaded32(address.octets()), pass);
        }
        asm.load(Size::H, R5, R2, ip + IPV4_HLEN as i16 + 2);
        asm.jump_imm(Cmp::Ne, R5, loaded16(filter.port), pass);
        match relay_channels {
            // Ends in a jump to `count` (relayed) or `ours` (not relayed).
            Some(channels) => super::relay::relay_ipv4(&mut asm, channels, ours, count),
            None => asm.goto(ours),
        }
    }

    if filter.ipv6 != Destination::Ignore {
        let ip = ETH_HLEN as i16;
        asm.place(ipv6);
        asm.mov(R4, R2);
        asm.add_imm(R4, ETH_HLEN + IPV6_HLEN + UDP_HLEN);
        asm.jump_reg(Cmp::Gt, R4, R3, pass);
        asm.load(Size::B, R5, R2, ip + 6);
        asm.jump_imm(Cmp::Ne, R5, IPPROTO_UDP, pass);
        if let Destination::Only(address) = filter.ipv6 {
            for (i, word) in address.octets().chunks_exact(4).enumerate() {
                let word = [word[0], word[1], word[2], word[3]];
                asm.load(Size::W, R5, R2, ip + 24 + 4 * i as i16);
                asm.jump32_imm(Cmp::Ne, R5, loaded32(word), pass);
            }
        }
        asm.load(Size::H, R5, R2, ip + IPV6_HLEN as i16 + 2);
        asm.jump_imm(Cmp::Ne, R5, loaded16(filter.port), pass);
        asm.goto(ours);
    }

    // Ours: to the socket of the queue it arrived on, or to the stack if there is none.
    asm.place(ours);
    asm.load_map(R1, xsks);
    asm.load(Size::W, R2, R6, MD_RX_QUEUE_INDEX);
    asm.mov_imm(R3, XDP_PASS as i32);
    asm.call(BPF_FUNC_REDIRECT_MAP);
    asm.mov(R7, R0);
    asm.mov_imm(R8, Counter::Redirected as i32);
    asm.jump_imm(Cmp::Eq, R7, XDP_REDIRECT as i32, count);
    asm.mov_imm(R8, Counter::NoSocket as i32);
    asm.goto(count);

    asm.place(pass);
    asm.mov_imm(R7, XDP_PASS as i32);
    asm.mov_imm(R8, Counter::Passed as i32);

    // counters[r8] += 1 on this CPU, then return r7.
    asm.place(count);
    asm.store(Size::W, R10, -4, R8);
    asm.load_map(R1, counters);
    asm.mov(R2, R10);
    asm.add_imm(R2, -4);
    asm.call(BPF_FUNC_MAP_LOOKUP_ELEM);
    asm.jump_imm(Cmp::Eq, R0, 0, done);
    asm.load(Size::DW, R1, R0, 0);
    asm.add_imm(R1, 1);
    asm.store(Size::DW, R0, 0, R1);
    asm.place(done);
    asm.mov(R0, R7);
    asm.exit();

    asm.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_addresses_become_filters() {
        let filter = |s: &str| Filter::for_bound(s.parse().unwrap());
        assert_eq!(
            filter("10.0.0.1:9000"),
            Filter { port: 9000, ipv4: Destination::Only(Ipv4Addr::new(10, 0, 0, 1)), ipv6: Destination::Ignore }
        );
        assert_eq!(filter("0.0.0.0:1").ipv4, Destination::Any);
        assert_eq!(filter("0.0.0.0:1").ipv6, Destination::Ignore);
        assert_eq!((filter("[::]:1").ipv4, filter("[::]:1").ipv6), (Destination::Any, Destination::Any));
        assert_eq!(filter("[::ffff:10.0.0.2]:1").ipv4, Destination::Only(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(filter("[fd00::1]:1").ipv4, Destination::Ignore);
    }

    #[test]
    fn constants_compare_as_the_loads_see_them() {
        // A UDP port 443 in a frame is the bytes 01 bb; a 16-bit load of them gives this value.
        assert_eq!(loaded16(443), i32::from(u16::from_ne_bytes([0x01, 0xbb])));
        assert_eq!(loaded32([10, 0, 0, 1]), u32::from_ne_bytes([10, 0, 0, 1]));
    }

    #[test]
    fn every_family_choice_assembles_and_ends_in_exit() {
        for ipv4 in [Destination::Ignore, Destination::Any, Destination::Only(Ipv4Addr::new(10, 1, 2, 3))] {
            for ipv6 in [Destination::Ignore, Destination::Any, Destination::Only(Ipv6Addr::LOCALHOST)] {
                for relay in [None, Some(5)] {
                    let code = redirect_program(&Filter { port: 443, ipv4, ipv6 }, 3, 4, relay).unwrap();
                    assert_eq!(code.last().map(|i| i.code), Some(0x95));
                    for (at, insn) in code.iter().enumerate() {
                        let class = insn.code & 0x07;
                        let is_jump = (class == 0x05 || class == 0x06) && !matches!(insn.code & 0xf0, 0x80 | 0x90);
                        if is_jump {
                            let target = at as i64 + 1 + i64::from(insn.off);
                            assert!(target > at as i64 && (target as usize) < code.len(), "jump at {at}");
                        }
                    }
                }
            }
        }
    }
}
