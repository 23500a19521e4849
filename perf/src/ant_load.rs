//! The load workloads with ant-quic (see `load.rs`).
//!
//! The server is an ordinary ant-quic server node. The client is a client node whose cores each
//! run a [`LoadApp`]: connection `j` lives on core `j % cores` as that core's slot `j / cores`.
//! Cores open their own connections (through the node handle, so they can keep a number in
//! flight without the main thread) and count into shared atomics; the main thread paces
//! requests, watches the counts and, at the end, collects each core's histograms.
//!
//! - bulk: connections set up (64 handshakes in flight at most), then every transfer starts on
//!   one signal; `seconds` runs from it to the last transfer done.
//! - rr: the main thread sleeps to each request's due time and hands it to the owning core, so
//!   a core wakes when it has work and never spins; latency counts from the due time.
//! - handshakes: each core keeps its share of `--concurrency` attempts going, closing each
//!   connection (code 0) as soon as it is established.
//! - idle: `seconds` is the time to establish every connection (`per_second` their rate).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic::dataplane::quinn_proto::crypto::rustls::QuicClientConfig;
use ant_quic::dataplane::quinn_proto::{ClientConfig, ConnectionError, StreamId, TransportConfig, VarInt};
use ant_quic::dataplane::{
    AppFactory, AppMessage, Application, BackendKind, ConnId, ConnRef, ConnectRequest, Connections, Node, NodeHandle,
    ReadOutcome,
};
use ant_quic::identity::PeerId;
use ant_quic::node::{start_client_on, start_server, NodeOptions};
use ant_quic::protocol::{self, Op};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::load::{latency_histogram, record, ClientArgs, LoadResult, Progress, ServerArgs, ServerInfo, Workload};

/// Handshakes in flight while bulk and rr set up their connections.
const SETUP_IN_FLIGHT: usize = 64;
/// rr: how long after the last request was due its answer may still arrive.
const RR_GRACE: Duration = Duration::from_secs(2);
/// Keep-alive of idle connections: well inside the 30 s idle timeout both ends announce.
const IDLE_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How often the main thread looks at the counters while it waits.
const POLL: Duration = Duration::from_millis(2);

/// `ant-quic-perf server --impl ant-quic`.
pub fn serve(args: &ServerArgs) -> Result<()> {
    // Before any thread starts, so that all of them inherit the blocked signals.
    let signals = crate::shutdown::ShutdownSignals::block()?;
    let backend = parse_backend(args.backend.as_deref())?;
    let server =
        start_server(&NodeOptions { listen: args.listen, cores: Some(args.cores), backend, ..NodeOptions::default() })
            .context("starting the ant-quic server node")?;
    let info = ServerInfo {
        implementation: crate::load::Implementation::AntQuic.name().into(),
        addr: server.node.local_addr(),
        pid: std::process::id(),
        peer_id: Some(server.identity.peer_id().to_string()),
        cert_der_hex: None,
    };
    let printed = serde_json::to_string(&info).map_err(anyhow::Error::from).and_then(|line| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    });
    if printed.is_ok() {
        signals.wait();
    }
    let mut nat = server.nat;
    nat.stop();
    server.node.shutdown();
    let joined = server.node.join();
    printed?;
    Ok(joined?)
}

fn parse_backend(backend: Option<&str>) -> Result<Option<BackendKind>> {
    backend.map(|b| b.parse::<BackendKind>().map_err(|e| anyhow!("--backend: {e}"))).transpose()
}

