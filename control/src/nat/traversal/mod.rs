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
//!
//! When one peer is behind endpoint-dependent mapping (RFC 4787 §4.1, a "symmetric" NAT) and the
//! other behind endpoint-independent mapping, a round also *sprays* (the birthday technique,
//! `docs/nat-traversal.md`, "Many-probe rounds"): the EDM side probes the other's server-reflexive
//! address from many extra sockets, each of which gets its own mapping, while the EIM side probes
//! random ports of the EDM side's public IP (the IP a bootstrap observed it at, and only for the
//! round's probing time). A guess that hits one of those mappings opens the path both ways.
//! Which side is which comes from the PUNCH_ME_NOW flags; the traversal shares with each bootstrap
//! the addresses the other bootstraps observed, so that they can tell.
//!
//! This module is the traversal's public face; the work is split by responsibility: `attempt`
//! (an attempt's lifecycle, failover to another bootstrap), `candidates` (this peer's own
//! candidates), `round` (punch rounds), `spray` (many-probe rounds), `relay` (relay paths),
//! `upgrade` (relayed to direct) and `stats` (counters).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::coordinator::{SessionId, SplitMix64};
use super::message::{Message, Outcome};
use super::probe::{Probe, ProbeKind};
use crate::PeerId;
use attempt::{code_name, Attempt, Phase};
use discovery::Discovery;
use relay::RelayPath;
use round::{Punch, Round};
use spray::{Spray, SprayState};
use upgrade::Upgrade;

pub use events::{TraversalAction, TraversalEvent};

mod across;
mod attempt;
mod candidates;
mod discovery;
mod events;
mod relay;
mod round;
mod spray;
mod stats;
mod upgrade;

pub use stats::TraversalStats;

#[cfg(test)]
mod tests;

/// A connection attempt, named by [`Traversal::connect`].
pub type AttemptId = u64;

/// How a peer punches, falls back and upgrades. One source of truth for the peer's NAT traversal
/// timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraversalConfig {
    /// Pause between two rounds of probes to the pairs not yet valid (RFC 8445 §14.2 `Ta`-like
    /// pacing). Default 50 ms.
    pub probe_interval: Duration,
    /// How long a punch probes before it gives up; also how long a finished round keeps
    /// answering the other peer's probes. Default 3 s.
    pub punch_timeout: Duration,
    /// How long a bootstrap may take to answer a request (PUNCH_ME_NOW, RELAY_GRANT). The answer
    /// travels on a QUIC stream, so it arrives unless the connection dies; on a lossy path a few
    /// losses in a row back QUIC's retransmission timer off to seconds. Default 10 s.
    pub answer_timeout: Duration,
    /// Whether an attempt whose punch found no valid pair asks for a relay. Default true.
    pub relay_fallback: bool,
    /// While a peer is reached through the relay, punching is retried this often. Default 10 s.
    pub upgrade_interval: Duration,
    /// How many times punching is retried while relayed. Default 6.
    pub upgrade_attempts: u32,
    /// How often host candidates are re-sent to the bootstraps (they expire there unless re-added).
    /// Default 5 minutes.
    pub candidate_refresh: Duration,
    /// Extra sockets the endpoint-dependent side of a many-probe round opens, each probing from a
    /// mapping of its own; 0 never sprays (nor guesses). Default 256.
    pub spray_sockets: u16,
    /// Ports of the endpoint-dependent side the other side guesses per probe interval, new ones
    /// each time. Default 256.
    pub spray_guesses: u16,
    /// Two-sided many-probe rounds, when both sides are behind endpoint-dependent mapping: ports
    /// each side guesses per probe interval (from its node socket, whose every guess gets a
    /// mapping of its own); 0 turns them off. Default 640 (12 800 a second at the default
    /// interval): about 63 % of rounds meet within [`TraversalConfig::birthday_timeout`] when
    /// both NATs pick ports at random from 64 512.
    pub birthday_guesses: u16,
    /// How long a two-sided round guesses. Default 5 s (at most 64 000 guesses per side).
    pub birthday_timeout: Duration,
}

