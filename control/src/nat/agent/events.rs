//! What goes into the NAT agent ([`AgentEvent`]) and what comes out ([`AgentAction`]), and the
//! purpose a connection the agent asked for carries in its tag.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ant_quic_dataplane::ConnId;

use super::status::PeerConnection;
use crate::nat::metrics::CoordinatorCounts;
use crate::nat::traversal::{AttemptId, TraversalStats};
use crate::nat::{Message, Outcome};
use crate::PeerId;

/// The driver's number for a connection request, echoed in its [`AgentAction::Reply`].
pub type RequestId = u64;

/// Which side of a signalling stream this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRole {
    /// A peer opened it to us: we coordinate for it.
    Coordinator,
    /// We opened it to a bootstrap: we are registered there.
    Peer,
}

/// What a connection the agent asked for is for; carried in the connection's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnPurpose {
    /// The connection to bootstrap number `0` (in the order given).
    Bootstrap(usize),
    /// The connection of traversal attempt `0`.
    Attempt(AttemptId),
}

/// Tags of connections the agent opens: the kind in the top bits, an index below.
const TAG_KIND_SHIFT: u32 = 60;
const TAG_BOOTSTRAP: u64 = 1;
const TAG_ATTEMPT: u64 = 2;
const TAG_INDEX_MASK: u64 = (1 << TAG_KIND_SHIFT) - 1;

impl ConnPurpose {
    /// The connection tag that carries this purpose.
    pub fn tag(self) -> u64 {
        match self {
            Self::Bootstrap(index) => (TAG_BOOTSTRAP << TAG_KIND_SHIFT) | (index as u64 & TAG_INDEX_MASK),
            Self::Attempt(attempt) => (TAG_ATTEMPT << TAG_KIND_SHIFT) | (attempt & TAG_INDEX_MASK),
        }
    }

    /// What a connection's tag says it is for; `None` for connections accepted, or opened by
    /// someone else.
    pub fn of_tag(tag: u64) -> Option<Self> {
        let index = tag & TAG_INDEX_MASK;
        match tag >> TAG_KIND_SHIFT {
            TAG_BOOTSTRAP => Some(Self::Bootstrap(usize::try_from(index).unwrap_or(usize::MAX))),
            TAG_ATTEMPT => Some(Self::Attempt(index)),
            _ => None,
        }
    }
}