/// Client TLS and transport settings shared by every connection of a run. Each connection is a
/// full 1-RTT handshake: rustls keeps session tickets by default (and a shared configuration
/// would resume from them), so resumption is turned off; early data is off too (and the server
/// refuses it). Idle connections send keep-alives so that the idle timeout never closes them.
pub(crate) fn client_config(peer: PeerId, keep_alive: bool) -> Result<ClientConfig> {
    let mut tls = ant_quic::tls::rustls_client_config(ServerAuth::PeerId(peer), &[ALPN_ANT_QUIC])?;
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| anyhow!("client TLS: {e}"))?;
    let mut config = ClientConfig::new(Arc::new(quic));
    if keep_alive {
        let mut transport = TransportConfig::default();
        transport.keep_alive_interval(Some(IDLE_KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
    }
    Ok(config)
}

/// What every core counts, read by the main thread while it waits.
#[derive(Debug, Default)]
struct Counters {
    established: AtomicU64,
    connect_failed: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    first_error: Mutex<Option<String>>,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Count `n` failed operations; the first error seen is kept.
    fn error(&self, n: u64, what: impl FnOnce() -> String) {
        bump(&self.errors, n);
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                *first = Some(what());
            }
        }
    }
}

/// The workload's parameters, as every core needs them.
#[derive(Debug, Clone, Copy)]
struct Spec {
    workload: Workload,
    bytes: u64,
    upload: bool,
    response_bytes: u64,
}

/// What a connection request needs, cloned for each connection.
#[derive(Clone)]
struct Template {
    remote: SocketAddr,
    server_name: String,
    config: ClientConfig,
}

/// From the main thread to a core's [`LoadApp`].
enum ToCore {
    /// Open `count` connections (tags and slots 0..count), at most `in_flight` handshakes at
    /// once; for the handshakes workload, keep `in_flight` going until `until` instead.
    Start { handle: NodeHandle, template: Box<Template>, count: usize, in_flight: usize, until: Option<Instant> },
    /// bulk: start every transfer now; `at` is the common start.
    Go { at: Instant },
    /// rr: one request on each slot given, with the time it was due.
    Requests(Vec<(usize, Instant)>),
    /// Close every connection and report.
    Finish(mpsc::Sender<CoreReport>),
}

/// What a core measured, sent once when it finishes.
struct CoreReport {
    handshakes: Histogram<u64>,
    operations: Histogram<u64>,
    last_done: Option<Instant>,
}

/// One bulk transfer, on its connection's only stream.
struct Transfer {
    stream: StreamId,
    /// Upload: bytes not yet handed to the stream.
    unsent: u64,
    /// Upload: the part of a chunk flow control has not taken yet.
    pending: Option<Bytes>,
    /// Download: payload bytes received.
    received: u64,
    /// Upload: the server's answer (the byte count).
    answer: Vec<u8>,
}

/// A request of the rr workload, waiting for its response.
struct Request {
    due: Instant,
    received: u64,
}

/// One core of the load client.
struct LoadApp {
    core: usize,
    spec: Spec,
    counters: Arc<Counters>,
    filler: Bytes,
    rr_header: Vec<u8>,
    handle: Option<NodeHandle>,
    template: Option<Box<Template>>,
    /// Connections still to ask for.
    to_open: usize,
    next_tag: u64,
    max_in_flight: usize,
    /// Connection attempts in flight, by tag: when each was asked for.
    connecting: HashMap<u64, Instant>,
    /// Handshakes workload: open new connections until then.
    until: Option<Instant>,
    /// Established connections by slot (= tag).
    slots: Vec<Option<ConnId>>,
    transfers: HashMap<ConnId, Transfer>,
    bulk_start: Option<Instant>,
    requests: HashMap<(ConnId, StreamId), Request>,
    /// rr requests waiting for the server to allow another stream, per connection.
    backlog: HashMap<ConnId, VecDeque<Instant>>,
    handshakes: Histogram<u64>,
    operations: Histogram<u64>,
    last_done: Option<Instant>,
    /// Closing on purpose: closes are no longer errors.
    finishing: bool,
}

