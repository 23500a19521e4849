//! The send path: Ethernet, IPv4 or IPv6 and UDP headers written in front of a payload in the
//! caller's buffer (a UMEM frame), and the in-place rewrite of a received frame's endpoints for
//! forwarding, with checksums updated incrementally (RFC 1624).

use std::net::{IpAddr, SocketAddr};

use quinn_proto::EcnCodepoint;

use super::ethernet::{self, MacAddress, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::ip::{self, DONT_FRAGMENT, IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTOCOL_UDP};
use super::udp::{self, UDP_HEADER_LEN};
use super::{checksum, read_u16, EthernetView, Ipv4View, Ipv6View};

/// TTL (IPv4) and hop limit (IPv6) of every frame we send: Linux's default
/// (`net.ipv4.ip_default_ttl`, RFC 1700's recommendation).
pub const HOP_LIMIT: u8 = 64;
/// Header bytes in front of the payload of an IPv4 frame: Ethernet, IPv4 (no options), UDP.
pub const IPV4_FRAME_OVERHEAD: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;
/// Header bytes in front of the payload of an IPv6 frame: Ethernet, IPv6, UDP.
pub const IPV6_FRAME_OVERHEAD: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN;
/// The largest IP packet either header's 16-bit length can state (no IPv6 jumbograms).
const MAX_IP_LEN: usize = 65_535;

/// Why headers could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Source and destination are of different address families.
    #[error("source and destination are of different address families")]
    MixedFamilies,
    /// The IP packet would exceed the MTU (or 65,535 bytes).
    #[error("payload over the {max}-byte limit of this MTU")]
    PayloadTooLarge {
        /// The largest payload that fits.
        max: usize,
    },
    /// The MTU cannot hold even the IP and UDP headers.
    #[error("an MTU of {mtu} bytes cannot hold the IP and UDP headers")]
    MtuTooSmall {
        /// The MTU given.
        mtu: usize,
    },
    /// The buffer cannot hold the frame.
    #[error("buffer too small: the frame needs {needed} bytes")]
    BufferTooSmall {
        /// The frame's length.
        needed: usize,
    },
}

/// Why a frame's endpoints could not be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// The frame is not an untagged, unfragmented IPv4 or IPv6 UDP datagram (IPv6: UDP directly
    /// after the fixed header), whole in the buffer.
    #[error("not a whole UDP datagram in an Ethernet frame")]
    NotUdpFrame,
    /// The new endpoints are of another address family than the frame.
    #[error("the new endpoints are of another address family than the frame")]
    FamilyMismatch,
}

/// Everything the headers of a UDP frame we send say: the repr the builder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    /// Our MAC address.
    pub src_mac: MacAddress,
    /// The next hop's MAC address.
    pub dst_mac: MacAddress,
    /// Our address and port.
    pub src: SocketAddr,
    /// The destination (same family as `src`; IPv4-mapped IPv6 counts as IPv4).
    pub dst: SocketAddr,
    /// DSCP (6 bits; higher bits are ignored).
    pub dscp: u8,
    /// ECN codepoint, `None` for not-ECT.
    pub ecn: Option<EcnCodepoint>,
    /// IPv4 identification (from the caller's counter; unused for IPv6). With DF set it only
    /// needs to differ between nearby datagrams (RFC 6864 §4.1).
    pub identification: u16,
}

impl UdpFrame {
    /// Header bytes in front of the payload ([`IPV4_FRAME_OVERHEAD`] or
    /// [`IPV6_FRAME_OVERHEAD`]): where the payload goes for [`Self::emit`].
    pub fn overhead(&self) -> usize {
        match self.dst.ip().to_canonical() {
            IpAddr::V4(_) => IPV4_FRAME_OVERHEAD,
            IpAddr::V6(_) => IPV6_FRAME_OVERHEAD,
        }
    }

    /// The frame's length for `payload_len` bytes of payload, checked against the families, the
    /// IP `mtu` and `buffer_len`.
    pub fn frame_len(&self, payload_len: usize, mtu: usize, buffer_len: usize) -> Result<usize, BuildError> {
        if self.src.ip().to_canonical().is_ipv4() != self.dst.ip().to_canonical().is_ipv4() {
            return Err(BuildError::MixedFamilies);
        }
        let ip_overhead = self.overhead() - ETHERNET_HEADER_LEN;
        let Some(max) = mtu.min(MAX_IP_LEN).checked_sub(ip_overhead) else {
            return Err(BuildError::MtuTooSmall { mtu });
        };
        if payload_len > max {
            return Err(BuildError::PayloadTooLarge { max });
        }
        let needed = self.overhead() + payload_len;
        if needed > buffer_len {
            return Err(BuildError::BufferTooSmall { needed });
        }
        Ok(needed)
    }

