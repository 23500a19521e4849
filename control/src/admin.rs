//! The admin HTTP/1.1 listener on the control thread: `GET /metrics`, `/health`, `/ready`.
//!
//! One thread serves every client and also runs the liveness watch. Sockets are non-blocking and
//! each request is bounded in size ([`MAX_REQUEST`]) and time ([`REQUEST_DEADLINE`]), so a slow or
//! hostile client cannot stall the thread; malformed requests get 400 and the connection is
//! closed. Every response closes its connection (`Connection: close`).
//!
//! The listener is bound with `SO_REUSEPORT` so that a takeover (a newer process of the same user
//! on the same port) can join it with [`AdminServer::start_joining`]; when the older process calls
//! [`AdminServer::close_listener`] the kernel gives every new admin connection to the newer one.
//! [`AdminServer::start`] first checks that no listener holds the port, so two unrelated nodes
//! configured with one admin port still fail as they would without `SO_REUSEPORT`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_dataplane::NodeHandle;
use socket2::{Domain, Protocol, Socket, Type};

use crate::liveness::{CoreHealth, Liveness};
use crate::metrics::{CounterFn, Metrics};

/// Largest request (line and headers) accepted; larger ones get 431 and are closed.
pub const MAX_REQUEST: usize = 16 * 1024;
/// A request must arrive whole within this time, or it gets 408.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed on accept.
pub const MAX_CLIENTS: usize = 64;
/// Longest the thread blocks writing one response to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between polls when nothing happened.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Connections the kernel queues for the listener before the thread accepts them.
const LISTEN_BACKLOG: i32 = 128;
/// Longest [`AdminServer::close_listener`] waits for the thread to drop its listener (it does so
/// within one [`IDLE_POLL`] unless it is busy writing to slow clients).
const CLOSE_LISTENER_WAIT: Duration = Duration::from_secs(1);

/// What the admin server shows about the node.
#[derive(Clone)]
pub struct AdminView {
    /// The data plane.
    pub node: NodeHandle,
    /// The node's version (e.g. `env!("CARGO_PKG_VERSION")`).
    pub version: String,
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
    /// [`IDLE_POLL`]; at most [`CLOSE_LISTENER_WAIT`]).
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

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    since: Instant,
}

struct ControlThread {
    /// `None` once [`AdminServer::close_listener`] took effect.
    listener: Option<TcpListener>,
    view: AdminView,
    flags: Arc<Flags>,
    metrics: Metrics,
    liveness: Liveness,
    clients: Vec<Client>,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

impl ControlThread {
    fn new(listener: TcpListener, view: AdminView, flags: Arc<Flags>) -> Self {
        let metrics = Metrics::new(view.node.clone(), view.log_lines_dropped.clone()).with_nat(view.nat.clone());
        let liveness = Liveness::new(&view.node, Instant::now());
        let metrics = metrics.with_generation(view.generation);
        Self { listener: Some(listener), view, flags, metrics, liveness, clients: Vec::new() }
    }