impl LoadApp {
    fn new(core: usize, spec: Spec, counters: Arc<Counters>, histogram: Histogram<u64>) -> Self {
        Self {
            core,
            spec,
            counters,
            filler: protocol::filler(),
            rr_header: protocol::encode_op(Op::Download(spec.response_bytes)),
            handle: None,
            template: None,
            to_open: 0,
            next_tag: 0,
            max_in_flight: 1,
            connecting: HashMap::new(),
            until: None,
            slots: Vec::new(),
            transfers: HashMap::new(),
            bulk_start: None,
            requests: HashMap::new(),
            backlog: HashMap::new(),
            operations: histogram.clone(),
            handshakes: histogram,
            last_done: None,
            finishing: false,
        }
    }

    fn churning(&self) -> bool {
        self.spec.workload == Workload::Handshakes
    }

    /// Ask this core for more connections, up to the in-flight limit.
    fn open_more(&mut self) {
        let now = Instant::now();
        if self.finishing || self.until.is_some_and(|until| now >= until) {
            return;
        }
        let (Some(handle), Some(template)) = (&self.handle, &self.template) else { return };
        while self.connecting.len() < self.max_in_flight && (self.to_open > 0 || self.churning()) {
            let tag = self.next_tag;
            let request = ConnectRequest {
                remote: template.remote,
                server_name: template.server_name.clone(),
                config: template.config.clone(),
                tag,
            };
            // A full command queue drains as the core turns; the next callback tries again.
            if handle.connect(request, Some(self.core)).is_err() {
                return;
            }
            self.next_tag += 1;
            self.to_open = self.to_open.saturating_sub(1);
            self.connecting.insert(tag, now);
        }
    }

    /// A connection attempt that did not get established.
    fn attempt_failed(&mut self, tag: u64, why: impl FnOnce() -> String) {
        if self.connecting.remove(&tag).is_none() || self.finishing {
            return;
        }
        if self.churning() {
            if self.until.is_none_or(|until| Instant::now() < until) {
                self.counters.error(1, why);
            }
        } else {
            bump(&self.counters.connect_failed, 1);
            self.counters.error(1, why);
        }
        self.open_more();
    }

    fn start_transfer(&mut self, conn: &mut ConnRef<'_>) {
        let Some(stream) = conn.open_bi() else {
            self.counters.error(1, || "bulk: the server allows no stream".into());
            return;
        };
        let (op, unsent) = if self.spec.upload {
            (Op::Upload { hash: false }, self.spec.bytes)
        } else {
            (Op::Download(self.spec.bytes), 0)
        };
        if !matches!(conn.write(stream, &protocol::encode_op(op)), Ok(n) if n > 0) {
            self.counters.error(1, || "bulk: the request header was not taken".into());
            return;
        }
        let transfer = Transfer { stream, unsent, pending: None, received: 0, answer: Vec::new() };
        if !self.spec.upload {
            let _ = conn.finish(stream);
        }
        self.transfers.insert(conn.id(), transfer);
        self.send_more(conn);
    }

    /// Upload: hand the stream as much as flow control takes, sharing the filler's memory.
    fn send_more(&mut self, conn: &mut ConnRef<'_>) {
        let Some(transfer) = self.transfers.get_mut(&conn.id()) else { return };
        if !self.spec.upload {
            return;
        }
        loop {
            let chunk = match transfer.pending.take() {
                Some(chunk) => chunk,
                None if transfer.unsent == 0 => {
                    let _ = conn.finish(transfer.stream);
                    return;
                }
                None => {
                    let len = transfer.unsent.min(self.filler.len() as u64);
                    transfer.unsent -= len;
                    self.filler.slice(..len as usize)
                }
            };
            let mut chunks = [chunk.clone()];
            match conn.quic().send_stream(transfer.stream).write_chunks(&mut chunks) {
                Ok(written) if written.bytes >= chunk.len() => {}
                Ok(written) => {
                    transfer.pending = Some(chunk.slice(written.bytes..));
                    return;
                }
                Err(_) => {
                    // Blocked: `on_writable` follows. Anything else ends in `on_readable` or a close.
                    transfer.pending = Some(chunk);
                    return;
                }
            }
        }
    }

