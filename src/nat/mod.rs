//! The NAT traversal driver: a thread beside the data plane that runs the node's
//! [`NatAgent`] (the sans-IO policy around both state machines of `ant_quic_control::nat`)
//! against the node, and does for it what needs the host.
//!
//! Inputs: signalling messages and connection events from the cores (`link::NatEvent`), probe
//! datagrams from the data plane and from the extra sockets of many-probe rounds
//! (`spray::SprayEvent`), requests from the node's owner. The agent's actions are carried out
//! here: frames written on signalling streams, probes sent from the node socket and the extra
//! sockets, connections opened (directly, through a relay alias, or through a bridge) with their
//! TLS configuration, relay allocations and path aliases installed on every core, host
//! candidates looked up, status and metrics published.

pub mod alternate;
mod host;
pub mod link;
pub mod spray;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_control::nat::agent::{
    AgentAction, AgentEvent, BootstrapSpec, ConnPurpose, NatAgent, NatStatus, PeerConnection, RequestId,
};
use ant_quic_control::nat::coordinator::{Coordinator, CoordinatorConfig};
use ant_quic_control::nat::traversal::{Traversal, TraversalConfig};
use ant_quic_control::PeerId;
use ant_quic_dataplane::relay::{PathRoute, RelayAllocation};
use ant_quic_dataplane::{ControlDatagram, Messenger};
use crossbeam_channel::{Receiver, Sender};

use crate::identity::Identity;
use crate::registry::RegistryService;
use crate::tls::{self, CertifiedKey, ServerAuth, ALPN_ANT_QUIC};
use crate::Error;
use alternate::{AlternateOptions, Alternates};
use ant_quic_control::registry::SharedRegistry;
use link::{CoreRequest, NatEvent};
use spray::{SprayEvent, Sprays};

/// Keep-alive on connections the traversal opens: keeps NAT mappings (often 30 s for UDP) open.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Capacity of the queue from the cores to the driver.
pub(crate) const EVENT_QUEUE: usize = 16 * 1024;
/// Host addresses whose route is remembered at most; then the cache starts over.
const ROUTE_CACHE: usize = 4096;

/// What the traversal of a node is told at start.
#[derive(Debug, Clone, Default)]
pub struct NatOptions {
    /// Bootstraps to register with, in the operator's order (the first coordinates), each pinned
    /// by peer ID or known by address only.
    pub bootstraps: Vec<BootstrapSpec>,
    /// Coordinator settings (when peers register here).
    pub coordinator: CoordinatorConfig,
    /// Traversal settings (for this node's own connections).
    pub traversal: TraversalConfig,
    /// The alternate address for peers' mapping discovery (as a bootstrap); `None`: none.
    pub alternate: Option<AlternateOptions>,
    /// The application protocols (ALPN) offered on connections to peers reached by peer ID;
    /// empty: `ant-quic/1`, the node's own.
    pub peer_alpns: Vec<Vec<u8>>,
    /// Where the peers registered here are kept (memory, or etcd shared with other bootstraps).
    pub registry: crate::registry::RegistryOptions,
}

/// Where the answer to a connection request goes: called once, with the connection or why there
/// is none. Returns whether someone took the connection; one nobody took is closed.
pub(crate) type ConnectReply = Box<dyn FnOnce(Result<PeerConnection, String>) -> bool + Send>;

/// A connection request waiting for the agent's answer.
struct PendingConnect {
    target: PeerId,
    timeout: Duration,
    deadline: Instant,
    reply: ConnectReply,
}

enum Request {
    Connect { target: PeerId, timeout: Duration, reply: ConnectReply },
    BeginHandover { window: Duration },
    Stop,
}

