//! The bootstrap's side of NAT traversal, sans-IO: the registry of peers and their candidates,
//! observed addresses, punch coordination, relay grants and per-session rate limits (see
//! `docs/nat-traversal.md`, "Flow").
//!
//! The driver tells the [`Coordinator`] about signalling sessions (one per authenticated peer
//! connection) and hands it every decoded message with the current time; the coordinator answers
//! with [`CoordinatorAction`]s: messages to send on a session, relay allocations to install in or
//! remove from the data plane. It owns no socket and reads no clock.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::candidate::{self, Mapping};
use super::message::{Candidate, CandidateKind, ErrorCode, Message, Outcome, PunchRole, MAX_CANDIDATES};
use crate::PeerId;

/// The driver's name for one signalling stream (one authenticated connection to this bootstrap).
pub type SessionId = u64;

/// Delay in the REREGISTER sent to a peer that registers during a handover: its connection reached
/// this process after the switch (its handshake was under way), so it moves on soon, alone.
pub const LATE_REREGISTER_DELAY: Duration = Duration::from_millis(200);

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
        }
    }
}

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

#[derive(Debug)]
struct Relay {
    a: PeerId,
    b: PeerId,
    a_address: SocketAddr,
    b_address: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    CandidateExpiry { peer: PeerId, sequence: u64 },
    RelayExpiry { channel: u32 },
}

