//! Path aliases (peer role): the 240.0.0.0/4 addresses quinn-proto knows a peer by, and the route
//! (through a relay, or direct) each one takes now.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::address::unmapped;

/// Whether `addr` is a path alias: 240.0.0.0/4 (reserved, RFC 1112 §4; never a real peer), also
/// when written IPv4-mapped.
pub fn is_alias(addr: &SocketAddr) -> bool {
    match unmapped(*addr).ip() {
        IpAddr::V4(v4) => v4.octets()[0] & 0xf0 == 0xf0 && !v4.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

/// How datagrams to a path alias travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRoute {
    /// In relay frames on `channel`, through the relay at `relay`.
    Relay {
        /// The relay's (bootstrap's) address.
        relay: SocketAddr,
        /// The channel of the allocation.
        channel: u32,
    },
    /// Straight to the peer at this address.
    Direct(SocketAddr),
}

#[derive(Debug, Clone, Copy)]
struct AliasEntry {
    route: PathRoute,
    /// Relay frames from this relay and channel arrive from the alias. Kept after the route moves
    /// to a direct path, so frames still in flight through the relay are not lost.
    relay_in: Option<(SocketAddr, u32)>,
    /// Plain QUIC datagrams from this address arrive from the alias. Kept after the route moves
    /// back to the relay, for the same reason.
    direct_in: Option<SocketAddr>,
}

/// The path aliases one core knows. quinn-proto only ever sees the alias as the peer's address,
/// so changing the route is invisible to the connection (RFC 9000 §9 migration is not involved).
#[derive(Debug, Default)]
pub struct PathTable {
    aliases: HashMap<SocketAddr, AliasEntry>,
    by_channel: HashMap<(SocketAddr, u32), SocketAddr>,
    by_direct: HashMap<SocketAddr, SocketAddr>,
}

impl PathTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no alias is known (the receive path then skips its look-ups).
    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// Route `alias` over `route`, or forget it (`None`). Returns false, changing nothing, when
    /// `alias` is not an alias address or the route leads to an alias.
    pub fn set(&mut self, alias: SocketAddr, route: Option<PathRoute>) -> bool {
        let alias = unmapped(alias);
        if !is_alias(&alias) {
            return false;
        }
        let Some(route) = route else {
            if let Some(old) = self.aliases.remove(&alias) {
                self.unlink(alias, old.relay_in, old.direct_in);
            }
            return true;
        };
        let route = match route {
            PathRoute::Relay { relay, channel } => PathRoute::Relay { relay: unmapped(relay), channel },
            PathRoute::Direct(to) => PathRoute::Direct(unmapped(to)),
        };
        let target = match route {
            PathRoute::Relay { relay, .. } => relay,
            PathRoute::Direct(to) => to,
        };
        if is_alias(&target) {
            return false;
        }
        let old = self.aliases.get(&alias).copied();
        let mut entry = old.unwrap_or(AliasEntry { route, relay_in: None, direct_in: None });
        entry.route = route;
        match route {
            PathRoute::Relay { relay, channel } => {
                let key = (relay, channel);
                if entry.relay_in != Some(key) {
                    self.unlink(alias, entry.relay_in, None);
                    entry.relay_in = Some(key);
                }
                self.by_channel.insert(key, alias);
            }
            PathRoute::Direct(to) => {
                if entry.direct_in != Some(to) {
                    self.unlink(alias, None, entry.direct_in);
                    entry.direct_in = Some(to);
                }
                self.by_direct.insert(to, alias);
            }
        }
        self.aliases.insert(alias, entry);
        true
    }

    /// Drop reverse entries that still point to `alias`.
    fn unlink(&mut self, alias: SocketAddr, relay_in: Option<(SocketAddr, u32)>, direct_in: Option<SocketAddr>) {
        if let Some(key) = relay_in {
            if self.by_channel.get(&key) == Some(&alias) {
                self.by_channel.remove(&key);
            }
        }
        if let Some(to) = direct_in {
            if self.by_direct.get(&to) == Some(&alias) {
                self.by_direct.remove(&to);
            }
        }
    }

    /// The route of `alias`.
    pub fn route(&self, alias: &SocketAddr) -> Option<PathRoute> {
        self.aliases.get(alias).map(|e| e.route)
    }

    /// The alias a relay frame from `relay` on `channel` comes from.
    pub fn alias_for_relay(&self, relay: SocketAddr, channel: u32) -> Option<SocketAddr> {
        self.by_channel.get(&(relay, channel)).copied()
    }

    /// The alias a plain datagram from `source` comes from (when `source` is, or was, the direct
    /// path of an alias).
    pub fn alias_for_direct(&self, source: SocketAddr) -> Option<SocketAddr> {
        self.by_direct.get(&source).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn aliases_are_240_slash_4() {
        assert!(is_alias(&addr("240.0.0.1:1")));
        assert!(is_alias(&addr("254.1.2.3:1")));
        assert!(is_alias(&addr("[::ffff:240.0.0.1]:1")));
        assert!(!is_alias(&addr("255.255.255.255:1")));
        assert!(!is_alias(&addr("239.255.255.255:1")));
        assert!(!is_alias(&addr("127.0.0.1:1")));
        assert!(!is_alias(&addr("[fe80::1]:1")));
    }

    #[test]
    fn alias_routes_map_both_ways() {
        let mut paths = PathTable::new();
        let alias = addr("240.0.0.1:7");
        let relay = addr("192.0.2.10:9000");
        let direct = addr("198.51.100.7:4433");
        assert!(paths.is_empty());
        assert!(!paths.set(addr("10.0.0.1:7"), Some(PathRoute::Direct(direct))), "not an alias");
        assert!(!paths.set(alias, Some(PathRoute::Direct(addr("240.0.0.2:1")))), "route to an alias");
        assert!(paths.is_empty());

        assert!(paths.set(alias, Some(PathRoute::Relay { relay, channel: 5 })));
        assert_eq!(paths.route(&alias), Some(PathRoute::Relay { relay, channel: 5 }));
        assert_eq!(paths.alias_for_relay(relay, 5), Some(alias));
        assert_eq!(paths.alias_for_relay(relay, 6), None);
        assert_eq!(paths.alias_for_direct(direct), None);

        // Moving to the direct path keeps accepting frames still in flight through the relay.
        assert!(paths.set(alias, Some(PathRoute::Direct(direct))));
        assert_eq!(paths.route(&alias), Some(PathRoute::Direct(direct)));
        assert_eq!(paths.alias_for_direct(direct), Some(alias));
        assert_eq!(paths.alias_for_relay(relay, 5), Some(alias));

        // A new relay channel replaces the old one.
        assert!(paths.set(alias, Some(PathRoute::Relay { relay, channel: 6 })));
        assert_eq!(paths.alias_for_relay(relay, 5), None);
        assert_eq!(paths.alias_for_relay(relay, 6), Some(alias));
        assert_eq!(paths.alias_for_direct(direct), Some(alias));

        // Another alias taking the same direct address takes it over; forgetting the first alias
        // leaves the second's mapping alone.
        let other = addr("240.0.0.2:7");
        assert!(paths.set(other, Some(PathRoute::Direct(direct))));
        assert_eq!(paths.alias_for_direct(direct), Some(other));
        assert!(paths.set(alias, None));
        assert_eq!(paths.route(&alias), None);
        assert_eq!(paths.alias_for_relay(relay, 6), None);
        assert_eq!(paths.alias_for_direct(direct), Some(other));
        assert!(paths.set(other, None));
        assert!(paths.is_empty());
        assert_eq!(paths.alias_for_direct(direct), None);
    }
}