    fn read_transfer(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let id = conn.id();
        let Some(transfer) = self.transfers.get_mut(&id) else { return };
        if transfer.stream != stream {
            return;
        }
        let upload = self.spec.upload;
        let (received, answer) = (&mut transfer.received, &mut transfer.answer);
        let outcome = conn.read(stream, &mut |chunk: Bytes| {
            if upload {
                if answer.len() < 64 {
                    answer.extend_from_slice(&chunk);
                }
            } else {
                *received += chunk.len() as u64;
            }
        });
        let moved = if upload {
            transfer.answer.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
        } else {
            transfer.received
        };
        match outcome {
            Ok(ReadOutcome::Pending) => {}
            Ok(ReadOutcome::Finished) => {
                self.transfers.remove(&id);
                let expected = self.spec.bytes;
                if moved != expected {
                    self.counters.error(1, || format!("bulk: {moved} bytes moved instead of {expected}"));
                    return;
                }
                let now = Instant::now();
                bump(&self.counters.bytes, moved);
                bump(&self.counters.completed, 1);
                if let Some(start) = self.bulk_start {
                    record(&mut self.operations, now.saturating_duration_since(start));
                }
                self.last_done = Some(now);
            }
            Err(e) => {
                self.transfers.remove(&id);
                self.counters.error(1, || format!("bulk: stream failed: {e}"));
            }
        }
    }

    /// rr: open a stream for a request due at `due`, or queue it until the server allows one.
    fn issue(&mut self, conn: &mut ConnRef<'_>, due: Instant) {
        let id = conn.id();
        if let Some(waiting) = self.backlog.get_mut(&id).filter(|w| !w.is_empty()) {
            waiting.push_back(due);
            return;
        }
        if !self.open_request(conn, due) {
            self.backlog.entry(id).or_default().push_back(due);
        }
    }

    /// Open one request stream; false when the server allows no more streams for now.
    fn open_request(&mut self, conn: &mut ConnRef<'_>, due: Instant) -> bool {
        let Some(stream) = conn.open_bi() else { return false };
        let header_taken = matches!(conn.write(stream, &self.rr_header), Ok(n) if n == self.rr_header.len());
        if !header_taken || conn.finish(stream).is_err() {
            self.counters.error(1, || "rr: the request was not taken whole".into());
            let _ = conn.reset(stream, VarInt::from_u32(0));
            return true;
        }
        self.requests.insert((conn.id(), stream), Request { due, received: 0 });
        true
    }

    fn read_response(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let key = (conn.id(), stream);
        let Some(request) = self.requests.get_mut(&key) else { return };
        let received = &mut request.received;
        let outcome = conn.read(stream, &mut |chunk: Bytes| *received += chunk.len() as u64);
        match outcome {
            Ok(ReadOutcome::Pending) => {}
            Ok(ReadOutcome::Finished) => {
                let now = Instant::now();
                let (due, received) = (request.due, request.received);
                self.requests.remove(&key);
                let expected = self.spec.response_bytes;
                if received != expected {
                    self.counters.error(1, || format!("rr: a response of {received} bytes instead of {expected}"));
                    return;
                }
                record(&mut self.operations, now.saturating_duration_since(due));
                bump(&self.counters.bytes, received);
                bump(&self.counters.completed, 1);
                self.last_done = Some(now);
            }
            Err(e) => {
                self.requests.remove(&key);
                self.counters.error(1, || format!("rr: stream failed: {e}"));
            }
        }
    }

