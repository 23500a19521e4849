//! The signalling messages of `ant-quic/1`, decoded (see `docs/nat-traversal.md` for the wire
//! format and [`super::wire`] for the codec).
//!
//! Semantics: draft-seemann-quic-nat-traversal (ADD_ADDRESS, PUNCH_ME_NOW, REMOVE_ADDRESS),
//! draft-ietf-quic-address-discovery (OBSERVED_ADDRESS).

use std::net::SocketAddr;

use crate::PeerId;

/// Version of the signalling encoding carried in every message.
pub const VERSION: u8 = 1;
/// Candidates one PUNCH_ME_NOW may carry, and one peer may register.
pub const MAX_CANDIDATES: usize = 8;
/// Longest message (after the length prefix).
pub const MAX_MESSAGE: usize = 1200;
/// Longest reason text in an ERROR.
pub const MAX_REASON: usize = 255;

/// What kind of address a candidate is (RFC 8445 §5.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of one of the peer's own interfaces.
    Host,
    /// The address a bootstrap observed the peer at (its NAT's public mapping).
    ServerReflexive,
    /// An address learned from a probe ack of another peer.
    PeerReflexive,
    /// An address on a relay.
    Relayed,
}

/// An address a peer may be reachable at, with its RFC 8445 priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Its kind.
    pub kind: CandidateKind,
    /// RFC 8445 §5.1.2 priority.
    pub priority: u32,
    /// The address.
    pub address: SocketAddr,
}

/// Whether the receiver of a PUNCH_ME_NOW opens the QUIC connection or accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchRole {
    /// Probes, then opens the QUIC connection to the best valid pair.
    Initiator,
    /// Probes and answers probes; accepts the connection.
    Responder,
}

/// How a connection attempt ended, as a peer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Connected on a direct path.
    Direct,
    /// Connected through the relay.
    Relayed,
    /// Not connected.
    Failed,
}

/// ERROR codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed,
    /// The sender has not registered (no signalling stream, or no authenticated peer ID).
    NotRegistered,
    /// The target peer is not registered here.
    UnknownPeer,
    /// The sender sent too many messages.
    RateLimited,
    /// No relay allocation was granted.
    RelayRefused,
    /// The connection carries no authenticated peer ID (no client certificate).
    NotAuthenticated,
    /// A code this version does not know.
    Other(u16),
}

/// One signalling message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Bootstrap → peer: the address the bootstrap sees the peer's connection come from.
    ObservedAddress {
        /// Increases with every new observation.
        sequence: u64,
        /// The observed address.
        address: SocketAddr,
    },
    /// Peer → bootstrap: a candidate the peer may be reached at.
    AddAddress {
        /// Names the candidate for REMOVE_ADDRESS.
        sequence: u64,
        /// The candidate.
        candidate: Candidate,
    },
    /// Peer → bootstrap: withdraw the candidate added with `sequence`.
    RemoveAddress {
        /// The ADD_ADDRESS sequence number.
        sequence: u64,
    },
    /// Peer → bootstrap: coordinate a hole punch with `target`.
    ConnectRequest {
        /// Chosen by the requester; echoed in the answers.
        request: u64,
        /// The peer to reach.
        target: PeerId,
    },
    /// Bootstrap → both peers: probe each other's candidates, starting in `start_in_ms`.
    PunchMeNow {
        /// Unique per coordination at this bootstrap.
        round: u64,
        /// The initiator's request number (0 for the responder).
        request: u64,
        /// The other peer.
        peer: PeerId,
        /// Who opens the QUIC connection.
        role: PunchRole,
        /// Reserved; 0 in version 1.
        flags: u8,
        /// Start probing after this many milliseconds (compensated for this peer's RTT).
        start_in_ms: u32,
        /// Shared by both peers for this round; carried in every probe.
        token: [u8; 16],
        /// The other peer's candidates (at most [`MAX_CANDIDATES`]).
        candidates: Vec<Candidate>,
    },
    /// Bootstrap → bootstrap (one on the receiver's allow-list): `requester`, registered at the
    /// sender, asks to reach `target`, registered at the receiver. The receiver sends
    /// PUNCH_ME_NOW to `target` and answers the sender with the requester's PUNCH_ME_NOW (same
    /// `request`), which the sender passes on; or an ERROR.
    ForwardConnect {
        /// Chosen by the sender; echoed in the answer.
        request: u64,
        /// The peer that asked.
        requester: PeerId,
        /// The peer to reach.
        target: PeerId,
        /// The requester's NAT mapping as the sender sees it
        /// ([`super::candidate::punch_flags`] of the requester and an unknown other).
        flags: u8,
        /// Milliseconds the answer takes from the sender to the requester (half their RTT).
        delay_ms: u32,
        /// The requester's candidates, best first (at most [`MAX_CANDIDATES`]).
        candidates: Vec<Candidate>,
    },
    /// Bootstrap → peer: `target`, the subject of the sender's request `request`, is registered
    /// at another bootstrap of the federation, `bootstrap` (by peer ID) at `address`: ask that
    /// one for the relay (connect to it, proving its peer ID, register, and send RELAY_REQUEST
    /// there). A relay needs both peers' addresses as the relaying bootstrap observes them.
    RelayAt {
        /// The request it answers (a RELAY_REQUEST's, or the CONNECT_REQUEST's).
        request: u64,
        /// The peer to relay to.
        target: PeerId,
        /// The bootstrap the target is registered at; its certificate must prove this ID.
        bootstrap: PeerId,
        /// Where to reach it.
        address: SocketAddr,
    },
    /// Peer → bootstrap: allocate a relay channel to `target`.
    RelayRequest {
        /// Chosen by the requester; echoed in the answers.
        request: u64,
        /// The peer to relay to.
        target: PeerId,
    },
    /// Bootstrap → both peers: relay frames on `channel` are forwarded between them.
    RelayGrant {
        /// The requester's request number (0 for the other peer).
        request: u64,
        /// The other end of the allocation.
        peer: PeerId,
        /// Channel number to put in relay frames.
        channel: u32,
        /// Seconds until the allocation expires.
        lifetime_s: u32,
        /// Bytes the allocation may carry in all.
        byte_limit: u64,
        /// Bytes per second per direction.
        rate_limit: u32,
    },
    /// Bootstrap → peer: a request failed.
    Error {
        /// The request it answers (0 if none).
        request: u64,
        /// Why.
        code: ErrorCode,
        /// For humans; at most [`MAX_REASON`] bytes.
        reason: String,
    },
    /// Peer → bootstrap: how a coordinated attempt ended.
    Report {
        /// The request it reports on.
        request: u64,
        /// The outcome.
        outcome: Outcome,
        /// Milliseconds from the request to the connection.
        connect_ms: u32,
    },
    /// Bootstrap → peer: this bootstrap's process is being replaced on the same address (a
    /// takeover); open a new connection to it after `delay_ms` and register there, then close
    /// this one. The bootstrap spreads the delays so that its successor is not hit at once.
    Reregister {
        /// Milliseconds to wait before opening the new connection.
        delay_ms: u32,
    },
    /// Bootstrap → peer: an alternate address of this bootstrap that answers mapping discovery
    /// datagrams (a probe datagram of kind discover). The unspecified IP (`0.0.0.0` or `::`) means
    /// the IP the peer reached the bootstrap at. Sent before OBSERVED_ADDRESS on registration.
    OtherAddress {
        /// The alternate address.
        address: SocketAddr,
    },
}
