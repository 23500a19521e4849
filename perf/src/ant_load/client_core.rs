//! One data-plane core of the ant-quic load client: it opens its share of the connections,
//! runs the workload's transfers or requests on them, counts into the shared atomics and sends
//! its histograms to the main thread when told to finish.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use ant_quic::dataplane::quinn_proto::{ClientConfig, ConnectionError, StreamId, VarInt};
use ant_quic::dataplane::{Application, ConnId, ConnRef, ConnectRequest, Connections, NodeHandle, ReadOutcome};
use ant_quic::protocol::{self, Op};
use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::load::{record, Workload};

/// What every core counts, read by the main thread while it waits.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) established: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
}

pub(super) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Count `n` failed operations; the first error seen is kept.
    pub(super) fn error(&self, n: u64, what: impl FnOnce() -> String) {
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
pub(super) struct Spec {
    pub(super) workload: Workload,
    pub(super) bytes: u64,
    pub(super) upload: bool,
    pub(super) response_bytes: u64,
}

/// What a connection request needs, cloned for each connection.
#[derive(Clone)]
pub(super) struct Template {
    pub(super) remote: SocketAddr,
    pub(super) server_name: String,
    pub(super) config: ClientConfig,
}

/// From the main thread to a core's [`LoadApp`].
pub(super) enum ToCore {
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
pub(super) struct CoreReport {
    pub(super) handshakes: Histogram<u64>,
    pub(super) operations: Histogram<u64>,
    pub(super) last_done: Option<Instant>,
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
pub(super) struct LoadApp {
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
    pub(super) fn new(core: usize, spec: Spec, counters: Arc<Counters>, histogram: Histogram<u64>) -> Self {
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

impl Application<ToCore> for LoadApp {
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

    fn on_message(&mut self, conns: &mut Connections<'_>, message: ToCore) {
        match message {
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