/// The running driver.
#[derive(Debug)]
pub struct Nat {
    requests: Sender<Request>,
    status: Arc<Mutex<NatStatus>>,
    /// Tasks to wake at the next change of `status`.
    status_watchers: Arc<Mutex<Vec<Waker>>>,
    metrics: Arc<ant_quic_control::nat::NatMetrics>,
    thread: Option<JoinHandle<()>>,
    alternates: Option<Alternates>,
    registry: Option<Arc<RegistryService>>,
    shared_registry: SharedRegistry,
}

impl Nat {
    /// Start the driver for `node`, taking the cores' events and probe datagrams; `join`: the
    /// node takes another process's port over (see [`Alternates::start`]).
    pub(crate) fn start<M: From<CoreRequest> + Send + 'static>(
        node: Messenger<M>,
        identity: &Identity,
        mut options: NatOptions,
        events: Receiver<NatEvent>,
        datagrams: Receiver<ControlDatagram>,
        join: bool,
    ) -> Result<Self, Error> {
        let (requests, requests_rx) = crossbeam_channel::bounded(64);
        let metrics = Arc::new(ant_quic_control::nat::NatMetrics::default());
        let alternates = match &options.alternate {
            Some(alternate) => Some(Alternates::start(alternate, node.local_addr(), join, &metrics)?),
            None => None,
        };
        if let Some(alternates) = &alternates {
            options.coordinator.other_addresses.clone_from(&alternates.announced);
        }
        let registry = Arc::new(RegistryService::start(&options.registry, identity.peer_id(), node.local_addr())?);
        let shared_registry = registry.shared();
        options.coordinator.announce_registrations = true;
        let now = Instant::now();
        let mut agent = NatAgent::new(
            now,
            identity.peer_id(),
            &options.bootstraps,
            Coordinator::new(options.coordinator.clone(), seed()),
            Traversal::new(options.traversal.clone(), seed()),
        );
        let directory = shared_registry.clone();
        agent.set_directory(Box::new(move |peer| directory.lookup(peer).map(|record| record.bootstrap)));
        let status = Arc::new(Mutex::new(agent.status().clone()));
        let status_watchers = Arc::new(Mutex::new(Vec::new()));
        let (spray_events_tx, spray_events) = crossbeam_channel::bounded(EVENT_QUEUE);
        let sprays = Sprays::new(node.local_addr(), spray_events_tx);
        let mut driver = Driver {
            node,
            agent,
            routes: HashMap::new(),
            certified: CertifiedKey::of_identity(identity),
            replies: HashMap::new(),
            next_request: 0,
            status: Arc::clone(&status),
            status_watchers: Arc::clone(&status_watchers),
            metrics: Arc::clone(&metrics),
            sprays,
            peer_alpns: options.peer_alpns.clone(),
            registry: Arc::clone(&registry),
        };
        let thread = std::thread::Builder::new()
            .name("ant-quic-nat".into())
            .spawn(move || driver.run(&events, &datagrams, &spray_events, &requests_rx))
            .map_err(|source| Error::Io { context: "starting the NAT traversal thread".into(), source })?;
        Ok(Self {
            requests,
            status,
            status_watchers,
            metrics,
            thread: Some(thread),
            alternates,
            registry: Some(registry),
            shared_registry,
        })
    }

    /// Reach `target` by its peer ID through a bootstrap: directly when a hole can be punched,
    /// through the relay otherwise. Waits at most `timeout`.
    pub fn connect(&self, target: PeerId, timeout: Duration) -> Result<PeerConnection, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.request_connect(target, timeout, Box::new(move |result| reply.send(result).is_ok()))?;
        // The driver answers by the deadline; the margin only covers a driver that stopped.
        match answer.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(result) => result,
            Err(_) => Err("the node is stopping".to_owned()),
        }
    }

    /// [`Nat::connect`] without waiting: `reply` is called once, from the NAT thread, with the
    /// connection or why there is none (at the latest after `timeout`).
    pub(crate) fn request_connect(&self, target: PeerId, timeout: Duration, reply: ConnectReply) -> Result<(), String> {
        self.requests.send(Request::Connect { target, timeout, reply }).map_err(|_| "the node is stopping".to_owned())
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

    /// Wake `waker` at the next change of [`Nat::status`] (look at the status again after this).
    pub(crate) fn watch_status(&self, waker: &Waker) {
        if let Ok(mut watchers) = self.status_watchers.lock() {
            if !watchers.iter().any(|w| w.will_wake(waker)) {
                watchers.push(waker.clone());
            }
        }
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
                            "peer_id": b.peer.map(|p| p.to_string()),
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

    /// Stop the driver thread (before the node's cores stop) and the alternate addresses.
    pub fn stop(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(mut alternates) = self.alternates.take() {
            alternates.stop();
        }
        // The driver's reference went with its thread: the store's thread stops here.
        self.registry.take();
    }

    /// The peer registry (for `/health`, metrics, the admin endpoint and lookups).
    pub fn registry(&self) -> SharedRegistry {
        self.shared_registry.clone()
    }

    /// The alternate addresses this node answers mapping discovery on (as bound).
    pub fn alternate_addresses(&self) -> Vec<SocketAddr> {
        self.alternates.as_ref().map(|a| a.announced.clone()).unwrap_or_default()
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

struct Driver<M> {
    node: Messenger<M>,
    status_watchers: Arc<Mutex<Vec<Waker>>>,
    agent: NatAgent,
    /// Whether this host has a route to an address (looked up once per address).
    routes: HashMap<IpAddr, bool>,
    certified: CertifiedKey,
    /// Where the answers to connection requests go, by request.
    replies: HashMap<RequestId, PendingConnect>,
    next_request: RequestId,
    status: Arc<Mutex<NatStatus>>,
    metrics: Arc<ant_quic_control::nat::NatMetrics>,
    /// Extra sockets and bridges of many-probe rounds.
    sprays: Sprays,
    /// [`NatOptions::peer_alpns`].
    peer_alpns: Vec<Vec<u8>>,
    registry: Arc<RegistryService>,
}

impl<M: From<CoreRequest>> Driver<M> {
    fn run(
        &mut self,
        events: &Receiver<NatEvent>,
        datagrams: &Receiver<ControlDatagram>,
        spray_events: &Receiver<SprayEvent>,
        requests: &Receiver<Request>,
    ) {
        self.serve(events, datagrams, spray_events, requests);
        for (_, pending) in self.replies.drain() {
            (pending.reply)(Err("the node is stopping".to_owned()));
        }
    }

    fn serve(
        &mut self,
        events: &Receiver<NatEvent>,
        datagrams: &Receiver<ControlDatagram>,
        spray_events: &Receiver<SprayEvent>,
        requests: &Receiver<Request>,
    ) {
        loop {
            self.agent.handle_timeout(Instant::now());
            self.execute();
            self.expire_requests(Instant::now());
            let wake = self.replies.values().map(|p| p.deadline).fold(self.agent.poll_timeout(), Instant::min);
            let timeout = wake.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(event) => self.on_event(Instant::now(), event),
                    Err(_) => return,
                },
                recv(datagrams) -> datagram => {
                    if let Ok(datagram) = datagram {
                        let event = AgentEvent::ProbeDatagram { from: datagram.source, bytes: &datagram.bytes };
                        self.agent.handle(Instant::now(), event);
                    }
                },
                recv(spray_events) -> event => match event {
                    Ok(SprayEvent::Probe { token, socket, source, bytes }) => {
                        let event = AgentEvent::SprayProbe { token, socket, from: source, bytes: &bytes };
                        self.agent.handle(Instant::now(), event);
                    }
                    Ok(SprayEvent::Ended { token }) => self.sprays.ended(token),
                    Err(_) => {}
                },
                recv(requests) -> request => match request {
                    Ok(Request::Connect { target, timeout, reply }) => {
                        let request = self.next_request;
                        self.next_request += 1;
                        let deadline = Instant::now() + timeout;
                        self.replies.insert(request, PendingConnect { target, timeout, deadline, reply });
                        self.agent.handle(Instant::now(), AgentEvent::Connect { request, target });
                    }
                    Ok(Request::BeginHandover { window }) => {
                        self.agent.handle(Instant::now(), AgentEvent::BeginHandover { window });
                    }
                    Ok(Request::Stop) | Err(_) => return,
                },
                default(timeout) => {}
            }
        }
    }

    /// Requests past their deadline are answered; the attempt goes on, and a connection it makes
    /// later is closed (nobody takes it).
    fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<RequestId> = self.replies.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for request in expired {
            if let Some(pending) = self.replies.remove(&request) {
                let why = format!("no connection to {} within {} s", pending.target, pending.timeout.as_secs());
                (pending.reply)(Err(why));
            }
        }
    }

    /// Tell every core that `alias` routes elsewhere now (applications report paths from it).
    fn announce_route(&self, alias: SocketAddr, route: Option<PathRoute>) {
        for core in 0..self.node.cores() {
            if let Err(error) = self.node.send_message(core, M::from(CoreRequest::Route { alias, route })) {
                tracing::debug!(%alias, %error, "route change not told to core {core}");
            }
        }
    }

    fn on_event(&mut self, now: Instant, event: NatEvent) {
        let event = match event {
            NatEvent::SignalOpened { conn, role, peer, remote, rtt } => {
                AgentEvent::SignalOpened { conn, role, peer, remote, rtt }
            }
            NatEvent::Signal { conn, message: Ok(message) } => AgentEvent::Signal { conn, message },
            NatEvent::Signal { conn, message: Err(error) } => AgentEvent::MalformedSignal { conn, error },
            NatEvent::SignalClosed { conn } => AgentEvent::SignalClosed { conn },
            NatEvent::PathSample { conn, remote, rtt } => AgentEvent::PathSample { conn, remote, rtt },
            NatEvent::Connected { purpose, conn, remote, rtt } => AgentEvent::Connected { purpose, conn, remote, rtt },
            // Extra bootstraps (a relay across bootstraps) are pinned too, and not in the status.
            NatEvent::Closed { purpose: ConnPurpose::Bootstrap(index), conn, reason }
                if self.agent.pinned(index) && tls::is_certificate_refusal(&reason) =>
            {
                AgentEvent::BootstrapWrongPeer { index, conn, reason }
            }
            NatEvent::Closed { purpose, conn, reason } => AgentEvent::Closed { purpose, conn, reason },
        };
        self.agent.handle(now, event);
    }

    /// Carries out what the agent asks, until it asks nothing more.
    fn execute(&mut self) {
        while let Some(action) = self.agent.poll_action() {
            match action {
                AgentAction::OpenBootstrap { index, remote, peer } => {
                    // A bootstrap pinned by peer ID must prove it; one known by address only is
                    // not authenticated (what it tells us is bound to this connection).
                    let auth = peer.map_or(ServerAuth::Insecure, ServerAuth::PeerId);
                    self.open(ConnPurpose::Bootstrap(index), remote, auth);
                }
                AgentAction::DiscoverHostCandidates { bootstraps } => {
                    let addresses = host::candidates(&bootstraps, self.node.local_addr());
                    self.agent.handle(Instant::now(), AgentEvent::HostCandidates { addresses });
                }
                AgentAction::OpenPeer { attempt, peer, remote } => {
                    self.open(ConnPurpose::Attempt(attempt), remote, ServerAuth::PeerId(peer));
                }
                AgentAction::OpenBridged { attempt, peer, token, remote } => match self.sprays.bridge(token) {
                    Some(bridge) => self.open(ConnPurpose::Attempt(attempt), bridge, ServerAuth::PeerId(peer)),
                    None => {
                        tracing::warn!(%peer, %remote, "no bridge to connect through");
                        self.open_failed(ConnPurpose::Attempt(attempt), "no bridge to connect through".into());
                    }
                },
                AgentAction::Signal { conn, frame } => {
                    if let Err(error) = self.node.send_message(conn.core, M::from(CoreRequest::Signal { conn, frame }))
                    {
                        tracing::debug!(?conn, %error, "signalling message not queued");
                    }
                }
                AgentAction::Close { conn, reason } => {
                    if let Err(error) = self.node.send_message(conn.core, M::from(CoreRequest::Close { conn, reason }))
                    {
                        tracing::debug!(?conn, %error, "connection not closed");
                    }
                }
                AgentAction::SendProbe { to, datagram } => {
                    if !self.routable(to) {
                        // A host candidate of another network: no route from here (RFC 8445 pairs
                        // it anyway). Not sent, so not counted as a failed send.
                        tracing::debug!(%to, "no route to the candidate: probe not sent");
                    } else if let Err(error) = self.node.send_datagram(to, datagram) {
                        tracing::debug!(%to, %error, "probe not sent");
                    }
                }
                AgentAction::InstallRelay { channel, a, b, expires, byte_limit, rate_limit } => {
                    let allocation = RelayAllocation { channel, a, b, expires, byte_limit, rate_limit };
                    if let Err(error) = self.node.install_relay(allocation) {
                        tracing::warn!(channel, %error, "relay allocation not installed");
                    }
                }
                AgentAction::RemoveRelay { channel } => {
                    let _ = self.node.remove_relay(channel);
                }
                AgentAction::Registered { peer, observed, candidates } => {
                    self.registry.register(peer, observed, candidates);
                }
                AgentAction::Unregistered { peer } => self.registry.unregister(peer),
                AgentAction::SetRelayPath { alias, relay, channel } => {
                    let route = PathRoute::Relay { relay, channel };
                    if let Err(error) = self.node.set_path(alias, Some(route)) {
                        tracing::warn!(%alias, %error, "relay path not installed");
                    }
                    self.announce_route(alias, Some(route));
                }
                AgentAction::SetDirectPath { alias, address } => {
                    if let Err(error) = self.node.set_path(alias, Some(PathRoute::Direct(address))) {
                        tracing::warn!(%alias, %error, "direct path not installed");
                    }
                    self.announce_route(alias, Some(PathRoute::Direct(address)));
                }
                AgentAction::SetBridgedPath { alias, token, address } => {
                    let Some(bridge) = self.sprays.bridge(token) else {
                        tracing::warn!(%alias, %address, "no bridge to move the path to");
                        continue;
                    };
                    tracing::info!(%alias, %address, %bridge, "relayed connection moves to a bridged path");
                    if let Err(error) = self.node.set_path(alias, Some(PathRoute::Direct(bridge))) {
                        tracing::warn!(%alias, %error, "bridged path not installed");
                    }
                    // The application sees the peer's address, not the local bridge.
                    self.announce_route(alias, Some(PathRoute::Direct(address)));
                }
                AgentAction::RemovePath { alias } => {
                    if let Err(error) = self.node.set_path(alias, None) {
                        tracing::warn!(%alias, %error, "path alias not removed");
                    }
                    self.announce_route(alias, None);
                }
                AgentAction::SprayOpen { token, sockets } => self.sprays.open(token, sockets),
                AgentAction::SprayProbe { token, to, first_transaction } => {
                    self.sprays.probe(token, to, first_transaction);
                }
                AgentAction::SprayAck { token, socket, to, datagram } => self.sprays.send(token, socket, to, datagram),
                AgentAction::SprayKeep { token, socket, remote } => match self.sprays.keep(token, socket, remote) {
                    Ok(bridge) => tracing::info!(%remote, %bridge, socket, "many-probe round found a path: bridged"),
                    Err(error) => tracing::warn!(%remote, %error, "cannot bridge the winning socket"),
                },
                AgentAction::SprayClose { token } => self.sprays.close(token),
                AgentAction::Reply { request, result } => {
                    let connection = result.as_ref().ok().map(|c| c.conn);
                    let taken = match self.replies.remove(&request) {
                        Some(pending) => (pending.reply)(result),
                        None => false,
                    };
                    if let (Some(conn), false) = (connection, taken) {
                        // Its caller gave up (timed out, or went away): nobody will use it.
                        let close = CoreRequest::Close { conn, reason: "nobody waits for the connection" };
                        let _ = self.node.send_message(conn.core, M::from(close));
                    }
                }
                AgentAction::Abandon { request } => {
                    if let Some(pending) = self.replies.remove(&request) {
                        (pending.reply)(Err("a later request for the same peer took the attempt over".to_owned()));
                    }
                }
                AgentAction::Sample { coordinator, traversal, relays_renewed } => {
                    for core in 0..self.node.cores() {
                        let _ = self.node.send_message(core, M::from(CoreRequest::Sample));
                    }
                    self.metrics.set_coordinator(coordinator);
                    self.metrics.set_traversal(traversal, relays_renewed);
                }
                AgentAction::CountAttempt { outcome, connect } => self.metrics.attempt(outcome, connect),
                AgentAction::CountReported { outcome, connect } => self.metrics.reported(outcome, connect),
                AgentAction::CountForwarded { elapsed, punched } => self.metrics.forwarded(elapsed, punched),
                AgentAction::CountUpgrade { after } => self.metrics.upgraded(after),
                AgentAction::StatusChanged => {
                    if let Ok(mut status) = self.status.lock() {
                        status.clone_from(self.agent.status());
                    }
                    let watchers = self.status_watchers.lock().map(|mut w| std::mem::take(&mut *w));
                    watchers.unwrap_or_default().into_iter().for_each(Waker::wake);
                }
            }
        }
    }

    /// Opens a connection for `purpose`; a connection that cannot start is reported to the agent
    /// as closed.
    fn open(&mut self, purpose: ConnPurpose, remote: SocketAddr, auth: ServerAuth) {
        let reason = match self.client_request(remote, auth, purpose.tag()) {
            Ok(request) => match self.node.connect(request, None) {
                Ok(_) => return,
                Err(error) => format!("cannot start the connection: {error}"),
            },
            Err(error) => error.to_string(),
        };
        tracing::warn!(?purpose, %remote, %reason, "cannot open the connection");
        self.open_failed(purpose, reason);
    }

    fn open_failed(&mut self, purpose: ConnPurpose, reason: String) {
        self.agent.handle(Instant::now(), AgentEvent::Closed { purpose, conn: None, reason });
    }

    fn client_request(
        &self,
        remote: SocketAddr,
        auth: ServerAuth,
        tag: u64,
    ) -> Result<ant_quic_dataplane::ConnectRequest, Error> {
        // Connections to peers carry the application's protocols; the rest speak ant-quic/1.
        let alpns: Vec<&[u8]> = match ConnPurpose::of_tag(tag) {
            Some(ConnPurpose::Attempt(_)) if !self.peer_alpns.is_empty() => {
                self.peer_alpns.iter().map(Vec::as_slice).collect()
            }
            _ => vec![ALPN_ANT_QUIC],
        };
        let mut config = tls::client_config_with(auth, &alpns, Some(&self.certified))?;
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

    /// Whether the kernel has a route to `to`: connecting an unbound UDP socket asks it without
    /// sending anything.
    fn routable(&mut self, to: SocketAddr) -> bool {
        if ant_quic_dataplane::is_alias(&to) {
            return true; // routed by the data plane, through the relay or a bridge
        }
        if self.routes.len() > ROUTE_CACHE {
            self.routes.clear();
        }
        *self.routes.entry(to.ip()).or_insert_with(|| {
            let any: SocketAddr =
                if to.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
            UdpSocket::bind(any).and_then(|socket| socket.connect(to)).is_ok()
        })
    }
}
