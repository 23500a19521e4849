//! The peer's side of NAT traversal, sans-IO: registration with bootstraps, connection attempts,
//! hole punching with probes, relay fallback and the background upgrade of a relayed path to a
//! direct one (see `docs/nat-traversal.md`, "Flow").
//!
//! The driver hands the [`Traversal`] what arrives (signalling messages from bootstraps, probe
//! datagrams from other peers, the outcome of QUIC connections it opened) with the current time;
//! the traversal answers with [`TraversalAction`]s (messages and probes to send, connections and
//! relay paths to set up) and reports [`TraversalEvent`]s. It owns no socket and reads no clock.
//!
//! Probing follows RFC 8445 §7.2 in spirit: both peers probe the other's candidates in pair
//! priority order at the coordinated start instant, repeat every probe interval until a probe is
//! acknowledged (the pair is *valid*), answer the other's probes, and learn peer-reflexive
//! candidates from probes that arrive from unexpected addresses (§7.3.1.3). Only addresses that a
//! bootstrap handed out in a PUNCH_ME_NOW, or that sent a probe carrying the round's token, are
//! ever probed: a traversal cannot be made to send to arbitrary addresses.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::candidate::{self, Pair};
use super::coordinator::{SessionId, SplitMix64};
use super::message::{Candidate, CandidateKind, ErrorCode, Message, Outcome, PunchRole};
use super::probe::{Probe, ProbeKind};
use crate::PeerId;

/// A connection attempt, named by [`Traversal::connect`].
pub type AttemptId = u64;

/// How a peer punches, falls back and upgrades. One source of truth for the peer's NAT traversal
/// timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraversalConfig {
    /// Pause between two rounds of probes to the pairs not yet valid (RFC 8445 §14.2 `Ta`-like
    /// pacing). Default 50 ms.
    pub probe_interval: Duration,
    /// How long a punch probes before it gives up; also how long a bootstrap may take to answer a
    /// request, and how long a finished round keeps answering the other peer's probes.
    /// Default 3 s.
    pub punch_timeout: Duration,
    /// Whether an attempt whose punch found no valid pair asks for a relay. Default true.
    pub relay_fallback: bool,
    /// While a peer is reached through the relay, punching is retried this often. Default 10 s.
    pub upgrade_interval: Duration,
    /// How many times punching is retried while relayed. Default 6.
    pub upgrade_attempts: u32,
    /// How often host candidates are re-sent to the bootstraps (they expire there unless re-added).
    /// Default 5 minutes.
    pub candidate_refresh: Duration,
}

impl Default for TraversalConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(50),
            punch_timeout: Duration::from_secs(3),
            relay_fallback: true,
            upgrade_interval: Duration::from_secs(10),
            upgrade_attempts: 6,
            candidate_refresh: Duration::from_secs(300),
        }
    }
}

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
    /// [`Traversal::connection_result`].
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
    /// [`Traversal::connection_result`].
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
    /// A [`Traversal::connect`] attempt ended.
    AttemptFinished {
        /// The attempt.
        attempt: AttemptId,
        /// Its target.
        peer: PeerId,
        /// Direct, relayed or failed.
        outcome: Outcome,
        /// The peer's real address (direct) or the relay's (relayed); `None` when it failed.
        remote: Option<SocketAddr>,
        /// Time from [`Traversal::connect`] to the end.
        connect: Duration,
        /// Why it failed.
        reason: Option<String>,
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

/// Counters of a traversal, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraversalStats {
    /// Probes sent (acks not included).
    pub probes_sent: u64,
    /// Probes received with a known token (and answered).
    pub probes_received: u64,
    /// Acks received for probes this peer sent.
    pub probes_acked: u64,
    /// Probe datagrams whose token matches no current round (ignored).
    pub unknown_token: u64,
    /// Attempts that connected directly.
    pub attempts_direct: u64,
    /// Attempts that connected through the relay.
    pub attempts_relayed: u64,
    /// Attempts that failed.
    pub attempts_failed: u64,
    /// Relayed connections moved to a direct path.
    pub upgrades: u64,
}

/// Why [`Traversal::connect`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraversalError {
    /// There is no bootstrap to coordinate through.
    #[error("no bootstrap connected: connect to a bootstrap node first")]
    NoBootstrap,
}

#[derive(Debug)]
struct Bootstrap {
    address: SocketAddr,
    observed: Option<(u64, SocketAddr)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// CONNECT_REQUEST sent; waiting for PUNCH_ME_NOW (or ERROR) until `deadline`.
    AwaitingPunch { deadline: Instant },
    /// The round with this token is probing.
    Punching { token: [u8; 16] },
    /// ConnectDirect went out; waiting for the connection's outcome.
    ConnectingDirect { address: SocketAddr },
    /// RELAY_REQUEST sent; waiting for RELAY_GRANT (or ERROR) until `deadline`.
    AwaitingRelay { deadline: Instant },
    /// ConnectRelayed went out; waiting for the connection's outcome.
    ConnectingRelayed { relay: SocketAddr },
}

#[derive(Debug)]
struct Attempt {
    peer: PeerId,
    session: SessionId,
    /// The CONNECT_REQUEST's number, which the REPORT names.
    connect_request: u64,
    /// The request outstanding now (CONNECT_REQUEST, then RELAY_REQUEST).
    request: u64,
    started: Instant,
    phase: Phase,
    /// A background retry of punching for a relayed peer: it ends quietly, and success moves the
    /// relay path instead of opening a connection.
    upgrade: bool,
}

#[derive(Debug)]
struct Check {
    remote: SocketAddr,
    priority: u64,
    /// Reused by retransmissions, like a STUN transaction (RFC 8489 §6.2.1).
    transaction: u64,
    last_sent: Option<Instant>,
    valid: bool,
}

/// One PUNCH_ME_NOW's round (identified by its token).
#[derive(Debug)]
struct Round {
    peer: PeerId,
    role: PunchRole,
    checks: Vec<Check>,
    next_probe: Instant,
    /// Own probing stops here (or when a pair became valid).
    probe_until: Instant,
    /// Probes of the other peer are answered until here.
    answer_until: Instant,
    probing: bool,
}

#[derive(Debug)]
struct Upgrade {
    next: Instant,
    left: u32,
}

#[derive(Debug)]
struct RelayPath {
    alias: SocketAddr,
    /// The bootstrap session that granted (and renews) the allocation.
    session: SessionId,
    relay: SocketAddr,
    channel: u32,
    /// When the allocation lapses unless a RELAY_GRANT renews it.
    expires: Instant,
    direct: Option<SocketAddr>,
    upgrade: Option<Upgrade>,
    /// Initiator only: the attempt whose connection runs on this path. It renews the allocation
    /// while that connection lives; `None` on the responder, which follows the grants it gets.
    attempt: Option<AttemptId>,
    /// Initiator only: when to send the next renewing RELAY_REQUEST.
    renew_at: Option<Instant>,
    /// The request number of the renewing RELAY_REQUEST outstanding.
    renew_request: Option<u64>,
}

/// The peer role of NAT traversal (see the module documentation).
#[derive(Debug)]
pub struct Traversal {
    config: TraversalConfig,
    random: SplitMix64,
    bootstraps: BTreeMap<SessionId, Bootstrap>,
    /// Host candidates in preference order, each with its ADD_ADDRESS sequence number.
    hosts: Vec<(u64, SocketAddr)>,
    next_sequence: u64,
    next_refresh: Option<Instant>,
    attempts: BTreeMap<AttemptId, Attempt>,
    next_attempt: AttemptId,
    rounds: BTreeMap<[u8; 16], Round>,
    relay_paths: BTreeMap<PeerId, RelayPath>,
    aliases: BTreeMap<PeerId, SocketAddr>,
    next_alias: u32,
    actions: VecDeque<TraversalAction>,
    events: VecDeque<TraversalEvent>,
    stats: TraversalStats,
}

impl Traversal {
    /// A traversal with no bootstrap. `seed` feeds the generator of request numbers and probe
    /// transactions: the driver passes fresh randomness, tests a constant.
    pub fn new(config: TraversalConfig, seed: u64) -> Self {
        Self {
            config,
            random: SplitMix64::new(seed),
            bootstraps: BTreeMap::new(),
            hosts: Vec::new(),
            next_sequence: 1,
            next_refresh: None,
            attempts: BTreeMap::new(),
            next_attempt: 1,
            rounds: BTreeMap::new(),
            relay_paths: BTreeMap::new(),
            aliases: BTreeMap::new(),
            next_alias: 1,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: TraversalStats::default(),
        }
    }

