//! The async bridge: the [`Application`] each core of an [`super::Endpoint`] runs. It owns the
//! core's side of every connection and stream the endpoint's tasks use, carries out their
//! [`Command`]s, and moves data and events into the shared state ([`super::shared`]) they poll.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ant_quic_dataplane::quinn_proto::{
    ConnectError, ConnectionError, ConnectionStats, Dir, ReadError, StreamId, VarInt, WriteError,
};
use ant_quic_dataplane::{Application, ConnId, ConnRef, Connections};
use bytes::Bytes;

use super::path::Routes;
use super::shared::{ConnShared, EndpointShared, Reply, StreamShared, STREAM_BUDGET};
use super::Error;
use crate::identity::peer_id_of_certificate;
use crate::nat::link::{CoreLink, CoreRequest};
use ant_quic_control::nat::agent::ConnPurpose;

/// A connection the core hands to the task that asked for it.
pub(crate) type ConnReply = Reply<Result<Arc<ConnShared>, Error>>;
/// A stream the core opened for a task.
pub(crate) type StreamReply = Reply<Result<Arc<StreamShared>, Error>>;

/// What a task asks of the core that owns its connection, through the node's command queue.
#[derive(Debug)]
pub(crate) enum Command {
    /// The next connection request with this tag is the task's: answer it through `reply`.
    Connect { tag: u64, reply: Arc<ConnReply> },
    /// Open a stream (bidirectional when `bi`).
    Open { conn: Arc<ConnShared>, bi: bool, reply: Arc<StreamReply> },
    /// Bytes for a stream, already counted in its `in_flight`.
    Write { conn: Arc<ConnShared>, stream: Arc<StreamShared>, data: Bytes },
    /// End the stream after what was written.
    Finish { conn: Arc<ConnShared>, stream: Arc<StreamShared> },
    /// Abandon sending.
    Reset { conn: Arc<ConnShared>, stream: Arc<StreamShared>, code: VarInt },
    /// Ask the peer to stop sending.
    Stop { conn: Arc<ConnShared>, stream: Arc<StreamShared>, code: VarInt },
    /// The task made room below the budget the core stopped reading at.
    ReadMore { conn: Arc<ConnShared>, stream: Arc<StreamShared> },
    /// The task took streams from a full accept queue.
    AcceptMore { conn: Arc<ConnShared> },
    /// Send an unreliable datagram.
    Datagram { conn: Arc<ConnShared>, data: Bytes },
    /// Read the connection's statistics.
    Stats { conn: Arc<ConnShared>, reply: Arc<Reply<Result<ConnectionStats, Error>>> },
    /// Close the connection.
    Close { conn: Arc<ConnShared>, code: VarInt, reason: Bytes },
    /// Close every connection of the core.
    CloseAll { code: VarInt, reason: Bytes },
    /// The connection the traversal made to a peer (its `conn`) is the task's: hand it over.
    Claim { conn: ConnId, reply: Arc<ConnReply> },
    /// For the NAT traversal's per-core half (endpoints with bootstraps).
    Nat(CoreRequest),
}

impl From<CoreRequest> for Command {
    fn from(request: CoreRequest) -> Self {
        Command::Nat(request)
    }
}

/// The core's side of one stream.
struct StreamEntry {
    shared: Arc<StreamShared>,
    /// Written by the task, not yet taken by QUIC (flow control); `shared.in_flight` counts it.
    pending: VecDeque<Bytes>,
    /// Finish once `pending` is written.
    finish_pending: bool,
    /// We may still send (not finished, reset or stopped by the peer).
    send_open: bool,
    /// We may still receive (not at the end, reset, or stopped by us).
    recv_open: bool,
    /// A task has it (opened, or taken from the accept queue): only then is it read.
    delivered: bool,
}

impl StreamEntry {
    fn new(id: StreamId, send_open: bool, recv_open: bool, delivered: bool) -> Self {
        let shared = Arc::new(StreamShared::new(id));
        Self { shared, pending: VecDeque::new(), finish_pending: false, send_open, recv_open, delivered }
    }