    /// An established connection ended before the run did: what was pending on it failed.
    fn lost(&mut self, id: ConnId, reason: &ConnectionError) {
        for slot in self.slots.iter_mut().filter(|s| **s == Some(id)) {
            *slot = None;
        }
        let pending = match self.spec.workload {
            Workload::Bulk => u64::from(self.transfers.remove(&id).is_some()),
            Workload::Rr => {
                let before = self.requests.len();
                self.requests.retain(|(conn, _), _| *conn != id);
                let waiting = self.backlog.remove(&id).map_or(0, |w| w.len());
                (before - self.requests.len() + waiting) as u64
            }
            Workload::Idle => 1,
            Workload::Handshakes => 0,
        };
        if pending > 0 {
            self.counters.error(pending, || format!("connection closed during the run: {reason}"));
        }
    }

    fn finish(&mut self, conns: &mut Connections<'_>, reply: &mpsc::Sender<CoreReport>) {
        self.finishing = true;
        for id in conns.ids() {
            if let Some(mut conn) = conns.get(id) {
                conn.close(VarInt::from_u32(0), b"done");
            }
        }
        let report = CoreReport {
            handshakes: std::mem::replace(&mut self.handshakes, Histogram::new_from(&self.operations)),
            operations: std::mem::replace(&mut self.operations, Histogram::new_from(&self.handshakes)),
            last_done: self.last_done,
        };
        let _ = reply.send(report);
    }
}

impl Application for LoadApp {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let tag = conn.tag();
        let Some(asked) = self.connecting.remove(&tag) else { return };
        let now = Instant::now();
        if self.churning() {
            // Closed at once (application code 0); the next attempt starts now.
            conn.close(VarInt::from_u32(0), b"done");
            if self.until.is_none_or(|until| now < until) {
                record(&mut self.handshakes, now.saturating_duration_since(asked));
                bump(&self.counters.completed, 1);
            }
        } else {
            record(&mut self.handshakes, now.saturating_duration_since(asked));
            let slot = usize::try_from(tag).unwrap_or(usize::MAX);
            if self.slots.len() <= slot {
                self.slots.resize(slot.saturating_add(1), None);
            }
            if let Some(entry) = self.slots.get_mut(slot) {
                *entry = Some(conn.id());
            }
            bump(&self.counters.established, 1);
        }
        self.open_more();
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        match self.spec.workload {
            Workload::Bulk => self.read_transfer(conn, stream),
            Workload::Rr => self.read_response(conn, stream),
            Workload::Handshakes | Workload::Idle => {}
        }
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, _stream: StreamId) {
        self.send_more(conn);
    }

    fn on_streams_available(&mut self, conn: &mut ConnRef<'_>) {
        let id = conn.id();
        while let Some(due) = self.backlog.get_mut(&id).and_then(VecDeque::pop_front) {
            if !self.open_request(conn, due) {
                if let Some(waiting) = self.backlog.get_mut(&id) {
                    waiting.push_front(due);
                }
                return;
            }
        }
    }

    fn on_closed(&mut self, id: ConnId, tag: u64, reason: &ConnectionError) {
        if self.connecting.contains_key(&tag) {
            self.attempt_failed(tag, || format!("handshake failed: {reason}"));
        } else if !self.finishing && !self.churning() {
            self.lost(id, reason);
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ant_quic::dataplane::quinn_proto::ConnectError) {
        self.attempt_failed(tag, || format!("cannot connect: {error}"));
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, message: AppMessage) {
        let Ok(message) = message.downcast::<ToCore>() else { return };
        match *message {
            ToCore::Start { handle, template, count, in_flight, until } => {
                self.handle = Some(handle);
                self.template = Some(template);
                self.to_open = count;
                self.max_in_flight = in_flight.max(1);
                self.until = until;
                self.open_more();
            }
            ToCore::Go { at } => {
                self.bulk_start = Some(at);
                let ids: Vec<ConnId> = self.slots.iter().flatten().copied().collect();
                for id in ids {
                    if let Some(mut conn) = conns.get(id) {
                        self.start_transfer(&mut conn);
                    }
                }
            }
            ToCore::Requests(requests) => {
                for (slot, due) in requests {
                    match self.slots.get(slot).copied().flatten().and_then(|id| conns.get(id)) {
                        Some(mut conn) => self.issue(&mut conn, due),
                        None => self.counters.error(1, || "rr: a request for a connection that is not open".into()),
                    }
                }
            }
            ToCore::Finish(reply) => self.finish(conns, &reply),
        }
    }
}

