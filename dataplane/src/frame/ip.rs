//! IPv4 (RFC 791) and IPv6 (RFC 8200) headers: checked views over an Ethernet frame's payload.

use std::net::{Ipv4Addr, Ipv6Addr};

use quinn_proto::EcnCodepoint;

use super::{checksum, read_u16, NotOurs};

/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Bytes of an IPv6 header (extension headers not counted).
pub const IPV6_HEADER_LEN: usize = 40;
/// IP protocol number (IPv6: next header) of UDP.
pub const PROTOCOL_UDP: u8 = 17;
/// Next-header values of IPv6 extension headers (IANA "IPv6 Extension Header Types"):
/// hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6, experiments.
pub const IPV6_EXTENSION_HEADERS: [u8; 10] = [0, 43, 44, 60, 51, 135, 139, 140, 253, 254];
/// Next header of IPv6's fragment header.
pub const IPV6_FRAGMENT_HEADER: u8 = 44;

/// IPv4's "don't fragment" flag in the flags/offset word.
pub(super) const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1FFF;

pub(super) mod field {
    pub mod v4 {
        use std::ops::Range;
        pub const VERSION_IHL: usize = 0;
        pub const TOS: usize = 1;
        pub const TOTAL_LEN: usize = 2;
        pub const IDENTIFICATION: usize = 4;
        pub const FLAGS_OFFSET: usize = 6;
        pub const TTL: usize = 8;
        pub const PROTOCOL: usize = 9;
        pub const CHECKSUM: usize = 10;
        pub const SRC: Range<usize> = 12..16;
        pub const DST: Range<usize> = 16..20;
    }
    pub mod v6 {
        use std::ops::Range;
        pub const PAYLOAD_LEN: usize = 4;
        pub const NEXT_HEADER: usize = 6;
        pub const HOP_LIMIT: usize = 7;
        pub const SRC: Range<usize> = 8..24;
        pub const DST: Range<usize> = 24..40;
    }
}

/// A zero-copy view of an IPv4 packet whose buffer holds the header, its options and the total
/// length it states (Ethernet padding may follow: see [`Self::packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4View<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4View<T> {
    /// A view of `buffer`: version 4, a header length (IHL) of at least 20 bytes, and a total
    /// length from the header to the buffer's end. The checksum is not checked here
    /// ([`Self::verify_checksum`]).
    pub fn new_checked(buffer: T) -> Result<Self, NotOurs> {
        let view = Self { buffer };
        let len = view.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(NotOurs::Truncated);
        }
        if view.version() != 4 || view.header_len() < IPV4_HEADER_LEN {
            return Err(NotOurs::BadIpHeader);
        }
        if view.total_len() < view.header_len() {
            return Err(NotOurs::BadIpHeader);
        }
        if view.total_len() > len {
            return Err(NotOurs::Truncated);
        }
        Ok(view)
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }

    /// The version field (4 in a valid packet).
    pub fn version(&self) -> u8 {
        self.byte(field::v4::VERSION_IHL) >> 4
    }

    /// The header length in bytes, options included (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.byte(field::v4::VERSION_IHL) & 0x0F) * 4
    }

    /// Whether the header carries options.
    pub fn has_options(&self) -> bool {
        self.header_len() > IPV4_HEADER_LEN
    }

    /// The DSCP (RFC 2474).
    pub fn dscp(&self) -> u8 {
        self.byte(field::v4::TOS) >> 2
    }

    /// The ECN codepoint (RFC 3168), `None` for not-ECT.
    pub fn ecn(&self) -> Option<EcnCodepoint> {
        EcnCodepoint::from_bits(self.byte(field::v4::TOS))
    }

    /// The total length: header and payload.
    pub fn total_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), field::v4::TOTAL_LEN))
    }

    /// The identification field.
    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::v4::IDENTIFICATION)
    }

    fn flags_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::v4::FLAGS_OFFSET)
    }

    /// The "don't fragment" flag.
    pub fn dont_fragment(&self) -> bool {
        self.flags_offset() & DONT_FRAGMENT != 0
    }

    /// The "more fragments" flag.
    pub fn more_fragments(&self) -> bool {
        self.flags_offset() & MORE_FRAGMENTS != 0
    }

    /// The fragment offset, in 8-byte units.
    pub fn fragment_offset(&self) -> u16 {
        self.flags_offset() & FRAGMENT_OFFSET
    }

    /// Whether this is a fragment (not the whole datagram): more follow or it starts later.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.byte(field::v4::TTL)
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.byte(field::v4::PROTOCOL)
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::v4::CHECKSUM)
    }

    /// Whether the header checksum is right (RFC 791, over the header with its options).
    pub fn verify_checksum(&self) -> bool {
        let buf = self.buffer.as_ref();
        buf.get(..self.header_len()).is_some_and(checksum::verify)
    }

    /// The source address.
    pub fn src(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::v4::SRC)
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::v4::DST)
    }

    /// The packet, as long as its total length says (without Ethernet padding).
    pub fn packet(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..self.total_len()).unwrap_or(buf)
    }

    /// The payload, after the header and its options.
    pub fn payload(&self) -> &[u8] {
        self.packet().get(self.header_len()..).unwrap_or_default()
    }
}

/// A zero-copy view of an IPv6 packet whose buffer holds the fixed header and the payload length
/// it states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6View<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6View<T> {
    /// A view of `buffer`: version 6 and a payload length within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, NotOurs> {
        let view = Self { buffer };
        let len = view.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(NotOurs::Truncated);
        }
        if view.version() != 6 {
            return Err(NotOurs::BadIpHeader);
        }
        if IPV6_HEADER_LEN + view.payload_len() > len {
            return Err(NotOurs::Truncated);
        }
        Ok(view)
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }

    /// The version field (6 in a valid packet).
    pub fn version(&self) -> u8 {
        self.byte(0) >> 4
    }

    /// The traffic class: DSCP and ECN.
    pub fn traffic_class(&self) -> u8 {
        (self.byte(0) << 4) | (self.byte(1) >> 4)
    }

    /// The DSCP (RFC 2474).
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    /// The ECN codepoint (RFC 3168), `None` for not-ECT.
    pub fn ecn(&self) -> Option<EcnCodepoint> {
        EcnCodepoint::from_bits(self.traffic_class())
    }

    /// The payload length (extension headers included).
    pub fn payload_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), field::v6::PAYLOAD_LEN))
    }

    /// The next header: UDP for ours, or an extension header.
    pub fn next_header(&self) -> u8 {
        self.byte(field::v6::NEXT_HEADER)
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.byte(field::v6::HOP_LIMIT)
    }

    /// The source address.
    pub fn src(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), field::v6::SRC)
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), field::v6::DST)
    }

    /// The packet, as long as its payload length says (without Ethernet padding).
    pub fn packet(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..IPV6_HEADER_LEN + self.payload_len()).unwrap_or(buf)
    }

    /// The payload, after the fixed header.
    pub fn payload(&self) -> &[u8] {
        self.packet().get(IPV6_HEADER_LEN..).unwrap_or_default()
    }
}

fn ipv4_at(buf: &[u8], range: std::ops::Range<usize>) -> Ipv4Addr {
    buf.get(range).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(Ipv4Addr::UNSPECIFIED, Ipv4Addr::from)
}

fn ipv6_at(buf: &[u8], range: std::ops::Range<usize>) -> Ipv6Addr {
    buf.get(range).and_then(|b| <[u8; 16]>::try_from(b).ok()).map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
}