    /// A signalling stream to the bootstrap at `bootstrap` is open as `session`: announces the
    /// host candidates there.
    pub fn bootstrap_connected(&mut self, now: Instant, session: SessionId, bootstrap: SocketAddr) {
        self.bootstraps.insert(session, Bootstrap { address: bootstrap, observed: None });
        for index in 0..self.hosts.len() {
            self.add_address(session, index);
        }
        if !self.hosts.is_empty() && self.next_refresh.is_none() {
            self.next_refresh = Some(now + self.config.candidate_refresh);
        }
    }

    /// The signalling stream `session` closed. Attempts still signalling through it fail; relay
    /// paths through it that did not move to a direct path are removed (the bootstrap drops a
    /// peer's allocations with its session).
    pub fn bootstrap_lost(&mut self, now: Instant, session: SessionId) {
        if self.bootstraps.remove(&session).is_none() {
            return;
        }
        let stranded: Vec<AttemptId> = self
            .attempts
            .iter()
            .filter(|(_, a)| {
                a.session == session
                    && matches!(
                        a.phase,
                        Phase::AwaitingPunch { .. } | Phase::Punching { .. } | Phase::AwaitingRelay { .. }
                    )
            })
            .map(|(id, _)| *id)
            .collect();
        for attempt in stranded {
            self.fail(now, attempt, "the bootstrap connection was lost".to_owned());
        }
        let lost: Vec<PeerId> = self
            .relay_paths
            .iter()
            .filter(|(_, path)| path.session == session && path.direct.is_none())
            .map(|(peer, _)| *peer)
            .collect();
        for peer in lost {
            self.remove_relay_path(peer);
        }
        if self.bootstraps.is_empty() {
            self.next_refresh = None;
        }
    }

    /// This node's host addresses (its own interfaces' addresses with the node socket's port), best
    /// first. Each gets a host candidate (RFC 8445 §5.1.1.1) with a local preference decreasing in
    /// this order, announced with ADD_ADDRESS to every bootstrap now and at every refresh; those no
    /// longer listed are withdrawn with REMOVE_ADDRESS.
    pub fn set_host_candidates(&mut self, now: Instant, addresses: Vec<SocketAddr>) {
        let mut hosts: Vec<(u64, SocketAddr)> = Vec::with_capacity(addresses.len());
        for address in addresses {
            if hosts.iter().any(|(_, a)| *a == address) {
                continue;
            }
            let sequence = match self.hosts.iter().find(|(_, a)| *a == address) {
                Some((sequence, _)) => *sequence,
                None => {
                    self.next_sequence += 1;
                    self.next_sequence - 1
                }
            };
            hosts.push((sequence, address));
        }
        let withdrawn: Vec<u64> =
            self.hosts.iter().filter(|(s, _)| !hosts.iter().any(|(t, _)| t == s)).map(|(s, _)| *s).collect();
        self.hosts = hosts;
        let sessions: Vec<SessionId> = self.bootstraps.keys().copied().collect();
        for session in sessions {
            for &sequence in &withdrawn {
                self.signal(session, Message::RemoveAddress { sequence });
            }
            for index in 0..self.hosts.len() {
                self.add_address(session, index);
            }
        }
        self.next_refresh =
            (!self.hosts.is_empty() && !self.bootstraps.is_empty()).then(|| now + self.config.candidate_refresh);
    }

    /// Asks a bootstrap to coordinate a punch with `target` (CONNECT_REQUEST). The attempt ends
    /// with [`TraversalEvent::AttemptFinished`]. An attempt to the same target already under way is
    /// returned instead of starting a second one.
    pub fn connect(&mut self, now: Instant, target: PeerId) -> Result<AttemptId, TraversalError> {
        if let Some((id, _)) = self.attempts.iter().find(|(_, a)| a.peer == target && !a.upgrade) {
            return Ok(*id);
        }
        let session = *self.bootstraps.keys().next().ok_or(TraversalError::NoBootstrap)?;
        Ok(self.start_attempt(now, session, target, false))
    }

