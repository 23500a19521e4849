//! The bootstrap's side of NAT traversal, sans-IO: the registry of peers and their candidates,
//! observed addresses, punch coordination, relay grants and per-session rate limits (see
//! `docs/nat-traversal.md`, "Flow").
//!
//! The driver tells the [`Coordinator`] about signalling sessions (one per authenticated peer
//! connection) and hands it every decoded message with the current time; the coordinator answers
//! with [`CoordinatorAction`]s: messages to send on a session, relay allocations to install in or
//! remove from the data plane. It owns no socket and reads no clock.
//!
//! Relay allocations (grants, renewals, moves) live in `relay`.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::candidate::{self, Mapping};
use super::message::{Candidate, CandidateKind, ErrorCode, Message, Outcome, MAX_CANDIDATES};
use crate::PeerId;
use punch::PunchEnd;
use relay::Relay;

mod across;
mod config;
mod federation;
mod forward;
mod punch;
mod relay;

pub use config::CoordinatorConfig;

#[cfg(test)]
mod tests;

/// The driver's name for one signalling stream (one authenticated connection to this bootstrap).
pub type SessionId = u64;

/// Delay in the REREGISTER sent to a peer that registers during a handover: its connection reached
/// this process after the switch (its handshake was under way), so it moves on soon, alone.
pub const LATE_REREGISTER_DELAY: Duration = Duration::from_millis(200);

/// Something the driver must do for the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Write `message` on the signalling stream of `session`.
    Send {
        /// Where.
        session: SessionId,
        /// What.
        message: Message,
    },
    /// Forward relay frames on `channel` between `a` and `b` (both addresses this bootstrap
    /// observed the peers at) until `expires`, within the limits. An allocation for a `channel`
    /// already installed is renewed (same ends: what it carried is kept) or replaced (a peer's
    /// observed address changed).
    InstallRelay {
        /// Channel number carried in the relay frames.
        channel: u32,
        /// The requester's observed address.
        a: SocketAddr,
        /// The target's observed address.
        b: SocketAddr,
        /// When the allocation ends (a [`CoordinatorAction::RemoveRelay`] follows then).
        expires: Instant,
        /// Bytes the allocation may carry in all.
        byte_limit: u64,
        /// Bytes per second per direction.
        rate_limit: u32,
    },
    /// Stop forwarding on `channel`.
    RemoveRelay {
        /// The channel of an earlier [`CoordinatorAction::InstallRelay`].
        channel: u32,
    },
    /// `peer` registered here, or where it is seen changed (with `announce_registrations`).
    Registered {
        /// The peer.
        peer: PeerId,
        /// Its observed address.
        observed: SocketAddr,
        /// The candidates it added, highest priority first.
        candidates: Vec<SocketAddr>,
    },
    /// `peer` is no longer registered here (with `announce_registrations`).
    Unregistered {
        /// The peer.
        peer: PeerId,
    },
    /// A CONNECT_REQUEST for `target`, not registered here, goes to the bootstrap it is
    /// registered at: find the link to it and call [`Coordinator::forward_via`] with `forward`,
    /// or [`Coordinator::forward_failed`] when there is none.
    Forward {
        /// Names the forward in those calls.
        forward: u64,
        /// The peer the request is for.
        target: PeerId,
    },
    /// The peer on `session` needs a relay to `target`, registered at another bootstrap (its
    /// RELAY_REQUEST, or a forwarded connection request whose direct path is uncertain): find
    /// that bootstrap and call [`Coordinator::relay_at`], or [`Coordinator::relay_across_failed`]
    /// when it is not on the allow-list or unknown.
    RelayAcross {
        /// The requester's session.
        session: SessionId,
        /// The request the answer names.
        request: u64,
        /// The peer to relay to.
        target: PeerId,
    },
    /// A forwarded request was answered (`punched`: with a PUNCH_ME_NOW) or failed, `elapsed`
    /// after the requester asked.
    Forwarded {
        /// From the CONNECT_REQUEST to the answer.
        elapsed: Duration,
        /// Whether the other bootstrap coordinated the punch.
        punched: bool,
    },
}

