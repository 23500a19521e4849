//! Ethernet frames carrying UDP, for a backend that sees frames rather than datagrams (AF_XDP):
//! the receive path's [`classify`], which keeps our UDP datagrams and leaves everything else to
//! the kernel, the send path's [`UdpFrame`] builder, and the incremental checksum updates that
//! let a relay rewrite addresses and ports in place ([`checksum::update`], [`UdpFrame::rewrite`]).
//!
//! Sans-IO and allocation-free: views over the caller's bytes (`EthernetView`, `Ipv4View`,
//! `Ipv6View`, `UdpView`), headers written into the caller's buffer. What this layer does not
//! take as ours goes to the kernel unchanged, so the kernel stays the one judge of everything
//! unusual: fragments, IPv4 options (source routes are the kernel's policy to refuse), IPv6
//! extension headers, VLAN tags, frames over the MTU, martian addresses, and anything damaged.

mod build;
pub mod checksum;
mod ethernet;
mod ip;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use quinn_proto::EcnCodepoint;

pub use build::{BuildError, RewriteError, UdpFrame, HOP_LIMIT, IPV4_FRAME_OVERHEAD, IPV6_FRAME_OVERHEAD};
pub use ethernet::{EthernetView, MacAddress, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, VLAN_TAGS};
pub use ip::{Ipv4View, Ipv6View, IPV4_HEADER_LEN, IPV6_EXTENSION_HEADERS, IPV6_HEADER_LEN, PROTOCOL_UDP};
pub use udp::{UdpView, UDP_HEADER_LEN};

/// Why a frame is not a datagram for us: it goes to the kernel as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NotOurs {
    /// Shorter than a header, or than the length a header states.
    #[error("frame truncated")]
    Truncated,
    /// An 802.1Q/802.1ad VLAN tag after the addresses.
    #[error("VLAN-tagged frame")]
    Vlan,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, ...).
    #[error("not IP")]
    NotIp,
    /// An IPv4 header with the wrong version or an impossible length, or an IPv6 header with
    /// the wrong version.
    #[error("malformed IP header")]
    BadIpHeader,
    /// An IPv4 header with options.
    #[error("IPv4 options")]
    IpOptions,
    /// An IPv4 fragment, or an IPv6 fragment header: the kernel reassembles.
    #[error("IP fragment")]
    Fragmented,
    /// An IPv6 extension header before the transport header.
    #[error("IPv6 extension header")]
    Ipv6Extension,
    /// An IP packet longer than the configured MTU.
    #[error("IP packet over the MTU")]
    OverMtu,
    /// A wrong IPv4 header checksum.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// Not UDP.
    #[error("not UDP")]
    NotUdp,
    /// A UDP length under 8 bytes or other than the IP payload's.
    #[error("bad UDP length")]
    BadUdpLength,
    /// A wrong UDP checksum, or none over IPv6.
    #[error("bad UDP checksum")]
    BadUdpChecksum,
    /// Not to one of our addresses and ports (a multicast, broadcast or loopback destination
    /// never is).
    #[error("not addressed to us")]
    NotOurAddress,
    /// From an address no host sends from (multicast, broadcast, unspecified, loopback,
    /// IPv4-mapped over IPv6): the kernel drops these as martians, and an answer would go to
    /// a group or nowhere.
    #[error("impossible source address")]
    BadSource,
}

/// A UDP datagram for us, found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender (a plain IPv4 address for IPv4, as everywhere in the data plane).
    pub src: SocketAddr,
    /// Which of our addresses it was sent to.
    pub dst: SocketAddr,
    /// The ECN codepoint of the IP header.
    pub ecn: Option<EcnCodepoint>,
    /// Where the UDP payload is in the frame.
    pub payload: Range<usize>,
    /// The sender's MAC address (the next hop's, for a routed datagram).
    pub src_mac: MacAddress,
    /// The MAC address it was sent to.
    pub dst_mac: MacAddress,
}

/// What the receive path does with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A datagram for us.
    Datagram(Datagram),
    /// Anything else: pass it to the kernel, and why.
    ToKernel(NotOurs),
}

/// Sort a received Ethernet frame: a UDP datagram to one of `ours` (an unspecified address
/// stands for every address of its family on that port; `[::]` for IPv4 too, as a dual-stack
/// socket), at most `mtu` bytes of IP packet, with right checksums, or what to tell the kernel.
/// Never panics.
pub fn classify(frame: &[u8], ours: &[SocketAddr], mtu: usize) -> Classified {
    match find_datagram(frame, ours, mtu) {
        Ok(datagram) => Classified::Datagram(datagram),
        Err(reason) => Classified::ToKernel(reason),
    }
}

