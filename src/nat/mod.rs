//! The NAT traversal driver: a thread beside the data plane that runs both sans-IO state machines
//! of `ant_quic_control::nat` — the [`Coordinator`] (for peers registered here) and the
//! [`Traversal`] (for this node's own registrations and connections) — against the node.
//!
//! Inputs: signalling messages and connection events from the cores ([`link::NatEvent`]), probe
//! datagrams from the data plane and from the extra sockets of many-probe rounds
//! ([`spray::SprayEvent`]), requests from the node's owner. Outputs: frames written on signalling
//! streams, probes sent from the node socket and the extra sockets, connections opened (directly,
//! through a relay alias, or through a bridge), relay allocations and path aliases installed on
//! every core.

pub mod link;
pub mod spray;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_control::nat::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig};
use ant_quic_control::nat::traversal::{Traversal, TraversalAction, TraversalConfig, TraversalEvent};
use ant_quic_control::nat::wire::encode_frame;
use ant_quic_control::nat::CoordinatorCounts;
use ant_quic_control::nat::{Message, Outcome, Probe, ProbeKind};
use ant_quic_control::PeerId;
use ant_quic_dataplane::relay::{PathRoute, RelayAllocation};
use ant_quic_dataplane::{ConnId, ControlDatagram, Messenger};
use crossbeam_channel::{Receiver, Sender};

use crate::identity::Identity;
use crate::tls::{self, CertifiedKey, ServerAuth, ALPN_ANT_QUIC};
use crate::Error;
use link::{attempt_tag, bootstrap_tag, purpose, CoreRequest, NatEvent, Purpose, SignalRole};
use spray::{SprayEvent, Sprays};

/// How often the cores report the signalling connections' addresses and RTTs.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Keep-alive on connections the traversal opens: keeps NAT mappings (often 30 s for UDP) open.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Longest wait before reconnecting to a lost bootstrap.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Wait before trying again when the new connection of a re-registration fails (the old one still
/// serves meanwhile).
const REREGISTER_RETRY: Duration = Duration::from_secs(1);
/// Capacity of the queue from the cores to the driver.
pub(crate) const EVENT_QUEUE: usize = 16 * 1024;
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
/// Probe datagrams waiting for their burst at most; more are dropped, as a full network would.
const PROBE_OUTBOX: usize = 4096;

/// What the traversal of a node is told at start.
#[derive(Debug, Clone, Default)]
pub struct NatOptions {
    /// Bootstraps to register with.
    pub bootstraps: Vec<SocketAddr>,
    /// Coordinator settings (when peers register here).
    pub coordinator: CoordinatorConfig,
    /// Traversal settings (for this node's own connections).
    pub traversal: TraversalConfig,
}

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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Default)]
pub struct NatStatus {
    /// The bootstraps, in the order given.
    pub bootstraps: Vec<BootstrapStatus>,
    /// Peers registered here (this node as a bootstrap).
    pub registered_peers: usize,
    /// Relay allocations active here.
    pub relay_allocations: usize,
}

enum Request {
    Connect { target: PeerId, reply: Sender<Result<PeerConnection, String>> },
    BeginHandover { window: Duration },
    Stop,
}

/// The running driver.
#[derive(Debug)]
pub struct Nat {
    requests: Sender<Request>,
    status: Arc<Mutex<NatStatus>>,
    metrics: Arc<ant_quic_control::nat::NatMetrics>,
    thread: Option<JoinHandle<()>>,
}