    fn done(&self) -> bool {
        !self.send_open && !self.recv_open
    }
}

/// The core's side of one connection.
struct ConnEntry {
    shared: Arc<ConnShared>,
    streams: HashMap<StreamId, StreamEntry>,
    /// Peer-opened streams not yet in an accept queue (it was full).
    backlog: VecDeque<StreamId>,
    /// Open requests waiting for the peer's stream credit.
    opens: VecDeque<(bool, Arc<StreamReply>)>,
    /// A stream may have ended without being removed: look through them all once.
    sweep: bool,
    /// Keep streams opened ahead in `shared.ready_bi` / `ready_uni`: a task opened one of that
    /// direction (connections whose tasks never open streams cost nothing).
    ready: [bool; 2],
}

/// The per-core application of an endpoint (see the module documentation of [`super`]).
pub(crate) struct Bridge {
    endpoint: Arc<EndpointShared>,
    connects: HashMap<u64, Arc<ConnReply>>,
    conns: HashMap<ConnId, ConnEntry>,
    /// Signalling with the bootstraps, when the endpoint has some: their connections are the
    /// link's, not the tasks'.
    link: Option<CoreLink>,
    /// Connections the traversal made to peers, until `connect_peer` claims them.
    unclaimed: HashMap<ConnId, Arc<ConnShared>>,
    /// What the path aliases of relayed connections route by.
    routes: Routes,
}

impl Bridge {
    pub(crate) fn new(endpoint: Arc<EndpointShared>, link: Option<CoreLink>) -> Self {
        Self {
            endpoint,
            connects: HashMap::new(),
            conns: HashMap::new(),
            link,
            unclaimed: HashMap::new(),
            routes: Routes::default(),
        }
    }

    fn register(&mut self, conn: &mut ConnRef<'_>) -> Arc<ConnShared> {
        let peer_id = conn.peer_certificates().and_then(|certs| certs.first().and_then(peer_id_of_certificate));
        let shared = Arc::new(ConnShared::new(conn.id(), conn.remote_address(), conn.alpn(), peer_id));
        shared.path.set(self.routes.path(conn.remote_address()));
        self.conns.insert(
            conn.id(),
            ConnEntry {
                shared: Arc::clone(&shared),
                streams: HashMap::new(),
                backlog: VecDeque::new(),
                opens: VecDeque::new(),
                sweep: false,
                ready: [false; 2],
            },
        );
        self.endpoint.live.fetch_add(1, Ordering::SeqCst);
        refresh(conn, &shared);
        shared
    }

    fn forget(&mut self, id: ConnId, error: Error) {
        let Some(entry) = self.conns.remove(&id) else { return };
        let _ = entry.shared.closed.set(error.clone());
        for stream in entry.streams.values() {
            stream.shared.wake_both();
        }
        for (_, reply) in entry.opens {
            let _ = reply.put(Err(error.clone()));
        }
        entry.shared.waiters.wake_all();
        entry.shared.path.ended();
        self.endpoint.live.fetch_sub(1, Ordering::SeqCst);
        self.endpoint.idle_waiters.wake_all();
    }