/// The bootstrap role of NAT traversal (see the module documentation).
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    random: SplitMix64,
    sessions: HashMap<SessionId, Session>,
    peers: HashMap<PeerId, Registration>,
    relays: HashMap<u32, Relay>,
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
        Self {
            config,
            random,
            sessions: HashMap::new(),
            peers: HashMap::new(),
            relays: HashMap::new(),
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
        self.move_relays(peer, observed);
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
    pub fn observed_changed(&mut self, _now: Instant, session: SessionId, observed: SocketAddr) {
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
            | Message::Error { .. }
            | Message::Reregister { .. } => {
                self.stats.malformed += 1;
                self.send_error(session, request_of(&message), ErrorCode::Malformed, "only a bootstrap sends this");
            }
            Message::AddAddress { sequence, candidate } => self.add_address(now, session, sequence, candidate),
            Message::RemoveAddress { sequence } => {
                if let Some(peer) = self.registered_peer(session, 0) {
                    if let Some(registration) = self.peers.get_mut(&peer) {
                        registration.added.retain(|a| a.sequence != sequence);
                    }
                }
            }
            Message::ConnectRequest { request, target } => self.connect_request(now, session, request, target),
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
                Timer::CandidateExpiry { peer, sequence } => {
                    if let Some(registration) = self.peers.get_mut(&peer) {
                        registration.added.retain(|a| a.sequence != sequence || a.expires > now);
                    }
                }
                Timer::RelayExpiry { channel } => {
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
        self.timers.push(Reverse((expires, Timer::CandidateExpiry { peer, sequence })));
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
        let reflexive = registration
            .added
            .iter()
            .filter(|a| a.candidate.kind == CandidateKind::ServerReflexive && a.expires > now)
            .map(|a| a.candidate.address);
        candidate::mapping(session.observed, reflexive)
    }

    fn connect_request(&mut self, now: Instant, session: SessionId, request: u64, target: PeerId) {
        let Some(requester) = self.registered_peer(session, request) else { return };
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
        let round = self.next_round;
        self.next_round = self.next_round.wrapping_add(1);
        let token = self.random.token();
        // Who is behind endpoint-dependent mapping decides whether the round sprays
        // (docs/nat-traversal.md, "Many-probe rounds").
        let (mapping_a, mapping_b) = (self.mapping_of(requester, now), self.mapping_of(target, now));
        let to_a = Message::PunchMeNow {
            round,
            request,
            peer: target,
            role: PunchRole::Initiator,
            flags: candidate::punch_flags(mapping_a, mapping_b),
            start_in_ms: start_a,
            token,
            candidates: self.candidates_of(target, now),
        };
        let to_b = Message::PunchMeNow {
            round,
            request: 0,
            peer: requester,
            role: PunchRole::Responder,
            flags: candidate::punch_flags(mapping_b, mapping_a),
            start_in_ms: start_b,
            token,
            candidates: self.candidates_of(requester, now),
        };
        self.send(session, to_a);
        self.send(target_session, to_b);
        self.stats.punches_coordinated += 1;
    }

    fn relay_request(&mut self, now: Instant, session: SessionId, request: u64, target: PeerId) {
        let Some(requester) = self.registered_peer(session, request) else { return };
        let Some(target_session) = self.current_session(target).filter(|_| target != requester) else {
            self.send_error(session, request, ErrorCode::UnknownPeer, "the target peer is not registered here");
            return;
        };
        let held = self
            .relays
            .iter()
            .find(|(_, r)| (r.a, r.b) == (requester, target) || (r.a, r.b) == (target, requester))
            .map(|(channel, _)| *channel);
        if let Some(channel) = held {
            self.renew_relay(now, (session, requester), target, request, channel);
            return;
        }
        let relays_of = |p: PeerId| self.relays.values().filter(|r| r.a == p || r.b == p).count();
        if relays_of(requester) >= self.config.max_relays_per_peer
            || relays_of(target) >= self.config.max_relays_per_peer
        {
            self.send_error(session, request, ErrorCode::RelayRefused, "relay allocations per peer exhausted");
            return;
        }
        let Some(channel) = self.fresh_channel() else {
            self.send_error(session, request, ErrorCode::RelayRefused, "no free relay channel");
            return;
        };
        let observed = |s: SessionId| self.sessions.get(&s).map(|s| s.observed);
        let (Some(a_address), Some(b_address)) = (observed(session), observed(target_session)) else { return };
        let expires = now + self.config.relay_lifetime;
        self.relays.insert(channel, Relay { a: requester, b: target, a_address, b_address, expires });
        self.timers.push(Reverse((expires, Timer::RelayExpiry { channel })));
        let (byte_limit, rate_limit) = (self.config.relay_byte_limit, self.config.relay_rate_limit);
        let lifetime_s = u32::try_from(self.config.relay_lifetime.as_secs()).unwrap_or(u32::MAX);
        // Anti-reflection: the relay only ever sends to where it observed a registered peer, never
        // to an address a peer merely claimed.
        self.actions.push_back(CoordinatorAction::InstallRelay {
            channel,
            a: a_address,
            b: b_address,
            expires,
            byte_limit,
            rate_limit,
        });
        let grant = |request, peer| Message::RelayGrant { request, peer, channel, lifetime_s, byte_limit, rate_limit };
        self.send(session, grant(request, target));
        self.send(target_session, grant(0, requester));
        self.stats.relays_granted += 1;
    }

    /// A RELAY_REQUEST on `session` for a pair that holds the allocation of `channel`: the same
    /// channel lives `relay_lifetime` longer. The data plane is told again (same ends: it keeps
    /// what the allocation carried, so a renewal cannot reset the byte limit) and both peers get a
    /// RELAY_GRANT, which is how the other end learns that its path lives on.
    fn renew_relay(
        &mut self,
        now: Instant,
        (session, requester): (SessionId, PeerId),
        target: PeerId,
        request: u64,
        channel: u32,
    ) {
        let observed = |peer: PeerId| {
            let session = self.peers.get(&peer).map(|r| r.session)?;
            self.sessions.get(&session).map(|s| (session, s.observed))
        };
        let Some(relay) = self.relays.get(&channel) else { return };
        // The ends keep their order, so that the data plane sees the same allocation.
        let (Some((_, a_address)), Some((_, b_address)), Some((target_session, _))) =
            (observed(relay.a), observed(relay.b), observed(target))
        else {
            return;
        };
        let expires = now + self.config.relay_lifetime;
        let Some(relay) = self.relays.get_mut(&channel) else { return };
        relay.expires = expires;
        (relay.a_address, relay.b_address) = (a_address, b_address);
        self.timers.push(Reverse((expires, Timer::RelayExpiry { channel })));
        let (byte_limit, rate_limit) = (self.config.relay_byte_limit, self.config.relay_rate_limit);
        self.actions.push_back(CoordinatorAction::InstallRelay {
            channel,
            a: a_address,
            b: b_address,
            expires,
            byte_limit,
            rate_limit,
        });
        let lifetime_s = u32::try_from(self.config.relay_lifetime.as_secs()).unwrap_or(u32::MAX);
        let grant = |request, peer| Message::RelayGrant { request, peer, channel, lifetime_s, byte_limit, rate_limit };
        self.send(session, grant(request, target));
        self.send(target_session, grant(0, requester));
        self.stats.relays_renewed += 1;
    }

    /// A channel no allocation holds: the generation in the high 16 bits, a random non-zero low
    /// half.
    fn fresh_channel(&mut self) -> Option<u32> {
        let prefix = u32::from(self.config.channel_prefix) << 16;
        let free =
            |relays: &HashMap<u32, Relay>, low: u16| low != 0 && !relays.contains_key(&(prefix | u32::from(low)));
        // Random draws find one at once unless the 65 535 are nearly all taken; then a scan does.
        for _ in 0..16 {
            let low = (self.random.next_u64() >> 48) as u16;
            if free(&self.relays, low) {
                return Some(prefix | u32::from(low));
            }
        }
        let start = (self.random.next_u64() >> 48) as u16;
        (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|low| free(&self.relays, *low))
            .map(|low| prefix | u32::from(low))
    }

    /// Re-installs `peer`'s relay allocations toward its new observed address.
    fn move_relays(&mut self, peer: PeerId, observed: SocketAddr) {
        let (byte_limit, rate_limit) = (self.config.relay_byte_limit, self.config.relay_rate_limit);
        let mut moved: Vec<CoordinatorAction> = Vec::new();
        for (channel, relay) in self.relays.iter_mut() {
            let before = (relay.a_address, relay.b_address);
            if relay.a == peer {
                relay.a_address = observed;
            }
            if relay.b == peer {
                relay.b_address = observed;
            }
            if (relay.a_address, relay.b_address) != before {
                moved.push(CoordinatorAction::InstallRelay {
                    channel: *channel,
                    a: relay.a_address,
                    b: relay.b_address,
                    expires: relay.expires,
                    byte_limit,
                    rate_limit,
                });
            }
        }
        moved.sort_by_key(|action| match action {
            CoordinatorAction::InstallRelay { channel, .. } => *channel,
            _ => 0,
        });
        self.actions.extend(moved);
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
        | Message::RelayRequest { request, .. }
        | Message::Report { request, .. }
        | Message::PunchMeNow { request, .. }
        | Message::RelayGrant { request, .. }
        | Message::Error { request, .. } => *request,
        Message::ObservedAddress { .. }
        | Message::AddAddress { .. }
        | Message::RemoveAddress { .. }
        | Message::Reregister { .. } => 0,
    }
}

/// `duration` in whole milliseconds, rounded to the nearest (so two start delays computed from one
/// instant differ by at most 1 ms from the exact difference).
fn millis_rounded(duration: Duration) -> u32 {
    u32::try_from((duration.as_micros() + 500) / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId([0xaa; 32]);
    const B: PeerId = PeerId([0xbb; 32]);
    const C: PeerId = PeerId([0xcc; 32]);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn drain(coordinator: &mut Coordinator) -> Vec<CoordinatorAction> {
        std::iter::from_fn(|| coordinator.poll_action()).collect()
    }

    fn sent_to(actions: &[CoordinatorAction], to: SessionId) -> Vec<Message> {
        actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorAction::Send { session, message } if *session == to => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn error_codes(messages: &[Message]) -> Vec<(u64, ErrorCode)> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Error { request, code, .. } => Some((*request, *code)),
                _ => None,
            })
            .collect()
    }

    fn host(address: &str, local_preference: u16) -> Candidate {
        Candidate {
            kind: CandidateKind::Host,
            priority: candidate::priority(CandidateKind::Host, local_preference),
            address: addr(address),
        }
    }

    /// A coordinator with A on session 1 (RTT 20 ms) and B on session 2 (RTT 100 ms).
    fn two_peers() -> (Coordinator, Instant) {
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig::default(), 7);
        c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
        c.session_opened(now, 2, Some(B), addr("198.18.0.20:50000"), Duration::from_millis(100));
        drain(&mut c);
        (c, now)
    }

    #[test]
    fn registration_sends_the_observed_address_and_its_changes() {
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig::default(), 1);
        c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_millis(20));
        assert_eq!(c.registered(), 1);
        let sent = sent_to(&drain(&mut c), 1);
        assert_eq!(sent, [Message::ObservedAddress { sequence: 1, address: addr("198.18.0.10:40000") }]);

        c.observed_changed(now, 1, addr("198.18.0.10:40000"));
        assert!(drain(&mut c).is_empty(), "same address: nothing to say");
        c.observed_changed(now, 1, addr("198.18.0.11:40001"));
        let sent = sent_to(&drain(&mut c), 1);
        assert_eq!(sent, [Message::ObservedAddress { sequence: 2, address: addr("198.18.0.11:40001") }]);
    }

    #[test]
    fn a_connection_without_client_certificate_cannot_register_or_signal() {
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig::default(), 1);
        c.session_opened(now, 9, None, addr("198.18.0.10:40000"), Duration::from_millis(20));
        assert_eq!(c.registered(), 0);
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 9)), [(0, ErrorCode::NotAuthenticated)]);
        c.handle(now, 9, Message::ConnectRequest { request: 5, target: A });
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 9)), [(5, ErrorCode::NotRegistered)]);
    }

    #[test]
    fn an_inflated_rtt_estimate_does_not_push_the_other_start_past_the_punch_window() {
        // A young connection over a lossy path can report an RTT of seconds (late acks).
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig::default(), 7);
        c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::from_secs(8));
        c.session_opened(now, 2, Some(B), addr("198.18.0.20:50000"), Duration::from_millis(200));
        drain(&mut c);
        c.handle(now, 1, Message::ConnectRequest { request: 1, target: B });
        let actions = drain(&mut c);
        let start = |to: &[Message]| match to {
            [Message::PunchMeNow { start_in_ms, .. }] => *start_in_ms,
            other => panic!("expected one PUNCH_ME_NOW, got {other:?}"),
        };
        let (a, b) = (start(&sent_to(&actions, 1)), start(&sent_to(&actions, 2)));
        // Capped at 1 s: D = 0.5 s + 30 ms; B waits 430 ms instead of 3.93 s.
        assert_eq!((a, b), (30, 430));
    }

    #[test]
    fn connect_request_sends_punch_me_now_to_both_with_rtt_compensated_starts() {
        let (mut c, now) = two_peers();
        c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host("10.1.0.2:5000", 65535) });
        c.handle(now, 1, Message::ConnectRequest { request: 77, target: B });
        let actions = drain(&mut c);
        let (to_a, to_b) = (sent_to(&actions, 1), sent_to(&actions, 2));
        let [Message::PunchMeNow { round, request, peer, role, start_in_ms, token, candidates, .. }] = &to_a[..] else {
            panic!("expected one PUNCH_ME_NOW to A, got {to_a:?}")
        };
        let [Message::PunchMeNow {
            round: round_b,
            request: request_b,
            peer: peer_b,
            role: role_b,
            start_in_ms: start_b,
            token: token_b,
            candidates: candidates_b,
            ..
        }] = &to_b[..]
        else {
            panic!("expected one PUNCH_ME_NOW to B, got {to_b:?}")
        };
        assert_eq!((round, token), (round_b, token_b), "one round, one shared token");
        assert_eq!((*request, *request_b), (77, 0));
        assert_eq!((*peer, *peer_b), (B, A));
        assert_eq!((*role, *role_b), (PunchRole::Initiator, PunchRole::Responder));
        // D = max(20, 100)/2 + 30 = 80 ms; A waits 80 − 10, B waits 80 − 50.
        assert_eq!((*start_in_ms, *start_b), (70, 30));
        // A learns B's host candidate first (higher type preference), then B's observed address.
        let addresses: Vec<SocketAddr> = candidates.iter().map(|c| c.address).collect();
        assert_eq!(addresses, [addr("10.1.0.2:5000"), addr("198.18.0.20:50000")]);
        assert_eq!(candidates[1].kind, CandidateKind::ServerReflexive);
        assert_eq!(candidates_b.iter().map(|c| c.address).collect::<Vec<_>>(), [addr("198.18.0.10:40000")]);
        assert_eq!(c.stats().punches_coordinated, 1);

        // The next round gets a new number and a new token.
        c.handle(now, 2, Message::ConnectRequest { request: 3, target: A });
        let again = sent_to(&drain(&mut c), 2);
        let [Message::PunchMeNow { round: next, token: next_token, role, .. }] = &again[..] else {
            panic!("expected a PUNCH_ME_NOW, got {again:?}")
        };
        assert_ne!((next, next_token), (round, token));
        assert_eq!(*role, PunchRole::Initiator);
    }

    fn reflexive(address: &str) -> Candidate {
        Candidate {
            kind: CandidateKind::ServerReflexive,
            priority: candidate::priority(CandidateKind::ServerReflexive, u16::MAX - 1),
            address: addr(address),
        }
    }

    /// The flags of the PUNCH_ME_NOWs a CONNECT_REQUEST from session 1 to `target` produces:
    /// (to the requester, to the target).
    fn flags_of_punch(c: &mut Coordinator, now: Instant, target: PeerId, target_session: SessionId) -> (u8, u8) {
        c.handle(now, 1, Message::ConnectRequest { request: 9, target });
        let actions = drain(c);
        let flags = |session| match sent_to(&actions, session).first() {
            Some(Message::PunchMeNow { flags, .. }) => *flags,
            other => panic!("no PUNCH_ME_NOW: {other:?}"),
        };
        (flags(1), flags(target_session))
    }

    #[test]
    fn punch_flags_say_who_is_behind_endpoint_dependent_mapping() {
        use candidate::{FLAG_OTHER_EDM, FLAG_OTHER_EIM, FLAG_RECEIVER_EDM, FLAG_RECEIVER_EIM};
        let (mut c, now) = two_peers();
        c.session_opened(now, 3, Some(C), addr("198.18.0.30:40000"), Duration::ZERO);
        drain(&mut c);
        // Nobody told of a second observation yet: nothing is known, as in version 1.
        assert_eq!(flags_of_punch(&mut c, now, B, 2), (0, 0));
        assert_eq!(c.mapping_of(A, now), Mapping::Unknown);

        // A: another bootstrap saw the same address (EIM). B: same IP, another port (EDM).
        c.handle(now, 1, Message::AddAddress { sequence: 5, candidate: reflexive("198.18.0.10:40000") });
        c.handle(now, 2, Message::AddAddress { sequence: 5, candidate: reflexive("198.18.0.20:61234") });
        // C: another IP says nothing (a second interface, another NAT).
        c.handle(now, 3, Message::AddAddress { sequence: 5, candidate: reflexive("203.0.113.7:40000") });
        drain(&mut c);
        assert_eq!(c.mapping_of(A, now), Mapping::EndpointIndependent);
        assert_eq!(c.mapping_of(B, now), Mapping::EndpointDependent);
        assert_eq!(c.mapping_of(C, now), Mapping::Unknown);
        assert_eq!(
            flags_of_punch(&mut c, now, B, 2),
            (FLAG_RECEIVER_EIM | FLAG_OTHER_EDM, FLAG_RECEIVER_EDM | FLAG_OTHER_EIM)
        );
        assert_eq!(flags_of_punch(&mut c, now, C, 3), (FLAG_RECEIVER_EIM, FLAG_OTHER_EIM));

        // A host candidate on the observed IP is no observation; an expired one is forgotten.
        c.handle(now, 3, Message::AddAddress { sequence: 6, candidate: host("198.18.0.30:41000", 9) });
        assert_eq!(c.mapping_of(C, now), Mapping::Unknown);
        let later = now + Duration::from_secs(601);
        c.handle_timeout(later);
        assert_eq!(c.mapping_of(B, later), Mapping::Unknown);
    }

    #[test]
    fn unknown_or_self_target_is_answered_unknown_peer() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::ConnectRequest { request: 11, target: C });
        c.handle(now, 1, Message::ConnectRequest { request: 12, target: A });
        c.handle(now, 1, Message::RelayRequest { request: 13, target: C });
        let actions = drain(&mut c);
        assert_eq!(
            error_codes(&sent_to(&actions, 1)),
            [(11, ErrorCode::UnknownPeer), (12, ErrorCode::UnknownPeer), (13, ErrorCode::UnknownPeer)]
        );
        assert!(sent_to(&actions, 2).is_empty(), "B hears nothing");
        assert_eq!(c.stats().punches_coordinated, 0);
    }

    #[test]
    fn bad_candidates_are_refused_and_the_list_is_bounded() {
        let (mut c, now) = two_peers();
        for bad in ["0.0.0.0:5000", "10.1.0.2:0", "224.0.0.1:5000", "255.255.255.255:5000", "[::]:5000"] {
            c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host(bad, 1) });
        }
        let relayed = Candidate { kind: CandidateKind::Relayed, ..host("198.18.0.1:443", 1) };
        c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: relayed });
        let refusals = error_codes(&sent_to(&drain(&mut c), 2));
        assert_eq!(refusals, vec![(0, ErrorCode::Malformed); 6]);

        // Eight slots, one taken by the observed address: the ninth host candidate evicts the
        // lowest priority one (local preference 1).
        for i in 0..8u16 {
            let candidate = host(&format!("10.1.0.{}:5000", i + 1), 1 + i);
            c.handle(now, 2, Message::AddAddress { sequence: u64::from(i), candidate });
        }
        c.handle(now, 1, Message::ConnectRequest { request: 1, target: B });
        let to_a = sent_to(&drain(&mut c), 1);
        let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
        assert_eq!(candidates.len(), MAX_CANDIDATES);
        assert!(!candidates.iter().any(|c| c.address == addr("10.1.0.1:5000")), "lowest priority evicted");
        assert!(candidates.iter().any(|c| c.address == addr("198.18.0.20:50000")), "observed address kept");

        // REMOVE_ADDRESS withdraws one.
        c.handle(now, 2, Message::RemoveAddress { sequence: 7 });
        c.handle(now, 1, Message::ConnectRequest { request: 2, target: B });
        let to_a = sent_to(&drain(&mut c), 1);
        let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
        assert!(!candidates.iter().any(|c| c.address == addr("10.1.0.8:5000")));
    }

    #[test]
    fn candidates_expire_unless_re_added() {
        let (mut c, start) = two_peers();
        c.handle(start, 2, Message::AddAddress { sequence: 1, candidate: host("10.1.0.2:5000", 9) });
        c.handle(start, 2, Message::AddAddress { sequence: 2, candidate: host("10.1.0.3:5000", 9) });
        let half = start + Duration::from_secs(300);
        c.handle(half, 2, Message::AddAddress { sequence: 2, candidate: host("10.1.0.3:5000", 9) });
        let later = start + Duration::from_secs(601);
        assert!(c.poll_timeout().is_some_and(|t| t <= later));
        c.handle_timeout(later);
        c.handle(later, 1, Message::ConnectRequest { request: 1, target: B });
        let to_a = sent_to(&drain(&mut c), 1);
        let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
        let addresses: Vec<SocketAddr> = candidates.iter().map(|c| c.address).collect();
        assert_eq!(addresses, [addr("10.1.0.3:5000"), addr("198.18.0.20:50000")]);
    }

    #[test]
    fn relay_grant_installs_the_observed_addresses_only() {
        let (mut c, now) = two_peers();
        // B claims a host address; the relay must never send there.
        c.handle(now, 2, Message::AddAddress { sequence: 1, candidate: host("192.0.2.99:5000", 65535) });
        c.handle(now, 1, Message::RelayRequest { request: 21, target: B });
        let actions = drain(&mut c);
        let installs: Vec<_> = actions.iter().filter(|a| matches!(a, CoordinatorAction::InstallRelay { .. })).collect();
        let [CoordinatorAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit }] = installs[..] else {
            panic!("expected one InstallRelay, got {actions:?}")
        };
        assert_eq!((*a, *b), (addr("198.18.0.10:40000"), addr("198.18.0.20:50000")));
        assert_eq!(*expires, now + Duration::from_secs(600));
        assert_eq!((*byte_limit, *rate_limit), (2 << 30, 50_000_000));
        let grants = |to| {
            sent_to(&actions, to)
                .into_iter()
                .filter_map(|m| match m {
                    Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                        Some((request, peer, channel, lifetime_s))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(grants(1), [(21, B, *channel, 600)]);
        assert_eq!(grants(2), [(0, A, *channel, 600)]);
        assert_eq!(c.stats().active_relays, 1);
        assert_eq!(c.stats().relays_granted, 1);
    }

    fn installs(actions: &[CoordinatorAction]) -> Vec<(u32, SocketAddr, SocketAddr, Instant)> {
        actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorAction::InstallRelay { channel, a, b, expires, .. } => Some((*channel, *a, *b, *expires)),
                _ => None,
            })
            .collect()
    }

    fn grants(messages: &[Message]) -> Vec<(u64, PeerId, u32, u32)> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                    Some((*request, *peer, *channel, *lifetime_s))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn relay_allocations_per_peer_are_bounded() {
        let (mut c, now) = two_peers();
        // A relays to eight other peers; a ninth is refused.
        let others: Vec<PeerId> = (0..9u8).map(|i| PeerId([0x10 + i; 32])).collect();
        for (i, peer) in others.iter().enumerate() {
            let session = 10 + i as SessionId;
            c.session_opened(now, session, Some(*peer), addr(&format!("198.18.1.{}:4000", i + 1)), Duration::ZERO);
        }
        drain(&mut c);
        for (request, peer) in (1..).zip(&others) {
            c.handle(now, 1, Message::RelayRequest { request, target: *peer });
        }
        let actions = drain(&mut c);
        assert_eq!(installs(&actions).len(), 8);
        assert_eq!(error_codes(&sent_to(&actions, 1)), [(9, ErrorCode::RelayRefused)]);
        // Asking again for a pair that holds an allocation renews it: it is not a ninth one.
        c.handle(now, 1, Message::RelayRequest { request: 10, target: others[0] });
        let actions = drain(&mut c);
        assert_eq!(installs(&actions).len(), 1);
        assert!(error_codes(&sent_to(&actions, 1)).is_empty(), "{actions:?}");
        assert_eq!(c.stats().active_relays, 8);
    }

    #[test]
    fn a_relay_request_for_a_held_pair_renews_the_same_channel() {
        let (mut c, start) = two_peers();
        c.handle(start, 1, Message::RelayRequest { request: 1, target: B });
        let first = installs(&drain(&mut c));
        let [(channel, a, b, expires)] = first[..] else { panic!("{first:?}") };
        assert_eq!(expires, start + Duration::from_secs(600));

        // At 80 % of the lifetime A renews; later B (the other end) asks too: same allocation.
        let renewal = start + Duration::from_secs(480);
        c.handle_timeout(renewal);
        c.handle(renewal, 1, Message::RelayRequest { request: 2, target: B });
        let actions = drain(&mut c);
        assert_eq!(installs(&actions), [(channel, a, b, renewal + Duration::from_secs(600))], "same ends, same order");
        assert_eq!(grants(&sent_to(&actions, 1)), [(2, B, channel, 600)]);
        assert_eq!(grants(&sent_to(&actions, 2)), [(0, A, channel, 600)], "the other end learns its path lives on");
        let later = start + Duration::from_secs(700);
        c.handle(later, 2, Message::RelayRequest { request: 3, target: A });
        let actions = drain(&mut c);
        assert_eq!(installs(&actions), [(channel, a, b, later + Duration::from_secs(600))]);
        assert_eq!(grants(&sent_to(&actions, 2)), [(3, A, channel, 600)]);
        assert_eq!(grants(&sent_to(&actions, 1)), [(0, B, channel, 600)]);
        let stats = c.stats();
        assert_eq!((stats.active_relays, stats.relays_granted, stats.relays_renewed), (1, 1, 2));

        // The first deadline passes: nothing lapses. Without a renewal, the last one does.
        c.handle_timeout(start + Duration::from_secs(1000));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(later + Duration::from_secs(600));
        assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
        assert_eq!(c.stats().active_relays, 0);
    }

    #[test]
    fn relay_expiry_removes_the_allocation() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
        let channel = drain(&mut c)
            .into_iter()
            .find_map(|a| match a {
                CoordinatorAction::InstallRelay { channel, .. } => Some(channel),
                _ => None,
            })
            .unwrap();
        c.handle_timeout(now + Duration::from_secs(599));
        assert!(drain(&mut c).is_empty());
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_secs(600));
        c.handle_timeout(due);
        assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
        assert_eq!(c.stats().active_relays, 0);
    }

    #[test]
    fn closing_a_session_unregisters_and_removes_its_relays() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
        drain(&mut c);
        c.session_closed(now, 2);
        let actions = drain(&mut c);
        assert!(matches!(actions[..], [CoordinatorAction::RemoveRelay { .. }]), "{actions:?}");
        assert_eq!(c.registered(), 1);
        c.handle(now, 1, Message::ConnectRequest { request: 2, target: B });
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(2, ErrorCode::UnknownPeer)]);
    }

    #[test]
    fn the_newest_session_of_a_peer_wins() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
        drain(&mut c);
        // B reconnects from a new address; its old session lingers and then closes.
        c.session_opened(now, 3, Some(B), addr("198.18.0.21:50001"), Duration::from_millis(100));
        let actions = drain(&mut c);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, CoordinatorAction::InstallRelay { b, .. } if *b == addr("198.18.0.21:50001"))),
            "the relay follows the new observed address: {actions:?}"
        );
        c.handle(now, 2, Message::ConnectRequest { request: 4, target: A });
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 2)), [(4, ErrorCode::NotRegistered)]);
        c.session_closed(now, 2);
        assert!(drain(&mut c).is_empty(), "closing the replaced session removes nothing");
        assert_eq!(c.registered(), 2);
        c.handle(now, 1, Message::ConnectRequest { request: 5, target: B });
        let actions = drain(&mut c);
        assert!(matches!(sent_to(&actions, 3)[..], [Message::PunchMeNow { .. }]), "punch goes to the new session");
        let to_a = sent_to(&actions, 1);
        let Some(Message::PunchMeNow { candidates, .. }) = to_a.first() else { panic!("no punch: {to_a:?}") };
        assert_eq!(candidates[0].address, addr("198.18.0.21:50001"));
    }

    #[test]
    fn rate_limit_drops_the_excess_with_one_error_per_burst() {
        let (mut c, now) = two_peers();
        let report = |request| Message::Report { request, outcome: Outcome::Direct, connect_ms: 5 };
        for request in 1..=100 {
            c.handle(now, 1, report(request));
        }
        let stats = c.stats();
        assert_eq!((stats.reports_direct, stats.rate_limited), (40, 60));
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(41, ErrorCode::RateLimited)]);
        // The other session is not affected.
        c.handle(now, 2, report(1));
        assert_eq!(c.stats().reports_direct, 41);
        // One second refills 20.
        let later = now + Duration::from_secs(1);
        for request in 101..=130 {
            c.handle(later, 1, report(request));
        }
        assert_eq!(c.stats().reports_direct, 61);
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(121, ErrorCode::RateLimited)]);
    }

    #[test]
    fn messages_only_a_bootstrap_sends_are_malformed() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::ObservedAddress { sequence: 1, address: addr("192.0.2.1:1") });
        c.handle(now, 1, Message::Error { request: 3, code: ErrorCode::Malformed, reason: String::new() });
        c.handle_malformed(now, 1);
        assert_eq!(
            error_codes(&sent_to(&drain(&mut c), 1)),
            [(0, ErrorCode::Malformed), (3, ErrorCode::Malformed), (0, ErrorCode::Malformed)]
        );
        assert_eq!(c.stats().malformed, 3);
        assert_eq!(c.registered(), 2);
    }

    #[test]
    fn reports_make_the_success_rate() {
        let (mut c, now) = two_peers();
        assert_eq!(c.success_rate(), None);
        for outcome in [Outcome::Direct, Outcome::Direct, Outcome::Relayed, Outcome::Failed] {
            c.handle(now, 1, Message::Report { request: 1, outcome, connect_ms: 100 });
        }
        let stats = c.stats();
        assert_eq!((stats.reports_direct, stats.reports_relayed, stats.reports_failed), (2, 1, 1));
        assert_eq!(c.success_rate(), Some(0.75));
    }

    /// The REREGISTER delays sent, by session.
    fn reregisters(actions: &[CoordinatorAction]) -> Vec<(SessionId, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                CoordinatorAction::Send { session, message: Message::Reregister { delay_ms } } => {
                    Some((*session, *delay_ms))
                }
                _ => None,
            })
            .collect()
    }

    /// A coordinator with `n` peers registered on sessions 1..=n.
    fn many_peers(n: u8, seed: u64) -> (Coordinator, Instant) {
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig::default(), seed);
        for i in 1..=n {
            let address = addr(&format!("198.18.2.{i}:4000"));
            c.session_opened(now, SessionId::from(i), Some(PeerId([i; 32])), address, Duration::ZERO);
        }
        drain(&mut c);
        (c, now)
    }

    #[test]
    fn handover_tells_every_registered_peer_once_spread_over_the_window() {
        let (mut c, now) = many_peers(40, 3);
        // A connection without a certificate is not registered: it is not told.
        c.session_opened(now, 99, None, addr("198.18.3.1:4000"), Duration::ZERO);
        drain(&mut c);
        let window = Duration::from_secs(30);
        assert_eq!(c.begin_handover(now, window), 40);
        assert!(c.is_handing_over());
        let sent = reregisters(&drain(&mut c));
        let mut sessions: Vec<SessionId> = sent.iter().map(|(s, _)| *s).collect();
        sessions.sort_unstable();
        assert_eq!(sessions, (1..=40).collect::<Vec<SessionId>>(), "every peer exactly once");
        // Peer i of 40 waits window·(i + ½)/40: 375 ms, then every 750 ms, the last 29 625 ms.
        let mut delays: Vec<u32> = sent.iter().map(|(_, d)| *d).collect();
        delays.sort_unstable();
        let expected: Vec<u32> = (0..40).map(|i| 375 + 750 * i).collect();
        assert_eq!(delays, expected);
        assert!(delays.iter().all(|d| u128::from(*d) < window.as_millis()), "none beyond the window");
        // The order is drawn, not the sessions' order.
        let in_session_order: Vec<u32> = (1..=40).map(|s| sent.iter().find(|(t, _)| *t == s).unwrap().1).collect();
        assert_ne!(in_session_order, expected);
        assert_eq!(c.stats().reregisters_sent, 40);

        // Again: nobody is told twice.
        assert_eq!(c.begin_handover(now, window), 0);
        assert!(reregisters(&drain(&mut c)).is_empty());
    }

    #[test]
    fn handover_order_comes_from_the_seed() {
        let order = |seed| {
            let (mut c, now) = many_peers(10, seed);
            c.begin_handover(now, Duration::from_secs(10));
            let mut sent = reregisters(&drain(&mut c));
            sent.sort_by_key(|(_, delay)| *delay);
            sent.into_iter().map(|(session, _)| session).collect::<Vec<_>>()
        };
        assert_eq!(order(5), order(5), "deterministic for one seed");
        assert_ne!(order(5), order(6));
    }

    #[test]
    fn handover_delays_stay_within_a_short_window() {
        // 3 peers over 10 ms: 1.67, 5, 8.33 ms, rounded down.
        let (mut c, now) = many_peers(3, 1);
        c.begin_handover(now, Duration::from_millis(10));
        let mut delays: Vec<u32> = reregisters(&drain(&mut c)).into_iter().map(|(_, d)| d).collect();
        delays.sort_unstable();
        assert_eq!(delays, [1, 5, 8]);
        // No peers: nothing to send, and a later registration is still told.
        let mut empty = Coordinator::new(CoordinatorConfig::default(), 1);
        assert_eq!(empty.begin_handover(now, Duration::ZERO), 0);
        assert!(drain(&mut empty).is_empty());
    }

    #[test]
    fn a_peer_registering_during_a_handover_is_told_soon_unless_it_came_back() {
        let (mut c, now) = two_peers();
        c.begin_handover(now, Duration::from_secs(30));
        drain(&mut c);
        // A new peer whose handshake was under way at the switch registers here.
        c.session_opened(now, 3, Some(C), addr("198.18.0.30:40000"), Duration::ZERO);
        let sent = sent_to(&drain(&mut c), 3);
        assert_eq!(
            sent,
            [
                Message::ObservedAddress { sequence: 1, address: addr("198.18.0.30:40000") },
                Message::Reregister { delay_ms: LATE_REREGISTER_DELAY.as_millis() as u32 },
            ]
        );
        // A told peer whose new connection reached this process again is not told again: that
        // would only loop.
        c.session_opened(now, 4, Some(A), addr("198.18.0.10:40001"), Duration::ZERO);
        let sent = sent_to(&drain(&mut c), 4);
        assert!(matches!(sent[..], [Message::ObservedAddress { .. }]), "{sent:?}");
        assert_eq!(c.registered(), 3);
    }

    #[test]
    fn relays_outlive_the_sessions_of_peers_that_moved_on() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
        let [(channel, ..)] = installs(&drain(&mut c))[..] else { panic!("no relay") };
        c.begin_handover(now, Duration::from_secs(30));
        drain(&mut c);
        // Both peers re-registered elsewhere and closed their sessions here.
        c.session_closed(now, 1);
        c.session_closed(now, 2);
        assert!(drain(&mut c).is_empty(), "the relayed connection still runs through this process");
        assert_eq!(c.registered(), 0);
        assert_eq!(c.stats().active_relays, 1);
        // It lapses as any allocation does.
        c.handle_timeout(now + Duration::from_secs(600));
        assert_eq!(drain(&mut c), [CoordinatorAction::RemoveRelay { channel }]);
    }

    #[test]
    fn a_peer_cannot_send_reregister() {
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::Reregister { delay_ms: 0 });
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 1)), [(0, ErrorCode::Malformed)]);
        assert!(!c.is_handing_over());
    }

    #[test]
    fn relay_channels_carry_the_generation_in_their_high_half() {
        let now = Instant::now();
        let config =
            CoordinatorConfig { channel_prefix: 0x0203, max_relays_per_peer: 64, ..CoordinatorConfig::default() };
        let mut c = Coordinator::new(config, 11);
        c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::ZERO);
        let others: Vec<PeerId> = (0..64u8).map(|i| PeerId([0x40 + i; 32])).collect();
        for (i, peer) in others.iter().enumerate() {
            c.session_opened(
                now,
                10 + i as SessionId,
                Some(*peer),
                addr(&format!("198.18.4.{i}:4000")),
                Duration::ZERO,
            );
        }
        drain(&mut c);
        for (request, peer) in (1..).zip(&others) {
            c.handle(now + Duration::from_secs(request), 1, Message::RelayRequest { request, target: *peer });
        }
        let channels: HashSet<u32> = installs(&drain(&mut c)).into_iter().map(|(channel, ..)| channel).collect();
        assert_eq!(channels.len(), 64, "distinct channels");
        for channel in &channels {
            assert_eq!(channel >> 16, 0x0203, "{channel:#010x}");
            assert_ne!(channel & 0xffff, 0, "{channel:#010x}");
        }
        // The default prefix is 0: the channel is the random low half alone.
        let (mut c, now) = two_peers();
        c.handle(now, 1, Message::RelayRequest { request: 1, target: B });
        let [(channel, ..)] = installs(&drain(&mut c))[..] else { panic!("no relay") };
        assert!(channel != 0 && channel <= 0xffff, "{channel:#x}");
    }

    #[test]
    fn the_last_free_channels_are_found() {
        let now = Instant::now();
        let mut c = Coordinator::new(CoordinatorConfig { channel_prefix: 7, ..CoordinatorConfig::default() }, 2);
        // Every low half but two taken: random draws nearly always miss, the scan finds them.
        for low in 1..=u16::MAX {
            if low != 0x1234 && low != 0xfffe {
                c.relays.insert(
                    7 << 16 | u32::from(low),
                    Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
                );
            }
        }
        let first = c.fresh_channel().unwrap();
        assert!(first == 0x0007_1234 || first == 0x0007_fffe, "{first:#x}");
        c.relays.insert(
            first,
            Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
        );
        let second = c.fresh_channel().unwrap();
        assert!(second != first && (second == 0x0007_1234 || second == 0x0007_fffe), "{second:#x}");
        c.relays.insert(
            second,
            Relay { a: A, b: B, a_address: addr("192.0.2.1:1"), b_address: addr("192.0.2.2:2"), expires: now },
        );
        assert_eq!(c.fresh_channel(), None, "all 65 535 taken");
    }

    #[test]
    fn a_full_registry_refuses_new_peers() {
        let now = Instant::now();
        let config = CoordinatorConfig { max_peers: 1, ..CoordinatorConfig::default() };
        let mut c = Coordinator::new(config, 1);
        c.session_opened(now, 1, Some(A), addr("198.18.0.10:40000"), Duration::ZERO);
        c.session_opened(now, 2, Some(B), addr("198.18.0.20:40000"), Duration::ZERO);
        assert_eq!(c.registered(), 1);
        assert_eq!(error_codes(&sent_to(&drain(&mut c), 2)), [(0, ErrorCode::NotRegistered)]);
        // The registered peer may still reconnect.
        c.session_opened(now, 3, Some(A), addr("198.18.0.10:40001"), Duration::ZERO);
        assert!(matches!(sent_to(&drain(&mut c), 3)[..], [Message::ObservedAddress { .. }]));
    }
}
