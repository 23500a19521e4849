//! The NAT agent: a node's NAT traversal policy, sans-IO. It owns both state machines — the
//! [`Coordinator`] (peers registered here) and the [`Traversal`] (this node's registrations and
//! connections) — and decides what the driver (`ant_quic::nat`) does around them: connecting to
//! the bootstraps and reconnecting with backoff, re-registering when a bootstrap hands over,
//! holding connection requests until the bootstraps observed this node, pacing probe datagrams,
//! keeping the books of attempts, and what goes into [`NatStatus`].
//!
//! Time comes in as `now`, inputs as [`AgentEvent`]s, and everything the driver must do comes out
//! of [`NatAgent::poll_action`]; [`NatAgent::poll_timeout`] says when to call
//! [`NatAgent::handle_timeout`]. The agent opens no socket, reads no clock, locks nothing.
//!
//! Three things need the host and stay in the driver: TLS configurations, host-candidate
//! discovery (the driver answers [`AgentAction::DiscoverHostCandidates`] with
//! [`AgentEvent::HostCandidates`]), and whether the host has a route to a probe's destination.
//! That last one is checked when the driver sends an [`AgentAction::SendProbe`] (an unroutable
//! host candidate of another network is dropped there): it is a question about the host, not the
//! protocol, and asking it at send time keeps the agent's pacing a pure function of its inputs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ant_quic_dataplane::ConnId;

use super::coordinator::{Coordinator, CoordinatorAction, SessionId};
use super::metrics::CoordinatorCounts;
use super::traversal::{AttemptId, Traversal, TraversalAction, TraversalEvent};
use super::wire::encode_frame;
use super::{Message, Outcome, Probe, ProbeKind};
use crate::PeerId;

mod bootstraps;
mod events;
mod federation;
mod status;

pub use events::{AgentAction, AgentEvent, ConnPurpose, RequestId, SignalRole};
pub use federation::MAX_EXTRA_BOOTSTRAPS;
pub use status::{BootstrapSpec, BootstrapStatus, NatStatus, PathKind, PeerConnection};

/// How often the cores report the signalling connections' addresses and RTTs.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// First wait before reconnecting to a lost bootstrap; doubles on each failure.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Longest wait before reconnecting to a lost bootstrap.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Wait before trying again when the new connection of a re-registration fails (the old one still
/// serves meanwhile).
const REREGISTER_RETRY: Duration = Duration::from_secs(1);
/// A connection request waits this long at most for every bootstrap to report where it observes
/// this node: until then bootstraps may not know this node's NAT mapping (EIM or EDM), which
/// decides whether a punch sprays.
const REGISTRATION_GRACE: Duration = Duration::from_secs(3);
/// Probe datagrams handed to the cores at once. A core takes every queued command in one turn and
/// can have only so many sends in flight (64 on io_uring); a many-probe round's 256 guesses at
/// once would overflow that and most would be dropped, so they go out in bursts.
const PROBE_BURST: usize = 32;
/// Pause between two bursts of probe datagrams: a core turn, so that the sends complete.
const PROBE_BURST_GAP: Duration = Duration::from_millis(1);
/// Peers whose request time and time to a direct path are kept at most.
const MAX_DIRECT_AFTER: usize = 256;
/// Probe datagrams waiting for their burst at most; more are dropped, as a full network would.
const PROBE_OUTBOX: usize = 4096;

struct Bootstrap {
    address: SocketAddr,
    /// The peer ID its certificate must prove, when pinned.
    peer: Option<PeerId>,
    /// The connection registered there (during a handover, the old one until the new one is
    /// confirmed).
    conn: Option<ConnId>,
    /// When to (re)connect; `None` while a connection is open or being opened.
    reconnect_at: Option<Instant>,
    delay: Duration,
    /// A re-registration the bootstrap asked for (REREGISTER), under way.
    handover: Option<Handover>,
    /// Connected to only for relays to peers registered there (RELAY_AT): not in the status,
    /// never coordinates this node's own requests, not reconnected, closed when unused.
    extra: bool,
    /// An extra bootstrap's slot is taken (connecting, or connected and used).
    in_use: bool,
    /// Attempts whose relay waits for the registration here (RELAY_AT).
    waiting: Vec<AttemptId>,
}