    /// A signalling message from bootstrap `session`.
    pub fn handle_signal(&mut self, now: Instant, session: SessionId, message: Message) {
        if !self.bootstraps.contains_key(&session) {
            return;
        }
        match message {
            Message::ObservedAddress { sequence, address } => {
                let Some(bootstrap) = self.bootstraps.get_mut(&session) else { return };
                // draft-ietf-quic-address-discovery §4: only a higher sequence number is newer.
                if bootstrap.observed.is_some_and(|(known, _)| known >= sequence) {
                    return;
                }
                bootstrap.observed = Some((sequence, address));
                self.events.push_back(TraversalEvent::ObservedAddress { session, address });
            }
            Message::PunchMeNow { request, peer, role, start_in_ms, token, candidates, .. } => {
                self.punch_me_now(now, session, request, peer, role, start_in_ms, token, &candidates);
            }
            Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                self.relay_grant(now, session, request, peer, channel, lifetime_s);
            }
            Message::Error { request, code, reason } => {
                let attempt = self.attempt_waiting_for(session, request).filter(|id| {
                    self.attempts
                        .get(id)
                        .is_some_and(|a| matches!(a.phase, Phase::AwaitingPunch { .. } | Phase::AwaitingRelay { .. }))
                });
                if let Some(id) = attempt {
                    self.fail(now, id, format!("{}: {reason}", code_name(code)));
                }
            }
            // Only peers send these; a bootstrap that does is ignored.
            Message::AddAddress { .. }
            | Message::RemoveAddress { .. }
            | Message::ConnectRequest { .. }
            | Message::RelayRequest { .. }
            | Message::Report { .. } => {}
        }
    }

    /// A probe datagram arrived on the node socket from `from`.
    pub fn handle_probe(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        let Some(round) = self.rounds.get_mut(&probe.token).filter(|r| now < r.answer_until) else {
            self.stats.unknown_token += 1;
            return;
        };
        match probe.kind {
            ProbeKind::Probe => {
                self.stats.probes_received += 1;
                let ack = Probe { kind: ProbeKind::Ack { observed: from }, ..probe };
                self.actions.push_back(TraversalAction::SendProbe { to: from, probe: ack });
                self.learn_and_check(now, probe.token, from);
            }
            ProbeKind::Ack { .. } => {
                let Some(check) = round.checks.iter_mut().find(|c| c.transaction == probe.transaction) else {
                    return;
                };
                self.stats.probes_acked += 1;
                // RFC 8445 §7.2.5.2.1: the answer must come from where the probe went; from
                // elsewhere, it only reveals a peer-reflexive address worth probing.
                if check.remote != from {
                    self.learn_and_check(now, probe.token, from);
                    return;
                }
                if check.valid {
                    return;
                }
                check.valid = true;
                self.pair_valid(probe.token, from);
            }
        }
    }

    /// The QUIC connection the driver opened for `attempt` (after [`TraversalAction::ConnectDirect`]
    /// or [`TraversalAction::ConnectRelayed`]) came up (`connected`) or failed.
    pub fn connection_result(&mut self, now: Instant, attempt: AttemptId, connected: bool) {
        let Some(state) = self.attempts.get(&attempt) else { return };
        match (state.phase, connected) {
            (Phase::ConnectingDirect { address }, true) => {
                self.finish(now, attempt, Outcome::Direct, Some(address), None)
            }
            (Phase::ConnectingDirect { .. }, false) => {
                self.punch_failed(now, attempt, "the QUIC connection on the punched path failed");
            }
            (Phase::ConnectingRelayed { relay }, true) => {
                let peer = state.peer;
                if self.config.upgrade_attempts > 0 {
                    if let Some(path) = self.relay_paths.get_mut(&peer).filter(|p| p.attempt == Some(attempt)) {
                        path.upgrade = Some(Upgrade {
                            next: now + self.config.upgrade_interval,
                            left: self.config.upgrade_attempts,
                        });
                    }
                }
                self.finish(now, attempt, Outcome::Relayed, Some(relay), None);
            }
            (Phase::ConnectingRelayed { .. }, false) => {
                let peer = state.peer;
                if self.relay_paths.get(&peer).is_some_and(|p| p.attempt == Some(attempt)) {
                    self.remove_relay_path(peer);
                }
                self.fail(now, attempt, "the QUIC connection through the relay failed".to_owned());
            }
            _ => {}
        }
    }

    /// The QUIC connection of `attempt` (one that came up: [`TraversalEvent::AttemptFinished`]
    /// said direct or relayed) ended. Its relay path, if it has one, is removed
    /// ([`TraversalAction::RemovePath`]): renewals and background upgrades stop, and the bootstrap
    /// lets the allocation lapse; the other peer removes its path when its grant runs out.
    pub fn connection_closed(&mut self, _now: Instant, attempt: AttemptId) {
        let peer = self.relay_paths.iter().find(|(_, p)| p.attempt == Some(attempt)).map(|(peer, _)| *peer);
        let Some(peer) = peer else { return };
        self.remove_relay_path(peer);
        // A background upgrade in flight has nothing left to upgrade.
        let upgrades: Vec<AttemptId> =
            self.attempts.iter().filter(|(_, a)| a.upgrade && a.peer == peer).map(|(id, _)| *id).collect();
        for id in upgrades {
            if let Some(Attempt { phase: Phase::Punching { token }, .. }) = self.attempts.remove(&id) {
                self.stop_probing(token);
            }
        }
    }

    /// Sends probes that are due, gives up punches and requests that timed out, starts background
    /// upgrades, renews relay allocations and refreshes candidates.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_refresh.is_some_and(|at| at <= now) {
            let sessions: Vec<SessionId> = self.bootstraps.keys().copied().collect();
            for session in sessions {
                for index in 0..self.hosts.len() {
                    self.add_address(session, index);
                }
            }
            self.next_refresh = Some(now + self.config.candidate_refresh);
        }

        let overdue: Vec<AttemptId> = self
            .attempts
            .iter()
            .filter(|(_, a)| match a.phase {
                Phase::AwaitingPunch { deadline } | Phase::AwaitingRelay { deadline } => deadline <= now,
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for attempt in overdue {
            self.fail(now, attempt, "the bootstrap did not answer in time".to_owned());
        }

        let tokens: Vec<[u8; 16]> = self.rounds.keys().copied().collect();
        for token in tokens {
            self.drive_round(now, token);
        }
        self.rounds.retain(|_, round| now < round.answer_until);

        let peers: Vec<PeerId> = self.relay_paths.keys().copied().collect();
        for peer in peers {
            self.drive_relay_path(now, peer);
        }
    }

    /// When [`Traversal::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let attempts = self.attempts.values().filter_map(|a| match a.phase {
            Phase::AwaitingPunch { deadline } | Phase::AwaitingRelay { deadline } => Some(deadline),
            _ => None,
        });
        let rounds = self.rounds.values().flat_map(|r| {
            let probing = r.probing.then(|| r.next_probe.min(r.probe_until));
            [probing, Some(r.answer_until)].into_iter().flatten()
        });
        let paths = self
            .relay_paths
            .values()
            .flat_map(|p| {
                [p.upgrade.as_ref().map(|u| u.next), p.renew_at, (!p.kept_past_expiry()).then_some(p.expires)]
            })
            .flatten();
        attempts.chain(rounds).chain(paths).chain(self.next_refresh).min()
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<TraversalAction> {
        self.actions.pop_front()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<TraversalEvent> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> TraversalStats {
        self.stats
    }

    fn start_attempt(&mut self, now: Instant, session: SessionId, target: PeerId, upgrade: bool) -> AttemptId {
        let id = self.next_attempt;
        self.next_attempt += 1;
        let request = self.fresh_request();
        let deadline = now + self.config.punch_timeout;
        self.attempts.insert(
            id,
            Attempt {
                peer: target,
                session,
                connect_request: request,
                request,
                started: now,
                phase: Phase::AwaitingPunch { deadline },
                upgrade,
            },
        );
        self.signal(session, Message::ConnectRequest { request, target });
        id
    }

    #[allow(clippy::too_many_arguments)] // the fields of one PUNCH_ME_NOW
    fn punch_me_now(
        &mut self,
        now: Instant,
        session: SessionId,
        request: u64,
        peer: PeerId,
        role: PunchRole,
        start_in_ms: u32,
        token: [u8; 16],
        candidates: &[Candidate],
    ) {
        if self.rounds.contains_key(&token) {
            return;
        }
        if role == PunchRole::Initiator {
            let Some(id) = self.attempt_waiting_for(session, request) else { return };
            let Some(attempt) = self.attempts.get_mut(&id) else { return };
            if !matches!(attempt.phase, Phase::AwaitingPunch { .. }) || attempt.peer != peer {
                return;
            }
            attempt.phase = Phase::Punching { token };
        }
        let local = self.local_candidates();
        let checks = candidate::check_list(&local, candidates, role == PunchRole::Initiator)
            .into_iter()
            .map(|Pair { remote, priority, .. }| Check {
                remote: remote.address,
                priority,
                transaction: self.random.next_u64(),
                last_sent: None,
                valid: false,
            })
            .collect();
        let start = now + Duration::from_millis(u64::from(start_in_ms));
        let probe_until = start + self.config.punch_timeout;
        self.rounds.insert(
            token,
            Round {
                peer,
                role,
                checks,
                next_probe: start,
                probe_until,
                answer_until: probe_until + self.config.punch_timeout,
                probing: true,
            },
        );
    }

    fn relay_grant(
        &mut self,
        now: Instant,
        session: SessionId,
        request: u64,
        peer: PeerId,
        channel: u32,
        lifetime_s: u32,
    ) {
        let Some(relay) = self.bootstraps.get(&session).map(|b| b.address) else { return };
        let lifetime = Duration::from_secs(u64::from(lifetime_s));
        let waiting = self.attempt_waiting_for(session, request).filter(|id| {
            self.attempts.get(id).is_some_and(|a| a.peer == peer && matches!(a.phase, Phase::AwaitingRelay { .. }))
        });
        let renewing = request != 0 && self.relay_paths.get(&peer).is_some_and(|p| p.renew_request == Some(request));
        if waiting.is_none() && (request == 0 || renewing) {
            if let Some(path) = self.relay_paths.get_mut(&peer) {
                // A renewal (ours, or the other peer's seen from this end): the allocation lives on,
                // and the route changes only if the bootstrap moved it.
                path.expires = now + lifetime;
                path.session = session;
                if path.attempt.is_some() {
                    path.renew_at = Some(now + renewal_delay(lifetime));
                    path.renew_request = None;
                }
                if (path.relay, path.channel) != (relay, channel) {
                    (path.relay, path.channel) = (relay, channel);
                    let alias = path.alias;
                    self.actions.push_back(TraversalAction::InstallRelayPath { peer, alias, relay, channel });
                }
                return;
            }
        }
        // A grant this peer did not ask for (or no longer waits for) changes nothing.
        if request != 0 && waiting.is_none() {
            return;
        }
        let alias = self.alias_of(peer);
        self.relay_paths.insert(
            peer,
            RelayPath {
                alias,
                session,
                relay,
                channel,
                expires: now + lifetime,
                direct: None,
                upgrade: None,
                attempt: waiting,
                renew_at: waiting.map(|_| now + renewal_delay(lifetime)),
                renew_request: None,
            },
        );
        self.actions.push_back(TraversalAction::InstallRelayPath { peer, alias, relay, channel });
        if let Some(id) = waiting {
            if let Some(state) = self.attempts.get_mut(&id) {
                state.phase = Phase::ConnectingRelayed { relay };
            }
            self.actions.push_back(TraversalAction::ConnectRelayed { attempt: id, peer, alias });
        }
    }

    /// `from` sent this round a probe (or an asymmetric ack): it becomes a peer-reflexive candidate
    /// (RFC 8445 §7.3.1.3) and gets a triggered check (§7.3.1.4) unless one went out recently.
    fn learn_and_check(&mut self, now: Instant, token: [u8; 16], from: SocketAddr) {
        let local = self.local_candidates();
        let interval = self.config.probe_interval;
        let Some(round) = self.rounds.get_mut(&token) else { return };
        let index = match round.checks.iter().position(|c| c.remote == from) {
            Some(index) => index,
            None => {
                let learned = Candidate {
                    kind: CandidateKind::PeerReflexive,
                    priority: candidate::priority(CandidateKind::PeerReflexive, u16::MAX),
                    address: from,
                };
                let controlling = round.role == PunchRole::Initiator;
                let Some(pair) = candidate::check_list(&local, &[learned], controlling).into_iter().next() else {
                    return;
                };
                let transaction = self.random.next_u64();
                round.checks.push(Check {
                    remote: from,
                    priority: pair.priority,
                    transaction,
                    last_sent: None,
                    valid: false,
                });
                round.checks.len() - 1
            }
        };
        if !round.probing || now >= round.probe_until {
            return;
        }
        let Some(check) = round.checks.get_mut(index) else { return };
        if check.valid || check.last_sent.is_some_and(|at| now < at + interval / 2) {
            return;
        }
        check.last_sent = Some(now);
        let probe = Probe { kind: ProbeKind::Probe, token, transaction: check.transaction };
        self.stats.probes_sent += 1;
        self.actions.push_back(TraversalAction::SendProbe { to: from, probe });
    }

    /// A probe of the round `token` to `address` was acknowledged from there.
    fn pair_valid(&mut self, token: [u8; 16], address: SocketAddr) {
        let Some(round) = self.rounds.get_mut(&token) else { return };
        if !round.probing {
            return;
        }
        // The first valid pair is enough (RFC 8445 §8.1.1 aggressive nomination in spirit).
        round.probing = false;
        let (peer, role) = (round.peer, round.role);
        let attempt =
            self.attempts.iter().find(|(_, a)| a.phase == Phase::Punching { token }).map(|(id, a)| (*id, a.upgrade));
        match (role, attempt) {
            (PunchRole::Initiator, Some((id, false))) => {
                if let Some(state) = self.attempts.get_mut(&id) {
                    state.phase = Phase::ConnectingDirect { address };
                }
                self.actions.push_back(TraversalAction::ConnectDirect { attempt: id, peer, address });
            }
            (PunchRole::Initiator, Some((id, true))) => {
                self.attempts.remove(&id);
                self.move_to_direct(peer, address);
            }
            (PunchRole::Initiator, None) => {}
            // The responder accepts the initiator's connection; if they already share a relayed
            // one, its path moves here too.
            (PunchRole::Responder, _) => self.move_to_direct(peer, address),
        }
    }

    fn move_to_direct(&mut self, peer: PeerId, address: SocketAddr) {
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        if path.direct.is_some() {
            return;
        }
        path.direct = Some(address);
        path.upgrade = None;
        let alias = path.alias;
        self.stats.upgrades += 1;
        self.actions.push_back(TraversalAction::SetPathDirect { alias, address });
        self.events.push_back(TraversalEvent::Upgraded { peer, alias, address });
    }

    fn drive_round(&mut self, now: Instant, token: [u8; 16]) {
        let interval = self.config.probe_interval;
        let Some(round) = self.rounds.get_mut(&token) else { return };
        if !round.probing {
            return;
        }
        if now >= round.probe_until {
            round.probing = false;
            let attempt = self.attempts.iter().find(|(_, a)| a.phase == Phase::Punching { token }).map(|(id, _)| *id);
            if let Some(id) = attempt {
                self.punch_failed(now, id, "no direct path found");
            }
            return;
        }
        if now < round.next_probe {
            return;
        }
        round.next_probe = now + interval;
        round.checks.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut sent = 0;
        for check in round.checks.iter_mut().filter(|c| !c.valid) {
            check.last_sent = Some(now);
            let probe = Probe { kind: ProbeKind::Probe, token, transaction: check.transaction };
            self.actions.push_back(TraversalAction::SendProbe { to: check.remote, probe });
            sent += 1;
        }
        self.stats.probes_sent += sent;
    }

    fn drive_relay_path(&mut self, now: Instant, peer: PeerId) {
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        if path.expires <= now && !path.kept_past_expiry() {
            self.remove_relay_path(peer);
            return;
        }
        if path.renew_at.is_some_and(|at| at <= now) {
            // Renew through the bootstrap that granted it, or any other one (which allocates anew:
            // the grant then moves the route).
            let session = Some(path.session)
                .filter(|s| self.bootstraps.contains_key(s))
                .or_else(|| self.bootstraps.keys().next().copied());
            let request = self.fresh_request();
            let Some(path) = self.relay_paths.get_mut(&peer) else { return };
            // Until the grant arrives, retry now and then: the bootstrap may have refused (rate limit).
            path.renew_at = Some(now + self.config.punch_timeout.max(renewal_retry(path.expires, now)));
            if let Some(session) = session {
                path.renew_request = Some(request);
                self.signal(session, Message::RelayRequest { request, target: peer });
            }
        }
        let Some(path) = self.relay_paths.get_mut(&peer) else { return };
        let Some(upgrade) = path.upgrade.as_mut().filter(|u| u.next <= now) else { return };
        upgrade.left = upgrade.left.saturating_sub(1);
        if upgrade.left == 0 {
            path.upgrade = None;
        } else {
            upgrade.next = now + self.config.upgrade_interval;
        }
        let session = path.session;
        let busy = self.attempts.values().any(|a| a.peer == peer);
        if !busy && self.bootstraps.contains_key(&session) {
            self.start_attempt(now, session, peer, true);
        }
    }

    /// Forgets the relay path to `peer` and tells the driver to remove its route.
    fn remove_relay_path(&mut self, peer: PeerId) {
        if let Some(path) = self.relay_paths.remove(&peer) {
            self.actions.push_back(TraversalAction::RemovePath { alias: path.alias });
        }
    }

    /// The round `token` stops its own probing (it still answers the other peer's probes).
    fn stop_probing(&mut self, token: [u8; 16]) {
        if let Some(round) = self.rounds.get_mut(&token) {
            round.probing = false;
        }
    }

    /// The punch of `attempt` found nothing usable: ask for a relay, or give up.
    fn punch_failed(&mut self, now: Instant, attempt: AttemptId, why: &str) {
        let Some(state) = self.attempts.get(&attempt) else { return };
        if state.upgrade {
            // Retried at the next upgrade interval.
            self.attempts.remove(&attempt);
            return;
        }
        let (session, peer) = (state.session, state.peer);
        if !self.config.relay_fallback || !self.bootstraps.contains_key(&session) {
            self.fail(now, attempt, why.to_owned());
            return;
        }
        let request = self.fresh_request();
        let deadline = now + self.config.punch_timeout;
        if let Some(state) = self.attempts.get_mut(&attempt) {
            state.request = request;
            state.phase = Phase::AwaitingRelay { deadline };
        }
        self.signal(session, Message::RelayRequest { request, target: peer });
    }

    fn fail(&mut self, now: Instant, attempt: AttemptId, reason: String) {
        let upgrade = self.attempts.get(&attempt).is_some_and(|a| a.upgrade);
        if upgrade {
            self.attempts.remove(&attempt);
            return;
        }
        self.finish(now, attempt, Outcome::Failed, None, Some(reason));
    }

    fn finish(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        outcome: Outcome,
        remote: Option<SocketAddr>,
        reason: Option<String>,
    ) {
        let Some(state) = self.attempts.remove(&attempt) else { return };
        if let Phase::Punching { token } = state.phase {
            // Nobody waits for this round's pairs any more; it still answers the other peer.
            if let Some(round) = self.rounds.get_mut(&token) {
                round.probing = false;
            }
        }
        let connect = now.saturating_duration_since(state.started);
        match outcome {
            Outcome::Direct => self.stats.attempts_direct += 1,
            Outcome::Relayed => self.stats.attempts_relayed += 1,
            Outcome::Failed => self.stats.attempts_failed += 1,
        }
        if self.bootstraps.contains_key(&state.session) {
            let connect_ms = u32::try_from(connect.as_millis()).unwrap_or(u32::MAX);
            self.signal(state.session, Message::Report { request: state.connect_request, outcome, connect_ms });
        }
        self.events.push_back(TraversalEvent::AttemptFinished {
            attempt,
            peer: state.peer,
            outcome,
            remote,
            connect,
            reason,
        });
    }

    /// The attempt whose outstanding request on `session` is `request` (0 names none).
    fn attempt_waiting_for(&self, session: SessionId, request: u64) -> Option<AttemptId> {
        if request == 0 {
            return None;
        }
        self.attempts.iter().find(|(_, a)| a.session == session && a.request == request).map(|(id, _)| *id)
    }

    /// This peer's own candidates: host addresses and what the bootstraps observed. They share the
    /// node socket as their base (see [`candidate::check_list`]).
    fn local_candidates(&self) -> Vec<Candidate> {
        let hosts = self.hosts.iter().enumerate().map(|(index, (_, address))| host_candidate(index, *address));
        let reflexive = self.bootstraps.values().filter_map(|b| b.observed).map(|(_, address)| Candidate {
            kind: CandidateKind::ServerReflexive,
            priority: candidate::priority(CandidateKind::ServerReflexive, u16::MAX),
            address,
        });
        hosts.chain(reflexive).collect()
    }

    fn add_address(&mut self, session: SessionId, index: usize) {
        let Some(&(sequence, address)) = self.hosts.get(index) else { return };
        let candidate = host_candidate(index, address);
        self.signal(session, Message::AddAddress { sequence, candidate });
    }

    /// The alias of `peer`: one address in 240.0.0.0/4 (reserved, never a real peer) per peer, kept
    /// for the traversal's lifetime so that a connection's remote address never changes.
    fn alias_of(&mut self, peer: PeerId) -> SocketAddr {
        if let Some(alias) = self.aliases.get(&peer) {
            return *alias;
        }
        let ip = Ipv4Addr::from(0xF000_0000 | (self.next_alias & 0x0FFF_FFFF));
        self.next_alias = self.next_alias.wrapping_add(1);
        let alias = SocketAddr::V4(SocketAddrV4::new(ip, 1));
        self.aliases.insert(peer, alias);
        alias
    }

    fn fresh_request(&mut self) -> u64 {
        // 0 means "no request" on the wire.
        self.random.next_u64().max(1)
    }

    fn signal(&mut self, session: SessionId, message: Message) {
        self.actions.push_back(TraversalAction::Signal { session, message });
    }
}