/// `ant-quic-perf client --impl ant-quic`.
pub fn run(args: &ClientArgs) -> Result<LoadResult> {
    let info = args.server_info()?;
    let peer: PeerId = info
        .peer_id
        .as_deref()
        .ok_or_else(|| anyhow!("--server has no peer_id: pass the line of an ant-quic server"))?
        .parse()
        .map_err(|e| anyhow!("--server peer_id: {e}"))?;
    let backend = parse_backend(args.backend.as_deref())?;
    let template = Template {
        remote: info.addr,
        server_name: ant_quic::tls::default_server_name().to_owned(),
        config: client_config(peer, args.workload == Workload::Idle)?,
    };
    let spec =
        Spec { workload: args.workload, bytes: args.bytes, upload: args.upload, response_bytes: args.response_bytes };
    let counters = Arc::new(Counters::default());
    let histogram = latency_histogram()?;
    let factory: Arc<dyn AppFactory> = {
        let counters = Arc::clone(&counters);
        Arc::new(move |core: usize| -> Box<dyn Application> {
            Box::new(LoadApp::new(core, spec, Arc::clone(&counters), histogram.clone()))
        })
    };
    let any: IpAddr = if info.addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    // The server's cores take the allowed CPUs from the first; the client's take them from the
    // last, as the in-process bulk transfer places them. Unpinned, the scheduler tends to wake
    // the client on the server's CPU (it is woken from there), and both then share one CPU.
    let cpus: Vec<usize> = ant_quic::dataplane::socket::allowed_cpus().into_iter().rev().take(args.cores).collect();
    let cpus = (!cpus.is_empty()).then_some(cpus);
    let node = start_client_on(SocketAddr::new(any, 0), args.cores, backend, cpus, factory)
        .context("starting the ant-quic client node")?;
    let mut driver = Driver {
        node: &node,
        args,
        template,
        counters: &counters,
        deadline: Instant::now() + Duration::from_secs_f64(args.timeout),
        progress: Progress::new(),
    };
    let measured = driver.run();
    let reports = driver.finish();
    let cores = node.cores();
    node.shutdown();
    let joined = node.join();
    let measured = measured?;
    joined?;
    let reports = reports?;

    let mut latency = latency_histogram()?;
    for report in &reports {
        let h = if matches!(args.workload, Workload::Handshakes | Workload::Idle) {
            &report.handshakes
        } else {
            &report.operations
        };
        latency.add(h).map_err(|e| anyhow!("merging latency histograms: {e:?}"))?;
    }
    let seconds = match (args.workload, measured.started) {
        // From the common start to the last transfer done.
        (Workload::Bulk, Some(start)) => reports
            .iter()
            .filter_map(|r| r.last_done)
            .max()
            .map_or(0.0, |last| last.saturating_duration_since(start).as_secs_f64()),
        _ => measured.seconds,
    };
    let completed = if args.workload == Workload::Idle { get(&counters.established) } else { get(&counters.completed) };
    let bytes = get(&counters.bytes);
    let per_second = if seconds > 0.0 { completed as f64 / seconds } else { 0.0 };
    let first_error = counters.first_error.lock().ok().and_then(|e| e.clone());
    Ok(LoadResult {
        implementation: crate::load::Implementation::AntQuic.name().into(),
        workload: args.workload,
        connections: if args.workload == Workload::Handshakes { args.concurrency } else { args.connections },
        cores,
        seconds,
        bytes,
        gbps: crate::BulkResult::gbps(bytes, seconds),
        completed,
        per_second,
        errors: get(&counters.errors),
        latency_us: crate::load::Latency::of(&latency),
        cipher: ant_quic::tls::preferred_cipher_suite(),
        backend: Some(measured.backend),
        first_error,
    })
}

