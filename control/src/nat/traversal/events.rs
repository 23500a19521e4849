//! What the traversal asks of its driver ([`TraversalAction`]) and tells its user
//! ([`TraversalEvent`]).

use std::net::SocketAddr;
use std::time::Duration;

use super::AttemptId;
use crate::nat::coordinator::SessionId;
use crate::nat::message::{Message, Outcome};
use crate::nat::probe::Probe;
use crate::PeerId;

/// Something the driver must do for the traversal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraversalAction {
    /// Write `message` on the signalling stream of bootstrap session `session`.
    Signal {
        /// Which bootstrap connection.
        session: SessionId,
        /// What.
        message: Message,
    },
    /// Send a probe datagram from the node socket.
    SendProbe {
        /// Destination.
        to: SocketAddr,
        /// The probe or ack.
        probe: Probe,
    },
    /// Open a QUIC connection to `peer` at `address` (a valid pair), then call
    /// [`Traversal::connection_result`](super::Traversal::connection_result).
    ConnectDirect {
        /// The attempt it belongs to.
        attempt: AttemptId,
        /// Who must answer (the TLS handshake checks it).
        peer: PeerId,
        /// Where.
        address: SocketAddr,
    },
    /// Route datagrams for `alias` through the relay: relay frames with `channel` to `relay`; and
    /// accept relay frames of `channel` from `relay` as coming from `alias`.
    InstallRelayPath {
        /// The peer at the other end.
        peer: PeerId,
        /// The address in 240.0.0.0/4 the QUIC connection uses for `peer`.
        alias: SocketAddr,
        /// The bootstrap that relays.
        relay: SocketAddr,
        /// The relay channel it granted.
        channel: u32,
    },
    /// Open a QUIC connection to `peer` at `alias` (routed through the relay), then call
    /// [`Traversal::connection_result`](super::Traversal::connection_result).
    ConnectRelayed {
        /// The attempt it belongs to.
        attempt: AttemptId,
        /// Who must answer.
        peer: PeerId,
        /// The alias of an [`TraversalAction::InstallRelayPath`].
        alias: SocketAddr,
    },
    /// Route `alias` directly to `address` from now on: the relayed connection migrates to the
    /// punched path (it stays the same QUIC connection).
    SetPathDirect {
        /// The alias of an earlier [`TraversalAction::InstallRelayPath`].
        alias: SocketAddr,
        /// The peer's address on the valid pair.
        address: SocketAddr,
    },
    /// Forget the route of `alias` (`node.set_path(alias, None)`): the connection that used it
    /// ended, or its relay allocation lapsed.
    RemovePath {
        /// The alias of an earlier [`TraversalAction::InstallRelayPath`].
        alias: SocketAddr,
    },
    /// Open `sockets` extra UDP sockets for the many-probe round `token`: ephemeral ports on the
    /// node's IP, indexed from 0. Probes that arrive on them go to
    /// [`Traversal::handle_spray_probe`](super::Traversal::handle_spray_probe). Opening fewer (the system's limit) is allowed.
    SprayOpen {
        /// The round.
        token: [u8; 16],
        /// How many.
        sockets: u16,
    },
    /// From every socket of round `token` still open, send a probe to `to`: socket `i` sends
    /// token `token` with transaction `first_transaction + i` (wrapping).
    SprayProbe {
        /// The round.
        token: [u8; 16],
        /// Destination.
        to: SocketAddr,
        /// The transaction of socket 0.
        first_transaction: u64,
    },
    /// Send `probe` (an ack) from socket `socket` of round `token`.
    SprayAck {
        /// The round.
        token: [u8; 16],
        /// Which socket.
        socket: u16,
        /// Destination.
        to: SocketAddr,
        /// The ack.
        probe: Probe,
    },
    /// Socket `socket` of round `token` reached the other peer at `remote`: keep it, close the
    /// others, and bridge it to the node socket, so that QUIC packets from `remote` reach the node
    /// (from a local address) and the node's packets to that local address leave from the socket.
    SprayKeep {
        /// The round.
        token: [u8; 16],
        /// The winning socket.
        socket: u16,
        /// The other peer's address, as the socket sees it.
        remote: SocketAddr,
    },
    /// Close every socket of round `token` (the round ended without using them).
    SprayClose {
        /// The round.
        token: [u8; 16],
    },
    /// Open a QUIC connection to `peer` through the bridge of round `token` (see
    /// [`TraversalAction::SprayKeep`]), which leads to `remote`; then call
    /// [`Traversal::connection_result`](super::Traversal::connection_result).
    ConnectBridged {
        /// The attempt it belongs to.
        attempt: AttemptId,
        /// Who must answer.
        peer: PeerId,
        /// The round whose kept socket carries it.
        token: [u8; 16],
        /// Where the bridge leads (reported as the connection's remote address).
        remote: SocketAddr,
    },
    /// Connect to bootstrap `bootstrap` at `address`, which must prove that peer ID, and
    /// register there (a RELAY_AT for `attempt`); then call
    /// [`Traversal::visit_ready`](super::Traversal::visit_ready) with its session, or
    /// [`Traversal::visit_failed`](super::Traversal::visit_failed).
    VisitBootstrap {
        /// The attempt whose relay is asked there.
        attempt: AttemptId,
        /// The bootstrap's peer ID.
        bootstrap: PeerId,
        /// Where to reach it.
        address: SocketAddr,
    },
    /// Route `alias` to the bridge of round `token` from now on (it leads to `address`): the
    /// relayed connection migrates to the sprayed path.
    SetPathBridged {
        /// The alias of an earlier [`TraversalAction::InstallRelayPath`].
        alias: SocketAddr,
        /// The round whose kept socket carries it.
        token: [u8; 16],
        /// Where the bridge leads.
        address: SocketAddr,
    },
}