impl RelayPath {
    /// The initiator keeps a path that moved to a direct route for as long as its connection lives,
    /// whether or not the allocation behind it is still renewed.
    fn kept_past_expiry(&self) -> bool {
        self.attempt.is_some() && self.direct.is_some()
    }
}

/// When to renew an allocation granted for `lifetime`: at 80 % of it, which leaves a renewal
/// time to travel and a retry before the allocation lapses.
fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8)
}

/// How long to wait before retrying a renewal that got no grant: a tenth of what is left.
fn renewal_retry(expires: Instant, now: Instant) -> Duration {
    expires.saturating_duration_since(now) / 10
}

/// The host candidate at `index` of the preference order.
fn host_candidate(index: usize, address: SocketAddr) -> Candidate {
    let local_preference = u16::MAX.saturating_sub(u16::try_from(index).unwrap_or(u16::MAX));
    Candidate {
        kind: CandidateKind::Host,
        priority: candidate::priority(CandidateKind::Host, local_preference),
        address,
    }
}

/// The name of an ERROR code as `docs/nat-traversal.md` spells it.
fn code_name(code: ErrorCode) -> String {
    match code {
        ErrorCode::Malformed => "malformed".to_owned(),
        ErrorCode::NotRegistered => "not_registered".to_owned(),
        ErrorCode::UnknownPeer => "unknown_peer".to_owned(),
        ErrorCode::RateLimited => "rate_limited".to_owned(),
        ErrorCode::RelayRefused => "relay_refused".to_owned(),
        ErrorCode::NotAuthenticated => "not_authenticated".to_owned(),
        ErrorCode::Other(code) => format!("error {code}"),
    }
}