/// What happened, told to [`NatAgent::handle`](super::NatAgent::handle).
#[derive(Debug)]
pub enum AgentEvent<'a> {
    /// A signalling stream is open on `conn`.
    SignalOpened { conn: ConnId, role: SignalRole, peer: Option<PeerId>, remote: SocketAddr, rtt: Duration },
    /// A message arrived on `conn`'s signalling stream.
    Signal { conn: ConnId, message: Message },
    /// A frame on `conn`'s signalling stream could not be decoded.
    MalformedSignal { conn: ConnId, error: String },
    /// The signalling stream (or its connection) of `conn` ended.
    SignalClosed { conn: ConnId },
    /// Where `conn`'s peer is seen from now, and its RTT (answers [`AgentAction::Sample`]).
    PathSample { conn: ConnId, remote: SocketAddr, rtt: Duration },
    /// A connection the agent asked for completed its handshake.
    Connected { purpose: ConnPurpose, conn: ConnId, remote: SocketAddr, rtt: Duration },
    /// A connection the agent asked for failed or ended (`conn`: `None` when it never started).
    /// Several connections may have one purpose: a bootstrap's old and new one in a handover.
    Closed { purpose: ConnPurpose, conn: Option<ConnId>, reason: String },
    /// The connection to pinned bootstrap `index` failed because its certificate does not prove
    /// the pinned peer ID (`reason`: the TLS error). Told instead of [`AgentEvent::Closed`].
    BootstrapWrongPeer { index: usize, conn: Option<ConnId>, reason: String },
    /// A datagram carrying the probe marker arrived on the node socket.
    ProbeDatagram { from: SocketAddr, bytes: &'a [u8] },
    /// A probe datagram arrived on extra socket `socket` of many-probe round `token`.
    SprayProbe { token: [u8; 16], socket: u16, from: SocketAddr, bytes: &'a [u8] },
    /// The node's owner wants a connection to `target`; answered with [`AgentAction::Reply`].
    Connect { request: RequestId, target: PeerId },
    /// This node is being taken over: registered peers are told to re-register within `window`
    /// (see [`Coordinator::begin_handover`](crate::nat::coordinator::Coordinator::begin_handover)).
    BeginHandover { window: Duration },
    /// This host's addresses toward the bootstraps, with the node's port (answers
    /// [`AgentAction::DiscoverHostCandidates`]).
    HostCandidates { addresses: Vec<SocketAddr> },
}

/// What the driver must do, from [`NatAgent::poll_action`](super::NatAgent::poll_action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Open a connection to bootstrap `index` at `remote`. Pinned (`peer`), its certificate must
    /// prove that peer ID (a refusal is told as [`AgentEvent::BootstrapWrongPeer`]); otherwise it
    /// is known by address only, and what it tells us is bound to this connection. Tag:
    /// [`ConnPurpose::tag`].
    OpenBootstrap { index: usize, remote: SocketAddr, peer: Option<PeerId> },
    /// Learn this host's address toward each of `bootstraps` and tell
    /// [`AgentEvent::HostCandidates`].
    DiscoverHostCandidates { bootstraps: Vec<SocketAddr> },
    /// Open a connection to `peer` (authenticated by its peer ID) at `remote`: an address or a
    /// relay path alias.
    OpenPeer { attempt: AttemptId, peer: PeerId, remote: SocketAddr },
    /// Open a connection to `peer` through the bridge of many-probe round `token`, which leads to
    /// `remote`. Without a bridge, tell [`AgentEvent::Closed`].
    OpenBridged { attempt: AttemptId, peer: PeerId, token: [u8; 16], remote: SocketAddr },
    /// Write this encoded frame on `conn`'s signalling stream.
    Signal { conn: ConnId, frame: Vec<u8> },
    /// Close `conn` without error, saying `reason`.
    Close { conn: ConnId, reason: &'static str },
    /// Send this probe datagram from the node socket (already paced).
    SendProbe { to: SocketAddr, datagram: Vec<u8> },
    /// Install a relay allocation on every core.
    InstallRelay { channel: u32, a: SocketAddr, b: SocketAddr, expires: Instant, byte_limit: u64, rate_limit: u32 },
    /// Remove relay allocation `channel`.
    RemoveRelay { channel: u32 },
    /// `peer` registered here or moved: update the shared registry (as a bootstrap).
    Registered { peer: PeerId, observed: SocketAddr, candidates: Vec<SocketAddr> },
    /// `peer` is no longer registered here: remove it from the shared registry.
    Unregistered { peer: PeerId },
    /// Route `alias` through the relay at `relay` on `channel`.
    SetRelayPath { alias: SocketAddr, relay: SocketAddr, channel: u32 },
    /// Route `alias` straight to `address`.
    SetDirectPath { alias: SocketAddr, address: SocketAddr },
    /// Route `alias` to the bridge of round `token`, which leads to `address`.
    SetBridgedPath { alias: SocketAddr, token: [u8; 16], address: SocketAddr },
    /// Forget the route of `alias`.
    RemovePath { alias: SocketAddr },
    /// Open `sockets` extra sockets for round `token`.
    SprayOpen { token: [u8; 16], sockets: u16 },
    /// From every extra socket of round `token`, a probe to `to` (socket `i`: transaction
    /// `first_transaction + i`).
    SprayProbe { token: [u8; 16], to: SocketAddr, first_transaction: u64 },
    /// Send `datagram` (an ack) from extra socket `socket` of round `token`.
    SprayAck { token: [u8; 16], socket: u16, to: SocketAddr, datagram: Vec<u8> },
    /// Keep extra socket `socket` of round `token` and bridge it to the node socket.
    SprayKeep { token: [u8; 16], socket: u16, remote: SocketAddr },
    /// Close the extra sockets of round `token`.
    SprayClose { token: [u8; 16] },
    /// The answer to connection request `request`.
    Reply { request: RequestId, result: Result<PeerConnection, String> },
    /// No answer will come for connection request `request`: a later request for the same peer
    /// took its attempt over.
    Abandon { request: RequestId },
    /// Ask every core for its signalling connections' addresses and RTTs
    /// ([`AgentEvent::PathSample`]), and publish these counters.
    Sample { coordinator: CoordinatorCounts, traversal: TraversalStats, relays_renewed: u64 },
    /// Count an attempt of this node's own.
    CountAttempt { outcome: Outcome, connect: Duration },
    /// Count an attempt a registered peer reported.
    CountReported { outcome: Outcome, connect: Duration },
    /// Count a connection request forwarded to another bootstrap: answered with a punch, or
    /// failed, `elapsed` after the requester asked.
    CountForwarded { elapsed: Duration, punched: bool },
    /// Count a relayed connection moved to a direct path, `after` this node's request (`None`
    /// on the responder).
    CountUpgrade { after: Option<Duration> },
    /// [`NatAgent::status`](super::NatAgent::status) changed.
    StatusChanged,
}