/// Counters of a coordinator, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Peers registered now.
    pub registered: usize,
    /// Relay allocations installed now.
    pub active_relays: usize,
    /// CONNECT_REQUESTs answered with PUNCH_ME_NOW.
    pub punches_coordinated: u64,
    /// RELAY_REQUESTs granted a new allocation.
    pub relays_granted: u64,
    /// Relays granted with a PUNCH_ME_NOW because a direct path was uncertain (counted in
    /// `relays_granted` too when new).
    pub relays_at_once: u64,
    /// RELAY_REQUESTs that renewed the allocation their pair already held.
    pub relays_renewed: u64,
    /// REPORTs of a direct connection.
    pub reports_direct: u64,
    /// REPORTs of a relayed connection.
    pub reports_relayed: u64,
    /// REPORTs of a failed attempt.
    pub reports_failed: u64,
    /// Messages dropped because their session was over its rate.
    pub rate_limited: u64,
    /// Messages that could not be decoded, that only a bootstrap sends, or with a bad field.
    pub malformed: u64,
    /// REREGISTERs sent (one per peer during a handover).
    pub reregisters_sent: u64,
    /// CONNECT_REQUESTs forwarded to the target's bootstrap.
    pub forwards_sent: u64,
    /// Forwarded requests the other bootstrap answered with a punch.
    pub forwards_punched: u64,
    /// Forwarded requests that failed: no link, an ERROR, or no answer in time.
    pub forwards_failed: u64,
    /// FORWARD_CONNECTs from other bootstraps coordinated here.
    pub forwards_received: u64,
    /// FORWARD_CONNECTs refused: the sender is not on the allow-list.
    pub forwards_refused: u64,
    /// Relays handed across: RELAY_ATs sent, naming the target's bootstrap.
    pub relays_across: u64,
}

/// A small deterministic generator (splitmix64) for tokens, channels and request numbers.
///
/// The seed comes from the driver (from the operating system's randomness), which keeps the state
/// machines free of I/O and their tests reproducible. It is not a cryptographic generator: a peer
/// that saw some tokens could predict others. A token only decides whether a probe is answered;
/// the QUIC handshake that follows authenticates the peer, so a guessed token cannot impersonate.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn token(&mut self) -> [u8; 16] {
        let mut token = [0; 16];
        token[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        token[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        token
    }
}

/// A token bucket of signalling messages (refilled lazily when a message arrives).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// An ERROR `rate_limited` went out since the last message that was let through: one per burst.
    warned: bool,
}

impl Bucket {
    fn new(now: Instant, burst: u32) -> Self {
        Self { tokens: f64::from(burst), updated: now, warned: false }
    }

    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.updated = now.max(self.updated);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Session {
    /// `None`: the connection proved no peer ID, or the registry was full; it may not signal.
    peer: Option<PeerId>,
    observed: SocketAddr,
    observed_sequence: u64,
    rtt: Duration,
    bucket: Bucket,
}

/// A candidate a peer added with ADD_ADDRESS.
#[derive(Debug, Clone, Copy)]
struct Added {
    sequence: u64,
    candidate: Candidate,
    added: Instant,
    expires: Instant,
}

#[derive(Debug)]
struct Registration {
    session: SessionId,
    added: Vec<Added>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Candidate { peer: PeerId, sequence: u64 },
    Relay { channel: u32 },
    Forward { forward: u64 },
}

/// The bootstrap role of NAT traversal (see the module documentation).
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    random: SplitMix64,
    sessions: HashMap<SessionId, Session>,
    peers: HashMap<PeerId, Registration>,
    relays: HashMap<u32, Relay>,
    /// Connection requests forwarded to other bootstraps, by forward number.
    forwarded: HashMap<u64, forward::Forward>,
    next_forward: u64,
    /// Deadlines; an entry whose object was refreshed or removed is skipped when it comes due.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_round: u64,
    /// Peers told to re-register, once [`Coordinator::begin_handover`] ran.
    handover: Option<HashSet<PeerId>>,
    actions: VecDeque<CoordinatorAction>,
    stats: CoordinatorStats,
}

