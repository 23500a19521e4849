//! Control messages (`cmsg`) of UDP sends and receives, and socket addresses as the kernel
//! writes them: plain byte encoding and decoding, with the layout of the kernel's `CMSG_*` macros.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use quinn_proto::EcnCodepoint;

/// What the control messages of one send carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendControl {
    /// Whether the destination is an IPv4 address (also IPv4-mapped): TOS rather than TCLASS.
    pub ipv4: bool,
    /// ECN codepoint for every datagram.
    pub ecn: Option<EcnCodepoint>,
    /// `UDP_SEGMENT`: the size of each datagram of a GSO batch.
    pub segment_size: Option<u16>,
    /// The source address to send from (`IP_PKTINFO` / `IPV6_PKTINFO`).
    pub src_ip: Option<IpAddr>,
}

/// Write the control messages of one send into `buf`; returns the bytes used.
pub(crate) fn write_send_control(buf: &mut [u8], send: &SendControl) -> usize {
    let mut control = CmsgWriter { buf, len: 0 };
    // RFC 9000 §13.4: ECN codepoints on every datagram when the path supports them.
    if let Some(ecn) = send.ecn {
        let value = (ecn as u8 as libc::c_int).to_ne_bytes();
        if send.ipv4 {
            control.push(libc::IPPROTO_IP, libc::IP_TOS, &value);
        } else {
            control.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &value);
        }
    }
    if let Some(segment) = send.segment_size {
        control.push(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes());
    }
    match send.src_ip {
        Some(IpAddr::V4(ip)) => {
            // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
            let mut info = [0u8; 12];
            info[4..8].copy_from_slice(&ip.octets());
            control.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        }
        Some(IpAddr::V6(ip)) => {
            // struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
            let mut info = [0u8; 20];
            info[..16].copy_from_slice(&ip.octets());
            control.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
        }
        None => {}
    }
    control.len
}

/// Writes control messages into a byte buffer with the kernel's `CMSG_*` layout.
struct CmsgWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

const fn cmsg_align(len: usize) -> usize {
    let align = std::mem::size_of::<usize>();
    (len + align - 1) & !(align - 1)
}

const CMSG_HDR_LEN: usize = cmsg_align(std::mem::size_of::<libc::cmsghdr>());

impl CmsgWriter<'_> {
    fn push(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) {
        let space = CMSG_HDR_LEN + cmsg_align(data.len());
        let Some(out) = self.buf.get_mut(self.len..self.len + space) else {
            return;
        };
        out.fill(0);
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }: on the layouts Linux
        // libcs use, a native-endian usize at offset 0 encodes cmsg_len (musl's padding is zero).
        let word = std::mem::size_of::<usize>();
        out[..word].copy_from_slice(&(CMSG_HDR_LEN + data.len()).to_ne_bytes());
        out[word..word + 4].copy_from_slice(&level.to_ne_bytes());
        out[word + 4..word + 8].copy_from_slice(&ty.to_ne_bytes());
        out[CMSG_HDR_LEN..CMSG_HDR_LEN + data.len()].copy_from_slice(data);
        self.len += space;
    }
}

/// Iterate over `(level, type, data)` of the control messages in `buf`.
fn cmsgs(buf: &[u8]) -> impl Iterator<Item = (libc::c_int, libc::c_int, &[u8])> {
    let word = std::mem::size_of::<usize>();
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from_ne_bytes(rest.get(..word)?.try_into().ok()?);
        let level = libc::c_int::from_ne_bytes(rest.get(word..word + 4)?.try_into().ok()?);
        let ty = libc::c_int::from_ne_bytes(rest.get(word + 4..word + 8)?.try_into().ok()?);
        let data = rest.get(CMSG_HDR_LEN..len)?;
        rest = rest.get(cmsg_align(len)..).unwrap_or_default();
        Some((level, ty, data))
    })
}

fn read_int(data: &[u8]) -> Option<libc::c_int> {
    match data.len() {
        1 => data.first().map(|&b| libc::c_int::from(b)),
        _ => Some(libc::c_int::from_ne_bytes(data.get(..4)?.try_into().ok()?)),
    }
}

/// Decode a `sockaddr_in` or `sockaddr_in6` as the kernel wrote it.
pub(crate) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = libc::sa_family_t::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope_id = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id)))
        }
        _ => None,
    }
}

/// What the control messages of one received datagram say.
#[derive(Debug, Default)]
pub(crate) struct RecvControl {
    /// GRO segment size (`UDP_GRO`).
    pub stride: Option<usize>,
    /// ECN bits of the TOS / traffic class byte.
    pub ecn: Option<EcnCodepoint>,
    /// The address the datagram was sent to (`IP_PKTINFO` / `IPV6_PKTINFO`).
    pub local_ip: Option<IpAddr>,
}

/// Decode the control messages of one received datagram.
pub(crate) fn parse_control(control: &[u8]) -> RecvControl {
    let mut out = RecvControl::default();
    for (level, ty, data) in cmsgs(control) {
        match (level, ty) {
            (libc::SOL_UDP, libc::UDP_GRO) => {
                out.stride = read_int(data).and_then(|s| usize::try_from(s).ok()).filter(|&s| s > 0);
            }
            (libc::IPPROTO_IP, libc::IP_TOS) | (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                out.ecn = read_int(data).and_then(|tos| EcnCodepoint::from_bits((tos & 0b11) as u8));
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo: the destination address of the datagram is `ipi_addr`.
                if let Some(ip) = data.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    out.local_ip = Some(IpAddr::V4(Ipv4Addr::from(ip)));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(ip) = data.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                    out.local_ip = Some(IpAddr::V6(Ipv6Addr::from(ip)));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_written_are_read_back() {
        let mut buf = [0u8; 128];
        let mut w = CmsgWriter { buf: &mut buf, len: 0 };
        w.push(libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes());
        w.push(libc::IPPROTO_IP, libc::IP_TOS, &[0b10]);
        let mut info = [0u8; 12];
        info[8..12].copy_from_slice(&[10, 1, 2, 3]);
        w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        let len = w.len;
        let parsed = parse_control(&buf[..len]);
        assert_eq!(parsed.stride, Some(1200));
        assert_eq!(parsed.ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(parsed.local_ip, Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        // A cut-off buffer yields what is complete and never reads past the end.
        let cut = parse_control(&buf[..len - 8]);
        assert_eq!(cut.stride, Some(1200));
        assert_eq!(cut.local_ip, None);
    }

    #[test]
    fn socket_addresses_decode_for_both_families() {
        for addr in ["192.0.2.7:4433", "[2001:db8::1]:9000", "[::ffff:192.0.2.7]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let raw = socket2::SockAddr::from(addr);
            // SAFETY: `as_ptr` points at `len` initialised bytes of the SockAddr, alive here.
            let bytes = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.len() as usize) };
            assert_eq!(parse_sockaddr(bytes), Some(addr));
        }
        assert_eq!(parse_sockaddr(&[0u8; 4]), None);
    }
}