#[cfg(test)]
mod tests {
    //! An in-memory network: one coordinator, peers behind toy NATs, signalling with per-peer
    //! latency, probes with latency, loss and lateness, all in simulated time.

    use super::*;
    use crate::nat::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig};
    use std::collections::{HashMap, HashSet};
    use std::net::IpAddr;

    const BOOT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 443));

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// RFC 4787 behaviours, as `/work/shared/natlab.md` builds them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum NatKind {
        /// Endpoint-independent mapping and filtering.
        FullCone,
        /// Endpoint-independent mapping, address-and-port-dependent filtering.
        PortRestricted,
        /// Endpoint-dependent mapping, address-and-port-dependent filtering.
        Symmetric,
    }

    #[derive(Debug)]
    struct Nat {
        kind: NatKind,
        public: Ipv4Addr,
        base_port: u16,
        mappings: HashMap<SocketAddr, u16>,
        next_port: u16,
        /// (public port, destination) pairs the inside host has sent to.
        sent: HashSet<(u16, SocketAddr)>,
    }

    impl Nat {
        fn new(kind: NatKind, public: Ipv4Addr) -> Self {
            Self { kind, public, base_port: 40000, mappings: HashMap::new(), next_port: 41000, sent: HashSet::new() }
        }

        fn port_for(&mut self, to: SocketAddr) -> u16 {
            match self.kind {
                NatKind::FullCone | NatKind::PortRestricted => self.base_port,
                NatKind::Symmetric => {
                    // The first destination (the bootstrap) gets the base port, so that turning the
                    // NAT into a cone keeps the observed address.
                    let first = self.mappings.is_empty();
                    let next = &mut self.next_port;
                    *self.mappings.entry(to).or_insert_with(|| {
                        if first {
                            40000
                        } else {
                            *next += 1;
                            *next
                        }
                    })
                }
            }
        }

        /// An outgoing datagram to `to`: its public source, and the filter state it opens.
        fn outbound(&mut self, to: SocketAddr) -> SocketAddr {
            let port = self.port_for(to);
            self.sent.insert((port, to));
            SocketAddr::new(self.public.into(), port)
        }

        /// Whether a datagram from `from` to public `port` gets in.
        fn inbound(&self, from: SocketAddr, port: u16) -> bool {
            match self.kind {
                NatKind::FullCone => self.sent.iter().any(|(p, _)| *p == port),
                NatKind::PortRestricted | NatKind::Symmetric => self.sent.contains(&(port, from)),
            }
        }
    }

    struct Node {
        id: PeerId,
        traversal: Traversal,
        nat: Nat,
        inner: SocketAddr,
        session: SessionId,
        /// One-way signalling latency to the bootstrap.
        one_way: Duration,
        /// Extra delay of every PUNCH_ME_NOW to this node.
        punch_delay: Duration,
        events: Vec<TraversalEvent>,
        signals_received: Vec<Message>,
        probes_to: Vec<SocketAddr>,
        first_probe: Option<Instant>,
        connects_direct: Vec<SocketAddr>,
        relay_paths: Vec<(PeerId, SocketAddr, SocketAddr, u32)>,
        direct_paths: Vec<(SocketAddr, SocketAddr)>,
        removed_paths: Vec<SocketAddr>,
    }

    /// A [`TraversalEvent::AttemptFinished`], unpacked.
    #[derive(Debug)]
    struct Finished {
        attempt: AttemptId,
        outcome: Outcome,
        remote: Option<SocketAddr>,
        connect: Duration,
        reason: Option<String>,
    }

    enum Delivery {
        ToCoordinator { session: SessionId, message: Message },
        ToNode { node: usize, session: SessionId, message: Message },
        Datagram { from: SocketAddr, to: SocketAddr, probe: Probe },
        DirectResult { node: usize, attempt: AttemptId, address: SocketAddr },
        RelayedResult { node: usize, attempt: AttemptId, peer: PeerId },
    }

    struct World {
        now: Instant,
        coordinator: Coordinator,
        nodes: Vec<Node>,
        sessions: HashMap<SessionId, usize>,
        next_session: SessionId,
        queue: BTreeMap<(Instant, u64), Delivery>,
        sequence: u64,
        random: SplitMix64,
        traversal: TraversalConfig,
        /// Share of probe datagrams lost.
        loss: f64,
        /// Share of probe datagrams delayed by `late_by` more.
        late: f64,
        late_by: Duration,
        p2p_latency: Duration,
        dropped: u64,
        relays: BTreeMap<u32, (SocketAddr, SocketAddr)>,
    }

    impl World {
        fn new(seed: u64) -> Self {
            Self::with(seed, CoordinatorConfig::default(), TraversalConfig::default())
        }

        fn with(seed: u64, coordinator: CoordinatorConfig, traversal: TraversalConfig) -> Self {
            Self {
                now: Instant::now(),
                coordinator: Coordinator::new(coordinator, seed),
                nodes: Vec::new(),
                sessions: HashMap::new(),
                next_session: 1,
                queue: BTreeMap::new(),
                sequence: 0,
                random: SplitMix64::new(seed ^ 0x5eed),
                traversal,
                loss: 0.0,
                late: 0.0,
                late_by: ms(80),
                p2p_latency: ms(15),
                dropped: 0,
                relays: BTreeMap::new(),
            }
        }

        /// A peer behind a NAT of `kind`, registered with the bootstrap.
        fn add_node(&mut self, kind: NatKind, one_way: Duration) -> usize {
            let index = self.nodes.len();
            let octet = u8::try_from(index).unwrap();
            let seed = self.random.next_u64();
            let mut node = Node {
                id: PeerId([octet + 1; 32]),
                traversal: Traversal::new(self.traversal.clone(), seed),
                nat: Nat::new(kind, Ipv4Addr::new(198, 18, 0, 10 + octet)),
                inner: SocketAddr::new(Ipv4Addr::new(10, octet, 0, 2).into(), 5000),
                session: 0,
                one_way,
                punch_delay: Duration::ZERO,
                events: Vec::new(),
                signals_received: Vec::new(),
                probes_to: Vec::new(),
                first_probe: None,
                connects_direct: Vec::new(),
                relay_paths: Vec::new(),
                direct_paths: Vec::new(),
                removed_paths: Vec::new(),
            };
            node.traversal.set_host_candidates(self.now, vec![node.inner]);
            self.nodes.push(node);
            self.open_session(index);
            index
        }

        /// Opens a (new) signalling session for `node`, as a new connection to the bootstrap does.
        fn open_session(&mut self, node: usize) -> SessionId {
            let session = self.next_session;
            self.next_session += 1;
            self.sessions.insert(session, node);
            let n = &mut self.nodes[node];
            n.session = session;
            let observed = n.nat.outbound(BOOT);
            self.coordinator.session_opened(self.now, session, Some(n.id), observed, 2 * n.one_way);
            n.traversal.bootstrap_connected(self.now, session, BOOT);
            session
        }

        fn observed(&self, node: usize) -> SocketAddr {
            let nat = &self.nodes[node].nat;
            let port = match nat.kind {
                NatKind::Symmetric => nat.mappings.get(&BOOT).copied().unwrap_or(nat.base_port),
                _ => nat.base_port,
            };
            SocketAddr::new(nat.public.into(), port)
        }

        fn schedule(&mut self, at: Instant, delivery: Delivery) {
            self.sequence += 1;
            self.queue.insert((at, self.sequence), delivery);
        }

        fn chance(&mut self, p: f64) -> bool {
            (self.random.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
        }

        /// Carries out every pending action and collects every event.
        fn pump(&mut self) {
            let now = self.now;
            while let Some(action) = self.coordinator.poll_action() {
                match action {
                    CoordinatorAction::Send { session, message } => {
                        let Some(&node) = self.sessions.get(&session) else { continue };
                        let mut delay = self.nodes[node].one_way;
                        if matches!(message, Message::PunchMeNow { .. }) {
                            delay += self.nodes[node].punch_delay;
                        }
                        self.schedule(now + delay, Delivery::ToNode { node, session, message });
                    }
                    CoordinatorAction::InstallRelay { channel, a, b, .. } => {
                        self.relays.insert(channel, (a, b));
                    }
                    CoordinatorAction::RemoveRelay { channel } => {
                        self.relays.remove(&channel);
                    }
                }
            }
            for index in 0..self.nodes.len() {
                while let Some(action) = self.nodes[index].traversal.poll_action() {
                    self.carry_out(index, action);
                }
                while let Some(event) = self.nodes[index].traversal.poll_event() {
                    self.nodes[index].events.push(event);
                }
            }
        }

        fn carry_out(&mut self, index: usize, action: TraversalAction) {
            let now = self.now;
            let node = &mut self.nodes[index];
            match action {
                TraversalAction::Signal { message, .. } => {
                    let at = now + node.one_way;
                    let session = node.session;
                    self.schedule(at, Delivery::ToCoordinator { session, message });
                }
                TraversalAction::SendProbe { to, probe } => {
                    if probe.kind == ProbeKind::Probe {
                        node.first_probe.get_or_insert(now);
                    }
                    node.probes_to.push(to);
                    let from = node.nat.outbound(to);
                    if self.chance(self.loss) {
                        self.dropped += 1;
                        return;
                    }
                    let late = if self.chance(self.late) { self.late_by } else { Duration::ZERO };
                    self.schedule(now + self.p2p_latency + late, Delivery::Datagram { from, to, probe });
                }
                TraversalAction::ConnectDirect { attempt, address, .. } => {
                    node.connects_direct.push(address);
                    self.schedule(now + 2 * self.p2p_latency, Delivery::DirectResult { node: index, attempt, address });
                }
                TraversalAction::InstallRelayPath { peer, alias, relay, channel } => {
                    node.relay_paths.push((peer, alias, relay, channel));
                }
                TraversalAction::ConnectRelayed { attempt, peer, .. } => {
                    let at = now + 4 * node.one_way + ms(200);
                    self.schedule(at, Delivery::RelayedResult { node: index, attempt, peer });
                }
                TraversalAction::SetPathDirect { alias, address } => node.direct_paths.push((alias, address)),
                TraversalAction::RemovePath { alias } => node.removed_paths.push(alias),
            }
        }

        fn node_at(&self, ip: IpAddr) -> Option<usize> {
            self.nodes.iter().position(|n| IpAddr::from(n.nat.public) == ip)
        }

        fn deliver(&mut self, delivery: Delivery) {
            let now = self.now;
            match delivery {
                Delivery::ToCoordinator { session, message } => self.coordinator.handle(now, session, message),
                Delivery::ToNode { node, session, message } => {
                    self.nodes[node].signals_received.push(message.clone());
                    self.nodes[node].traversal.handle_signal(now, session, message);
                }
                Delivery::Datagram { from, to, probe } => {
                    let Some(node) = self.node_at(to.ip()) else { return };
                    if self.nodes[node].nat.inbound(from, to.port()) {
                        self.nodes[node].traversal.handle_probe(now, from, probe);
                    }
                }
                Delivery::DirectResult { node, attempt, address } => {
                    // A QUIC handshake needs both directions: our packets in through their NAT,
                    // their answers back from the address we sent to, in through ours.
                    let source = self.nodes[node].nat.outbound(address);
                    let connected = self.node_at(address.ip()).is_some_and(|other| {
                        let forward = self.nodes[other].nat.inbound(source, address.port());
                        let reply = self.nodes[other].nat.outbound(source);
                        forward && reply == address && self.nodes[node].nat.inbound(reply, source.port())
                    });
                    self.nodes[node].traversal.connection_result(now, attempt, connected);
                }
                Delivery::RelayedResult { node, attempt, peer } => {
                    let connected = self.relay_works(node, peer);
                    self.nodes[node].traversal.connection_result(now, attempt, connected);
                }
            }
        }

        /// Both ends installed a path on one channel, and the bootstrap relays that channel between
        /// their observed addresses.
        fn relay_works(&self, node: usize, peer: PeerId) -> bool {
            let Some(other) = self.nodes.iter().position(|n| n.id == peer) else { return false };
            let me = self.nodes[node].id;
            let mine = self.nodes[node].relay_paths.iter().rev().find(|p| p.0 == peer).map(|p| p.3);
            let theirs = self.nodes[other].relay_paths.iter().rev().find(|p| p.0 == me).map(|p| p.3);
            let ends = [self.observed(node), self.observed(other)];
            match (mine, theirs) {
                (Some(c), Some(d)) if c == d => {
                    self.relays.get(&c).is_some_and(|(a, b)| [*a, *b] == ends || [*b, *a] == ends)
                }
                _ => false,
            }
        }

        fn next_instant(&self) -> Option<Instant> {
            let queued = self.queue.keys().next().map(|(at, _)| *at);
            let nodes = self.nodes.iter().filter_map(|n| n.traversal.poll_timeout());
            queued.into_iter().chain(self.coordinator.poll_timeout()).chain(nodes).min()
        }

        /// Runs until `done` holds (true) or `limit` of simulated time passed (false).
        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
            let deadline = self.now + limit;
            for _ in 0..1_000_000 {
                self.pump();
                if done(self) {
                    return true;
                }
                match self.next_instant() {
                    Some(next) if next <= deadline => self.now = self.now.max(next),
                    _ => {
                        self.now = deadline;
                        return false;
                    }
                }
                while let Some(entry) = self.queue.first_entry() {
                    if entry.key().0 > self.now {
                        break;
                    }
                    let delivery = entry.remove();
                    self.deliver(delivery);
                    self.pump();
                }
                let now = self.now;
                if self.coordinator.poll_timeout().is_some_and(|t| t <= now) {
                    self.coordinator.handle_timeout(now);
                }
                for node in &mut self.nodes {
                    if node.traversal.poll_timeout().is_some_and(|t| t <= now) {
                        node.traversal.handle_timeout(now);
                    }
                }
            }
            panic!("the simulation does not settle");
        }

        fn run_for(&mut self, duration: Duration) {
            self.run_until(duration, |_| false);
        }

        fn finished(&self, node: usize) -> Vec<Finished> {
            self.nodes[node]
                .events
                .iter()
                .filter_map(|e| match e {
                    TraversalEvent::AttemptFinished { attempt, outcome, remote, connect, reason, .. } => {
                        Some(Finished {
                            attempt: *attempt,
                            outcome: *outcome,
                            remote: *remote,
                            connect: *connect,
                            reason: reason.clone(),
                        })
                    }
                    _ => None,
                })
                .collect()
        }

        /// `from` connects to `to`; waits for the attempt to end and returns how.
        fn connect(&mut self, from: usize, to: PeerId) -> (Outcome, Option<SocketAddr>, Duration, Option<String>) {
            let attempt = self.nodes[from].traversal.connect(self.now, to).unwrap();
            let ended = |w: &World| w.finished(from).iter().any(|f| f.attempt == attempt);
            assert!(self.run_until(Duration::from_secs(30), ended), "attempt {attempt} never ended");
            let Finished { outcome, remote, connect, reason, .. } =
                self.finished(from).into_iter().find(|f| f.attempt == attempt).unwrap();
            (outcome, remote, connect, reason)
        }
    }

    /// Two registered peers behind `a` and `b`, signalling settled.
    fn pair(seed: u64, a: NatKind, b: NatKind) -> World {
        let mut world = World::new(seed);
        world.add_node(a, ms(10));
        world.add_node(b, ms(25));
        world.run_for(ms(200));
        world
    }

    #[test]
    fn cone_to_cone_connects_directly() {
        let mut w = pair(1, NatKind::FullCone, NatKind::FullCone);
        let b = w.nodes[1].id;
        let (outcome, remote, connect, reason) = w.connect(0, b);
        assert_eq!((outcome, reason), (Outcome::Direct, None));
        assert_eq!(remote, Some(w.observed(1)), "B's public mapping, not its private host address");
        assert!(connect < ms(500), "took {connect:?}");
        assert!(w.relays.is_empty() && w.nodes[0].relay_paths.is_empty());
        assert!(w.nodes[1].connects_direct.is_empty(), "the responder accepts, it does not connect");
        w.run_for(ms(100));
        assert_eq!(w.coordinator.stats().reports_direct, 1, "the outcome was reported");
    }

    #[test]
    fn port_restricted_pair_connects_directly() {
        let mut w = pair(2, NatKind::PortRestricted, NatKind::PortRestricted);
        let b = w.nodes[1].id;
        let (outcome, remote, _, reason) = w.connect(0, b);
        assert_eq!((outcome, reason), (Outcome::Direct, None));
        assert_eq!(remote, Some(w.observed(1)));
        assert_eq!(w.nodes[0].connects_direct, [w.observed(1)]);
    }

    #[test]
    fn every_nat_pair_connects_like_raw_simultaneous_open_or_through_the_relay() {
        use NatKind::*;
        let kinds = [FullCone, PortRestricted, Symmetric];
        for (i, &a) in kinds.iter().enumerate() {
            for (j, &b) in kinds.iter().enumerate() {
                let mut w = pair(10 + (3 * i + j) as u64, a, b);
                let target = w.nodes[1].id;
                let (outcome, remote, _, reason) = w.connect(0, target);
                // natlab.md: only port-restricted/symmetric and symmetric/symmetric have no path.
                let no_direct_path =
                    matches!((a, b), (Symmetric, PortRestricted | Symmetric) | (PortRestricted, Symmetric));
                if no_direct_path {
                    assert_eq!((outcome, remote), (Outcome::Relayed, Some(BOOT)), "{a:?} -> {b:?}: {reason:?}");
                } else {
                    assert_eq!(outcome, Outcome::Direct, "{a:?} -> {b:?}: {reason:?}");
                    assert_eq!(remote.map(|r| r.ip()), Some(IpAddr::from(w.nodes[1].nat.public)), "{a:?} -> {b:?}");
                }
            }
        }
    }

    #[test]
    fn symmetric_to_port_restricted_falls_back_to_the_relay_between_observed_addresses() {
        let mut w = pair(3, NatKind::Symmetric, NatKind::PortRestricted);
        let (a, b) = (w.nodes[0].id, w.nodes[1].id);
        let (outcome, remote, connect, reason) = w.connect(0, b);
        assert_eq!((outcome, remote, reason), (Outcome::Relayed, Some(BOOT), None));
        assert!(connect >= Duration::from_secs(3), "the punch had its full time: {connect:?}");

        let relays: Vec<_> = w.relays.iter().map(|(c, ends)| (*c, *ends)).collect();
        let [(channel, ends)] = relays[..] else { panic!("one relay expected: {relays:?}") };
        assert_eq!(ends, (w.observed(0), w.observed(1)), "the relay sends only to observed addresses");

        let [(peer, alias, relay, ch)] = w.nodes[0].relay_paths[..] else { panic!("{:?}", w.nodes[0].relay_paths) };
        assert_eq!((peer, relay, ch), (b, BOOT, channel));
        let IpAddr::V4(ip) = alias.ip() else { panic!("alias {alias}") };
        assert_eq!(ip.octets()[0] & 0xF0, 240, "aliases live in 240.0.0.0/4");
        let [(peer, _, relay, ch)] = w.nodes[1].relay_paths[..] else { panic!("{:?}", w.nodes[1].relay_paths) };
        assert_eq!((peer, relay, ch), (a, BOOT, channel), "the responder can accept through the relay");
        w.run_for(ms(100));
        assert_eq!(w.coordinator.stats().reports_relayed, 1);
    }

    #[test]
    fn lost_and_late_probes_still_connect_directly() {
        let mut dropped = 0;
        for seed in 0..20 {
            let mut w = World::new(100 + seed);
            w.loss = 0.3;
            w.late = 0.3;
            w.late_by = ms(120);
            w.add_node(NatKind::PortRestricted, ms(10));
            w.add_node(NatKind::PortRestricted, ms(40));
            w.run_for(ms(200));
            let b = w.nodes[1].id;
            let (outcome, remote, connect, reason) = w.connect(0, b);
            assert_eq!((outcome, reason), (Outcome::Direct, None), "seed {seed}");
            assert_eq!(remote, Some(w.observed(1)));
            assert!(connect < Duration::from_secs(3), "seed {seed}: {connect:?}");
            dropped += w.dropped;
        }
        assert!(dropped > 20, "the network did lose probes ({dropped})");
    }

    #[test]
    fn a_late_punch_me_now_still_connects_because_probes_repeat() {
        let mut w = pair(4, NatKind::PortRestricted, NatKind::PortRestricted);
        w.nodes[1].punch_delay = Duration::from_secs(1);
        let b = w.nodes[1].id;
        let (outcome, _, connect, reason) = w.connect(0, b);
        assert_eq!((outcome, reason), (Outcome::Direct, None));
        assert!(connect > Duration::from_secs(1), "connected only once B started probing: {connect:?}");
        assert!(connect < Duration::from_secs(3), "within the punch timeout: {connect:?}");
    }

    #[test]
    fn both_peers_start_probing_within_a_millisecond_despite_different_rtts() {
        let mut w = World::new(5);
        w.add_node(NatKind::FullCone, ms(7));
        w.add_node(NatKind::FullCone, ms(93));
        w.run_for(ms(500));
        let b = w.nodes[1].id;
        let asked = w.now;
        let (outcome, ..) = w.connect(0, b);
        assert_eq!(outcome, Outcome::Direct);
        let (ta, tb) = (w.nodes[0].first_probe.unwrap(), w.nodes[1].first_probe.unwrap());
        let gap = if ta > tb { ta - tb } else { tb - ta };
        assert!(gap <= ms(1), "starts {gap:?} apart");
        // The request needs 7 ms to arrive; then the longer one-way delay (93 ms) + 30 ms margin.
        assert!(ta - asked >= ms(7 + 93 + 30 - 1), "started {:?} after the request", ta - asked);
    }

    #[test]
    fn probes_with_unknown_tokens_are_ignored() {
        let mut w = pair(6, NatKind::FullCone, NatKind::FullCone);
        let stranger: SocketAddr = "198.18.0.99:666".parse().unwrap();
        let forged = Probe { kind: ProbeKind::Probe, token: [7; 16], transaction: 1 };
        let now = w.now;
        w.nodes[0].traversal.handle_probe(now, stranger, forged);
        let ack = Probe { kind: ProbeKind::Ack { observed: stranger }, ..forged };
        w.nodes[0].traversal.handle_probe(now, stranger, ack);
        w.run_for(ms(100));
        assert!(!w.nodes[0].probes_to.contains(&stranger), "nothing is sent to a stranger");
        assert_eq!(w.nodes[0].traversal.stats().unknown_token, 2);
        // Nor during a punch: the token of another round does not open the door.
        let b = w.nodes[1].id;
        let attempt = w.nodes[0].traversal.connect(w.now, b).unwrap();
        w.run_until(Duration::from_secs(1), |w| w.nodes[0].first_probe.is_some());
        let now = w.now;
        w.nodes[0].traversal.handle_probe(now, stranger, forged);
        w.run_until(Duration::from_secs(5), |w| w.finished(0).iter().any(|f| f.attempt == attempt));
        assert!(!w.nodes[0].probes_to.contains(&stranger));
        assert_eq!(w.nodes[0].traversal.stats().unknown_token, 3);
    }

    #[test]
    fn an_unregistered_target_fails_with_unknown_peer() {
        let mut w = pair(7, NatKind::FullCone, NatKind::FullCone);
        let (outcome, remote, _, reason) = w.connect(0, PeerId([0xee; 32]));
        assert_eq!((outcome, remote), (Outcome::Failed, None));
        assert!(reason.as_deref().is_some_and(|r| r.starts_with("unknown_peer")), "{reason:?}");
        assert!(w.nodes[0].probes_to.is_empty());
        w.run_for(ms(100));
        assert_eq!(w.coordinator.stats().reports_failed, 1);
    }

    #[test]
    fn a_signalling_flood_is_rate_limited() {
        let mut w = pair(8, NatKind::FullCone, NatKind::FullCone);
        let now = w.now;
        for i in 0..50u8 {
            w.nodes[0].traversal.connect(now, PeerId([0x80 + i; 32])).unwrap();
        }
        w.run_until(Duration::from_secs(10), |w| w.finished(0).len() == 50);
        let reasons: Vec<String> = w.finished(0).into_iter().filter_map(|f| f.reason).collect();
        assert_eq!(reasons.len(), 50, "every attempt ended and failed");
        let count = |prefix: &str| reasons.iter().filter(|r| r.starts_with(prefix)).count();
        assert_eq!(count("unknown_peer"), 40, "a burst of 40 went through");
        assert_eq!(count("rate_limited"), 1, "one ERROR per burst");
        assert_eq!(count("the bootstrap did not answer"), 9, "the rest were dropped: {reasons:?}");
        assert!(w.coordinator.stats().rate_limited >= 10);
    }

    #[test]
    fn a_reconnected_peer_is_reached_at_its_new_address() {
        let mut w = pair(9, NatKind::PortRestricted, NatKind::PortRestricted);
        let old = w.nodes[1].session;
        // B's NAT rebinds; B opens a new connection to the bootstrap, the old one lingers.
        w.nodes[1].nat.base_port = 45000;
        w.open_session(1);
        w.run_for(ms(200));
        let now = w.now;
        w.coordinator.session_closed(now, old);
        w.nodes[1].traversal.bootstrap_lost(now, old);
        w.run_for(ms(100));
        assert_eq!(w.coordinator.registered(), 2, "closing the replaced session unregistered nobody");
        let b = w.nodes[1].id;
        let (outcome, remote, _, reason) = w.connect(0, b);
        assert_eq!((outcome, reason), (Outcome::Direct, None));
        assert_eq!(remote, Some("198.18.0.11:45000".parse().unwrap()));
    }

    /// The grants `node` received: (request, channel).
    fn grants_received(w: &World, node: usize) -> Vec<(u64, u32)> {
        w.nodes[node]
            .signals_received
            .iter()
            .filter_map(|m| match m {
                Message::RelayGrant { request, channel, .. } => Some((*request, *channel)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_relayed_connection_outlives_the_allocation_lifetime_by_renewing_it() {
        // Default lifetime: 10 minutes.
        let mut w = pair(11, NatKind::Symmetric, NatKind::Symmetric);
        let (a, b) = (w.nodes[0].id, w.nodes[1].id);
        let (outcome, ..) = w.connect(0, b);
        assert_eq!(outcome, Outcome::Relayed);
        let [(channel, ends)] = w.relays.iter().map(|(c, e)| (*c, *e)).collect::<Vec<_>>()[..] else {
            panic!("{:?}", w.relays)
        };
        w.run_for(Duration::from_secs(25 * 60));
        assert_eq!(w.relays.get(&channel), Some(&ends), "the same allocation, still installed");
        assert!(w.relay_works(0, b) && w.relay_works(1, a), "both ends still route through it");
        assert_eq!(w.coordinator.stats().active_relays, 1);
        assert!(w.coordinator.stats().relays_renewed >= 2, "{:?}", w.coordinator.stats());
        // Renewed at 80 % of each lifetime: 8, 16 and 24 minutes, each granted to both ends.
        let renewals = |node| grants_received(&w, node).iter().filter(|(_, c)| *c == channel).count();
        assert_eq!((renewals(0), renewals(1)), (4, 4));
        assert!(w.nodes[0].removed_paths.is_empty() && w.nodes[1].removed_paths.is_empty());
        assert_eq!(w.nodes[0].relay_paths.len(), 1, "the route never changed");
        assert_eq!(w.nodes[1].relay_paths.len(), 1);
        assert_eq!(w.finished(0).len(), 1, "background upgrades that fail end quietly");
    }

    #[test]
    fn a_closed_relayed_connection_removes_both_paths_and_the_allocation_lapses() {
        let mut w = pair(17, NatKind::Symmetric, NatKind::Symmetric);
        let b = w.nodes[1].id;
        let attempt = w.nodes[0].traversal.connect(w.now, b).unwrap();
        w.run_until(Duration::from_secs(30), |w| !w.finished(0).is_empty());
        assert_eq!(w.finished(0)[0].outcome, Outcome::Relayed);
        // Into the first background upgrade round (10 s after the connection).
        let probing = w.nodes[0].probes_to.len();
        w.run_for(Duration::from_secs(11));
        assert!(w.nodes[0].probes_to.len() > probing, "an upgrade round is probing");
        let (alias_a, alias_b) = (w.nodes[0].relay_paths[0].1, w.nodes[1].relay_paths[0].1);

        let now = w.now;
        w.nodes[0].traversal.connection_closed(now, attempt);
        w.pump();
        assert_eq!(w.nodes[0].removed_paths, [alias_a], "the initiator removes its path at once");
        assert!(w.nodes[1].removed_paths.is_empty());
        let sent_before = w.nodes[0].probes_to.len();

        // B's grant runs out 10 minutes after it was granted; so does the allocation.
        w.run_for(Duration::from_secs(10 * 60));
        assert_eq!(w.nodes[1].removed_paths, [alias_b], "the responder's grant lapsed");
        assert!(w.relays.is_empty(), "the data plane was told to remove the allocation");
        assert_eq!(w.coordinator.stats().active_relays, 0);
        assert_eq!(w.nodes[0].probes_to.len(), sent_before, "the upgrade round stopped, and no other started");
        assert_eq!(w.nodes[0].removed_paths, [alias_a], "removed once");
    }

    #[test]
    fn a_relayed_pair_moves_to_a_direct_path_when_the_nat_allows_it() {
        let mut w = pair(12, NatKind::Symmetric, NatKind::PortRestricted);
        let (a, b) = (w.nodes[0].id, w.nodes[1].id);
        let (outcome, ..) = w.connect(0, b);
        assert_eq!(outcome, Outcome::Relayed);
        // A's NAT becomes endpoint-independent (same public port as the bootstrap saw).
        w.nodes[0].nat.kind = NatKind::PortRestricted;
        let upgraded = |w: &World| !w.nodes[0].direct_paths.is_empty() && !w.nodes[1].direct_paths.is_empty();
        assert!(w.run_until(Duration::from_secs(15), upgraded), "no upgrade within one interval");

        let alias_a = w.nodes[0].relay_paths[0].1;
        let alias_b = w.nodes[1].relay_paths[0].1;
        assert_eq!(w.nodes[0].direct_paths, [(alias_a, w.observed(1))]);
        assert_eq!(w.nodes[1].direct_paths, [(alias_b, w.observed(0))]);
        assert!(w.nodes[0].events.contains(&TraversalEvent::Upgraded {
            peer: b,
            alias: alias_a,
            address: w.observed(1)
        }));
        assert!(w.nodes[1].events.contains(&TraversalEvent::Upgraded {
            peer: a,
            alias: alias_b,
            address: w.observed(0)
        }));
        assert!(w.nodes[0].connects_direct.is_empty(), "the relayed connection moves; no new one");
        assert_eq!(w.finished(0).len(), 1);
    }

    #[test]
    fn without_relay_fallback_a_failed_punch_fails_the_attempt() {
        let traversal = TraversalConfig { relay_fallback: false, ..Default::default() };
        let mut w = World::with(13, CoordinatorConfig::default(), traversal);
        w.add_node(NatKind::Symmetric, ms(10));
        w.add_node(NatKind::Symmetric, ms(10));
        w.run_for(ms(200));
        let b = w.nodes[1].id;
        let (outcome, _, _, reason) = w.connect(0, b);
        assert_eq!((outcome, reason.as_deref()), (Outcome::Failed, Some("no direct path found")));
        assert!(w.relays.is_empty());
    }

    #[test]
    fn losing_the_bootstrap_fails_the_attempt() {
        let mut w = pair(14, NatKind::FullCone, NatKind::FullCone);
        let (b, session) = (w.nodes[1].id, w.nodes[0].session);
        let now = w.now;
        let attempt = w.nodes[0].traversal.connect(now, b).unwrap();
        w.nodes[0].traversal.bootstrap_lost(now, session);
        w.pump();
        let finished = w.finished(0);
        assert_eq!(finished.len(), 1);
        assert_eq!((finished[0].attempt, finished[0].outcome), (attempt, Outcome::Failed));
        assert_eq!(w.nodes[0].traversal.connect(now, b), Err(TraversalError::NoBootstrap));
    }

    #[test]
    fn host_candidates_are_refreshed_before_they_expire() {
        let mut w = pair(15, NatKind::FullCone, NatKind::FullCone);
        w.run_for(Duration::from_secs(11 * 60));
        let a = w.nodes[0].id;
        let (outcome, ..) = w.connect(1, a);
        assert_eq!(outcome, Outcome::Direct);
        let punch = w.nodes[1].signals_received.iter().rev().find_map(|m| match m {
            Message::PunchMeNow { candidates, .. } => Some(candidates.clone()),
            _ => None,
        });
        let inner = w.nodes[0].inner;
        assert!(punch.unwrap().iter().any(|c| c.address == inner && c.kind == CandidateKind::Host));
    }

    #[test]
    fn connect_twice_to_one_peer_is_one_attempt() {
        let mut w = pair(16, NatKind::FullCone, NatKind::FullCone);
        let b = w.nodes[1].id;
        let now = w.now;
        let first = w.nodes[0].traversal.connect(now, b).unwrap();
        assert_eq!(w.nodes[0].traversal.connect(now, b), Ok(first));
    }
}