/// What the main thread measured of a run.
struct Measured {
    /// Length of the measured phase (bulk: computed from the cores' reports instead).
    seconds: f64,
    /// bulk: the common start of the transfers.
    started: Option<Instant>,
    backend: String,
}

/// The main thread's side of a run.
struct Driver<'a> {
    node: &'a Node,
    args: &'a ClientArgs,
    template: Template,
    counters: &'a Counters,
    deadline: Instant,
    progress: Progress,
}

impl Driver<'_> {
    fn run(&mut self) -> Result<Measured> {
        let backend = self.node.backend().to_string();
        let args = self.args;
        let (seconds, started) = match args.workload {
            Workload::Bulk => {
                self.establish(args.connections, SETUP_IN_FLIGHT)?;
                let at = Instant::now();
                self.broadcast(|| ToCore::Go { at })?;
                let total = args.connections as u64;
                let counters = self.counters;
                let done = self.wait_until(self.deadline, || get(&counters.completed) + get(&counters.errors) >= total);
                if !done {
                    self.timed_out("bulk transfers", total - get(&counters.completed) - get(&counters.errors));
                }
                (at.elapsed().as_secs_f64(), Some(at))
            }
            Workload::Rr => {
                self.establish(args.connections, SETUP_IN_FLIGHT)?;
                (self.requests()?, None)
            }
            Workload::Handshakes => (self.handshakes()?, None),
            Workload::Idle => {
                let started = Instant::now();
                self.establish(args.connections, args.concurrency)?;
                let seconds = started.elapsed().as_secs_f64();
                if let Some(file) = &args.ready_file {
                    std::fs::File::create(file).with_context(|| format!("--ready-file {}", file.display()))?;
                }
                let end = (Instant::now() + Duration::from_secs_f64(args.hold)).min(self.deadline);
                self.wait_until(end, || false);
                (seconds, None)
            }
        };
        Ok(Measured { seconds, started, backend })
    }

    /// Open `connections` spread over the cores, `in_flight` handshakes at most, and wait for
    /// every one to be established or to fail.
    fn establish(&mut self, connections: usize, in_flight: usize) -> Result<()> {
        let cores = self.node.cores();
        for core in 0..cores {
            let count = share(connections, cores, core);
            if count == 0 {
                continue;
            }
            let message = || ToCore::Start {
                handle: self.node.handle(),
                template: Box::new(self.template.clone()),
                count,
                in_flight: in_flight.div_ceil(cores),
                until: None,
            };
            self.send(core, message)?;
        }
        let total = connections as u64;
        let counters = self.counters;
        let done =
            self.wait_until(self.deadline, || get(&counters.established) + get(&counters.connect_failed) >= total);
        if !done {
            let missing = total.saturating_sub(get(&counters.established) + get(&counters.connect_failed));
            self.timed_out("establishing connections", missing);
        }
        Ok(())
    }

    /// rr: issue requests at the aggregate rate, round robin over the connections, each marked
    /// with the time it was due; then wait for the answers. Returns the issuing time.
    fn requests(&mut self) -> Result<f64> {
        let args = self.args;
        let cores = self.node.cores();
        let connections = args.connections;
        let errors_before = get(&self.counters.errors);
        crate::load::fine_timer_slack();
        let start = Instant::now();
        let end = (start + Duration::from_secs_f64(args.seconds)).min(self.deadline);
        let due = |i: u64| start + Duration::from_secs_f64(i as f64 / args.rate as f64);
        let mut next = 0u64;
        let mut batches: Vec<Vec<(usize, Instant)>> = vec![Vec::new(); cores];
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            loop {
                let at = due(next);
                if at > now || at >= end {
                    break;
                }
                let connection = (next % connections as u64) as usize;
                if let Some(batch) = batches.get_mut(connection % cores) {
                    batch.push((connection / cores, at));
                }
                next += 1;
            }
            for (core, batch) in batches.iter_mut().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let batch = std::mem::take(batch);
                let n = batch.len() as u64;
                if let Err(e) = self.node.send_message(core, Box::new(ToCore::Requests(batch))) {
                    self.counters.error(n, || format!("rr: requests not handed to core {core}: {e}"));
                }
            }
            let counters = self.counters;
            self.progress.tick(|| format!("issued {next}, answered {}", get(&counters.completed)));
            // Sleep to the next due time: the core wakes when its requests arrive, never earlier.
            let wake = due(next).min(end);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        let seconds = start.elapsed().as_secs_f64().min(args.seconds);
        let counters = self.counters;
        let settled = || get(&counters.completed) + get(&counters.errors).saturating_sub(errors_before) >= next;
        let answered = self.wait_until((end + RR_GRACE).min(self.deadline), settled);
        if !answered {
            let missing =
                next.saturating_sub(get(&counters.completed) + get(&counters.errors).saturating_sub(errors_before));
            self.counters.error(missing, || format!("rr: {missing} requests not answered within 2 s of the end"));
        }
        Ok(seconds)
    }

    /// handshakes: `concurrency` attempts in flight, spread over the cores, for `seconds`.
    fn handshakes(&mut self) -> Result<f64> {
        let args = self.args;
        let cores = self.node.cores();
        let start = Instant::now();
        let until = (start + Duration::from_secs_f64(args.seconds)).min(self.deadline);
        for core in 0..cores {
            let in_flight = share(args.concurrency, cores, core);
            if in_flight == 0 {
                continue;
            }
            let message = || ToCore::Start {
                handle: self.node.handle(),
                template: Box::new(self.template.clone()),
                count: 0,
                in_flight,
                until: Some(until),
            };
            self.send(core, message)?;
        }
        self.wait_until(until, || false);
        Ok(start.elapsed().as_secs_f64().min(args.seconds))
    }

    /// Wait (sleeping, with progress lines) until `done` holds or `end` passes; false then.
    fn wait_until(&mut self, end: Instant, mut done: impl FnMut() -> bool) -> bool {
        let counters = self.counters;
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            self.progress.tick(|| {
                format!(
                    "established {}  completed {}  errors {}",
                    get(&counters.established),
                    get(&counters.completed),
                    get(&counters.errors)
                )
            });
            std::thread::sleep(POLL.min(end - now));
        }
    }

    fn timed_out(&self, what: &str, missing: u64) {
        let timeout = self.args.timeout;
        self.counters.error(missing, || format!("timed out after {timeout} s {what}"));
    }

    /// Deliver a message to a core, retrying for a second while its queue is full.
    fn send(&self, core: usize, message: impl Fn() -> ToCore) -> Result<()> {
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            match self.node.send_message(core, Box::new(message())) {
                Ok(()) => return Ok(()),
                Err(ant_quic::dataplane::NodeError::Busy(_)) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("handing work to a client core"),
            }
        }
    }

    fn broadcast(&self, message: impl Fn() -> ToCore) -> Result<()> {
        (0..self.node.cores()).try_for_each(|core| self.send(core, &message))
    }

    /// Ask every core to close its connections and hand over what it measured.
    fn finish(&self) -> Result<Vec<CoreReport>> {
        let (tx, rx) = mpsc::channel();
        self.broadcast(|| ToCore::Finish(tx.clone()))?;
        drop(tx);
        let mut reports = Vec::new();
        for _ in 0..self.node.cores() {
            reports.push(rx.recv_timeout(Duration::from_secs(10)).context("a client core did not report")?);
        }
        Ok(reports)
    }
}

/// The part of `total` that `index` of `parts` takes (the first ones take the remainder).
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts.max(1) + usize::from(index < total % parts.max(1))
}