impl Bootstrap {
    /// When the new connection of a re-registration is due, if one waits.
    fn handover_due(&self) -> Option<Instant> {
        match self.handover {
            Some(Handover::Waiting { until }) => Some(until),
            _ => None,
        }
    }
}

/// Where a re-registration with a bootstrap that is being taken over stands. The old connection
/// serves until the new registration is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// Open the new connection at this time (the delay the bootstrap assigned).
    Waiting { until: Instant },
    /// The new connection is being opened (its Initial reaches the new process).
    Connecting,
    /// The new connection is up; its OBSERVED_ADDRESS confirms the registration.
    Registering { new: ConnId },
}

struct Attempt {
    request: RequestId,
    conn: Option<ConnId>,
}

/// The session id the state machines know a connection by.
fn session_of(conn: ConnId) -> SessionId {
    ((conn.core as u64) << 32) | (conn.index as u64 & 0xffff_ffff)
}

fn conn_of(session: SessionId) -> ConnId {
    ConnId { core: (session >> 32) as usize, index: (session & 0xffff_ffff) as usize }
}

fn probe_datagram(probe: &Probe) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(64);
    probe.emit(&mut datagram);
    datagram
}

/// The bootstrap a peer is registered at (its peer ID), as the shared registry knows it: a
/// lookup in memory, answered at once.
pub type Directory = Box<dyn Fn(PeerId) -> Option<PeerId> + Send>;

/// A node's NAT traversal policy around its coordinator and traversal; see the module doc.
pub struct NatAgent {
    local_peer: PeerId,
    coordinator: Coordinator,
    traversal: Traversal,
    bootstraps: Vec<Bootstrap>,
    /// Signalling sessions by connection: which role we play on it.
    sessions: HashMap<ConnId, SignalRole>,
    attempts: HashMap<AttemptId, Attempt>,
    /// Bootstrap connections closed on purpose after a handover: their end is no failure.
    retired: HashSet<ConnId>,
    /// Attempts whose QUIC connection is up: when it closes, the traversal is told
    /// ([`Traversal::connection_closed`]) so that it drops the connection's relay path.
    live: HashSet<AttemptId>,
    status: NatStatus,
    status_changed: bool,
    started: Instant,
    next_sample: Instant,
    /// Connection requests waiting for the bootstraps' observations (see [`REGISTRATION_GRACE`]).
    pending: Vec<(PeerId, RequestId)>,
    /// When this node last asked for a connection to each peer: an upgrade to a direct path is
    /// timed from it.
    requested: HashMap<PeerId, Instant>,
    /// Probe datagrams for the node socket, sent [`PROBE_BURST`] at a time.
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Which bootstrap a peer is registered at, from the registry shared by a federation.
    directory: Option<Directory>,
    /// Peers registered here that another linked bootstrap holds in the shared registry: not
    /// announced while it does (see `federation.rs`), with the record to announce then.
    visitors: HashMap<PeerId, (SocketAddr, Vec<SocketAddr>)>,
    /// When the next burst is due, while the outbox is not empty.
    next_burst: Option<Instant>,
    actions: VecDeque<AgentAction>,
}