    /// Copy `payload` after the headers in `buf`, then [`Self::emit`] them.
    pub fn build(&self, buf: &mut [u8], payload: &[u8], mtu: usize) -> Result<usize, BuildError> {
        let len = self.frame_len(payload.len(), mtu, buf.len())?;
        if let Some(slot) = buf.get_mut(self.overhead()..len) {
            slot.copy_from_slice(payload);
        }
        self.emit(buf, payload.len(), mtu)
    }

    /// Write the headers in front of the `payload_len` bytes already at [`Self::overhead`] in
    /// `buf`: TTL/hop limit [`HOP_LIMIT`], DF set on IPv4, IPv4 header checksum and UDP checksum
    /// (over the pseudo-header, RFC 768 / RFC 8200 §8.1). Returns the frame's length.
    pub fn emit(&self, buf: &mut [u8], payload_len: usize, mtu: usize) -> Result<usize, BuildError> {
        let len = self.frame_len(payload_len, mtu, buf.len())?;
        let Some(frame) = buf.get_mut(..len) else { return Err(BuildError::BufferTooSmall { needed: len }) };
        let (src, dst) = (self.src.ip().to_canonical(), self.dst.ip().to_canonical());
        let traffic_class = (self.dscp << 2) | self.ecn.map_or(0, |ecn| ecn as u8);
        let ip_len = len - ETHERNET_HEADER_LEN;
        let udp_len = ip_len - (self.overhead() - ETHERNET_HEADER_LEN - UDP_HEADER_LEN);
        let mut headers = [0u8; IPV6_FRAME_OVERHEAD];
        headers[ethernet::field::DST].copy_from_slice(&self.dst_mac);
        headers[ethernet::field::SRC].copy_from_slice(&self.src_mac);
        let at = ETHERNET_HEADER_LEN;
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                put_u16(&mut headers, ethernet::field::ETHERTYPE, ETHERTYPE_IPV4);
                let h = &mut headers[at..at + IPV4_HEADER_LEN];
                h[ip::field::v4::VERSION_IHL] = 0x45;
                h[ip::field::v4::TOS] = traffic_class;
                put_u16(h, ip::field::v4::TOTAL_LEN, len_u16(ip_len));
                put_u16(h, ip::field::v4::IDENTIFICATION, self.identification);
                put_u16(h, ip::field::v4::FLAGS_OFFSET, DONT_FRAGMENT);
                h[ip::field::v4::TTL] = HOP_LIMIT;
                h[ip::field::v4::PROTOCOL] = PROTOCOL_UDP;
                h[ip::field::v4::SRC].copy_from_slice(&src.octets());
                h[ip::field::v4::DST].copy_from_slice(&dst.octets());
                let sum = checksum::checksum(h);
                put_u16(h, ip::field::v4::CHECKSUM, sum);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                put_u16(&mut headers, ethernet::field::ETHERTYPE, ETHERTYPE_IPV6);
                let h = &mut headers[at..at + IPV6_HEADER_LEN];
                // Version 6, traffic class, flow label 0.
                h[0] = 0x60 | (traffic_class >> 4);
                h[1] = traffic_class << 4;
                put_u16(h, ip::field::v6::PAYLOAD_LEN, len_u16(udp_len));
                h[ip::field::v6::NEXT_HEADER] = PROTOCOL_UDP;
                h[ip::field::v6::HOP_LIMIT] = HOP_LIMIT;
                h[ip::field::v6::SRC].copy_from_slice(&src.octets());
                h[ip::field::v6::DST].copy_from_slice(&dst.octets());
            }
            _ => return Err(BuildError::MixedFamilies),
        }
        let udp_at = self.overhead() - UDP_HEADER_LEN;
        let u = &mut headers[udp_at..udp_at + UDP_HEADER_LEN];
        put_u16(u, udp::field::SRC_PORT, self.src.port());
        put_u16(u, udp::field::DST_PORT, self.dst.port());
        put_u16(u, udp::field::LENGTH, len_u16(udp_len));
        if let (Some(slot), Some(written)) = (frame.get_mut(..self.overhead()), headers.get(..self.overhead())) {
            slot.copy_from_slice(written);
        }
        let udp_checksum = frame.get(udp_at..).map_or(0, |segment| checksum::udp_checksum(src, dst, segment));
        put_u16(frame, udp_at + udp::field::CHECKSUM, udp_checksum);
        Ok(len)
    }

    /// Rewrite a received UDP frame in place to go from this repr's MACs and endpoints (same
    /// family as the frame), with TTL/hop limit [`HOP_LIMIT`], as a relay forwards it; DSCP,
    /// ECN, identification and payload are kept. The IPv4 header checksum and the UDP checksum
    /// are updated incrementally (RFC 1624 eqn. 3); an IPv4 datagram sent without a UDP checksum
    /// stays without. Returns the frame's length (without Ethernet padding).
    pub fn rewrite(&self, frame: &mut [u8]) -> Result<usize, RewriteError> {
        let (src, dst) = (self.src.ip().to_canonical(), self.dst.ip().to_canonical());
        let ethernet = EthernetView::new_checked(&*frame).map_err(|_| RewriteError::NotUdpFrame)?;
        let at = ETHERNET_HEADER_LEN;
        // Old and new addresses then ports, as one run of 16-bit words for the UDP checksum.
        let mut old = [0u8; 36];
        let mut new = [0u8; 36];
        let (ip_header_len, ip_len, addresses) = match (ethernet.ethertype(), src, dst) {
            (ETHERTYPE_IPV4, IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ip = Ipv4View::new_checked(ethernet.payload()).map_err(|_| RewriteError::NotUdpFrame)?;
                if ip.protocol() != PROTOCOL_UDP || ip.is_fragment() {
                    return Err(RewriteError::NotUdpFrame);
                }
                old[..4].copy_from_slice(&ip.src().octets());
                old[4..8].copy_from_slice(&ip.dst().octets());
                new[..4].copy_from_slice(&src.octets());
                new[4..8].copy_from_slice(&dst.octets());
                (ip.header_len(), ip.total_len(), ip::field::v4::SRC.start..ip::field::v4::DST.end)
            }
            (ETHERTYPE_IPV6, IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6View::new_checked(ethernet.payload()).map_err(|_| RewriteError::NotUdpFrame)?;
                if ip.next_header() != PROTOCOL_UDP {
                    return Err(RewriteError::NotUdpFrame);
                }
                old[..16].copy_from_slice(&ip.src().octets());
                old[16..32].copy_from_slice(&ip.dst().octets());
                new[..16].copy_from_slice(&src.octets());
                new[16..32].copy_from_slice(&dst.octets());
                (IPV6_HEADER_LEN, IPV6_HEADER_LEN + ip.payload_len(), ip::field::v6::SRC.start..ip::field::v6::DST.end)
            }
            (ETHERTYPE_IPV4 | ETHERTYPE_IPV6, _, _) => return Err(RewriteError::FamilyMismatch),
            _ => return Err(RewriteError::NotUdpFrame),
        };
        let ip_payload = ethernet.payload().get(ip_header_len..ip_len).unwrap_or_default();
        let datagram = udp::UdpView::new_checked(ip_payload).map_err(|_| RewriteError::NotUdpFrame)?;
        let ports_at = addresses.len();
        old[ports_at..ports_at + 2].copy_from_slice(&datagram.src_port().to_be_bytes());
        old[ports_at + 2..ports_at + 4].copy_from_slice(&datagram.dst_port().to_be_bytes());
        new[ports_at..ports_at + 2].copy_from_slice(&self.src.port().to_be_bytes());
        new[ports_at + 2..ports_at + 4].copy_from_slice(&self.dst.port().to_be_bytes());
        let changed = ..ports_at + 4;
        let udp_checksum = checksum::update_udp(datagram.checksum(), &old[changed], &new[changed]);

        let udp_at = at + ip_header_len;
        write(frame, ethernet::field::DST.start, &self.dst_mac);
        write(frame, ethernet::field::SRC.start, &self.src_mac);
        write(frame, at + addresses.start, &new[..ports_at]);
        write(frame, udp_at, &new[ports_at..ports_at + 4]);
        put_u16(frame, udp_at + udp::field::CHECKSUM, udp_checksum);
        if ports_at == 8 {
            let ttl_at = at + ip::field::v4::TTL;
            let old_ttl = [frame.get(ttl_at).copied().unwrap_or(0), PROTOCOL_UDP];
            let header_checksum = read_u16(frame, at + ip::field::v4::CHECKSUM);
            let header_checksum = checksum::update(header_checksum, &old[..8], &new[..8]);
            let header_checksum = checksum::update(header_checksum, &old_ttl, &[HOP_LIMIT, PROTOCOL_UDP]);
            write(frame, ttl_at, &[HOP_LIMIT]);
            put_u16(frame, at + ip::field::v4::CHECKSUM, header_checksum);
        } else {
            write(frame, at + ip::field::v6::HOP_LIMIT, &[HOP_LIMIT]);
        }
        Ok(ETHERNET_HEADER_LEN + ip_len)
    }
}

/// A length the size checks already bounded to 65,535.
fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    write(buf, at, &value.to_be_bytes());
}

/// Copy `bytes` to `at`; nothing when they do not fit (every caller checked they do).
fn write(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buf.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}