impl Coordinator {
    /// A coordinator with no peers. `seed` feeds the generator of punch tokens and relay channels:
    /// the driver passes fresh randomness, tests a constant.
    pub fn new(config: CoordinatorConfig, seed: u64) -> Self {
        let mut random = SplitMix64::new(seed);
        // Round numbers start at a random point so that they do not repeat across restarts.
        let next_round = random.next_u64() >> 16;
        let next_forward = random.next_u64();
        Self {
            config,
            random,
            sessions: HashMap::new(),
            peers: HashMap::new(),
            relays: HashMap::new(),
            forwarded: HashMap::new(),
            next_forward,
            timers: BinaryHeap::new(),
            next_round,
            handover: None,
            actions: VecDeque::new(),
            stats: CoordinatorStats::default(),
        }
    }

    /// A signalling stream opened on a connection from `observed`, whose client proved `peer`
    /// (`None`: no client certificate). Registers the peer, replacing an older session of the same
    /// peer (the newest connection wins), and sends OBSERVED_ADDRESS.
    pub fn session_opened(
        &mut self,
        now: Instant,
        session: SessionId,
        peer: Option<PeerId>,
        observed: SocketAddr,
        rtt: Duration,
    ) {
        let bucket = Bucket::new(now, self.config.signal_burst);
        let Some(peer) = peer else {
            self.sessions.insert(session, Session { peer: None, observed, observed_sequence: 0, rtt, bucket });
            self.send_error(session, 0, ErrorCode::NotAuthenticated, "present a client certificate to register");
            return;
        };
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            self.sessions.insert(session, Session { peer: None, observed, observed_sequence: 0, rtt, bucket });
            self.send_error(session, 0, ErrorCode::NotRegistered, "this bootstrap is full; try another");
            return;
        }
        self.sessions.insert(session, Session { peer: Some(peer), observed, observed_sequence: 1, rtt, bucket });
        // A new connection is a new registration: candidates added on the old one are dropped (the
        // peer re-adds its current ones), relays follow the new observed address.
        self.peers.insert(peer, Registration { session, added: Vec::new() });
        self.announce(now, peer);
        self.move_relays(peer, observed);
        // Before OBSERVED_ADDRESS: a peer that knows it is observed knows by then whether to wait
        // for discovery answers too.
        for address in self.config.other_addresses.clone() {
            self.send(session, Message::OtherAddress { address });
        }
        self.send(session, Message::ObservedAddress { sequence: 1, address: observed });
        // A peer told before came back here (its new connection reached this process again):
        // telling it again would only make it loop.
        if self.handover.as_mut().is_some_and(|told| told.insert(peer)) {
            self.send_reregister(session, LATE_REREGISTER_DELAY);
        }
    }

    /// This process is being replaced on its address (a takeover): tells every registered peer to
    /// re-register (REREGISTER), peer i of n, in an order drawn from the generator, after
    /// `window·(i + ½)/n` (rounded down to the millisecond), so that the successor sees the
    /// registrations arrive evenly over `window` rather than all at once. From then on a peer that
    /// registers here is told too, after [`LATE_REREGISTER_DELAY`]; no peer is told twice. Relay
    /// allocations outlive their peers' sessions: the connections they carry stay with this
    /// process while it drains. Returns how many peers were told.
    pub fn begin_handover(&mut self, _now: Instant, window: Duration) -> usize {
        let told = self.handover.get_or_insert_with(HashSet::new);
        let mut peers: Vec<(PeerId, SessionId)> = self
            .peers
            .iter()
            .filter(|(peer, _)| !told.contains(*peer))
            .map(|(peer, registration)| (*peer, registration.session))
            .collect();
        // Sorted first, so that the order depends on the generator only, not on the hash map's.
        peers.sort_unstable();
        for i in (1..peers.len()).rev() {
            let j = usize::try_from(self.random.next_u64() % (i as u64 + 1)).unwrap_or(0);
            peers.swap(i, j);
        }
        let n = peers.len() as u128;
        for (i, (peer, session)) in peers.iter().enumerate() {
            let nanos = window.as_nanos() * (2 * i as u128 + 1) / (2 * n);
            let delay = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            told.insert(*peer);
            self.actions.push_back(CoordinatorAction::Send {
                session: *session,
                message: Message::Reregister { delay_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX) },
            });
        }
        self.stats.reregisters_sent += peers.len() as u64;
        peers.len()
    }

    /// Whether [`Coordinator::begin_handover`] ran.
    pub fn is_handing_over(&self) -> bool {
        self.handover.is_some()
    }

    /// The connection of `session` now comes from `observed` (the peer's NAT rebound or it moved):
    /// tells the peer with a higher OBSERVED_ADDRESS sequence, and moves its reflexive candidate and
    /// relay allocations (draft-ietf-quic-address-discovery §4).
    pub fn observed_changed(&mut self, now: Instant, session: SessionId, observed: SocketAddr) {
        let Some(state) = self.sessions.get_mut(&session) else { return };
        if state.observed == observed {
            return;
        }
        state.observed = observed;
        let Some(peer) = state.peer else { return };
        state.observed_sequence += 1;
        let sequence = state.observed_sequence;
        self.send(session, Message::ObservedAddress { sequence, address: observed });
        if self.current_session(peer) == Some(session) {
            self.announce(now, peer);
            self.move_relays(peer, observed);
        }
    }

    /// A new RTT estimate of the connection of `session` (used to compensate punch start times).
    pub fn rtt_sample(&mut self, session: SessionId, rtt: Duration) {
        if let Some(state) = self.sessions.get_mut(&session) {
            state.rtt = rtt;
        }
    }

    /// The signalling stream (or its connection) of `session` closed. Unregisters its peer unless
    /// a newer session replaced it, and removes the peer's relay allocations.
    pub fn session_closed(&mut self, _now: Instant, session: SessionId) {
        let Some(state) = self.sessions.remove(&session) else { return };
        let Some(peer) = state.peer else { return };
        if self.current_session(peer) != Some(session) {
            return;
        }
        self.peers.remove(&peer);
        self.announce_gone(peer);
        if self.handover.is_some() {
            // The peer moved to the successor; what it relays stays here until it lapses.
            return;
        }
        let mut channels: Vec<u32> =
            self.relays.iter().filter(|(_, relay)| relay.a == peer || relay.b == peer).map(|(c, _)| *c).collect();
        channels.sort_unstable();
        for channel in channels {
            self.relays.remove(&channel);
            self.actions.push_back(CoordinatorAction::RemoveRelay { channel });
        }
    }

    /// A decoded signalling message arrived on `session`.
    pub fn handle(&mut self, now: Instant, session: SessionId, message: Message) {
        if !self.within_rate(now, session, request_of(&message)) {
            return;
        }
        match message {
            Message::ObservedAddress { .. }
            | Message::PunchMeNow { .. }
            | Message::RelayGrant { .. }
            | Message::RelayAt { .. }
            | Message::Error { .. }
            | Message::Reregister { .. }
            | Message::OtherAddress { .. } => {
                self.stats.malformed += 1;
                self.send_error(session, request_of(&message), ErrorCode::Malformed, "only a bootstrap sends this");
            }
            Message::AddAddress { sequence, candidate } => self.add_address(now, session, sequence, candidate),
            Message::RemoveAddress { sequence } => {
                if let Some(peer) = self.registered_peer(session, 0) {
                    if let Some(registration) = self.peers.get_mut(&peer) {
                        registration.added.retain(|a| a.sequence != sequence);
                    }
                    self.announce(now, peer);
                }
            }
            Message::ConnectRequest { request, target } => self.connect_request(now, session, request, target),
            Message::ForwardConnect { request, requester, target, flags, delay_ms, candidates } => {
                let forwarded = forward::Forwarded { request, requester, target, flags, delay_ms, candidates };
                self.forwarded_connect(now, session, forwarded);
            }
            Message::RelayRequest { request, target } => self.relay_request(now, session, request, target),
            Message::Report { request, outcome, .. } => {
                if self.registered_peer(session, request).is_some() {
                    match outcome {
                        Outcome::Direct => self.stats.reports_direct += 1,
                        Outcome::Relayed => self.stats.reports_relayed += 1,
                        Outcome::Failed => self.stats.reports_failed += 1,
                    }
                }
            }
        }
    }

    /// A message on `session` could not be decoded: answers ERROR `malformed` (within the rate).
    pub fn handle_malformed(&mut self, now: Instant, session: SessionId) {
        if !self.within_rate(now, session, 0) {
            return;
        }
        self.stats.malformed += 1;
        self.send_error(session, 0, ErrorCode::Malformed, "undecodable message");
    }

    /// Expires candidates and relay allocations that are due. Rate buckets refill lazily and need
    /// no timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((when, timer))) = self.timers.peek().copied() {
            if when > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Candidate { peer, sequence } => {
                    if let Some(registration) = self.peers.get_mut(&peer) {
                        registration.added.retain(|a| a.sequence != sequence || a.expires > now);
                    }
                    // The shared registry drops the candidate too (nothing is written if unchanged).
                    self.announce(now, peer);
                }
                Timer::Forward { forward } => self.forward_expired(now, forward),
                Timer::Relay { channel } => {
                    if self.relays.get(&channel).is_some_and(|relay| relay.expires <= now) {
                        self.relays.remove(&channel);
                        self.actions.push_back(CoordinatorAction::RemoveRelay { channel });
                    }
                }
            }
        }
    }

    /// When [`Coordinator::handle_timeout`] should run next (it may find nothing due: refreshed
    /// candidates leave their old deadline behind).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((when, _))| *when)
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<CoordinatorAction> {
        self.actions.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> CoordinatorStats {
        CoordinatorStats { registered: self.peers.len(), active_relays: self.relays.len(), ..self.stats }
    }

    /// Peers registered now.
    pub fn registered(&self) -> usize {
        self.peers.len()
    }

    /// Share of reported attempts that connected, directly or through the relay; `None` before the
    /// first REPORT.
    pub fn success_rate(&self) -> Option<f64> {
        let s = &self.stats;
        let reports = s.reports_direct + s.reports_relayed + s.reports_failed;
        (reports > 0).then(|| (s.reports_direct + s.reports_relayed) as f64 / reports as f64)
    }

    fn within_rate(&mut self, now: Instant, session: SessionId, request: u64) -> bool {
        let (rate, burst) = (self.config.signal_rate, self.config.signal_burst);
        let Some(state) = self.sessions.get_mut(&session) else { return true };
        if state.bucket.take(now, rate, burst) {
            return true;
        }
        self.stats.rate_limited += 1;
        if !state.bucket.warned {
            state.bucket.warned = true;
            self.send_error(session, request, ErrorCode::RateLimited, "too many signalling messages; slow down");
        }
        false
    }

    fn current_session(&self, peer: PeerId) -> Option<SessionId> {
        self.peers.get(&peer).map(|r| r.session)
    }

    /// The peer `session` speaks for, if it is that peer's current registration; otherwise answers
    /// ERROR `not_registered` for `request`.
    fn registered_peer(&mut self, session: SessionId, request: u64) -> Option<PeerId> {
        let peer = self.sessions.get(&session).and_then(|s| s.peer);
        match peer {
            Some(peer) if self.current_session(peer) == Some(session) => Some(peer),
            Some(_) => {
                self.send_error(
                    session,
                    request,
                    ErrorCode::NotRegistered,
                    "a newer connection of this peer replaced this one",
                );
                None
            }
            None => {
                self.send_error(session, request, ErrorCode::NotRegistered, "register with a client certificate first");
                None
            }
        }
    }

    fn add_address(&mut self, now: Instant, session: SessionId, sequence: u64, candidate: Candidate) {
        let Some(peer) = self.registered_peer(session, 0) else { return };
        if let Err(why) = acceptable(&candidate) {
            self.stats.malformed += 1;
            self.send_error(session, 0, ErrorCode::Malformed, why);
            return;
        }
        // The observed address takes one of the peer's slots.
        let capacity = self.config.max_candidates.saturating_sub(1);
        let expires = now + self.config.candidate_lifetime;
        let Some(registration) = self.peers.get_mut(&peer) else { return };
        if capacity == 0 {
            return;
        }
        // Re-adding (same sequence or same address) replaces: it refreshes the lifetime and may
        // change the priority.
        registration.added.retain(|a| a.sequence != sequence && a.candidate.address != candidate.address);
        if registration.added.len() >= capacity {
            // Full: the lowest priority goes, the oldest among equals.
            let evict = registration
                .added
                .iter()
                .enumerate()
                .min_by_key(|(_, a)| (a.candidate.priority, a.added))
                .map(|(index, _)| index);
            if let Some(index) = evict {
                registration.added.swap_remove(index);
            }
        }
        registration.added.push(Added { sequence, candidate, added: now, expires });
        self.timers.push(Reverse((expires, Timer::Candidate { peer, sequence })));
        self.announce(now, peer);
    }

    /// `peer`'s candidates for a PUNCH_ME_NOW: its observed address as server-reflexive, then what
    /// it added, highest priority first, one per address.
    /// Expired candidates are left out even when their timer has not run yet.
    fn candidates_of(&self, peer: PeerId, now: Instant) -> Vec<Candidate> {
        let Some(registration) = self.peers.get(&peer) else { return Vec::new() };
        let mut candidates = Vec::new();
        if let Some(session) = self.sessions.get(&registration.session) {
            candidates.push(Candidate {
                kind: CandidateKind::ServerReflexive,
                priority: candidate::priority(CandidateKind::ServerReflexive, u16::MAX),
                address: session.observed,
            });
        }
        candidates.extend(registration.added.iter().filter(|a| a.expires > now).map(|a| a.candidate));
        candidates.sort_by_key(|c| Reverse(c.priority));
        let mut unique: Vec<Candidate> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if !unique.iter().any(|u| u.address == c.address) {
                unique.push(c);
            }
        }
        unique.truncate(self.config.max_candidates.min(MAX_CANDIDATES));
        unique
    }

    /// `peer`'s NAT mapping (RFC 4787 §4.1): its observed address here against the
    /// server-reflexive candidates it added, which are where other bootstraps observed it.
    pub fn mapping_of(&self, peer: PeerId, now: Instant) -> Mapping {
        let Some(registration) = self.peers.get(&peer) else { return Mapping::Unknown };
        let Some(session) = self.sessions.get(&registration.session) else { return Mapping::Unknown };
        // Seen at one of its own addresses: no NAT, which maps like EIM.
        let live = |a: &&Added| a.expires > now;
        if registration
            .added
            .iter()
            .filter(live)
            .any(|a| a.candidate.kind == CandidateKind::Host && a.candidate.address == session.observed)
        {
            return Mapping::EndpointIndependent;
        }
        let reflexive = registration
            .added
            .iter()
            .filter(|a| a.candidate.kind == CandidateKind::ServerReflexive && a.expires > now)
            .map(|a| a.candidate.address);
        candidate::mapping(session.observed, reflexive)
    }

    fn connect_request(&mut self, now: Instant, session: SessionId, request: u64, target: PeerId) {
        let Some(requester) = self.registered_peer(session, request) else { return };
        if target != requester && self.current_session(target).is_none() && self.forwards() {
            self.forward_connect(now, session, requester, request, target);
            return;
        }
        let Some(target_session) = self.current_session(target).filter(|_| target != requester) else {
            self.send_error(session, request, ErrorCode::UnknownPeer, "the target peer is not registered here");
            return;
        };
        let cap = self.config.max_compensated_rtt;
        let rtt_of = |s: SessionId| self.sessions.get(&s).map_or(Duration::ZERO, |s| s.rtt.min(cap));
        let (rtt_a, rtt_b) = (rtt_of(session), rtt_of(target_session));
        // Both peers start at send time + D: each gets its PUNCH_ME_NOW rtt/2 later and waits
        // D − rtt/2 more (docs/nat-traversal.md, "Coordinate").
        let d = rtt_a.max(rtt_b) / 2 + self.config.punch_margin;
        let start_a = millis_rounded(d.saturating_sub(rtt_a / 2));
        let start_b = millis_rounded(d.saturating_sub(rtt_b / 2));
        let (round, token) = self.next_round();
        // Who is behind endpoint-dependent mapping decides whether the round sprays
        // (docs/nat-traversal.md, "Many-probe rounds").
        let (mapping_a, mapping_b) = (self.mapping_of(requester, now), self.mapping_of(target, now));
        // Where a direct path is uncertain, the relay is granted with the punch: the initiator
        // connects through it at once and the punch moves the connection when it succeeds
        // (docs/nat-traversal.md, "Connect at once"). The grant goes first, so that it is there
        // before the round starts; a relay that cannot be granted leaves the punch as it was.
        if self.config.relay_at_once && candidate::direct_uncertain(mapping_a, mapping_b) {
            match self.allocate_relay(now, (session, requester), (target_session, target), request) {
                Ok(()) => self.stats.relays_at_once += 1,
                Err(reason) => tracing::debug!(%requester, %target, reason, "no relay at once: punching only"),
            }
        }
        let initiator = PunchEnd {
            peer: requester,
            session,
            mapping: mapping_a,
            start_in_ms: start_a,
            candidates: self.candidates_of(requester, now),
        };
        let responder = PunchEnd {
            peer: target,
            session: target_session,
            mapping: mapping_b,
            start_in_ms: start_b,
            candidates: self.candidates_of(target, now),
        };
        self.send_punch_round((round, token), request, initiator, responder);
    }

    fn send(&mut self, session: SessionId, message: Message) {
        self.actions.push_back(CoordinatorAction::Send { session, message });
    }

    fn send_reregister(&mut self, session: SessionId, delay: Duration) {
        let delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self.stats.reregisters_sent += 1;
        self.send(session, Message::Reregister { delay_ms });
    }

    fn send_error(&mut self, session: SessionId, request: u64, code: ErrorCode, reason: &str) {
        self.send(session, Message::Error { request, code, reason: reason.to_owned() });
    }
}

