//! The admin HTTP/1.1 listener on the control thread: `GET /metrics`, `/health`, `/ready`.
//!
//! One thread serves every client and also runs the liveness watch. Sockets are non-blocking,
//! each request head is bounded in size ([`MAX_REQUEST_LINE`], [`MAX_REQUEST`]: 414 and 431) and
//! time ([`REQUEST_DEADLINE`]: 408), answers are written without blocking, and malformed requests
//! get 400; every response closes its connection (`Connection: close`). At most [`MAX_CLIENTS`]
//! connections are held: when one more arrives, the oldest is closed to make room, as nginx
//! reuses its oldest idle connections. So idle or slow clients, however many, cannot lock the
//! operator out: a request sent right after its connect is answered before 63 newer connections
//! push it out (see `docs/reliability.md`).
//!
//! The listener is bound with `SO_REUSEPORT` so that a takeover (a newer process of the same user
//! on the same port) can join it with [`AdminServer::start_joining`]; when the older process calls
//! [`AdminServer::close_listener`] the kernel gives every new admin connection to the newer one.
//! [`AdminServer::start`] first checks that no listener holds the port, so two unrelated nodes
//! configured with one admin port still fail as they would without `SO_REUSEPORT`.

mod connection;
pub mod request;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_dataplane::NodeHandle;
use socket2::{Domain, Protocol, Socket, Type};

use crate::liveness::{CoreHealth, Liveness};
use crate::metrics::{CounterFn, Metrics};
use connection::{Connection, Response, Turn};

pub use connection::REQUEST_DEADLINE;
pub use request::{MAX_REQUEST, MAX_REQUEST_LINE};

/// Connections held at once; one more closes the oldest.
pub const MAX_CLIENTS: usize = 64;
/// Pause between polls when nothing happened.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Connections the kernel queues for the listener before the thread accepts them: room for a
/// burst of connects between two polls, so that the operator's is not dropped and retried a
/// second later (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;
/// Longest [`AdminServer::close_listener`] waits for the thread to drop its listener (it does so
/// within one [`IDLE_POLL`]).
const CLOSE_LISTENER_WAIT: Duration = Duration::from_secs(1);

/// What the admin server shows about the node.
#[derive(Clone)]
pub struct AdminView {
    /// The data plane.
    pub node: NodeHandle,
    /// The node's version (e.g. `env!("CARGO_PKG_VERSION")`).
    pub version: String,
    /// What the build is, on one line (`ant_quic::build_info::build_line`: version, commit,
    /// features, crypto provider, default backend); `/health` shows it as `build`.
    pub build: String,
    /// The node's peer ID.
    pub peer_id: String,
    /// When the node started (for `uptime_seconds`).
    pub started: Instant,
    /// Log lines the logger dropped under pressure, if it counts them.
    pub log_lines_dropped: Option<CounterFn>,
    /// The bootstraps the node registers with, as JSON for `/health` (address, registered,
    /// observed address, RTT).
    pub bootstraps: Option<JsonFn>,
    /// NAT traversal counters, when the node runs NAT traversal.
    pub nat: Option<Arc<crate::nat::NatMetrics>>,
    /// The peer registry (as a bootstrap): `/health`'s `registry`, its metrics and
    /// `/registry/peers/<peer-id>`.
    pub registry: Option<crate::registry::SharedRegistry>,
    /// This process's generation on its port: 1 when started alone, the predecessor's + 1 after
    /// a takeover.
    pub generation: u16,
    /// The predecessor still draining beside this process after a takeover, as it last reported
    /// itself; the binary updates it (`None`: there is none, or it has exited).
    pub previous: Arc<Mutex<Option<PreviousGeneration>>>,
}

/// The older process this one took the port over from, while it drains its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousGeneration {
    /// Its process ID.
    pub pid: u32,
    /// Its generation.
    pub generation: u16,
    /// Connections it still serves.
    pub connections: u64,
}