impl Default for TraversalConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(50),
            punch_timeout: Duration::from_secs(3),
            answer_timeout: Duration::from_secs(10),
            relay_fallback: true,
            upgrade_interval: Duration::from_secs(10),
            upgrade_attempts: 6,
            candidate_refresh: Duration::from_secs(300),
            spray_sockets: 256,
            spray_guesses: 256,
            birthday_guesses: 640,
            birthday_timeout: Duration::from_secs(5),
        }
    }
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
    /// The ADD_ADDRESS sequence number under which this bootstrap's observed address is shared
    /// with the other bootstraps.
    shared_sequence: u64,
    /// Its alternate addresses, asked where they see this peer.
    discoveries: Vec<Discovery>,
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
    /// host candidates there, and where the other bootstraps observed this peer.
    pub fn bootstrap_connected(&mut self, now: Instant, session: SessionId, bootstrap: SocketAddr) {
        let shared_sequence = self.next_sequence;
        self.next_sequence += 1;
        self.bootstraps.insert(
            session,
            Bootstrap { address: bootstrap, observed: None, shared_sequence, discoveries: Vec::new() },
        );
        for index in 0..self.hosts.len() {
            self.add_address(session, index);
        }
        self.share_reflexive_with(session);
        if !self.hosts.is_empty() && self.next_refresh.is_none() {
            self.next_refresh = Some(now + self.config.candidate_refresh);
        }
    }

    /// The signalling stream `session` closed. Attempts still signalling through it fail; relay
    /// paths through it that did not move to a direct path are removed (the bootstrap drops a
    /// peer's allocations with its session).
    pub fn bootstrap_lost(&mut self, now: Instant, session: SessionId) {
        let Some(lost) = self.bootstraps.remove(&session) else { return };
        if lost.observed.is_some() {
            let sessions: Vec<SessionId> = self.bootstraps.keys().copied().collect();
            for other in sessions {
                self.signal(other, Message::RemoveAddress { sequence: lost.shared_sequence });
            }
        }
        self.withdraw_discoveries(&lost.discoveries);
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
            self.fail_over(now, attempt, "the bootstrap connection was lost");
        }
        self.visits_lost(now, session);
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

    /// The registration on `new` (a new connection to the same bootstrap address, now served by
    /// the process that took over from `old`'s) replaces `old`, whose connection the driver closes
    /// next. Relay paths granted on `old` keep their route (the old process forwards them while it
    /// drains) and renew through `new`: the successor's grant moves them to its channel. Attempts
    /// coordinated through `old` go on through `new`; a request `old` has not answered yet is sent
    /// again there (same number, same deadline). The rest is as when `old` is lost.
    pub fn bootstrap_handed_over(&mut self, now: Instant, old: SessionId, new: SessionId) {
        if !self.bootstraps.contains_key(&new) {
            return;
        }
        for path in self.relay_paths.values_mut().filter(|path| path.session == old) {
            path.session = new;
        }
        let mut again = Vec::new();
        for attempt in self.attempts.values_mut().filter(|a| a.session == old) {
            attempt.session = new;
            let (request, target) = (attempt.request, attempt.peer);
            match attempt.phase {
                Phase::AwaitingPunch { .. } => again.push(Message::ConnectRequest { request, target }),
                Phase::AwaitingRelay { .. } => again.push(Message::RelayRequest { request, target }),
                _ => {}
            }
        }
        for attempt in self.attempts.values_mut() {
            let Some(visit) = attempt.visit.as_mut().filter(|v| v.session == Some(old)) else { continue };
            visit.session = Some(new);
            if !matches!(attempt.phase, Phase::ConnectingRelayed { .. } | Phase::ConnectingDirect { .. }) {
                again.push(Message::RelayRequest { request: visit.request, target: attempt.peer });
            }
        }
        for message in again {
            self.signal(new, message);
        }
        self.bootstrap_lost(now, old);
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
        self.connect_via(now, target, &[])
    }

    /// [`Traversal::connect`], coordinated by the first connected bootstrap of `order` (the
    /// operator's order), by another connected one otherwise. When that one does not answer in
    /// time or is lost, the request moves to the next one not yet tried (see
    /// [`TraversalEvent::Rerouted`]).
    pub fn connect_via(
        &mut self,
        now: Instant,
        target: PeerId,
        order: &[SessionId],
    ) -> Result<AttemptId, TraversalError> {
        if let Some((id, _)) = self.attempts.iter().find(|(_, a)| a.peer == target && !a.upgrade) {
            return Ok(*id);
        }
        let session = self.next_bootstrap(order, &[]).ok_or(TraversalError::NoBootstrap)?;
        let attempt = self.start_attempt(now, session, target, false);
        if let Some(state) = self.attempts.get_mut(&attempt) {
            state.order = order.to_vec();
        }
        Ok(attempt)
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
                // The other bootstraps learn it as a server-reflexive candidate: comparing it with
                // what they observed tells them this peer's mapping (RFC 4787 §4.1). Re-adding
                // under the same sequence number replaces an older observation.
                let others: Vec<SessionId> = self.bootstraps.keys().copied().filter(|s| *s != session).collect();
                for other in others {
                    self.share_reflexive_with(other);
                }
            }
            Message::PunchMeNow { request, peer, role, flags, start_in_ms, token, candidates, .. } => {
                let punch = Punch { request, peer, role, flags, start_in_ms, token };
                self.punch_me_now(now, session, punch, &candidates);
            }
            Message::RelayGrant { request, peer, channel, lifetime_s, .. } => {
                self.relay_grant(now, session, request, peer, channel, lifetime_s);
            }
            Message::RelayAt { request, target, bootstrap, address } => {
                self.relay_at(now, session, request, target, (bootstrap, address));
            }
            Message::Error { request, code, reason } if self.visit_waiting_for(session, request).is_some() => {
                if let Some(id) = self.visit_waiting_for(session, request) {
                    self.visit_failed(now, id, &format!("{}: {reason}", code_name(code)));
                }
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
            Message::Reregister { delay_ms } => {
                let delay = Duration::from_millis(u64::from(delay_ms));
                self.events.push_back(TraversalEvent::ReregisterRequested { session, delay });
            }
            Message::OtherAddress { address } => self.other_address(now, session, address),
            // Only peers send these; a bootstrap that does is ignored.
            Message::AddAddress { .. }
            | Message::RemoveAddress { .. }
            | Message::ConnectRequest { .. }
            | Message::RelayRequest { .. }
            | Message::Report { .. } => {}
            // Bootstraps send these to each other; the agent's coordinator takes them.
            Message::ForwardConnect { .. } => {}
        }
    }

    /// A probe datagram arrived on the node socket from `from`.
    pub fn handle_probe(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        match probe.kind {
            ProbeKind::Discovered { observed } => return self.discovered(from, probe, observed),
            // Only a bootstrap's alternate address answers these.
            ProbeKind::Discover => return,
            ProbeKind::Probe | ProbeKind::Ack { .. } => {}
        }
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
                if let Some(Spray::Guesses { ip, transaction, guesser, .. }) = &round.spray {
                    if *transaction == probe.transaction {
                        self.stats.probes_acked += 1;
                        // The answer must come from a port we guessed (RFC 8445 §7.2.5.2.1 again).
                        if from.ip() == *ip && guesser.contains(from.port()) {
                            self.guess_hit(now, probe.token, from);
                        } else {
                            self.learn_and_check(now, probe.token, from);
                        }
                        return;
                    }
                }
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
                self.pair_valid(probe.token, from, false);
            }
            ProbeKind::Discover | ProbeKind::Discovered { .. } => {}
        }
    }

    /// A probe datagram arrived from `from` on extra socket `socket` of the many-probe round
    /// `token` (see [`TraversalAction::SprayOpen`]; also on the kept socket after
    /// [`TraversalAction::SprayKeep`]). A probe from the other peer's server-reflexive address,
    /// or an ack from there to this socket's probe, shows the socket's mapping passes both ways:
    /// the socket wins the round.
    pub fn handle_spray_probe(&mut self, now: Instant, token: [u8; 16], socket: u16, from: SocketAddr, probe: Probe) {
        let round = self.rounds.get(&token).filter(|r| now < r.answer_until && probe.token == token);
        let Some(Spray::Sockets { targets, first_transaction, state }) = round.and_then(|r| r.spray.as_ref()) else {
            self.stats.unknown_token += 1;
            return;
        };
        let open = *state == SprayState::Open;
        if !(open || matches!(*state, SprayState::Kept { socket: kept, .. } if kept == socket)) {
            return;
        }
        let from_target = targets.contains(&from);
        let own_transaction = first_transaction.wrapping_add(u64::from(socket));
        let probing = round.is_some_and(|r| r.probing);
        let wins = match probe.kind {
            ProbeKind::Probe => {
                self.stats.probes_received += 1;
                let ack = Probe { kind: ProbeKind::Ack { observed: from }, ..probe };
                self.actions.push_back(TraversalAction::SprayAck { token, socket, to: from, probe: ack });
                from_target
            }
            ProbeKind::Ack { .. } => {
                let ours = probe.transaction == own_transaction && from_target;
                if ours {
                    self.stats.probes_acked += 1;
                }
                ours
            }
            // Mapping discovery goes through the node socket only.
            ProbeKind::Discover | ProbeKind::Discovered { .. } => false,
        };
        if wins && open && probing {
            self.spray_won(token, socket, from);
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
                self.share_reflexive_with(session);
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
            self.fail_over(now, attempt, "the bootstrap did not answer in time");
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
        self.drive_discoveries(now);
    }

    /// When [`Traversal::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let attempts = self.attempts.values().filter_map(|a| match a.phase {
            Phase::AwaitingPunch { deadline } | Phase::AwaitingRelay { deadline } => Some(deadline),
            _ => None,
        });
        let rounds = self.rounds.values().flat_map(|r| {
            let kept = matches!(r.spray, Some(Spray::Sockets { state: SprayState::Kept { .. }, .. }));
            let guesses = match &r.spray {
                Some(Spray::Guesses { next_batch, .. }) if r.probing => Some(*next_batch),
                _ => None,
            };
            let next = r.next_probe.min(guesses.unwrap_or(r.next_probe));
            let probing = (r.probing || kept && r.next_probe < r.probe_until).then(|| next.min(r.probe_until));
            [probing, Some(r.answer_until)].into_iter().flatten()
        });
        let paths = self
            .relay_paths
            .values()
            .flat_map(|p| {
                [p.upgrade.as_ref().map(|u| u.next), p.renew_at, (!p.kept_past_expiry()).then_some(p.expires)]
            })
            .flatten();
        let discoveries = self.bootstraps.values().flat_map(|b| b.discoveries.iter().filter_map(Discovery::next));
        attempts.chain(rounds).chain(paths).chain(discoveries).chain(self.next_refresh).min()
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

    fn fresh_request(&mut self) -> u64 {
        // 0 means "no request" on the wire.
        self.random.next_u64().max(1)
    }

    fn signal(&mut self, session: SessionId, message: Message) {
        self.actions.push_back(TraversalAction::Signal { session, message });
    }
}