    fn run(mut self) {
        while !self.flags.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.liveness.tick(&self.view.node, now);
            let healthy = self.liveness.unhealthy_reason().is_none();
            self.flags.healthy.store(healthy, Ordering::Relaxed);
            if self.listener.is_some() && self.flags.close_listener.load(Ordering::Relaxed) {
                self.close_listener(now);
            }
            let busy = self.accept(now) | self.serve(now);
            if !busy {
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    fn close_listener(&mut self, now: Instant) {
        // Linux resets the connections still queued on a listener that closes, unless
        // net.ipv4.tcp_migrate_req=1 moves them to another listener of the reuseport group; so
        // accept what is queued first (it is answered like any other request). A handshake that
        // completes between this last accept and the close can still be reset.
        self.accept(now);
        self.listener = None;
        self.flags.listener_closed.store(true, Ordering::Release);
    }

    fn accept(&mut self, now: Instant) -> bool {
        let Some(listener) = &self.listener else {
            return false;
        };
        let mut any = false;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    any = true;
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    self.clients.push(Client { stream, buf: Vec::new(), since: now });
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

    /// Read from every client; answer and close the ones whose request is complete or broken.
    fn serve(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut index = 0;
        while index < self.clients.len() {
            let outcome = match self.clients.get_mut(index) {
                Some(client) => read_request(client, now),
                None => break,
            };
            match outcome {
                Progress::Waiting => index += 1,
                Progress::Read => {
                    any = true;
                    index += 1;
                }
                Progress::Done(request) => {
                    any = true;
                    let client = self.clients.swap_remove(index);
                    let response = match request {
                        Ok((method, path)) => self.respond(&method, &path),
                        Err(response) => response,
                    };
                    write_response(client.stream, &response);
                }
                Progress::Closed => {
                    any = true;
                    self.clients.swap_remove(index);
                }
            }
        }
        any
    }

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
        Response {
            status: if reason.is_none() { 200 } else { 503 },
            content_type: "application/json",
            body: format!("{body}\n"),
        }
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

enum Progress {
    /// Nothing new; keep the client.
    Waiting,
    /// Some bytes arrived, the request is not complete yet.
    Read,
    /// Answer with this (method and path, or an error response) and close.
    Done(Result<(String, String), Response>),
    /// The client went away; just close.
    Closed,
}

fn read_request(client: &mut Client, now: Instant) -> Progress {
    let mut chunk = [0u8; 4096];
    let mut read_any = false;
    loop {
        match client.stream.read(&mut chunk) {
            Ok(0) => {
                // Closed before a whole request: answer 400 if anything came, best effort.
                return if client.buf.is_empty() {
                    Progress::Closed
                } else {
                    Progress::Done(Err(Response::text(400, "incomplete request\n")))
                };
            }
            Ok(n) => {
                read_any = true;
                client.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                match parse_request(&client.buf) {
                    RequestHead::Partial => {}
                    RequestHead::Complete { method, path } => return Progress::Done(Ok((method, path))),
                    RequestHead::TooLarge => return Progress::Done(Err(Response::text(431, "request too large\n"))),
                    RequestHead::Malformed(error) => {
                        return Progress::Done(Err(Response::text(400, format!("bad request: {error}\n"))))
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Progress::Closed,
        }
    }
    if now.duration_since(client.since) > REQUEST_DEADLINE {
        return Progress::Done(Err(Response::text(408, "request timeout\n")));
    }
    if read_any {
        Progress::Read
    } else {
        Progress::Waiting
    }
}

/// What the bytes a client sent so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHead {
    /// Not a whole request line and headers yet, and under [`MAX_REQUEST`] bytes.
    Partial,
    /// A whole request line and headers (what follows them is ignored).
    Complete {
        /// The method, as sent.
        method: String,
        /// The request target, as sent.
        path: String,
    },
    /// [`MAX_REQUEST`] bytes without a whole request: answered 431.
    TooLarge,
    /// Not HTTP/1.x: answered 400 with this reason.
    Malformed(String),
}

/// Parse the start of a client's bytes. Only the first [`MAX_REQUEST`] bytes are looked at, so
/// the work per call is bounded however much a client sends.
pub fn parse_request(buf: &[u8]) -> RequestHead {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf.get(..MAX_REQUEST).unwrap_or(buf)) {
        Ok(httparse::Status::Complete(_)) => RequestHead::Complete {
            method: request.method.unwrap_or_default().to_owned(),
            path: request.path.unwrap_or_default().to_owned(),
        },
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => RequestHead::TooLarge,
        Ok(httparse::Status::Partial) => RequestHead::Partial,
        Err(error) => RequestHead::Malformed(error.to_string()),
    }
}

fn write_response(mut stream: TcpStream, response: &Response) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if response.status == 405 { "Allow: GET\r\n" } else { "" },
    );
    // Bounded: a client that does not read costs at most WRITE_TIMEOUT.
    if stream.set_nonblocking(false).is_err() || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(response.body.as_bytes()));
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_is_complete_partial_too_large_or_malformed() {
        let complete = RequestHead::Complete { method: "GET".into(), path: "/metrics?x=1".into() };
        assert_eq!(parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\nbody"), complete);
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"), RequestHead::Partial);
        assert!(matches!(parse_request(b"GET /metrics HTTP/9.9\r\n\r\n"), RequestHead::Malformed(_)));
        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST - 1, b'a');
        assert_eq!(parse_request(&long), RequestHead::Partial);
        long.push(b'a');
        assert_eq!(parse_request(&long), RequestHead::TooLarge, "MAX_REQUEST bytes without a whole head");
    }
}