fn find_datagram(frame: &[u8], ours: &[SocketAddr], mtu: usize) -> Result<Datagram, NotOurs> {
    let ethernet = EthernetView::new_checked(frame)?;
    let (src_ip, dst_ip, ecn, ip_payload) = match ethernet.ethertype() {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4View::new_checked(ethernet.payload())?;
            if ip.has_options() {
                return Err(NotOurs::IpOptions);
            }
            if ip.is_fragment() {
                return Err(NotOurs::Fragmented);
            }
            if ip.total_len() > mtu {
                return Err(NotOurs::OverMtu);
            }
            if !ip.verify_checksum() {
                return Err(NotOurs::BadIpChecksum);
            }
            if ip.protocol() != PROTOCOL_UDP {
                return Err(NotOurs::NotUdp);
            }
            (IpAddr::V4(ip.src()), IpAddr::V4(ip.dst()), ip.ecn(), ip.header_len()..ip.total_len())
        }
        ETHERTYPE_IPV6 => {
            let ip = Ipv6View::new_checked(ethernet.payload())?;
            match ip.next_header() {
                PROTOCOL_UDP => {}
                ip::IPV6_FRAGMENT_HEADER => return Err(NotOurs::Fragmented),
                next if IPV6_EXTENSION_HEADERS.contains(&next) => return Err(NotOurs::Ipv6Extension),
                _ => return Err(NotOurs::NotUdp),
            }
            if IPV6_HEADER_LEN + ip.payload_len() > mtu {
                return Err(NotOurs::OverMtu);
            }
            (IpAddr::V6(ip.src()), IpAddr::V6(ip.dst()), ip.ecn(), IPV6_HEADER_LEN..IPV6_HEADER_LEN + ip.payload_len())
        }
        tag if VLAN_TAGS.contains(&tag) => return Err(NotOurs::Vlan),
        _ => return Err(NotOurs::NotIp),
    };
    // The views checked these bounds.
    let ip_payload_at = ETHERNET_HEADER_LEN + ip_payload.start;
    let ip_payload = ethernet.payload().get(ip_payload).ok_or(NotOurs::Truncated)?;
    let udp = UdpView::new_checked(ip_payload)?;
    if udp.len() != ip_payload.len() {
        return Err(NotOurs::BadUdpLength);
    }
    let dst = SocketAddr::new(dst_ip, udp.dst_port());
    // Before the checksum: a datagram for someone else costs no pass over its payload.
    if !is_ours(dst, ours) {
        return Err(NotOurs::NotOurAddress);
    }
    if !is_possible_source(src_ip) {
        return Err(NotOurs::BadSource);
    }
    if !udp.verify_checksum(src_ip, dst_ip) {
        return Err(NotOurs::BadUdpChecksum);
    }
    let payload_at = ip_payload_at + UDP_HEADER_LEN;
    Ok(Datagram {
        src: SocketAddr::new(src_ip, udp.src_port()),
        dst,
        ecn,
        payload: payload_at..payload_at + udp.payload().len(),
        src_mac: ethernet.src(),
        dst_mac: ethernet.dst(),
    })
}

/// Whether `dst` is one of `ours`. Addresses no host has on a link (multicast, broadcast,
/// unspecified, loopback: those [`is_possible_source`] refuses) never are, even under a wildcard.
fn is_ours(dst: SocketAddr, ours: &[SocketAddr]) -> bool {
    let ip = dst.ip();
    if !is_possible_source(ip) {
        return false;
    }
    ours.iter().any(|our| {
        our.port() == dst.port()
            && match our.ip().to_canonical() {
                IpAddr::V4(our_ip) if our_ip.is_unspecified() => ip.is_ipv4(),
                IpAddr::V6(our_ip) if our_ip.is_unspecified() => true,
                our_ip => our_ip == ip,
            }
    })
}

/// Whether a host can send from `ip` (RFC 1122 §3.2.1.3; RFC 4291 §2.5.2, §2.5.3, §2.7;
/// IPv4-mapped addresses never appear on the wire, RFC 4038 §4.2).
fn is_possible_source(ip: IpAddr) -> bool {
    let special = match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    !(special || ip.is_multicast() || ip.is_unspecified() || ip.is_loopback())
}

/// The big-endian `u16` at `at`, 0 past the end.
fn read_u16(buf: &[u8], at: usize) -> u16 {
    buf.get(at..at + 2).and_then(|b| <[u8; 2]>::try_from(b).ok()).map_or(0, u16::from_be_bytes)
}

#[cfg(test)]
mod tests;