/// Whether a peer may advertise `candidate`: a real unicast address with a port. Relayed
/// candidates come only from this bootstrap's grants.
fn acceptable(candidate: &Candidate) -> Result<(), &'static str> {
    let ip = candidate.address.ip();
    if candidate.kind == CandidateKind::Relayed {
        return Err("relayed candidates cannot be added");
    }
    if candidate.address.port() == 0 || ip.is_unspecified() {
        return Err("candidate address is unspecified or has port 0");
    }
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        return Err("candidate address is multicast or broadcast");
    }
    Ok(())
}

/// The request number a message carries (0 if none), to echo in an ERROR.
fn request_of(message: &Message) -> u64 {
    match message {
        Message::ConnectRequest { request, .. }
        | Message::ForwardConnect { request, .. }
        | Message::RelayRequest { request, .. }
        | Message::Report { request, .. }
        | Message::PunchMeNow { request, .. }
        | Message::RelayGrant { request, .. }
        | Message::RelayAt { request, .. }
        | Message::Error { request, .. } => *request,
        Message::ObservedAddress { .. }
        | Message::AddAddress { .. }
        | Message::RemoveAddress { .. }
        | Message::Reregister { .. }
        | Message::OtherAddress { .. } => 0,
    }
}

/// `duration` in whole milliseconds, rounded to the nearest (so two start delays computed from one
/// instant differ by at most 1 ms from the exact difference).
fn millis_rounded(duration: Duration) -> u32 {
    u32::try_from((duration.as_micros() + 500) / 1000).unwrap_or(u32::MAX)
}