impl std::fmt::Debug for NatAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatAgent")
            .field("status", &self.status)
            .field("attempts", &self.attempts.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl NatAgent {
    /// An agent for node `local_peer` that registers with `bootstraps` (connecting at once) and
    /// runs `coordinator` and `traversal` (seeded by the driver).
    pub fn new(
        now: Instant,
        local_peer: PeerId,
        bootstraps: &[BootstrapSpec],
        coordinator: Coordinator,
        traversal: Traversal,
    ) -> Self {
        let status = NatStatus {
            bootstraps: bootstraps
                .iter()
                .map(|spec| BootstrapStatus { address: spec.address, peer: spec.peer, ..BootstrapStatus::default() })
                .collect(),
            ..NatStatus::default()
        };
        Self {
            local_peer,
            coordinator,
            traversal,
            bootstraps: bootstraps
                .iter()
                .map(|spec| Bootstrap {
                    address: spec.address,
                    peer: spec.peer,
                    conn: None,
                    reconnect_at: Some(now),
                    delay: FIRST_RECONNECT_DELAY,
                    handover: None,
                    extra: false,
                    in_use: true,
                    waiting: Vec::new(),
                })
                .collect(),
            sessions: HashMap::new(),
            attempts: HashMap::new(),
            retired: HashSet::new(),
            live: HashSet::new(),
            status,
            status_changed: false,
            started: now,
            next_sample: now,
            pending: Vec::new(),
            requested: HashMap::new(),
            outbox: VecDeque::new(),
            directory: None,
            visitors: HashMap::new(),
            next_burst: None,
            actions: VecDeque::new(),
        }
    }

    /// Where connection requests for peers registered at other bootstraps are looked up (with
    /// [`super::coordinator::CoordinatorConfig::peer_bootstraps`]; without a directory they
    /// fail).
    pub fn set_directory(&mut self, directory: Directory) {
        self.directory = Some(directory);
    }

    /// What the driver publishes.
    pub fn status(&self) -> &NatStatus {
        &self.status
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        std::mem::take(&mut self.status_changed).then_some(AgentAction::StatusChanged)
    }

    /// When [`NatAgent::handle_timeout`] is due at the latest.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.coordinator.poll_timeout(),
            self.traversal.poll_timeout(),
            self.bootstraps.iter().filter_map(|b| b.reconnect_at).min(),
            self.bootstraps.iter().filter_map(Bootstrap::handover_due).min(),
            (!self.pending.is_empty()).then_some(self.started + REGISTRATION_GRACE),
            self.next_burst,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_sample, Instant::min)
    }

    /// Time passed: run what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.coordinator.handle_timeout(now);
        self.traversal.handle_timeout(now);
        if self.next_burst.is_some_and(|at| at <= now) {
            self.send_burst(now);
        }
        if now >= self.next_sample {
            self.next_sample = now + SAMPLE_INTERVAL;
            self.sample();
        }
        for index in 0..self.bootstraps.len() {
            let due = self.bootstraps.get(index).and_then(|b| b.reconnect_at).is_some_and(|at| at <= now);
            if due {
                self.connect_bootstrap(index);
            }
            let handover_due = self.bootstraps.get(index).and_then(Bootstrap::handover_due).is_some_and(|at| at <= now);
            if handover_due {
                self.open_replacement(index);
            }
        }
        self.drain(now);
    }

    /// Something happened.
    pub fn handle(&mut self, now: Instant, event: AgentEvent<'_>) {
        match event {
            AgentEvent::SignalOpened { conn, role, peer, remote, rtt } => {
                self.sessions.insert(conn, role);
                match role {
                    SignalRole::Coordinator => {
                        self.coordinator.session_opened(now, session_of(conn), peer, remote, rtt)
                    }
                    SignalRole::Peer => self.traversal.bootstrap_connected(now, session_of(conn), remote),
                }
            }
            AgentEvent::Signal { conn, message } => match self.sessions.get(&conn) {
                Some(SignalRole::Coordinator) => {
                    if let Message::Report { outcome, connect_ms, .. } = &message {
                        let connect = Duration::from_millis(u64::from(*connect_ms));
                        self.actions.push_back(AgentAction::CountReported { outcome: *outcome, connect });
                    }
                    self.coordinator.handle(now, session_of(conn), message);
                }
                Some(SignalRole::Peer) => {
                    tracing::debug!(?conn, ?message, "signalling message from a bootstrap");
                    // Answers to requests forwarded on this link go to the requesters.
                    if let Some(message) = self.coordinator.forward_answer(now, session_of(conn), message) {
                        self.traversal.handle_signal(now, session_of(conn), message);
                    }
                }
                None => {}
            },
            AgentEvent::MalformedSignal { conn, error } => match self.sessions.get(&conn) {
                Some(SignalRole::Coordinator) => {
                    tracing::debug!(?conn, %error, "malformed signalling message");
                    self.coordinator.handle_malformed(now, session_of(conn));
                }
                Some(SignalRole::Peer) => {
                    tracing::warn!(?conn, %error, "malformed signalling message from a bootstrap")
                }
                None => {}
            },
            AgentEvent::SignalClosed { conn } => match self.sessions.remove(&conn) {
                Some(SignalRole::Coordinator) => self.coordinator.session_closed(now, session_of(conn)),
                Some(SignalRole::Peer) => self.traversal.bootstrap_lost(now, session_of(conn)),
                None => {}
            },
            AgentEvent::PathSample { conn, remote, rtt } => match self.sessions.get(&conn) {
                Some(SignalRole::Coordinator) => {
                    self.coordinator.rtt_sample(session_of(conn), rtt);
                    self.coordinator.observed_changed(now, session_of(conn), remote);
                }
                Some(SignalRole::Peer) => {
                    if let Some(index) = self.bootstrap_of(conn) {
                        self.update_bootstrap_status(index, |entry| entry.rtt = Some(rtt));
                    }
                }
                None => {}
            },
            AgentEvent::Connected { purpose: ConnPurpose::Bootstrap(index), conn, remote, rtt } => {
                self.bootstrap_connected(index, conn, remote, rtt);
            }
            AgentEvent::Connected { purpose: ConnPurpose::Attempt(attempt), conn, .. } => {
                if let Some(entry) = self.attempts.get_mut(&attempt) {
                    entry.conn = Some(conn);
                }
                self.live.insert(attempt);
                self.traversal.connection_result(now, attempt, true);
            }
            AgentEvent::Closed { purpose: ConnPurpose::Bootstrap(index), conn, reason } => {
                self.bootstrap_closed(now, index, conn, reason);
            }
            AgentEvent::BootstrapWrongPeer { index, conn, reason } => {
                self.bootstrap_wrong_peer(now, index, conn, reason)
            }
            AgentEvent::Closed { purpose: ConnPurpose::Attempt(attempt), reason, .. } => {
                if self.live.remove(&attempt) {
                    tracing::debug!(attempt, %reason, "traversal connection closed");
                    self.traversal.connection_closed(now, attempt);
                } else {
                    tracing::debug!(attempt, %reason, "traversal connection failed");
                    self.traversal.connection_result(now, attempt, false);
                }
            }
            AgentEvent::ProbeDatagram { from, bytes } => match Probe::parse(bytes) {
                Ok(probe) => {
                    tracing::trace!(%from, ?probe, "probe received");
                    self.traversal.handle_probe(now, from, probe);
                }
                Err(error) => tracing::debug!(%from, %error, "malformed probe datagram dropped"),
            },
            AgentEvent::SprayProbe { token, socket, from, bytes } => match Probe::parse(bytes) {
                Ok(probe) => self.traversal.handle_spray_probe(now, token, socket, from, probe),
                Err(error) => tracing::debug!(%from, %error, "malformed probe datagram dropped"),
            },
            AgentEvent::Connect { request, target } => self.on_connect(now, request, target),
            AgentEvent::BeginHandover { window } => {
                let told = self.coordinator.begin_handover(now, window);
                tracing::info!(peers = told, ?window, "handing over: registered peers told to re-register");
            }
            AgentEvent::HostCandidates { addresses } => self.traversal.set_host_candidates(now, addresses),
        }
        self.drain(now);
    }

    fn bootstrap_of(&self, conn: ConnId) -> Option<usize> {
        self.bootstraps.iter().position(|b| b.conn == Some(conn))
    }

    /// The bootstrap whose re-registration `conn` is (not yet confirmed).
    fn replacement_of(&self, conn: ConnId) -> Option<usize> {
        self.bootstraps.iter().position(|b| b.handover == Some(Handover::Registering { new: conn }))
    }

    fn update_bootstrap_status(&mut self, index: usize, update: impl FnOnce(&mut BootstrapStatus)) {
        if let Some(entry) = self.status.bootstraps.get_mut(index) {
            update(entry);
            self.status_changed = true;
        }
    }

    /// Whether every bootstrap, and its alternate addresses, told us where they see us (or
    /// failed, or the grace time passed).
    fn registration_settled(&self, now: Instant) -> bool {
        now >= self.started + REGISTRATION_GRACE
            || self.status.bootstraps.iter().all(|b| b.observed.is_some() && !b.discovering || b.last_error.is_some())
    }

    fn on_connect(&mut self, now: Instant, request: RequestId, target: PeerId) {
        if target == self.local_peer {
            let result = Err("that peer ID is this node's own".into());
            self.actions.push_back(AgentAction::Reply { request, result });
        } else if !self.registration_settled(now) {
            self.pending.push((target, request));
        } else {
            self.start_attempt(now, target, request);
        }
    }

    fn start_attempt(&mut self, now: Instant, target: PeerId, request: RequestId) {
        if self.requested.len() >= MAX_DIRECT_AFTER {
            self.requested.clear();
        }
        self.requested.insert(target, now);
        // The first bootstrap given (and connected) coordinates; when it does not answer, the
        // next one in the order given takes the request over.
        let order: Vec<SessionId> =
            self.bootstraps.iter().filter(|b| !b.extra).filter_map(|b| b.conn).map(session_of).collect();
        match self.traversal.connect_via(now, target, &order) {
            Ok(attempt) => {
                // A request for a peer already being reached takes the attempt over.
                if let Some(earlier) = self.attempts.insert(attempt, Attempt { request, conn: None }) {
                    self.actions.push_back(AgentAction::Abandon { request: earlier.request });
                }
            }
            Err(error) => self.actions.push_back(AgentAction::Reply { request, result: Err(error.to_string()) }),
        }
    }

    fn sample(&mut self) {
        let stats = self.coordinator.stats();
        self.actions.push_back(AgentAction::Sample {
            coordinator: CoordinatorCounts {
                registered_peers: stats.registered as u64,
                punches: stats.punches_coordinated,
                relay_grants: stats.relays_granted,
                rate_limited: stats.rate_limited,
                malformed: stats.malformed,
                forwards_received: stats.forwards_received,
                forwards_refused: stats.forwards_refused,
                relays_across: stats.relays_across,
            },
            traversal: self.traversal.stats(),
            relays_renewed: stats.relays_renewed,
        });
        if (self.status.registered_peers, self.status.relay_allocations) != (stats.registered, stats.active_relays) {
            self.status.registered_peers = stats.registered;
            self.status.relay_allocations = stats.active_relays;
            self.status_changed = true;
        }
        self.release_idle_extras();
        self.announce_visitors_left_alone();
    }

    /// Turns what the state machines want into actions, until they want nothing more; starts the
    /// connection requests that waited once registration settled.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.coordinator.poll_action() {
                progressed = true;
                self.on_coordinator_action(now, action);
            }
            while let Some(action) = self.traversal.poll_action() {
                progressed = true;
                self.on_traversal_action(now, action);
            }
            while let Some(event) = self.traversal.poll_event() {
                progressed = true;
                self.on_traversal_event(now, event);
            }
            if !progressed && !self.pending.is_empty() && self.registration_settled(now) {
                progressed = true;
                for (target, request) in std::mem::take(&mut self.pending) {
                    self.start_attempt(now, target, request);
                }
            }
            if !progressed {
                break;
            }
        }
        if self.next_burst.is_none() && !self.outbox.is_empty() {
            self.send_burst(now);
        }
    }

    fn on_coordinator_action(&mut self, now: Instant, action: CoordinatorAction) {
        let action = match action {
            CoordinatorAction::Send { session, message } => {
                AgentAction::Signal { conn: conn_of(session), frame: encode_frame(&message) }
            }
            CoordinatorAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit } => {
                AgentAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit }
            }
            CoordinatorAction::RemoveRelay { channel } => AgentAction::RemoveRelay { channel },
            CoordinatorAction::Registered { peer, observed, candidates } => {
                self.announce(peer, observed, candidates);
                return;
            }
            CoordinatorAction::Unregistered { peer } => {
                if self.visitors.remove(&peer).is_some() {
                    return;
                }
                AgentAction::Unregistered { peer }
            }
            CoordinatorAction::Forward { forward, target } => {
                self.route_forward(now, forward, target);
                return;
            }
            CoordinatorAction::RelayAcross { session, request, target } => {
                self.route_relay_across(session, request, target);
                return;
            }
            CoordinatorAction::Forwarded { elapsed, punched } => AgentAction::CountForwarded { elapsed, punched },
        };
        self.actions.push_back(action);
    }

    fn on_traversal_action(&mut self, now: Instant, action: TraversalAction) {
        if !matches!(action, TraversalAction::SendProbe { .. } | TraversalAction::SprayProbe { .. }) {
            tracing::debug!(?action, "traversal action");
        }
        let action = match action {
            TraversalAction::Signal { session, message } => {
                AgentAction::Signal { conn: conn_of(session), frame: encode_frame(&message) }
            }
            TraversalAction::SendProbe { to, probe } => {
                tracing::trace!(%to, ?probe, "probe");
                self.queue_probe(to, &probe);
                return;
            }
            TraversalAction::ConnectDirect { attempt, peer, address } => {
                AgentAction::OpenPeer { attempt, peer, remote: address }
            }
            TraversalAction::ConnectRelayed { attempt, peer, alias } => {
                AgentAction::OpenPeer { attempt, peer, remote: alias }
            }
            TraversalAction::InstallRelayPath { alias, relay, channel, .. } => {
                AgentAction::SetRelayPath { alias, relay, channel }
            }
            TraversalAction::SetPathDirect { alias, address } => {
                tracing::info!(%alias, %address, "relayed connection moves to a direct path");
                AgentAction::SetDirectPath { alias, address }
            }
            TraversalAction::RemovePath { alias } => {
                tracing::debug!(%alias, "path alias removed");
                AgentAction::RemovePath { alias }
            }
            TraversalAction::SprayOpen { token, sockets } => AgentAction::SprayOpen { token, sockets },
            TraversalAction::SprayProbe { token, to, first_transaction } => {
                AgentAction::SprayProbe { token, to, first_transaction }
            }
            TraversalAction::SprayAck { token, socket, to, probe } => {
                AgentAction::SprayAck { token, socket, to, datagram: probe_datagram(&probe) }
            }
            TraversalAction::SprayKeep { token, socket, remote } => AgentAction::SprayKeep { token, socket, remote },
            TraversalAction::SprayClose { token } => AgentAction::SprayClose { token },
            TraversalAction::ConnectBridged { attempt, peer, token, remote } => {
                AgentAction::OpenBridged { attempt, peer, token, remote }
            }
            TraversalAction::SetPathBridged { alias, token, address } => {
                AgentAction::SetBridgedPath { alias, token, address }
            }
            TraversalAction::VisitBootstrap { attempt, bootstrap, address } => {
                self.visit_bootstrap(now, attempt, bootstrap, address);
                return;
            }
        };
        self.actions.push_back(action);
    }

    /// Queues a probe datagram for the node socket: acks first (the other side waits for them),
    /// at most [`PROBE_OUTBOX`].
    fn queue_probe(&mut self, to: SocketAddr, probe: &Probe) {
        if self.outbox.len() >= PROBE_OUTBOX {
            tracing::debug!(%to, "probe outbox full: probe dropped");
        } else if matches!(probe.kind, ProbeKind::Ack { .. }) {
            self.outbox.push_front((to, probe_datagram(probe)));
        } else {
            self.outbox.push_back((to, probe_datagram(probe)));
        }
    }

    /// Hands the next [`PROBE_BURST`] probe datagrams to the driver.
    fn send_burst(&mut self, now: Instant) {
        for _ in 0..PROBE_BURST {
            let Some((to, datagram)) = self.outbox.pop_front() else { break };
            self.actions.push_back(AgentAction::SendProbe { to, datagram });
        }
        self.next_burst = (!self.outbox.is_empty()).then(|| now + PROBE_BURST_GAP);
    }

    fn on_traversal_event(&mut self, now: Instant, event: TraversalEvent) {
        match event {
            TraversalEvent::ReregisterRequested { session, delay } => {
                self.on_reregister_requested(now, conn_of(session), delay);
            }
            TraversalEvent::ObservedAddress { session, address } => {
                let conn = conn_of(session);
                self.confirm_replacement(now, conn);
                self.registered_at(now, conn);
                if let Some(index) = self.bootstrap_of(conn) {
                    // OTHER_ADDRESS comes first: whether discovery is under way is known by now.
                    let discovering = self.traversal.discovering(session);
                    self.update_bootstrap_status(index, |entry| {
                        if entry.observed != Some(address) {
                            tracing::info!(bootstrap = %entry.address, observed = %address, "observed address");
                        }
                        entry.observed = Some(address);
                        entry.discovering = discovering;
                    });
                }
            }
            TraversalEvent::Discovery { session, alternate, observed } => {
                let conn = conn_of(session);
                let (discovering, discovered) =
                    (self.traversal.discovering(session), self.traversal.discovered_addresses(session));
                if let Some(index) = self.bootstrap_of(conn).or_else(|| self.replacement_of(conn)) {
                    self.update_bootstrap_status(index, |entry| {
                        match observed {
                            Some(observed) => tracing::info!(bootstrap = %entry.address, %alternate, %observed, "observed from the alternate address"),
                            None => tracing::info!(bootstrap = %entry.address, %alternate, "no answer from the alternate address"),
                        }
                        entry.discovering = discovering;
                        entry.discovered = discovered;
                    });
                }
            }
            TraversalEvent::AttemptFinished { attempt, peer, outcome, remote, connect, reason } => {
                tracing::debug!(attempt, %peer, ?outcome, ?remote, ?connect, ?reason, "attempt finished");
                self.actions.push_back(AgentAction::CountAttempt { outcome, connect });
                let Some(entry) = self.attempts.remove(&attempt) else { return };
                let path = match outcome {
                    Outcome::Direct => Some(PathKind::Direct),
                    Outcome::Relayed => Some(PathKind::Relayed),
                    Outcome::Failed => None,
                };
                let result = match (path, entry.conn, remote) {
                    (Some(path), Some(conn), Some(remote)) => Ok(PeerConnection { conn, path, remote, connect }),
                    _ => Err(reason.unwrap_or_else(|| format!("no path to {peer}"))),
                };
                self.actions.push_back(AgentAction::Reply { request: entry.request, result });
            }
            TraversalEvent::Rerouted { peer, from, to, reason, .. } => {
                tracing::warn!(%peer, bootstrap = %from, next = %to, "{reason}: connection request retried through {to}");
            }
            TraversalEvent::Upgraded { peer, address, .. } => {
                // This node's own request to that peer, if it made one (not on the responder).
                let after = self.requested.get(&peer).map(|at| now.saturating_duration_since(*at));
                self.actions.push_back(AgentAction::CountUpgrade { after });
                tracing::info!(%peer, %address, ?after, "relayed connection upgraded to a direct path");
                if let Some(after) = after {
                    self.status.direct_after.retain(|(p, _, _)| *p != peer);
                    if self.status.direct_after.len() >= MAX_DIRECT_AFTER {
                        self.status.direct_after.remove(0);
                    }
                    self.status.direct_after.push((peer, after, address));
                    self.status_changed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