impl Nat {
    /// Start the driver for `node`, taking the cores' events and probe datagrams.
    pub(crate) fn start(
        node: Messenger<CoreRequest>,
        identity: &Identity,
        options: NatOptions,
        events: Receiver<NatEvent>,
        datagrams: Receiver<ControlDatagram>,
    ) -> Result<Self, Error> {
        let (requests, requests_rx) = crossbeam_channel::bounded(64);
        let status = Arc::new(Mutex::new(NatStatus {
            bootstraps: options
                .bootstraps
                .iter()
                .map(|&address| BootstrapStatus {
                    address,
                    registered: false,
                    observed: None,
                    rtt: None,
                    last_error: None,
                })
                .collect(),
            ..NatStatus::default()
        }));
        let metrics = Arc::new(ant_quic_control::nat::NatMetrics::default());
        let certified = CertifiedKey::of_identity(identity);
        let (spray_events_tx, spray_events) = crossbeam_channel::bounded(EVENT_QUEUE);
        let sprays = Sprays::new(node.local_addr(), spray_events_tx);
        let mut driver = Driver {
            node,
            routes: HashMap::new(),
            certified,
            local_peer: identity.peer_id(),
            coordinator: Coordinator::new(options.coordinator.clone(), seed()),
            traversal: Traversal::new(options.traversal.clone(), seed()),
            bootstraps: options.bootstraps.iter().map(|&address| Bootstrap::new(address)).collect(),
            sessions: HashMap::new(),
            attempts: HashMap::new(),
            retired: HashSet::new(),
            live: HashSet::new(),
            status: Arc::clone(&status),
            metrics: Arc::clone(&metrics),
            next_sample: Instant::now(),
            started: Instant::now(),
            pending: Vec::new(),
            sprays,
            outbox: VecDeque::new(),
            next_burst: None,
        };
        let thread = std::thread::Builder::new()
            .name("ant-quic-nat".into())
            .spawn(move || driver.run(&events, &datagrams, &spray_events, &requests_rx))
            .map_err(|source| Error::Io { context: "starting the NAT traversal thread".into(), source })?;
        Ok(Self { requests, status, metrics, thread: Some(thread) })
    }