/// Something the node's user may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraversalEvent {
    /// Bootstrap `session` sees this peer at `address` (its NAT's public mapping).
    ObservedAddress {
        /// Which bootstrap connection.
        session: SessionId,
        /// The server-reflexive address.
        address: SocketAddr,
    },
    /// Bootstrap `session`'s alternate address answered where it sees this peer, or (`None`)
    /// never answered.
    Discovery {
        /// Which bootstrap connection.
        session: SessionId,
        /// The alternate address asked.
        alternate: SocketAddr,
        /// Where it sees this peer.
        observed: Option<SocketAddr>,
    },
    /// A [`Traversal::connect`](super::Traversal::connect) attempt ended.
    AttemptFinished {
        /// The attempt.
        attempt: AttemptId,
        /// Its target.
        peer: PeerId,
        /// Direct, relayed or failed.
        outcome: Outcome,
        /// The peer's real address (direct) or the relay's (relayed); `None` when it failed.
        remote: Option<SocketAddr>,
        /// Time from [`Traversal::connect`](super::Traversal::connect) to the end.
        connect: Duration,
        /// Why it failed.
        reason: Option<String>,
    },
    /// Bootstrap `session` is being taken over by a new process on its address (REREGISTER):
    /// open a new connection to it after `delay`, and once that registration is confirmed (its
    /// OBSERVED_ADDRESS), hand over with [`Traversal::bootstrap_handed_over`](super::Traversal::bootstrap_handed_over) and close the old
    /// connection.
    ReregisterRequested {
        /// The bootstrap connection that asked.
        session: SessionId,
        /// How long to wait before connecting again.
        delay: Duration,
    },
    /// The bootstrap coordinating the attempt to `peer` did not answer in time or was lost
    /// (`reason`): the same request went to the next registered bootstrap.
    Rerouted {
        /// The attempt.
        attempt: AttemptId,
        /// Its target.
        peer: PeerId,
        /// The bootstrap that failed.
        from: SocketAddr,
        /// The bootstrap that has the request now.
        to: SocketAddr,
        /// What went wrong with `from`.
        reason: String,
    },
    /// The relayed connection to `peer` now runs directly to `address`.
    Upgraded {
        /// The peer.
        peer: PeerId,
        /// Its alias (the connection's remote address, unchanged).
        alias: SocketAddr,
        /// The direct address the alias now routes to.
        address: SocketAddr,
    },
}
