//! What the coordinator allows and how long things live.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::nat::message::MAX_CANDIDATES;
use crate::PeerId;

/// What the coordinator allows and how long things live. One source of truth for the bootstrap's
/// NAT traversal limits.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// Candidates kept per peer, the observed (server-reflexive) one included; at most
    /// [`MAX_CANDIDATES`] go into a PUNCH_ME_NOW. Default [`MAX_CANDIDATES`] (8).
    pub max_candidates: usize,
    /// How long an ADD_ADDRESS candidate lives unless re-added. Default 10 minutes.
    pub candidate_lifetime: Duration,
    /// Added to the longer one-way delay when scheduling a punch, so that neither peer is asked to
    /// start before its PUNCH_ME_NOW can have arrived. Default 30 ms.
    pub punch_margin: Duration,
    /// RTTs above this are taken as this when scheduling a punch. A young connection's estimate,
    /// or one inflated by lost acknowledgements on a lossy path, can be seconds; uncapped, it
    /// would delay the other peer's start past this peer's punch window. Default 1 s.
    pub max_compensated_rtt: Duration,
    /// How long a relay allocation lives. Default 10 minutes.
    pub relay_lifetime: Duration,
    /// Bytes one relay allocation may carry in all. Default 2 GiB.
    pub relay_byte_limit: u64,
    /// Bytes per second per direction of one relay allocation. Default 50 MB/s.
    pub relay_rate_limit: u32,
    /// Relay allocations a peer may be an end of at once. Default 8.
    pub max_relays_per_peer: usize,
    /// Signalling messages per second a session may send on average (token bucket rate).
    /// Default 20.
    pub signal_rate: u32,
    /// Signalling messages a session may send at once (token bucket depth). Default 40.
    pub signal_burst: u32,
    /// Peers registered at once; more are answered ERROR `not_registered`. Default 100 000.
    pub max_peers: usize,
    /// The high 16 bits of every relay channel granted here: the node's generation, so that the
    /// data plane of a successor on the same port can steer relay frames to the process that
    /// granted their channel. The low 16 bits are random and never 0. Default 0.
    pub channel_prefix: u16,
    /// This bootstrap's alternate addresses, which answer mapping discovery datagrams (RFC 5780
    /// §4.3: the other port, and the other IP where it has one); told to every peer that
    /// registers, so that one bootstrap can tell a peer's mapping. The unspecified IP means the
    /// one the peer reached. Default none.
    pub other_addresses: Vec<SocketAddr>,
    /// Grant the relay together with the punch where the pair's mappings make a direct path
    /// uncertain ([`crate::nat::candidate::direct_uncertain`]), so that the initiator connects at once.
    /// Default true.
    pub relay_at_once: bool,
    /// Emit [`super::CoordinatorAction::Registered`] and [`super::CoordinatorAction::Unregistered`] (for a
    /// registry shared with other bootstraps). Default false.
    pub announce_registrations: bool,
    /// The other bootstraps of a federation, by peer ID (the allow-list): connection requests
    /// for peers registered at one of them are forwarded there, and only they may forward here
    /// (FORWARD_CONNECT). Their sessions are links, not registrations to announce. Default
    /// none: nothing is forwarded.
    pub peer_bootstraps: HashSet<PeerId>,
    /// How long a forwarded connection request waits for the other bootstrap's answer.
    /// Default 3 s.
    pub forward_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_candidates: MAX_CANDIDATES,
            candidate_lifetime: Duration::from_secs(600),
            punch_margin: Duration::from_millis(30),
            max_compensated_rtt: Duration::from_secs(1),
            relay_lifetime: Duration::from_secs(600),
            relay_byte_limit: 2 << 30,
            relay_rate_limit: 50_000_000,
            max_relays_per_peer: 8,
            signal_rate: 20,
            signal_burst: 40,
            max_peers: 100_000,
            channel_prefix: 0,
            other_addresses: Vec::new(),
            relay_at_once: true,
            announce_registrations: false,
            peer_bootstraps: HashSet::new(),
            forward_timeout: Duration::from_secs(3),
        }
    }
}