    fn command(&mut self, conns: &mut Connections<'_>, command: Command) {
        match command {
            Command::Connect { tag, reply } => {
                self.connects.insert(tag, reply);
            }
            Command::CloseAll { code, reason } => {
                for id in conns.ids() {
                    if let Some(mut conn) = conns.get(id) {
                        // The bootstrap connections are the NAT driver's: it stops them itself.
                        if matches!(ConnPurpose::of_tag(conn.tag()), Some(ConnPurpose::Bootstrap(_))) {
                            continue;
                        }
                        conn.close(code, &reason);
                    }
                    if let Some(entry) = self.conns.get(&id) {
                        close_locally(&entry.shared);
                    }
                }
            }
            Command::Open { conn, bi, reply } => {
                self.with(conns, &conn, |conn, entry| {
                    entry.opens.push_back((bi, reply));
                    open_waiting(conn, entry);
                    entry.ready[usize::from(bi)] = true;
                    open_ready(conn, entry);
                });
            }
            Command::Write { conn, stream, data } => self.with_stream(conns, &conn, &stream, |conn, entry| {
                if entry.send_open {
                    entry.pending.push_back(data);
                    pump_write(conn, entry);
                } else {
                    entry.shared.in_flight.fetch_sub(data.len(), Ordering::AcqRel);
                    entry.shared.write_waker.wake();
                }
            }),
            Command::Finish { conn, stream } => self.with_stream(conns, &conn, &stream, |conn, entry| {
                entry.finish_pending = true;
                pump_write(conn, entry);
            }),
            Command::Reset { conn, stream, code } => self.with_stream(conns, &conn, &stream, |conn, entry| {
                if entry.send_open {
                    let _ = conn.reset(entry.shared.id, code);
                    discard_pending(entry);
                }
            }),
            Command::Stop { conn, stream, code } => self.with_stream(conns, &conn, &stream, |conn, entry| {
                stop_receiving(conn, entry, code);
            }),
            Command::ReadMore { conn, stream } => {
                self.with_stream(conns, &conn, &stream, pump_read);
            }
            Command::AcceptMore { conn } => self.with(conns, &conn, deliver_backlog),
            Command::Datagram { conn, data } => self.with(conns, &conn, |conn, _| {
                // Unreliable by contract: a datagram QUIC refuses (too large, unsupported) is dropped.
                let _ = conn.quic().datagrams().send(data, true);
            }),
            Command::Stats { conn, reply } => {
                let error = conn.error().unwrap_or(Error::ConnectionLost(ConnectionError::LocallyClosed));
                let mut answered = false;
                self.with(conns, &conn, |conn, _| {
                    let _ = reply.put(Ok(conn.quic().stats()));
                    answered = true;
                });
                if !answered {
                    let _ = reply.put(Err(error));
                }
            }
            Command::Close { conn, code, reason } => self.with(conns, &conn, |conn, entry| {
                conn.close(code, &reason);
                close_locally(&entry.shared);
            }),
            Command::Claim { conn, reply } => {
                // Gone: it ended before the task came for it.
                let gone = || Error::Invalid("the connection ended before it was handed over".into());
                let result = self.unclaimed.remove(&conn).ok_or_else(gone);
                if let Some(Ok(shared)) = reply.put(result) {
                    // The task stopped waiting: nobody will use the connection.
                    self.with(conns, &shared, |conn, entry| {
                        conn.close(VarInt::from_u32(0), b"");
                        close_locally(&entry.shared);
                    });
                }
            }
            Command::Nat(request) => {
                if let CoreRequest::Route { alias, route } = &request {
                    if let Some(path) = self.routes.update(*alias, *route) {
                        for entry in self.conns.values().filter(|entry| entry.shared.remote == *alias) {
                            entry.shared.path.set(path);
                        }
                    }
                }
                if let Some(link) = self.link.as_mut() {
                    link.on_request(conns, request);
                }
            }
        }
    }

