//! This node's host candidates (RFC 8445 §5.1.1.1), each with the node's port, best first and at
//! most [`MAX_HOST_CANDIDATES`]: the address this host uses toward each bootstrap (where a peer on
//! the same network reaches us), then, for an IPv6 socket, the host's first global IPv6 address (no
//! NAT there, only stateful firewalls, which a simultaneous open passes), then the other usable
//! interface addresses (IPv4 for a wildcard socket, IPv6 for an IPv6 one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Where the kernel lists the host's IPv6 addresses, with their flags.
const IF_INET6: &str = "/proc/net/if_inet6";
/// Host candidates announced at most: a bootstrap keeps 8 candidates per peer, and the observed
/// and shared server-reflexive ones must keep their places beside a host with many interfaces.
pub(super) const MAX_HOST_CANDIDATES: usize = 4;

/// The host candidates of a node whose socket is bound to `local`, talking to `bootstraps`.
/// Learned with unconnected-then-connected UDP sockets, getifaddrs and `/proc`; nothing is sent.
pub(super) fn candidates(bootstraps: &[SocketAddr], local: SocketAddr) -> Vec<SocketAddr> {
    let mut toward: Vec<IpAddr> = Vec::new();
    for bootstrap in bootstraps {
        let bind: SocketAddr =
            if bootstrap.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
        if let Ok(from) = UdpSocket::bind(bind).and_then(|s| s.connect(bootstrap).and_then(|()| s.local_addr())) {
            toward.push(from.ip());
        }
    }
    // An IPv4 socket cannot use IPv6 candidates; an IPv6 wildcard (dual-stack) or IPv6 address can.
    let ipv6_socket = match local.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => true,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().is_none(),
        IpAddr::V4(_) => false,
    };
    let ipv6: Vec<Ipv6Addr> = if ipv6_socket {
        let listed = std::fs::read_to_string(IF_INET6).unwrap_or_default();
        global_ipv6(&listed)
            .into_iter()
            .filter(|ip| matches!(local.ip(), IpAddr::V6(l) if l.is_unspecified() || l == *ip))
            .collect()
    } else {
        Vec::new()
    };
    // Other IPv4 networks of this host, where the socket can send from them (a wildcard).
    let ipv4: Vec<Ipv4Addr> = if local.ip().is_unspecified() {
        let interfaces = ant_quic_dataplane::sys::interfaces::interface_addresses().unwrap_or_default();
        interfaces
            .iter()
            .filter(|i| i.usable)
            .filter_map(|i| match i.ip {
                IpAddr::V4(ip) if !ip.is_link_local() && !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    best_first(&toward, &ipv6, &ipv4, local.port())
}

/// Candidates in order of use and capped: the addresses toward the bootstraps, the first global
/// IPv6 address, the other IPv4 interface addresses, the other IPv6 addresses.
fn best_first(toward: &[IpAddr], ipv6: &[Ipv6Addr], ipv4: &[Ipv4Addr], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let ordered = toward
        .iter()
        .copied()
        .chain(ipv6.first().map(|ip| IpAddr::V6(*ip)))
        .chain(ipv4.iter().map(|ip| IpAddr::V4(*ip)))
        .chain(ipv6.iter().skip(1).map(|ip| IpAddr::V6(*ip)));
    for ip in ordered {
        let candidate = SocketAddr::new(ip, port);
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out.truncate(MAX_HOST_CANDIDATES);
    out
}

/// `IFA_F_*` flags of an address that is not usable (yet): tentative (DAD running), DAD failed,
/// deprecated (being replaced).
const UNUSABLE: u32 = 0x40 | 0x08 | 0x20;

/// The global unicast IPv6 addresses of `/proc/net/if_inet6` (one line per address: 32 hex
/// digits, interface index, prefix length, scope, flags, name), usable ones only, permanent
/// before temporary (privacy) ones.
fn global_ipv6(listed: &str) -> Vec<Ipv6Addr> {
    let mut found: Vec<(bool, Ipv6Addr)> = Vec::new();
    for line in listed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _, _, scope, flags, ..] = fields[..] else { continue };
        let (Ok(bits), Ok(scope), Ok(flags)) =
            (u128::from_str_radix(hex, 16), u32::from_str_radix(scope, 16), u32::from_str_radix(flags, 16))
        else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        // Scope 0 is global; loopback, link-local and site-local have their own scopes.
        let global = scope == 0 && !ip.is_loopback() && !ip.is_multicast() && !ip.is_unspecified();
        if global && hex.len() == 32 && flags & UNUSABLE == 0 {
            let temporary = flags & 0x01 != 0;
            found.push((temporary, ip));
        }
    }
    found.sort_by_key(|(temporary, _)| *temporary);
    found.into_iter().map(|(_, ip)| ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_usable_addresses_permanent_first() {
        let listed = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000002 02 40 20 80     eth0
20010db8000700000000000000000099 02 40 00 01     eth0
20010db8000700000000000000000002 02 40 00 80     eth0
20010db8000700000000000000000003 02 40 00 c0     eth0
20010db8000700000000000000000004 02 40 00 a0     eth0
garbage line
";
        let found = global_ipv6(listed);
        let expected: Vec<Ipv6Addr> = vec!["2001:db8:7::2".parse().unwrap(), "2001:db8:7::99".parse().unwrap()];
        assert_eq!(found, expected, "loopback, link-local, tentative and deprecated left out; temporary last");
    }

    #[test]
    fn an_ipv4_node_gets_its_interface_addresses_and_no_ipv6_ones() {
        let v4 = candidates(&["127.0.0.1:9".parse().unwrap()], "0.0.0.0:9000".parse().unwrap());
        assert_eq!(v4.first(), Some(&"127.0.0.1:9000".parse().unwrap()), "the address toward the bootstrap first");
        assert!(v4.iter().all(SocketAddr::is_ipv4), "{v4:?}");
        assert!(v4.len() <= MAX_HOST_CANDIDATES);
        assert!(v4.iter().all(|c| c.port() == 9000));
    }

    #[test]
    fn a_host_with_many_addresses_keeps_the_best_four() {
        let toward: Vec<IpAddr> = vec!["10.0.1.2".parse().unwrap()];
        let ipv6: Vec<Ipv6Addr> =
            ["2001:db8::1", "2001:db8::2", "2001:db8::3"].iter().map(|a| a.parse().unwrap()).collect();
        let ipv4: Vec<Ipv4Addr> =
            ["10.0.1.2", "192.168.7.2", "172.16.0.9"].iter().map(|a| a.parse().unwrap()).collect();
        let chosen = best_first(&toward, &ipv6, &ipv4, 9000);
        let expected: Vec<SocketAddr> = ["10.0.1.2:9000", "[2001:db8::1]:9000", "192.168.7.2:9000", "172.16.0.9:9000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(chosen, expected, "toward the bootstrap, first IPv6, other IPv4; no duplicate; four at most");
        let few = best_first(&toward, &ipv6[..2], &[], 9000);
        assert_eq!(few.last(), Some(&"[2001:db8::2]:9000".parse().unwrap()), "other IPv6 addresses come last: {few:?}");
    }
}