    /// Reach `target` by its peer ID through a bootstrap: directly when a hole can be punched,
    /// through the relay otherwise. Waits at most `timeout`.
    pub fn connect(&self, target: PeerId, timeout: Duration) -> Result<PeerConnection, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests.send(Request::Connect { target, reply }).map_err(|_| "the node is stopping".to_owned())?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => Err(format!("no connection to {target} within {} s", timeout.as_secs())),
        }
    }

    /// This node is being taken over by a new process on its address: tells every peer registered
    /// here to re-register (with the new process), spread over `window`, and every peer that
    /// registers from now on too (see [`Coordinator::begin_handover`]). Returns at once; the NAT
    /// thread does the work. Callable from any thread; does nothing once the node is stopping.
    pub fn begin_handover(&self, window: Duration) {
        if self.requests.send(Request::BeginHandover { window }).is_err() {
            tracing::debug!("handover not begun: the NAT thread is stopping");
        }
    }

    /// A snapshot of the bootstraps and registrations.
    pub fn status(&self) -> NatStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The bootstraps as JSON, for `/health`.
    pub fn bootstraps_json(&self) -> ant_quic_control::admin::JsonFn {
        let status = Arc::clone(&self.status);
        Arc::new(move || {
            let status = status.lock().map(|s| s.clone()).unwrap_or_default();
            serde_json::Value::Array(
                status
                    .bootstraps
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "address": b.address.to_string(),
                            "registered": b.registered,
                            "observed": b.observed.map(|o| o.to_string()),
                            "rtt_ms": b.rtt.map(|r| r.as_secs_f64() * 1e3),
                            "error": b.last_error,
                        })
                    })
                    .collect(),
            )
        })
    }

    /// Counters for the metrics endpoint.
    pub fn metrics(&self) -> Arc<ant_quic_control::nat::NatMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Stop the driver thread (before the node's cores stop).
    pub fn stop(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop();
    }
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = tls::provider().secure_random.fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// The session id the state machines know a connection by.
fn session_of(conn: ConnId) -> u64 {
    ((conn.core as u64) << 32) | (conn.index as u64 & 0xffff_ffff)
}

fn conn_of(session: u64) -> ConnId {
    ConnId { core: (session >> 32) as usize, index: (session & 0xffff_ffff) as usize }
}

struct Bootstrap {
    address: SocketAddr,
    /// The connection registered there (during a handover, the old one until the new one is
    /// confirmed).
    conn: Option<ConnId>,
    /// When to (re)connect; `None` while a connection is open or being opened.
    reconnect_at: Option<Instant>,
    delay: Duration,
    /// A re-registration the bootstrap asked for (REREGISTER), under way.
    handover: Option<Handover>,
}

impl Bootstrap {
    fn new(address: SocketAddr) -> Self {
        Self { address, conn: None, reconnect_at: Some(Instant::now()), delay: Duration::from_secs(1), handover: None }
    }

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
    target: PeerId,
    started: Instant,
    reply: Option<Sender<Result<PeerConnection, String>>>,
    conn: Option<ConnId>,
}

struct Driver {
    node: Messenger<CoreRequest>,
    /// Whether this host has a route to an address (looked up once per address).
    routes: HashMap<std::net::IpAddr, bool>,
    certified: CertifiedKey,
    local_peer: PeerId,
    coordinator: Coordinator,
    traversal: Traversal,
    bootstraps: Vec<Bootstrap>,
    /// Signalling sessions by connection: which role we play on it.
    sessions: HashMap<ConnId, SignalRole>,
    attempts: HashMap<u64, Attempt>,
    /// Bootstrap connections closed on purpose after a handover: their end is no failure.
    retired: HashSet<ConnId>,
    /// Attempts whose QUIC connection is up: when it closes, the traversal is told
    /// ([`Traversal::connection_closed`]) so that it drops the connection's relay path.
    live: HashSet<u64>,
    status: Arc<Mutex<NatStatus>>,
    metrics: Arc<ant_quic_control::nat::NatMetrics>,
    next_sample: Instant,
    started: Instant,
    /// Connection requests waiting for the bootstraps' observations (see [`REGISTRATION_GRACE`]).
    pending: Vec<(PeerId, Sender<Result<PeerConnection, String>>)>,
    /// Extra sockets and bridges of many-probe rounds.
    sprays: Sprays,
    /// Probe datagrams for the node socket, sent [`PROBE_BURST`] at a time.
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// When the next burst is due, while the outbox is not empty.
    next_burst: Option<Instant>,
}

impl Driver {
    fn run(
        &mut self,
        events: &Receiver<NatEvent>,
        datagrams: &Receiver<ControlDatagram>,
        spray_events: &Receiver<SprayEvent>,
        requests: &Receiver<Request>,
    ) {
        loop {
            let now = Instant::now();
            self.tick(now);
            self.drain_actions(now);
            let deadline = [
                self.coordinator.poll_timeout(),
                self.traversal.poll_timeout(),
                Some(self.next_sample),
                self.bootstraps.iter().filter_map(|b| b.reconnect_at).min(),
                self.bootstraps.iter().filter_map(Bootstrap::handover_due).min(),
                (!self.pending.is_empty()).then_some(self.started + REGISTRATION_GRACE),
                self.next_burst,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + SAMPLE_INTERVAL);
            let timeout = deadline.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(event) => self.on_event(Instant::now(), event),
                    Err(_) => return,
                },
                recv(datagrams) -> datagram => {
                    if let Ok(datagram) = datagram {
                        self.on_datagram(Instant::now(), &datagram);
                    }
                },
                recv(spray_events) -> event => {
                    if let Ok(event) = event {
                        self.on_spray_event(Instant::now(), event);
                    }
                },
                recv(requests) -> request => match request {
                    Ok(Request::Connect { target, reply }) => self.on_connect(Instant::now(), target, reply),
                    Ok(Request::BeginHandover { window }) => {
                        let told = self.coordinator.begin_handover(Instant::now(), window);
                        tracing::info!(peers = told, ?window, "handing over: registered peers told to re-register");
                    }
                    Ok(Request::Stop) | Err(_) => return,
                },
                default(timeout) => {}
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.coordinator.handle_timeout(now);
        self.traversal.handle_timeout(now);
        if !self.pending.is_empty() && self.registration_settled(now) {
            for (target, reply) in std::mem::take(&mut self.pending) {
                self.start_attempt(now, target, reply);
            }
        }
        if self.next_burst.is_some_and(|at| at <= now) {
            self.send_burst(now);
        }
        if now >= self.next_sample {
            self.next_sample = now + SAMPLE_INTERVAL;
            for core in 0..self.node.cores() {
                let _ = self.node.send_message(core, CoreRequest::Sample);
            }
            self.publish();
        }
        for index in 0..self.bootstraps.len() {
            let due = self.bootstraps.get(index).and_then(|b| b.reconnect_at).is_some_and(|at| at <= now);
            if due {
                self.connect_bootstrap(now, index);
            }
            let handover_due = self.bootstraps.get(index).and_then(Bootstrap::handover_due).is_some_and(|at| at <= now);
            if handover_due {
                self.open_replacement(now, index);
            }
        }
    }

    /// Opens the new connection of a re-registration with bootstrap `index`. Same tag as the old
    /// one: the events of both are told apart by connection.
    fn open_replacement(&mut self, now: Instant, index: usize) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        bootstrap.handover = Some(Handover::Connecting);
        let address = bootstrap.address;
        let result = self
            .client_request(address, ServerAuth::Insecure, bootstrap_tag(index))
            .and_then(|request| Ok(self.node.connect(request, None)?));
        if let Err(error) = result {
            tracing::warn!(bootstrap = %address, %error, "cannot open the connection to re-register; retrying");
            if let Some(bootstrap) = self.bootstraps.get_mut(index) {
                bootstrap.handover = Some(Handover::Waiting { until: now + REREGISTER_RETRY });
            }
        }
    }

    /// Bootstrap `conn` asked this node to re-register (its process is being taken over).
    fn on_reregister_requested(&mut self, now: Instant, conn: ConnId, delay: Duration) {
        let Some(bootstrap) = self.bootstraps.iter_mut().find(|b| b.conn == Some(conn)) else { return };
        if bootstrap.handover.is_some() {
            return;
        }
        tracing::info!(bootstrap = %bootstrap.address, ?delay, "bootstrap is being taken over: re-registering");
        bootstrap.handover = Some(Handover::Waiting { until: now + delay });
    }

    /// The new connection of a handover got its OBSERVED_ADDRESS: it replaces the old one, which
    /// is closed without error. Whether `conn` was such a connection.
    fn confirm_replacement(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(bootstrap) =
            self.bootstraps.iter_mut().find(|b| b.handover == Some(Handover::Registering { new: conn }))
        else {
            return false;
        };
        bootstrap.handover = None;
        let old = bootstrap.conn.replace(conn);
        tracing::info!(bootstrap = %bootstrap.address, "re-registered with bootstrap; closing the old connection");
        if let Some(old) = old {
            self.traversal.bootstrap_handed_over(now, session_of(old), session_of(conn));
            self.retired.insert(old);
            let close = CoreRequest::Close { conn: old, reason: "re-registered" };
            if let Err(error) = self.node.send_message(old.core, close) {
                tracing::debug!(?old, %error, "old bootstrap connection not closed");
            }
        }
        true
    }

    /// A connection tagged for bootstrap `index` ended (`conn`: `None` when it never started).
    fn bootstrap_closed(&mut self, now: Instant, index: usize, conn: Option<ConnId>, reason: String) {
        if conn.is_some_and(|c| self.retired.remove(&c)) {
            return;
        }
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        let current = conn.is_some() && conn == bootstrap.conn;
        match bootstrap.handover {
            Some(Handover::Registering { new }) if current => {
                // The old process went first: the new connection is registered, or about to be.
                tracing::info!(bootstrap = %bootstrap.address, %reason, "old bootstrap connection ended during re-registration");
                bootstrap.conn = Some(new);
                bootstrap.handover = None;
            }
            Some(Handover::Registering { new }) if conn == Some(new) => {
                tracing::warn!(bootstrap = %bootstrap.address, %reason, "new bootstrap connection failed; retrying");
                bootstrap.handover = Some(Handover::Waiting { until: now + REREGISTER_RETRY });
            }
            Some(Handover::Connecting) if !current => {
                tracing::warn!(bootstrap = %bootstrap.address, %reason, "new bootstrap connection failed; retrying");
                bootstrap.handover = Some(Handover::Waiting { until: now + REREGISTER_RETRY });
            }
            Some(Handover::Connecting) => {
                // The old connection ended while the new one is being opened: that one becomes
                // the ordinary connection (no reconnect of our own).
                bootstrap.conn = None;
                bootstrap.handover = None;
                if let Ok(mut status) = self.status.lock() {
                    if let Some(entry) = status.bootstraps.get_mut(index) {
                        entry.registered = false;
                    }
                }
            }
            _ => {
                bootstrap.handover = None;
                self.bootstrap_failed(now, index, reason);
            }
        }
    }

    fn connect_bootstrap(&mut self, now: Instant, index: usize) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        bootstrap.reconnect_at = None;
        let address = bootstrap.address;
        // The bootstrap is known by address only; what it tells us is bound to this connection.
        match self.client_request(address, ServerAuth::Insecure, bootstrap_tag(index)) {
            Ok(request) => {
                if let Err(error) = self.node.connect(request, None) {
                    self.bootstrap_failed(now, index, format!("cannot start the connection: {error}"));
                }
            }
            Err(error) => self.bootstrap_failed(now, index, error.to_string()),
        }
        // Host candidates: the address this host would use toward the bootstrap, with our port.
        let candidates = host_candidates(&self.bootstraps, self.node.local_addr().port());
        self.traversal.set_host_candidates(now, candidates);
    }

    fn bootstrap_failed(&mut self, now: Instant, index: usize, reason: String) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        tracing::warn!(bootstrap = %bootstrap.address, %reason, "bootstrap unreachable; retrying in {:?}", bootstrap.delay);
        bootstrap.conn = None;
        bootstrap.reconnect_at = Some(now + bootstrap.delay);
        bootstrap.delay = (bootstrap.delay * 2).min(MAX_RECONNECT_DELAY);
        if let Ok(mut status) = self.status.lock() {
            if let Some(entry) = status.bootstraps.get_mut(index) {
                entry.registered = false;
                entry.last_error = Some(reason);
            }
        }
    }

    fn client_request(
        &self,
        remote: SocketAddr,
        auth: ServerAuth,
        tag: u64,
    ) -> Result<ant_quic_dataplane::ConnectRequest, Error> {
        let mut config = tls::client_config_with(auth, &[ALPN_ANT_QUIC], Some(&self.certified))?;
        let mut transport = quinn_proto::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
        Ok(ant_quic_dataplane::ConnectRequest {
            remote,
            server_name: tls::default_server_name().to_owned(),
            config,
            tag,
        })
    }

    fn on_event(&mut self, now: Instant, event: NatEvent) {
        match event {
            NatEvent::SignalOpened { conn, role, peer, remote, rtt } => {
                self.sessions.insert(conn, role);
                match role {
                    SignalRole::Coordinator => {
                        self.coordinator.session_opened(now, session_of(conn), peer, remote, rtt);
                    }
                    SignalRole::Peer => self.traversal.bootstrap_connected(now, session_of(conn), remote),
                }
            }
            NatEvent::Signal { conn, message } => match (self.sessions.get(&conn), message) {
                (Some(SignalRole::Coordinator), Ok(message)) => {
                    if let Message::Report { outcome, connect_ms, .. } = &message {
                        self.metrics.reported(*outcome, Duration::from_millis(u64::from(*connect_ms)));
                    }
                    self.coordinator.handle(now, session_of(conn), message);
                }
                (Some(SignalRole::Coordinator), Err(error)) => {
                    tracing::debug!(?conn, %error, "malformed signalling message");
                    self.coordinator.handle_malformed(now, session_of(conn));
                }
                (Some(SignalRole::Peer), Ok(message)) => {
                    tracing::debug!(?conn, ?message, "signalling message from a bootstrap");
                    self.traversal.handle_signal(now, session_of(conn), message);
                }
                (Some(SignalRole::Peer), Err(error)) => {
                    tracing::warn!(?conn, %error, "malformed signalling message from a bootstrap");
                }
                (None, _) => {}
            },
            NatEvent::SignalClosed { conn } => match self.sessions.remove(&conn) {
                Some(SignalRole::Coordinator) => self.coordinator.session_closed(now, session_of(conn)),
                Some(SignalRole::Peer) => self.traversal.bootstrap_lost(now, session_of(conn)),
                None => {}
            },
            NatEvent::PathSample { conn, remote, rtt } => match self.sessions.get(&conn) {
                Some(SignalRole::Coordinator) => {
                    self.coordinator.rtt_sample(session_of(conn), rtt);
                    self.coordinator.observed_changed(now, session_of(conn), remote);
                }
                Some(SignalRole::Peer) => {
                    if let Some(index) = self.bootstraps.iter().position(|b| b.conn == Some(conn)) {
                        if let Ok(mut status) = self.status.lock() {
                            if let Some(entry) = status.bootstraps.get_mut(index) {
                                entry.rtt = Some(rtt);
                            }
                        }
                    }
                }
                None => {}
            },
            NatEvent::Connected { tag, conn, remote, rtt } => match purpose(tag) {
                Purpose::Bootstrap(index) => {
                    if let Some(bootstrap) = self.bootstraps.get_mut(index) {
                        if bootstrap.handover == Some(Handover::Connecting) && bootstrap.conn.is_some() {
                            tracing::debug!(bootstrap = %remote, "new bootstrap connection up; registering");
                            bootstrap.handover = Some(Handover::Registering { new: conn });
                            return;
                        }
                        bootstrap.conn = Some(conn);
                        bootstrap.delay = Duration::from_secs(1);
                    }
                    if let Ok(mut status) = self.status.lock() {
                        if let Some(entry) = status.bootstraps.get_mut(index) {
                            entry.registered = true;
                            entry.rtt = Some(rtt);
                            entry.last_error = None;
                        }
                    }
                    tracing::info!(bootstrap = %remote, "connected to bootstrap");
                }
                Purpose::Attempt(attempt) => {
                    if let Some(entry) = self.attempts.get_mut(&attempt) {
                        entry.conn = Some(conn);
                    }
                    self.live.insert(attempt);
                    self.traversal.connection_result(now, attempt, true);
                }
                Purpose::Other => {}
            },
            NatEvent::Closed { tag, conn, reason } => match purpose(tag) {
                Purpose::Bootstrap(index) => self.bootstrap_closed(now, index, conn, reason),
                Purpose::Attempt(attempt) => {
                    if self.live.remove(&attempt) {
                        tracing::debug!(attempt, %reason, "traversal connection closed");
                        self.traversal.connection_closed(now, attempt);
                    } else {
                        tracing::debug!(attempt, %reason, "traversal connection failed");
                        self.traversal.connection_result(now, attempt, false);
                    }
                }
                Purpose::Other => {}
            },
        }
    }

    fn on_datagram(&mut self, now: Instant, datagram: &ControlDatagram) {
        match Probe::parse(&datagram.bytes) {
            Ok(probe) => {
                tracing::trace!(from = %datagram.source, ?probe, "probe received");
                self.traversal.handle_probe(now, datagram.source, probe);
            }
            Err(error) => tracing::debug!(from = %datagram.source, %error, "malformed probe datagram dropped"),
        }
    }

    fn on_spray_event(&mut self, now: Instant, event: SprayEvent) {
        match event {
            SprayEvent::Probe { token, socket, source, bytes } => match Probe::parse(&bytes) {
                Ok(probe) => self.traversal.handle_spray_probe(now, token, socket, source, probe),
                Err(error) => tracing::debug!(from = %source, %error, "malformed probe datagram dropped"),
            },
            SprayEvent::Ended { token } => self.sprays.ended(token),
        }
    }

    /// Whether every bootstrap told us where it sees us (or failed, or the grace time passed).
    fn registration_settled(&self, now: Instant) -> bool {
        if now >= self.started + REGISTRATION_GRACE {
            return true;
        }
        let Ok(status) = self.status.lock() else { return true };
        status.bootstraps.iter().all(|b| b.observed.is_some() || b.last_error.is_some())
    }

    fn on_connect(&mut self, now: Instant, target: PeerId, reply: Sender<Result<PeerConnection, String>>) {
        if target == self.local_peer {
            let _ = reply.send(Err("that peer ID is this node's own".into()));
            return;
        }
        if !self.registration_settled(now) {
            self.pending.push((target, reply));
            return;
        }
        self.start_attempt(now, target, reply);
    }

    fn start_attempt(&mut self, now: Instant, target: PeerId, reply: Sender<Result<PeerConnection, String>>) {
        // The first bootstrap given (and connected) coordinates.
        let preferred = self.bootstraps.iter().find_map(|b| b.conn).map(session_of);
        match self.traversal.connect_via(now, target, preferred) {
            Ok(attempt) => {
                self.attempts.insert(attempt, Attempt { target, started: now, reply: Some(reply), conn: None });
            }
            Err(error) => {
                let _ = reply.send(Err(error.to_string()));
            }
        }
    }

    fn drain_actions(&mut self, now: Instant) {
        while let Some(action) = self.coordinator.poll_action() {
            match action {
                CoordinatorAction::Send { session, message } => self.signal(session, &message),
                CoordinatorAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit } => {
                    let allocation = RelayAllocation { channel, a, b, expires, byte_limit, rate_limit };
                    if let Err(error) = self.node.install_relay(allocation) {
                        tracing::warn!(channel, %error, "relay allocation not installed");
                    }
                }
                CoordinatorAction::RemoveRelay { channel } => {
                    let _ = self.node.remove_relay(channel);
                }
            }
        }
        while let Some(action) = self.traversal.poll_action() {
            if !matches!(action, TraversalAction::SendProbe { .. } | TraversalAction::SprayProbe { .. }) {
                tracing::debug!(?action, "traversal action");
            }
            match action {
                TraversalAction::Signal { session, message } => self.signal(session, &message),
                TraversalAction::SendProbe { to, probe } => {
                    tracing::trace!(%to, ?probe, "probe");
                    let mut datagram = Vec::with_capacity(64);
                    probe.emit(&mut datagram);
                    if !self.routable(to) {
                        // A host candidate of another network: no route from here (RFC 8445 pairs
                        // it anyway). Not sent, so not counted as a failed send.
                        tracing::debug!(%to, "no route to the candidate: probe not sent");
                    } else if self.outbox.len() >= PROBE_OUTBOX {
                        tracing::debug!(%to, "probe outbox full: probe dropped");
                    } else if matches!(probe.kind, ProbeKind::Ack { .. }) {
                        // An ack is what the other side waits for: ahead of our own probes.
                        self.outbox.push_front((to, datagram));
                    } else {
                        self.outbox.push_back((to, datagram));
                    }
                }
                TraversalAction::ConnectDirect { attempt, peer, address } => self.open(now, attempt, peer, address),
                TraversalAction::ConnectRelayed { attempt, peer, alias } => self.open(now, attempt, peer, alias),
                TraversalAction::InstallRelayPath { alias, relay, channel, .. } => {
                    if let Err(error) = self.node.set_path(alias, Some(PathRoute::Relay { relay, channel })) {
                        tracing::warn!(%alias, %error, "relay path not installed");
                    }
                }
                TraversalAction::SetPathDirect { alias, address } => {
                    tracing::info!(%alias, %address, "relayed connection moves to a direct path");
                    if let Err(error) = self.node.set_path(alias, Some(PathRoute::Direct(address))) {
                        tracing::warn!(%alias, %error, "direct path not installed");
                    }
                }
                TraversalAction::RemovePath { alias } => {
                    tracing::debug!(%alias, "path alias removed");
                    if let Err(error) = self.node.set_path(alias, None) {
                        tracing::warn!(%alias, %error, "path alias not removed");
                    }
                }
                TraversalAction::SprayOpen { token, sockets } => self.sprays.open(token, sockets),
                TraversalAction::SprayProbe { token, to, first_transaction } => {
                    self.sprays.probe(token, to, first_transaction);
                }
                TraversalAction::SprayAck { token, socket, to, probe } => {
                    let mut datagram = Vec::with_capacity(64);
                    probe.emit(&mut datagram);
                    self.sprays.send(token, socket, to, datagram);
                }
                TraversalAction::SprayKeep { token, socket, remote } => match self.sprays.keep(token, socket, remote) {
                    Ok(bridge) => tracing::info!(%remote, %bridge, socket, "many-probe round found a path: bridged"),
                    Err(error) => tracing::warn!(%remote, %error, "cannot bridge the winning socket"),
                },
                TraversalAction::SprayClose { token } => self.sprays.close(token),
                TraversalAction::ConnectBridged { attempt, peer, token, remote } => match self.sprays.bridge(token) {
                    Some(bridge) => self.open(now, attempt, peer, bridge),
                    None => {
                        tracing::warn!(%peer, %remote, "no bridge to connect through");
                        self.traversal.connection_result(now, attempt, false);
                    }
                },
                TraversalAction::SetPathBridged { alias, token, address } => {
                    let Some(bridge) = self.sprays.bridge(token) else {
                        tracing::warn!(%alias, %address, "no bridge to move the path to");
                        continue;
                    };
                    tracing::info!(%alias, %address, %bridge, "relayed connection moves to a bridged path");
                    if let Err(error) = self.node.set_path(alias, Some(PathRoute::Direct(bridge))) {
                        tracing::warn!(%alias, %error, "bridged path not installed");
                    }
                }
            }
        }
        while let Some(event) = self.traversal.poll_event() {
            self.on_traversal_event(now, event);
        }
        if self.next_burst.is_none() && !self.outbox.is_empty() {
            self.send_burst(now);
        }
    }

    /// Hands the next [`PROBE_BURST`] probe datagrams to the cores.
    fn send_burst(&mut self, now: Instant) {
        for _ in 0..PROBE_BURST {
            let Some((to, datagram)) = self.outbox.pop_front() else { break };
            if let Err(error) = self.node.send_datagram(to, datagram) {
                tracing::debug!(%to, %error, "probe not sent");
            }
        }
        self.next_burst = (!self.outbox.is_empty()).then(|| now + PROBE_BURST_GAP);
    }

    fn open(&mut self, _now: Instant, attempt: u64, peer: PeerId, remote: SocketAddr) {
        let result = self
            .client_request(remote, ServerAuth::PeerId(peer), attempt_tag(attempt))
            .and_then(|request| Ok(self.node.connect(request, None)?));
        if let Err(error) = result {
            tracing::warn!(%peer, %remote, %error, "cannot open the connection to the peer");
            self.traversal.connection_result(Instant::now(), attempt, false);
        }
    }

    fn on_traversal_event(&mut self, now: Instant, event: TraversalEvent) {
        match event {
            TraversalEvent::ReregisterRequested { session, delay } => {
                self.on_reregister_requested(now, conn_of(session), delay);
            }
            TraversalEvent::ObservedAddress { session, address } => {
                let conn = conn_of(session);
                self.confirm_replacement(now, conn);
                if let Some(index) = self.bootstraps.iter().position(|b| b.conn == Some(conn)) {
                    if let Ok(mut status) = self.status.lock() {
                        if let Some(entry) = status.bootstraps.get_mut(index) {
                            if entry.observed != Some(address) {
                                tracing::info!(bootstrap = %entry.address, observed = %address, "observed address");
                            }
                            entry.observed = Some(address);
                        }
                    }
                }
            }
            TraversalEvent::AttemptFinished { attempt, peer, outcome, remote, connect, reason } => {
                tracing::debug!(attempt, %peer, ?outcome, ?remote, ?connect, ?reason, "attempt finished");
                self.metrics.attempt(outcome, connect);
                let Some(mut entry) = self.attempts.remove(&attempt) else { return };
                let result = match (outcome, entry.conn, remote) {
                    (Outcome::Direct, Some(conn), Some(remote)) => {
                        Ok(PeerConnection { conn, path: PathKind::Direct, remote, connect })
                    }
                    (Outcome::Relayed, Some(conn), Some(remote)) => {
                        Ok(PeerConnection { conn, path: PathKind::Relayed, remote, connect })
                    }
                    _ => Err(reason.unwrap_or_else(|| format!("no path to {peer}"))),
                };
                if let Some(reply) = entry.reply.take() {
                    let _ = reply.send(result);
                }
                let _ = entry.target;
                let _ = entry.started;
            }
            TraversalEvent::Upgraded { peer, address, .. } => {
                self.metrics.upgraded();
                tracing::info!(%peer, %address, "relayed connection upgraded to a direct path");
            }
        }
    }

    /// Whether the kernel has a route to `to`: connecting an unbound UDP socket asks it without
    /// sending anything.
    fn routable(&mut self, to: SocketAddr) -> bool {
        if ant_quic_dataplane::is_alias(&to) {
            return true; // routed by the data plane, through the relay or a bridge
        }
        if self.routes.len() > 4096 {
            self.routes.clear();
        }
        *self.routes.entry(to.ip()).or_insert_with(|| {
            let any: SocketAddr =
                if to.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
            UdpSocket::bind(any).and_then(|socket| socket.connect(to)).is_ok()
        })
    }

    fn signal(&self, session: u64, message: &Message) {
        let conn = conn_of(session);
        let frame = encode_frame(message);
        if let Err(error) = self.node.send_message(conn.core, CoreRequest::Signal { conn, frame }) {
            tracing::debug!(?conn, %error, "signalling message not queued");
        }
    }

    fn publish(&self) {
        let stats = self.coordinator.stats();
        self.metrics.set_coordinator(CoordinatorCounts {
            registered_peers: stats.registered as u64,
            punches: stats.punches_coordinated,
            relay_grants: stats.relays_granted,
            rate_limited: stats.rate_limited,
            malformed: stats.malformed,
        });
        self.metrics.set_traversal(self.traversal.stats(), stats.relays_renewed);
        if let Ok(mut status) = self.status.lock() {
            status.registered_peers = stats.registered;
            status.relay_allocations = stats.active_relays;
        }
    }
}

/// This host's address toward each bootstrap, with the node's port: where a peer on the same
/// network reaches us. Learned with an unconnected-then-connected UDP socket; nothing is sent.
fn host_candidates(bootstraps: &[Bootstrap], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for bootstrap in bootstraps {
        let bind: SocketAddr = if bootstrap.address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let local = UdpSocket::bind(bind).and_then(|s| s.connect(bootstrap.address).and_then(|()| s.local_addr()));
        if let Ok(local) = local {
            let candidate = SocketAddr::new(local.ip(), port);
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    }
    out
}