    /// Run `f` on `shared`'s connection, if it is still the one this core knows by its ID (an
    /// ID is reused once a connection is gone); a command for a gone connection is dropped, its
    /// tasks already have their error.
    fn with(
        &mut self,
        conns: &mut Connections<'_>,
        shared: &Arc<ConnShared>,
        f: impl FnOnce(&mut ConnRef<'_>, &mut ConnEntry),
    ) {
        let Some(entry) = self.conns.get_mut(&shared.id) else { return };
        if !Arc::ptr_eq(&entry.shared, shared) {
            return;
        }
        let Some(mut conn) = conns.get(shared.id) else { return };
        f(&mut conn, entry);
        after(&mut conn, entry);
    }

    fn with_stream(
        &mut self,
        conns: &mut Connections<'_>,
        shared: &Arc<ConnShared>,
        stream: &Arc<StreamShared>,
        f: impl FnOnce(&mut ConnRef<'_>, &mut StreamEntry),
    ) {
        self.with(conns, shared, |conn, entry| {
            if let Some(found) = entry.streams.get_mut(&stream.id) {
                if Arc::ptr_eq(&found.shared, stream) {
                    f(conn, found);
                    if found.done() {
                        entry.streams.remove(&stream.id);
                    }
                }
            }
        });
    }

    /// The callback's connection and its entry, if the endpoint's tasks know it.
    fn on_conn(&mut self, conn: &mut ConnRef<'_>, f: impl FnOnce(&mut ConnRef<'_>, &mut ConnEntry)) {
        if let Some(entry) = self.conns.get_mut(&conn.id()) {
            f(conn, entry);
            after(conn, entry);
        }
    }

    fn on_stream(
        &mut self,
        conn: &mut ConnRef<'_>,
        stream: StreamId,
        f: impl FnOnce(&mut ConnRef<'_>, &mut StreamEntry),
    ) {
        self.on_conn(conn, |conn, entry| {
            if let Some(found) = entry.streams.get_mut(&stream) {
                f(conn, found);
                if found.done() {
                    entry.streams.remove(&stream);
                }
            }
        });
    }
}

/// Bookkeeping after every touch of a connection: handles dropped while the queue was full,
/// finished streams, the cached RTT.
fn after(conn: &mut ConnRef<'_>, entry: &mut ConnEntry) {
    if entry.shared.dropped.load(Ordering::Acquire) && entry.shared.closed.get().is_none() {
        conn.close(VarInt::from_u32(0), b"");
        close_locally(&entry.shared);
    }
    // Looked at before it is cleared: a swap on every touch would write the shared line.
    if entry.shared.streams_dropped.load(Ordering::Acquire)
        && entry.shared.streams_dropped.swap(false, Ordering::AcqRel)
    {
        entry.sweep = true;
        for stream in entry.streams.values_mut() {
            drop_handled(conn, stream);
        }
    }
    if entry.shared.ready_taken.load(Ordering::Acquire) && entry.shared.ready_taken.swap(false, Ordering::AcqRel) {
        open_ready(conn, entry);
    }
    // Only when a stream may have ended on a path that did not remove it: never per write.
    if std::mem::take(&mut entry.sweep) {
        entry.streams.retain(|_, stream| !stream.done());
    }
    refresh(conn, &entry.shared);
}

/// A task dropped a handle of the stream without its last command reaching the core.
fn drop_handled(conn: &mut ConnRef<'_>, stream: &mut StreamEntry) {
    if stream.shared.send_dropped.load(Ordering::Acquire) && stream.send_open && !stream.finish_pending {
        stream.finish_pending = true;
        pump_write(conn, stream);
    }
    if stream.shared.recv_dropped.load(Ordering::Acquire) && stream.recv_open {
        stop_receiving(conn, stream, VarInt::from_u32(0));
    }
}

fn refresh(conn: &mut ConnRef<'_>, shared: &ConnShared) {
    let rtt = u64::try_from(conn.quic().rtt().as_micros()).unwrap_or(u64::MAX);
    shared.rtt_micros.store(rtt, Ordering::Relaxed);
    let max = conn.quic().datagrams().max_size().unwrap_or(0);
    shared.max_datagram.store(max, Ordering::Relaxed);
}

/// We closed the connection: every task sees it now, not only once the core drains it.
fn close_locally(shared: &ConnShared) {
    let _ = shared.closed.set(Error::ConnectionLost(ConnectionError::LocallyClosed));
    shared.waiters.wake_all();
}

/// Open the streams tasks asked for, as far as the peer's stream credit goes.
fn open_waiting(conn: &mut ConnRef<'_>, entry: &mut ConnEntry) {
    if let Some(error) = entry.shared.error() {
        for (_, reply) in entry.opens.drain(..) {
            let _ = reply.put(Err(error.clone()));
        }
        return;
    }
    while let Some((bi, reply)) = entry.opens.pop_front() {
        // A stream opened ahead first: a task never gets a stream with a higher ID than one
        // left waiting, which the peer would then see opened and never written.
        let Some(shared) = entry.shared.ready(bi).pop().or_else(|| open_stream(conn, entry, bi)) else {
            entry.opens.push_front((bi, reply));
            return;
        };
        let id = shared.id;
        if reply.put(Ok(shared)).is_some() {
            // The task gave up waiting: end the stream before anything was sent on it.
            if let Some(stream) = entry.streams.get_mut(&id) {
                stream.finish_pending = true;
                pump_write(conn, stream);
                stop_receiving(conn, stream, VarInt::from_u32(0));
                entry.sweep = true;
            }
        }
    }
}

/// Top up the streams opened ahead, after every waiting `Open`, as far as the peer's stream
/// credit goes. Only here are streams opened ahead, and only while none is waiting in
/// `open_waiting`'s sense: every stream in the pool has a higher ID than every stream handed out.
fn open_ready(conn: &mut ConnRef<'_>, entry: &mut ConnEntry) {
    if !entry.opens.is_empty() || entry.shared.error().is_some() {
        return;
    }
    for bi in [true, false] {
        if !entry.ready[usize::from(bi)] {
            continue;
        }
        while !entry.shared.ready(bi).is_full() {
            let Some(stream) = open_stream(conn, entry, bi) else { break };
            // One producer, checked not full.
            let _ = entry.shared.ready(bi).push(stream);
        }
    }
}

/// Open a stream of ours in QUIC and take it into the connection's entry, as a task's; `None`
/// without the peer's stream credit.
fn open_stream(conn: &mut ConnRef<'_>, entry: &mut ConnEntry, bi: bool) -> Option<Arc<StreamShared>> {
    let id = if bi { conn.open_bi() } else { conn.open_uni() }?;
    let stream = StreamEntry::new(id, true, bi, true);
    let shared = Arc::clone(&stream.shared);
    entry.streams.insert(id, stream);
    Some(shared)
}

/// Move backlogged peer-opened streams into the accept queues while they have room.
fn deliver_backlog(conn: &mut ConnRef<'_>, entry: &mut ConnEntry) {
    entry.shared.accept_paused.store(false, Ordering::SeqCst);
    while let Some(id) = entry.backlog.pop_front() {
        if !deliver(conn, entry, id) {
            entry.backlog.push_front(id);
            entry.shared.accept_paused.store(true, Ordering::SeqCst);
            break;
        }
    }
}

/// Put a peer-opened stream in its accept queue; false when the queue is full.
fn deliver(conn: &mut ConnRef<'_>, entry: &mut ConnEntry, id: StreamId) -> bool {
    let Some(stream) = entry.streams.get_mut(&id) else { return true };
    let queue = if id.dir() == Dir::Bi { &entry.shared.accept_bi } else { &entry.shared.accept_uni };
    if queue.push(Arc::clone(&stream.shared)).is_err() {
        return false;
    }
    stream.delivered = true;
    entry.shared.waiters.wake_all();
    pump_read(conn, stream);
    entry.sweep |= stream.done();
    true
}

/// Hand QUIC what it takes of the task's bytes; finish when asked and all is written.
fn pump_write(conn: &mut ConnRef<'_>, entry: &mut StreamEntry) {
    let id = entry.shared.id;
    let mut progress = false;
    while let Some(front) = entry.pending.front_mut() {
        // The task's chunk goes to QUIC as it is (a reference, not a copy on the core).
        let mut chunk = [front.clone()];
        match conn.quic().send_stream(id).write_chunks(&mut chunk).map(|written| written.bytes) {
            Ok(0) | Err(WriteError::Blocked) => break,
            Ok(taken) => {
                progress = true;
                entry.shared.in_flight.fetch_sub(taken, Ordering::AcqRel);
                *front = front.slice(taken..);
                if front.is_empty() {
                    entry.pending.pop_front();
                }
            }
            Err(WriteError::Stopped(code)) => {
                entry.shared.set_stopped(code);
                discard_pending(entry);
                return;
            }
            Err(WriteError::ClosedStream) => {
                discard_pending(entry);
                return;
            }
        }
    }
    // A writer waits only at a full budget; waking it once half is free (not at every ACK)
    // lets it hand over half a budget per wake-up, and covers `flush`, which waits for zero.
    if progress && entry.shared.in_flight.load(Ordering::Acquire) <= STREAM_BUDGET / 2 {
        entry.shared.write_waker.wake();
    }
    if entry.pending.is_empty() && entry.finish_pending && entry.send_open {
        let _ = conn.finish(id);
        entry.send_open = false;
    }
}

/// Sending is over (reset, stopped, closed): what waits is never sent; the writer is told.
fn discard_pending(entry: &mut StreamEntry) {
    let dropped: usize = entry.pending.drain(..).map(|b| b.len()).sum();
    entry.shared.in_flight.fetch_sub(dropped, Ordering::AcqRel);
    entry.send_open = false;
    entry.shared.write_waker.wake();
}

fn stop_receiving(conn: &mut ConnRef<'_>, entry: &mut StreamEntry, code: VarInt) {
    if entry.recv_open {
        let _ = conn.stop(entry.shared.id, code);
        entry.recv_open = false;
    }
}

/// Read what QUIC has for the stream into its queue, up to the budget; QUIC's flow control
/// holds the rest at the peer.
fn pump_read(conn: &mut ConnRef<'_>, entry: &mut StreamEntry) {
    if !entry.delivered || !entry.recv_open {
        return;
    }
    let shared = Arc::clone(&entry.shared);
    let mut recv = conn.quic().recv_stream(shared.id);
    let Ok(mut chunks) = recv.read(true) else {
        // QUIC knows the stream no more: everything, its end included, was read before.
        entry.recv_open = false;
        shared.fin.store(true, Ordering::Release);
        shared.read_waker.wake();
        return;
    };
    // All read now goes over as one batch: one queue slot, one count of `buffered`.
    let mut batch = Vec::new();
    let mut taken = 0;
    let mut room = STREAM_BUDGET.saturating_sub(shared.buffered.load(Ordering::SeqCst));
    let mut progress = false;
    loop {
        if room == 0 || shared.batches.is_full() {
            progress |= publish(&shared, &mut batch, &mut taken);
            // The task nudges us (ReadMore) when it sees the flag; look again in case it made
            // room before the flag was up.
            shared.read_paused.store(true, Ordering::SeqCst);
            room = STREAM_BUDGET.saturating_sub(shared.buffered.load(Ordering::SeqCst));
            if room > 0 && !shared.batches.is_full() && shared.read_paused.swap(false, Ordering::SeqCst) {
                continue;
            }
            break;
        }
        match chunks.next(room) {
            Ok(Some(chunk)) => {
                room = room.saturating_sub(chunk.bytes.len());
                taken += chunk.bytes.len();
                batch.push(chunk.bytes);
            }
            Ok(None) => {
                publish(&shared, &mut batch, &mut taken);
                shared.fin.store(true, Ordering::Release);
                entry.recv_open = false;
                progress = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(code)) => {
                // What came before the reset is queued before the reader can see the reset.
                progress |= publish(&shared, &mut batch, &mut taken);
                shared.set_reset(code);
                entry.recv_open = false;
                break;
            }
        }
    }
    progress |= publish(&shared, &mut batch, &mut taken);
    // Finalizing tells QUIC to send the peer new flow-control credit.
    let _ = chunks.finalize();
    if progress {
        shared.read_waker.wake();
    }
}

/// Queue `batch` (`taken` bytes) for the task, counted in `buffered` before the task can see
/// it; false when there was nothing to queue.
fn publish(shared: &StreamShared, batch: &mut Vec<Bytes>, taken: &mut usize) -> bool {
    if batch.is_empty() {
        return false;
    }
    shared.buffered.fetch_add(std::mem::take(taken), Ordering::SeqCst);
    // One producer, and the queue had room when the batch was started: this cannot fail.
    let _ = shared.batches.push(std::mem::take(batch));
    true
}

impl Application<Command> for Bridge {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if conn.is_server() {
            if self.endpoint.closing.load(Ordering::Acquire) {
                conn.close(VarInt::from_u32(0), b"endpoint closing");
                return;
            }
            let shared = self.register(conn);
            if self.endpoint.incoming.push(shared).is_err() {
                // Nobody accepts fast enough: refuse rather than queue without bound.
                conn.close(VarInt::from_u32(0), b"accept queue full");
                self.forget(conn.id(), Error::ConnectionLost(ConnectionError::LocallyClosed));
                return;
            }
            self.endpoint.incoming_waiters.wake_all();
            return;
        }
        if let Some(purpose) = ConnPurpose::of_tag(conn.tag()) {
            // The traversal's: a bootstrap (signalling only), or a peer a task asked for.
            if let Some(link) = self.link.as_mut() {
                link.on_connected(conn);
            }
            if matches!(purpose, ConnPurpose::Attempt(_)) {
                let shared = self.register(conn);
                self.unclaimed.insert(conn.id(), shared);
            }
            return;
        }
        let Some(reply) = self.connects.remove(&conn.tag()) else {
            conn.close(VarInt::from_u32(0), b"");
            return;
        };
        let shared = self.register(conn);
        if reply.put(Ok(shared)).is_some() {
            // The task stopped waiting for this connection.
            conn.close(VarInt::from_u32(0), b"");
            self.forget(conn.id(), Error::ConnectionLost(ConnectionError::LocallyClosed));
        }
    }

    fn on_stream_opened(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        self.on_conn(conn, |conn, entry| {
            let bi = stream.dir() == Dir::Bi;
            entry.streams.insert(stream, StreamEntry::new(stream, bi, true, false));
            if !entry.backlog.is_empty() || !deliver(conn, entry, stream) {
                entry.backlog.push_back(stream);
                entry.shared.accept_paused.store(true, Ordering::SeqCst);
            }
        });
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if self.link.as_mut().is_some_and(|link| link.on_readable(conn, stream)) {
            return;
        }
        self.on_stream(conn, stream, pump_read);
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if self.link.as_mut().is_some_and(|link| link.on_writable(conn, stream)) {
            return;
        }
        self.on_stream(conn, stream, pump_write);
    }

    fn on_stopped(&mut self, conn: &mut ConnRef<'_>, stream: StreamId, code: VarInt) {
        self.on_stream(conn, stream, |_, entry| {
            entry.shared.set_stopped(code);
            discard_pending(entry);
        });
    }

    fn on_streams_available(&mut self, conn: &mut ConnRef<'_>) {
        self.on_conn(conn, |conn, entry| {
            open_waiting(conn, entry);
            open_ready(conn, entry);
        });
    }

    fn on_datagram(&mut self, conn: &mut ConnRef<'_>) {
        self.on_conn(conn, |conn, entry| {
            while let Some(datagram) = conn.quic().datagrams().recv() {
                // Unreliable: when the task falls behind, the oldest goes.
                let _ = entry.shared.datagrams.force_push(datagram);
            }
            entry.shared.waiters.wake_all();
        });
    }

    fn on_closed(&mut self, id: ConnId, tag: u64, reason: &ConnectionError) {
        if let Some(link) = self.link.as_mut() {
            link.on_closed(id, tag, reason);
        }
        self.unclaimed.remove(&id);
        if self.conns.get(&id).is_some_and(|entry| entry.shared.id == id) {
            self.forget(id, Error::ConnectionLost(reason.clone()));
        } else if let Some(reply) = self.connects.remove(&tag).filter(|_| tag != 0) {
            let _ = reply.put(Err(Error::ConnectionLost(reason.clone())));
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ConnectError) {
        if let Some(link) = self.link.as_mut() {
            link.on_connect_failed(tag, error);
        }
        if let Some(reply) = self.connects.remove(&tag) {
            let _ = reply.put(Err(Error::ConnectFailed(error.clone())));
        }
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, message: Command) {
        self.command(conns, message);
    }
}
