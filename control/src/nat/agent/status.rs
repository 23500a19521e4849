//! What the NAT agent reports: the bootstraps as this node sees them, and the connections it
//! reached peers on.

use std::net::SocketAddr;
use std::time::Duration;

use ant_quic_dataplane::ConnId;

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
    /// A signalling stream is open to it.
    pub registered: bool,
    /// Where it sees us (our NAT's public mapping toward it).
    pub observed: Option<SocketAddr>,
    /// Round-trip time to it.
    pub rtt: Option<Duration>,
    /// Why the last connection failed, if it did.
    pub last_error: Option<String>,
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
}
