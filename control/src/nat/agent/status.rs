//! What the NAT agent reports: the bootstraps as this node sees them, and the connections it
//! reached peers on.

use std::net::SocketAddr;
use std::time::Duration;

use ant_quic_dataplane::ConnId;

use crate::nat::candidate::Mapping;
use crate::PeerId;

/// A bootstrap as the operator named it: `HOST:PORT` (known by address only) or
/// `PEERID@HOST:PORT` (pinned: its certificate must prove that peer ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// Where it listens.
    pub address: SocketAddr,
    /// The peer ID it must prove, when pinned.
    pub peer: Option<PeerId>,
}

impl BootstrapSpec {
    /// A bootstrap known by address only.
    pub fn unpinned(address: SocketAddr) -> Self {
        Self { address, peer: None }
    }
}

/// Which path a connection to a peer took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight between the peers.
    Direct,
    /// Through a bootstrap's relay.
    Relayed,
}

impl PathKind {
    /// `direct` or `relayed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        }
    }
}

/// A connection to a peer, reached by its peer ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConnection {
    /// The connection, on its core.
    pub conn: ConnId,
    /// Direct or relayed.
    pub path: PathKind,
    /// The peer's address (direct), or the relay's (relayed).
    pub remote: SocketAddr,
    /// From the request to the QUIC handshake's completion.
    pub connect: Duration,
}

/// What one bootstrap looks like from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapStatus {
    /// Its address.
    pub address: SocketAddr,
    /// The peer ID it must prove, when pinned.
    pub peer: Option<PeerId>,
    /// Its last connection was refused because its certificate proves another peer ID than
    /// `peer` (it stays refused until a connection proves the pinned one).
    pub wrong_peer: bool,
    /// Where its alternate addresses (OTHER_ADDRESS) see us.
    pub discovered: Vec<SocketAddr>,
    /// Still waiting for an answer from one of its alternate addresses.
    pub discovering: bool,
    /// A signalling stream is open to it.
    pub registered: bool,
    /// Where it sees us (our NAT's public mapping toward it).
    pub observed: Option<SocketAddr>,
    /// Round-trip time to it.
    pub rtt: Option<Duration>,
    /// Why the last connection failed, if it did.
    pub last_error: Option<String>,
}

impl Default for BootstrapStatus {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer: None,
            wrong_peer: false,
            discovered: Vec::new(),
            discovering: false,
            registered: false,
            observed: None,
            rtt: None,
            last_error: None,
        }
    }
}

/// What the driver publishes for `/health`, `--test` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStatus {
    /// The bootstraps, in the order given.
    pub bootstraps: Vec<BootstrapStatus>,
    /// Peers registered here (this node as a bootstrap).
    pub registered_peers: usize,
    /// Relay allocations active here.
    pub relay_allocations: usize,
    /// Relayed connections this node asked for that moved to a direct path, with the time from
    /// the request (the latest per peer; the last 256 peers).
    pub direct_after: Vec<(PeerId, Duration, SocketAddr)>,
}

impl NatStatus {
    /// How long after this node's request the connection to `peer` moved to a direct path, if
    /// it did.
    /// Also the address it moved to.
    pub fn direct_after(&self, peer: PeerId) -> Option<(Duration, SocketAddr)> {
        self.direct_after.iter().rev().find(|(p, _, _)| *p == peer).map(|(_, after, address)| (*after, *address))
    }

    /// This node's NAT mapping behaviour (RFC 4787 §4.1) as the bootstraps and their alternate
    /// addresses observed it: the same address from every one is endpoint-independent, any
    /// difference (port or IP) endpoint-dependent; fewer than two observations tell nothing.
    pub fn mapping(&self) -> Mapping {
        let mut observed =
            self.bootstraps.iter().flat_map(|b| b.observed.into_iter().chain(b.discovered.iter().copied()));
        let Some(first) = observed.next() else { return Mapping::Unknown };
        let mut others = observed.peekable();
        if others.peek().is_none() {
            Mapping::Unknown
        } else if others.all(|o| o == first) {
            Mapping::EndpointIndependent
        } else {
            Mapping::EndpointDependent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(observed: &[Option<&str>]) -> NatStatus {
        let bootstraps = observed
            .iter()
            .enumerate()
            .map(|(i, o)| BootstrapStatus {
                address: SocketAddr::from(([192, 0, 2, i as u8 + 1], 9000)),
                registered: o.is_some(),
                observed: o.map(|o| o.parse().unwrap()),
                ..BootstrapStatus::default()
            })
            .collect();
        NatStatus { bootstraps, ..NatStatus::default() }
    }

    #[test]
    fn one_observation_tells_no_mapping() {
        assert_eq!(status(&[]).mapping(), Mapping::Unknown);
        assert_eq!(status(&[Some("203.0.113.1:5000")]).mapping(), Mapping::Unknown);
        assert_eq!(status(&[Some("203.0.113.1:5000"), None]).mapping(), Mapping::Unknown, "only one observed");
    }

    #[test]
    fn the_same_address_from_every_bootstrap_is_endpoint_independent() {
        let s = status(&[Some("203.0.113.1:5000"), None, Some("203.0.113.1:5000"), Some("203.0.113.1:5000")]);
        assert_eq!(s.mapping(), Mapping::EndpointIndependent);
    }

    #[test]
    fn one_bootstrap_and_its_alternate_address_tell_the_mapping() {
        let mut s = status(&[Some("203.0.113.1:5000")]);
        s.bootstraps[0].discovered = vec!["203.0.113.1:5000".parse().unwrap()];
        assert_eq!(s.mapping(), Mapping::EndpointIndependent);
        s.bootstraps[0].discovered = vec!["203.0.113.1:5001".parse().unwrap()];
        assert_eq!(s.mapping(), Mapping::EndpointDependent);
    }

    #[test]
    fn any_difference_is_endpoint_dependent() {
        let port = status(&[Some("203.0.113.1:5000"), Some("203.0.113.1:5000"), Some("203.0.113.1:5001")]);
        assert_eq!(port.mapping(), Mapping::EndpointDependent);
        let ip = status(&[Some("203.0.113.1:5000"), Some("203.0.113.2:5000")]);
        assert_eq!(ip.mapping(), Mapping::EndpointDependent);
    }
}
