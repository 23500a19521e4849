//! Peer addresses as the data plane keeps them: an IPv4 peer is always plain IPv4, never
//! IPv4-mapped IPv6, whatever the socket's family.
//!
//! A dual-stack socket reports IPv4 peers mapped (`::ffff:a.b.c.d`). The backends unmap every
//! source as a datagram enters ([`crate::backend`]), so connections, relay tables and path
//! aliases compare one form; the relay tables also unmap the addresses other threads install.
//! The send path maps them back for a dual-stack socket.

use std::net::{IpAddr, SocketAddr};

/// `addr` as plain IPv4 when it is IPv4-mapped IPv6; otherwise unchanged.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmaps_only_ipv4_mapped_addresses() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(unmapped(addr("[::ffff:192.0.2.1]:1000")), addr("192.0.2.1:1000"));
        assert_eq!(unmapped(addr("192.0.2.1:1000")), addr("192.0.2.1:1000"));
        assert_eq!(unmapped(addr("[2001:db8::1]:1000")), addr("[2001:db8::1]:1000"));
    }
}