/// A JSON value the binary provides at each request.
pub type JsonFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl std::fmt::Debug for AdminView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminView")
            .field("version", &self.version)
            .field("peer_id", &self.peer_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Flags {
    draining: AtomicBool,
    stop: AtomicBool,
    /// Asked by [`AdminServer::close_listener`].
    close_listener: AtomicBool,
    /// Set by the thread once its listener is dropped.
    listener_closed: AtomicBool,
    /// Every core alive at the last liveness tick (for the systemd watchdog).
    healthy: AtomicBool,
}

/// The running control thread with its admin listener. Stops (and joins) on drop.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Bind `bind` (TCP) and start the control thread. Fails with `AddrInUse` when any listener
    /// holds the port already, as a bind without `SO_REUSEPORT` would.
    pub fn start(bind: SocketAddr, view: AdminView) -> std::io::Result<Self> {
        // Port 0 needs no check: the kernel never picks a port that a reuseport group holds.
        if bind.port() != 0 {
            check_port_free(bind)?;
        }
        Self::start_joining(bind, view)
    }

    /// Like [`start`](Self::start), but join the `SO_REUSEPORT` listener another process of the
    /// same user holds on `bind` (a takeover): both answer until the older one calls
    /// [`close_listener`](Self::close_listener). Binds alone when no listener holds the port.
    pub fn start_joining(bind: SocketAddr, view: AdminView) -> std::io::Result<Self> {
        let listener = reuse_port_listener(bind)?;
        let local_addr = listener.local_addr()?;
        let flags = Arc::new(Flags::default());
        let thread_flags = Arc::clone(&flags);
        let thread = std::thread::Builder::new()
            .name("ant-quic-control".into())
            .spawn(move || ControlThread::new(listener, view, thread_flags).run())?;
        tracing::info!(%local_addr, "admin HTTP listening (/metrics /health /ready)");
        Ok(Self { local_addr, flags, thread: Some(thread) })
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on `/ready` answers 503 and `/health` says `draining` (the node is draining for
    /// shutdown or after a takeover).
    pub fn set_draining(&self) {
        self.flags.draining.store(true, Ordering::Relaxed);
    }

    /// Stop accepting admin connections and drop the listener, so that from now on the kernel
    /// gives every new one to the other listener of the `SO_REUSEPORT` group (the process that
    /// took over). Connections already accepted or queued still get their answer, and the
    /// liveness watch keeps running. Returns once the listener is dropped (within about
    /// `IDLE_POLL`; at most `CLOSE_LISTENER_WAIT`).
    pub fn close_listener(&self) {
        self.flags.close_listener.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + CLOSE_LISTENER_WAIT;
        while !self.flags.listener_closed.load(Ordering::Acquire) {
            // A finished thread has dropped its listener with everything else.
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    local_addr = %self.local_addr,
                    "admin listener not closed yet (the control thread is busy); it closes at its next turn"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::info!(local_addr = %self.local_addr, "admin listener closed; new admin connections go to the other process");
    }

    /// Every core was alive at the control thread's last liveness check (a few ms ago): the
    /// condition for sending systemd `WATCHDOG=1`.
    pub fn healthy(&self) -> bool {
        self.flags.healthy.load(Ordering::Relaxed)
    }

    /// Stop the thread and close the listener.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.flags.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ControlThread {
    /// `None` once [`AdminServer::close_listener`] took effect.
    listener: Option<TcpListener>,
    flags: Arc<Flags>,
    clients: Vec<Connection>,
    pages: Pages,
}

/// What the listener answers, and the liveness watch it reports on.
struct Pages {
    view: AdminView,
    flags: Arc<Flags>,
    metrics: Metrics,
    liveness: Liveness,
}

impl ControlThread {
    fn new(listener: TcpListener, view: AdminView, flags: Arc<Flags>) -> Self {
        let metrics = Metrics::new(view.node.clone(), view.log_lines_dropped.clone())
            .with_nat(view.nat.clone())
            .with_registry(view.registry.clone());
        let liveness = Liveness::new(&view.node, Instant::now());
        let metrics = metrics.with_generation(view.generation);
        let pages = Pages { view, flags: Arc::clone(&flags), metrics, liveness };
        Self { listener: Some(listener), flags, clients: Vec::with_capacity(MAX_CLIENTS), pages }
    }

    fn run(mut self) {
        while !self.flags.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.pages.liveness.tick(&self.pages.view.node, now);
            let healthy = self.pages.liveness.unhealthy_reason().is_none();
            self.flags.healthy.store(healthy, Ordering::Relaxed);
            if self.listener.is_some() && self.flags.close_listener.load(Ordering::Relaxed) {
                self.close_listener();
            }
            let busy = self.accept() | self.serve(now);
            if !busy {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    fn close_listener(&mut self) {
        // Linux resets the connections still queued on a listener that closes, unless
        // net.ipv4.tcp_migrate_req=1 moves them to another listener of the reuseport group; so
        // accept what is queued first (it is answered like any other request). A handshake that
        // completes between this last accept and the close can still be reset.
        self.accept();
        self.listener = None;
        self.flags.listener_closed.store(true, Ordering::Release);
    }

    fn accept(&mut self) -> bool {
        let Some(listener) = &self.listener else {
            return false;
        };
        let mut any = false;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    any = true;
                    if stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    // The clock is read after the accept: a connection that arrived while this
                    // loop ran must not start its request deadline before it existed.
                    let now = Instant::now();
                    // A request that waited in the queue is answered now, before newer
                    // connections of the same burst could push this one out.
                    let mut client = Connection::new(stream, now);
                    let pages = &mut self.pages;
                    if client.advance(now, &mut |method, path| pages.respond(method, path)) == Turn::Finished {
                        continue;
                    }
                    if self.clients.len() >= MAX_CLIENTS {
                        close_oldest(&mut self.clients);
                    }
                    self.clients.push(client);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return any,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    return any;
                }
            }
        }
    }

    /// Move every client on; drop the finished ones.
    fn serve(&mut self, now: Instant) -> bool {
        let mut any = false;
        let pages = &mut self.pages;
        self.clients.retain_mut(|client| match client.advance(now, &mut |method, path| pages.respond(method, path)) {
            Turn::Idle => true,
            Turn::Busy => {
                any = true;
                true
            }
            Turn::Finished => {
                any = true;
                false
            }
        });
        any
    }
}

impl Pages {
    fn respond(&mut self, method: &str, path: &str) -> Response {
        if method != "GET" {
            return Response::text(405, "only GET\n");
        }
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.metrics.encode(Some(&self.liveness)),
            },
            "/health" => self.health(),
            "/ready" => {
                let reason = if self.flags.draining.load(Ordering::Relaxed) {
                    Some("draining".to_owned())
                } else {
                    self.liveness.not_ready_reason()
                };
                match reason {
                    None => Response::text(200, "ready\n"),
                    Some(reason) => Response::text(503, format!("not ready: {reason}\n")),
                }
            }
            _ if path.starts_with(REGISTRY_PEERS) => registry_peer(self.view.registry.as_ref(), path),
            _ => Response::text(404, "not found: try /metrics, /health or /ready\n"),
        }
    }

    fn health(&self) -> Response {
        let reason = self.liveness.unhealthy_reason();
        let cores: Vec<serde_json::Value> = self
            .liveness
            .health()
            .enumerate()
            .map(|(core, health)| {
                let state = match health {
                    CoreHealth::Starting => "starting",
                    CoreHealth::Alive => "running",
                    CoreHealth::Stalled(_) => "stalled",
                    CoreHealth::Stopped => "stopped",
                    CoreHealth::Failed(_) => "failed",
                };
                serde_json::json!({ "core": core, "alive": health.is_alive(), "state": state })
            })
            .collect();
        let status = if reason.is_some() {
            "unhealthy"
        } else if self.flags.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "ok"
        };
        // A poisoned lock still holds the last value the binary wrote: show it.
        let previous = match self.view.previous.lock() {
            Ok(previous) => previous.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let previous = previous.map_or(
            serde_json::Value::Null,
            |p| serde_json::json!({ "pid": p.pid, "generation": p.generation, "connections": p.connections }),
        );
        let mut body = serde_json::json!({
            "status": status,
            "version": self.view.version,
            "build": self.view.build,
            "peer_id": self.view.peer_id,
            "uptime_seconds": self.view.started.elapsed().as_secs(),
            "backend": self.view.node.backend().name(),
            "cores": cores,
            "generation": self.view.generation,
            "previous": previous,
        });
        if let (Some(reason), Some(object)) = (&reason, body.as_object_mut()) {
            object.insert("reason".into(), serde_json::Value::String(reason.clone()));
        }
        if let (Some(bootstraps), Some(object)) = (&self.view.bootstraps, body.as_object_mut()) {
            object.insert("bootstraps".into(), bootstraps());
        }
        if let (Some(registry), Some(object)) = (&self.view.registry, body.as_object_mut()) {
            object.insert("registry".into(), registry.health_json());
        }
        Response {
            status: if reason.is_none() { 200 } else { 503 },
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }
}

/// Where the admin endpoint of the registry answers: `GET /registry/peers/<peer-id-hex>`.
const REGISTRY_PEERS: &str = "/registry/peers/";

/// `GET /registry/peers/<peer-id-hex>`: the peer's record as JSON (registered here or at another
/// bootstrap of the federation), 404 when unknown, 400 for a malformed ID.
fn registry_peer(registry: Option<&crate::registry::SharedRegistry>, path: &str) -> Response {
    let Some(registry) = registry else { return Response::text(404, "no registry on this node\n") };
    let id = path.get(REGISTRY_PEERS.len()..).unwrap_or_default();
    match id.parse::<crate::PeerId>() {
        Err(error) => Response::text(400, format!("{error}\n")),
        Ok(peer) => match registry.lookup_json(peer) {
            Some(record) => Response { status: 200, content_type: "application/json", body: format!("{record}\n") },
            None => Response::text(404, format!("peer {peer} is not registered\n")),
        },
    }
}

/// Make room for a new connection: close the one accepted longest ago (unanswered if it has not
/// completed its request by now).
fn close_oldest(clients: &mut Vec<Connection>) {
    let oldest = clients.iter().enumerate().min_by_key(|(_, client)| client.accepted()).map(|(index, _)| index);
    if let Some(index) = oldest {
        clients.swap_remove(index);
    }
}

/// Fail with `AddrInUse` when any listener holds `bind`: a bind without `SO_REUSEPORT` conflicts
/// with every listener, ours included. `SO_REUSEADDR` (as std sets it) lets the connections of
/// answered requests still in TIME_WAIT pass. Bound but never listening, so no client lands on it.
fn check_port_free(bind: SocketAddr) -> std::io::Result<()> {
    let probe = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&bind.into())
}

/// A non-blocking TCP listener on `bind` in the port's `SO_REUSEPORT` group (the kernel lets only
/// sockets of the same user join it).
fn reuse_port_listener(bind: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&bind.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
