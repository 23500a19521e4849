//! Running test code inside the namespaces of [`super::veth`]: a thread that enters one, and a
//! ping from there.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Move the calling thread (only it) into namespace `name`.
pub fn enter(name: &str) {
    let path = std::path::PathBuf::from(format!("/var/run/netns/{name}"));
    ant_quic_dataplane::sys::netns::enter(&path).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
}

/// Run `f` on a thread inside namespace `name`.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name);
        f()
    })
    .join()
    .unwrap()
}

/// Send an ICMP echo request to `to` from a raw socket (in the calling thread's namespace) and
/// wait for the reply, for at most 20 s: a ping.
pub fn ping(to: Ipv4Addr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let id = (std::process::id() as u16).to_be_bytes();
    let mut echo = vec![8, 0, 0, 0, id[0], id[1], 0, 1];
    echo.extend_from_slice(b"xdp-ping");
    let checksum = ones_complement(&echo);
    echo[2..4].copy_from_slice(&checksum.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut socket = socket;
    while Instant::now() < deadline {
        socket.send_to(&echo, &SocketAddr::from((to, 0)).into()).unwrap();
        let mut buf = [0u8; 128];
        while let Ok(n) = socket.read(&mut buf) {
            // A raw IPv4 socket reads the IP header (20 bytes here) and the ICMP message.
            let (ip, icmp) = buf[..n].split_at(20.min(n));
            if ip.len() == 20 && ip[12..16] == to.octets() && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id {
                return true;
            }
        }
    }
    false
}

/// The Internet checksum of `bytes` (RFC 1071).
fn ones_complement(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
