//! One core's event loop: receive a batch, route each datagram to its owner, feed the QUIC
//! endpoint and connections, run the application, seal and send the answers in GSO batches, sleep
//! until the next datagram, timer or wake-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_queue::ArrayQueue;
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, Event,
    StreamEvent, Transmit,
};

use crate::app::{AppMessage, Application, ConnId, ConnRef};
use crate::backend::{Backend, OutBatch, RecvMeta, SendRefused};
use crate::batch::split_gro;
use crate::cid::{route, CidKey, Route};
use crate::latency::{LatencySet, Recorder, LATENCY_QUEUE_CAPACITY};
use crate::socket::Waker;
use crate::stats::{bump, CloseClass, CoreStats, DropReason};

/// How long a draining core waits for its connections to close before it exits.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// GSO batches one connection may send per loop turn before others get a turn.
const TRANSMIT_BUDGET: usize = 16;
/// Largest UDP payload one GSO send may carry (65 535 minus the IPv4 and UDP headers).
const MAX_GSO_BYTES: usize = 65_507;
/// Capacity of each core's command and hand-off queues.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Least time between two RTT samples of one connection.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// A request to open a connection, carried out on the chosen core.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Where to connect.
    pub remote: SocketAddr,
    /// The TLS server name (SNI) to send and, with a WebPKI verifier, to check.
    pub server_name: String,
    /// TLS and transport settings for this connection.
    pub config: ClientConfig,
    /// A value of the caller's choice, given back in callbacks for this connection.
    pub tag: u64,
}

/// What other threads ask of a core.
pub(crate) enum Command {
    Connect(Box<ConnectRequest>),
    Message(AppMessage),
    Shutdown,
    /// Use these settings for connections accepted from now on (live ones keep theirs).
    SetServerConfig(Option<Arc<quinn_proto::ServerConfig>>),
    /// Test hook: block the core's thread for this long.
    Stall(Duration),
}

/// A datagram received by one core for a connection owned by another.
#[derive(Debug)]
pub(crate) struct Handoff {
    remote: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: BytesMut,
}

/// What a core shares with the node handle and the other cores.
pub(crate) struct CoreShared {
    pub(crate) waker: Waker,
    pub(crate) commands: ArrayQueue<Command>,
    pub(crate) handoffs: ArrayQueue<Handoff>,
    pub(crate) stats: Arc<CoreStats>,
    /// Latency histograms handed to the control thread.
    pub(crate) latency: ArrayQueue<Box<LatencySet>>,
    /// Emptied sets the control thread gives back, so the core need not allocate.
    pub(crate) latency_spare: ArrayQueue<Box<LatencySet>>,
    /// The control thread wants the current histograms now rather than at the next interval.
    pub(crate) latency_wanted: AtomicBool,
}

impl std::fmt::Debug for CoreShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreShared").field("waker", &self.waker).finish_non_exhaustive()
    }
}

impl CoreShared {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            waker: Waker::new()?,
            commands: ArrayQueue::new(QUEUE_CAPACITY),
            handoffs: ArrayQueue::new(QUEUE_CAPACITY),
            stats: Arc::new(CoreStats::default()),
            latency: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_spare: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_wanted: AtomicBool::new(false),
        })
    }
}

struct ConnState {
    conn: Connection,
    tag: u64,
    /// Earliest deadline already queued in the timer heap for this connection.
    queued_deadline: Option<Instant>,
    dirty: bool,
    closed_reported: bool,
    /// When the connection was created, for the handshake duration.
    created: Instant,
    /// The handshake completed.
    connected: bool,
    /// Next time the RTT may be sampled.
    next_rtt_sample: Instant,
}

/// The connections of one core, lent to application code in [`Application::on_message`].
pub struct Connections<'a> {
    core: usize,
    now: Instant,
    conns: &'a mut Vec<Option<ConnState>>,
    dirty: &'a mut Vec<usize>,
}

impl std::fmt::Debug for Connections<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("core", &self.core).finish_non_exhaustive()
    }
}

impl Connections<'_> {
    /// The connection `id`, if it is alive on this core.
    pub fn get(&mut self, id: ConnId) -> Option<ConnRef<'_>> {
        if id.core != self.core {
            return None;
        }
        let state = self.conns.get_mut(id.index)?.as_mut()?;
        if !state.dirty {
            state.dirty = true;
            self.dirty.push(id.index);
        }
        Some(ConnRef { id, tag: state.tag, now: self.now, inner: &mut state.conn })
    }

    /// The live connections on this core.
    pub fn ids(&self) -> Vec<ConnId> {
        let core = self.core;
        self.conns.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(index, _)| ConnId { core, index }).collect()
    }
}

/// One core's loop and everything it owns.
pub(crate) struct Core<B: Backend> {
    index: usize,
    shared: Arc<CoreShared>,
    all: Arc<[Arc<CoreShared>]>,
    cid_key: CidKey,
    backend: B,
    endpoint: Endpoint,
    app: Box<dyn Application>,
    conns: Vec<Option<ConnState>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: Vec<usize>,
    received: Vec<(RecvMeta, BytesMut)>,
    /// A batch the kernel refused for back-pressure; sent before anything else.
    blocked: Option<OutBatch>,
    /// Cores to wake after this turn's hand-offs (bit per core).
    wake_mask: Vec<bool>,
    response_buf: Vec<u8>,
    draining_since: Option<Instant>,
    /// The socket is IPv6 (dual-stack): IPv4 peers are addressed as IPv4-mapped IPv6.
    ipv6_socket: bool,
    recorder: Recorder,
}

impl<B: Backend> Core<B> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        all: Arc<[Arc<CoreShared>]>,
        cid_key: CidKey,
        backend: B,
        endpoint: Endpoint,
        app: Box<dyn Application>,
        ipv6_socket: bool,
    ) -> Option<Self> {
        let shared = Arc::clone(all.get(index)?);
        let cores = all.len();
        Some(Self {
            index,
            shared,
            all,
            cid_key,
            backend,
            endpoint,
            app,
            conns: Vec::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            received: Vec::new(),
            blocked: None,
            wake_mask: vec![false; cores],
            response_buf: Vec::new(),
            draining_since: None,
            ipv6_socket,
            recorder: Recorder::new(),
        })
    }

    pub(crate) fn stats(&self) -> &CoreStats {
        &self.shared.stats
    }

    /// Run until shut down and every connection is closed. Returns an error only when the
    /// socket or backend fails in a way the core cannot recover from.
    pub(crate) fn run(mut self) -> std::io::Result<()> {
        let result = self.run_loop();
        // What was recorded since the last hand-over is not lost at shutdown.
        self.recorder.maybe_publish(Instant::now(), &self.shared.latency, &self.shared.latency_spare, true);
        result
    }

    fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            let now = Instant::now();
            bump(&self.shared.stats.loop_turns, 1);
            self.shared.waker.drain();
            self.take_commands(now);
            self.take_handoffs(now);
            self.receive(now)?;
            self.fire_timers(now);
            self.drive_dirty(now);
            self.wake_peers();

            if let Some(since) = self.draining_since {
                let open = self.conns.iter().filter(|c| c.is_some()).count();
                if open == 0 || now.duration_since(since) > DRAIN_LIMIT {
                    // The last CONNECTION_CLOSE packets leave before the core does.
                    return self.backend.flush();
                }
            }

            let end = Instant::now();
            self.recorder.loop_turn(end.saturating_duration_since(now));
            let wanted = self.shared.latency_wanted.load(Ordering::Relaxed)
                && self.shared.latency_wanted.swap(false, Ordering::Relaxed);
            self.recorder.maybe_publish(end, &self.shared.latency, &self.shared.latency_spare, wanted);

            let timeout = if self.blocked.is_none() && !self.dirty.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = self.timers.peek().map(|Reverse((at, _))| *at);
                let drain_tick = self.draining_since.map(|since| since + DRAIN_LIMIT);
                [next, drain_tick].into_iter().flatten().min().map(|at| at.saturating_duration_since(Instant::now()))
            };
            // One submission per turn: `wait` submits what is queued before it sleeps.
            if timeout == Some(Duration::ZERO) {
                self.backend.flush()?;
            } else {
                self.backend.wait(timeout)?;
            }
        }
    }

    fn take_commands(&mut self, now: Instant) {
        while let Some(command) = self.shared.commands.pop() {
            match command {
                Command::Connect(request) => self.connect(now, *request),
                Command::Message(message) => {
                    let mut conns =
                        Connections { core: self.index, now, conns: &mut self.conns, dirty: &mut self.dirty };
                    self.app.on_message(&mut conns, message);
                }
                Command::Shutdown => self.start_draining(now),
                Command::SetServerConfig(config) => self.endpoint.set_server_config(config),
                Command::Stall(duration) => {
                    tracing::warn!(core = self.index, ?duration, "core stalled on request (test hook)");
                    std::thread::sleep(duration);
                }
            }
        }
    }

    fn start_draining(&mut self, now: Instant) {
        if self.draining_since.is_some() {
            return;
        }
        self.draining_since = Some(now);
        for (index, slot) in self.conns.iter_mut().enumerate() {
            if let Some(state) = slot {
                state.conn.close(now, 0u32.into(), bytes::Bytes::from_static(b"node shutting down"));
                if !state.dirty {
                    state.dirty = true;
                    self.dirty.push(index);
                }
            }
        }
    }

    fn connect(&mut self, now: Instant, request: ConnectRequest) {
        if self.draining_since.is_some() {
            self.app.on_connect_failed(request.tag, &quinn_proto::ConnectError::EndpointStopping);
            return;
        }
        match self.endpoint.connect(now, request.config, request.remote, &request.server_name) {
            Ok((handle, conn)) => {
                bump(&self.shared.stats.connections_opened, 1);
                self.insert(now, handle, conn, request.tag);
            }
            Err(error) => {
                bump(&self.shared.stats.connect_failures, 1);
                self.app.on_connect_failed(request.tag, &error);
            }
        }
    }

    fn insert(&mut self, now: Instant, handle: ConnectionHandle, conn: Connection, tag: u64) {
        let index = handle.0;
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.conns.get_mut(index) {
            *slot = Some(ConnState {
                conn,
                tag,
                queued_deadline: None,
                dirty: true,
                closed_reported: false,
                created: now,
                connected: false,
                next_rtt_sample: now,
            });
            self.dirty.push(index);
        }
        self.publish_active();
    }

    fn publish_active(&self) {
        let active = self.conns.iter().filter(|c| c.is_some()).count() as u64;
        self.shared.stats.connections_active.store(active, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_handoffs(&mut self, now: Instant) {
        while let Some(handoff) = self.shared.handoffs.pop() {
            bump(&self.shared.stats.handoffs_in, 1);
            let meta = RecvMeta {
                remote: handoff.remote,
                len: handoff.data.len(),
                stride: handoff.data.len(),
                ecn: handoff.ecn,
                local_ip: handoff.local_ip,
            };
            self.handle_datagram(now, meta, handoff.data);
        }
    }

    fn receive(&mut self, now: Instant) -> std::io::Result<()> {
        let received = &mut self.received;
        let stats = &self.shared.stats;
        self.backend.recv(&mut |meta, data| {
            // Peers are known by their plain IPv4 address even on a dual-stack socket.
            let remote = match meta.remote {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                    None => meta.remote,
                },
                v4 => v4,
            };
            // One copy into memory the endpoint can own; GRO segments then split off it.
            let mut buf = BytesMut::from(data);
            for segment in split_gro(data, meta.stride) {
                let datagram = buf.split_to(segment.len());
                bump(&stats.rx_datagrams, 1);
                bump(&stats.rx_bytes, segment.len() as u64);
                received.push((RecvMeta { remote, len: segment.len(), stride: segment.len(), ..meta }, datagram));
            }
        })?;
        let mut batch = std::mem::take(&mut self.received);
        for (meta, data) in batch.drain(..) {
            self.handle_datagram(now, meta, data);
        }
        self.received = batch;
        Ok(())
    }

    fn handle_datagram(&mut self, now: Instant, meta: RecvMeta, data: BytesMut) {
        if let Route::Core(owner) = route(&self.cid_key, &data) {
            if owner != self.index {
                if let Some(peer) = self.all.get(owner) {
                    let handoff = Handoff { remote: meta.remote, local_ip: meta.local_ip, ecn: meta.ecn, data };
                    if peer.handoffs.push(handoff).is_ok() {
                        bump(&self.shared.stats.handoffs_out, 1);
                        if let Some(flag) = self.wake_mask.get_mut(owner) {
                            *flag = true;
                        }
                    } else {
                        self.shared.stats.drop_datagram(DropReason::HandoffQueueFull);
                    }
                    return;
                }
                // An index beyond our cores: a forged ID; let the endpoint reject it here.
            }
        }
        let mut response = std::mem::take(&mut self.response_buf);
        response.clear();
        match self.endpoint.handle(now, meta.remote, meta.local_ip, meta.ecn, data, &mut response) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(Some(state)) = self.conns.get_mut(handle.0) {
                    state.conn.handle_event(event);
                    if !state.dirty {
                        state.dirty = true;
                        self.dirty.push(handle.0);
                    }
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.draining_since.is_some() {
                    self.shared.stats.drop_datagram(DropReason::Refused);
                    let transmit = self.endpoint.refuse(incoming, &mut response);
                    self.send_response(&transmit, &response);
                } else {
                    match self.endpoint.accept(incoming, now, &mut response, None) {
                        Ok((handle, conn)) => {
                            bump(&self.shared.stats.connections_accepted, 1);
                            self.insert(now, handle, conn, 0);
                        }
                        Err(error) => {
                            self.shared.stats.drop_datagram(DropReason::Refused);
                            tracing::debug!(cause = %error.cause, "incoming connection refused");
                            if let Some(transmit) = error.response {
                                self.send_response(&transmit, &response);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => self.send_response(&transmit, &response),
            None => {}
        }
        self.response_buf = response;
    }

    fn send_response(&mut self, transmit: &Transmit, buf: &[u8]) {
        let Some(contents) = buf.get(..transmit.size) else { return };
        let mut out = self.backend.take_buffer();
        out.extend_from_slice(contents);
        let batch = to_batch(transmit, out, self.ipv6_socket);
        self.send(batch);
    }

    fn send(&mut self, batch: OutBatch) {
        if self.blocked.is_some() {
            // Endpoint responses under back-pressure are dropped: the peer retransmits.
            return;
        }
        if let Err(SendRefused::WouldBlock(batch)) = self.backend.send(batch) {
            self.blocked = Some(batch);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, index))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(state)) = self.conns.get_mut(index) else { continue };
            if state.queued_deadline != Some(at) {
                continue;
            }
            state.queued_deadline = None;
            match state.conn.poll_timeout() {
                Some(deadline) if deadline <= now => {
                    state.conn.handle_timeout(now);
                    if !state.dirty {
                        state.dirty = true;
                        self.dirty.push(index);
                    }
                }
                Some(deadline) => {
                    state.queued_deadline = Some(deadline);
                    self.timers.push(Reverse((deadline, index)));
                }
                None => {}
            }
        }
    }

    fn drive_dirty(&mut self, now: Instant) {
        if let Some(batch) = self.blocked.take() {
            if let Err(SendRefused::WouldBlock(batch)) = self.backend.send(batch) {
                self.blocked = Some(batch);
                return;
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            self.drive(now, index);
        }
        let mut dirty = dirty;
        dirty.clear();
        // Connections marked again while driving stay in `self.dirty` for the next turn.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Bring one connection up to date: endpoint bookkeeping, application events, transmits, timer.
    fn drive(&mut self, now: Instant, index: usize) {
        let handle = ConnectionHandle(index);
        let core = self.index;
        let id = ConnId { core, index };
        let Some(Some(state)) = self.conns.get_mut(index) else { return };
        state.dirty = false;
        let mut drained = false;

        while let Some(event) = state.conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                state.conn.handle_event(reply);
            }
        }

        while let Some(event) = state.conn.poll() {
            let mut conn = ConnRef { id, tag: state.tag, now, inner: &mut state.conn };
            match event {
                Event::HandshakeDataReady | Event::DatagramReceived | Event::DatagramsUnblocked => {}
                Event::Connected => {
                    bump(&self.shared.stats.handshakes_completed, 1);
                    state.connected = true;
                    self.recorder.handshake(now.saturating_duration_since(state.created));
                    self.app.on_connected(&mut conn);
                }
                Event::ConnectionLost { reason } => {
                    state.closed_reported = true;
                    self.shared.stats.count_close(CloseClass::of(&reason));
                    if state.connected {
                        self.recorder.rtt(conn.inner.rtt());
                    } else {
                        bump(&self.shared.stats.handshake_failures, 1);
                    }
                    self.app.on_closed(id, state.tag, &reason);
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(stream) = conn.inner.streams().accept(dir) {
                        self.app.on_stream_opened(&mut conn, stream);
                        // Data may already be waiting on a fresh stream.
                        self.app.on_readable(&mut conn, stream);
                    }
                }
                Event::Stream(StreamEvent::Readable { id: stream }) => self.app.on_readable(&mut conn, stream),
                Event::Stream(StreamEvent::Writable { id: stream }) => self.app.on_writable(&mut conn, stream),
                Event::Stream(StreamEvent::Finished { id: stream }) => self.app.on_finished(&mut conn, stream),
                Event::Stream(StreamEvent::Stopped { id: stream, error_code }) => {
                    self.app.on_stopped(&mut conn, stream, error_code);
                }
                Event::Stream(StreamEvent::Available { .. }) => self.app.on_streams_available(&mut conn),
            }
        }

        if state.connected && now >= state.next_rtt_sample {
            self.recorder.rtt(state.conn.rtt());
            state.next_rtt_sample = now + RTT_SAMPLE_INTERVAL;
        }

        // The kernel takes at most 64 KiB in one GSO send (the IP length field), whatever the
        // segment count: more segments of the path MTU would fail with EMSGSIZE.
        let mtu = usize::from(state.conn.current_mtu()).max(1);
        let max_segments = self.backend.max_gso_segments().min(MAX_GSO_BYTES / mtu).max(1);
        let mut budget = TRANSMIT_BUDGET;
        loop {
            if self.blocked.is_some() || budget == 0 {
                // More may be waiting: come back next turn.
                state.dirty = true;
                self.dirty.push(index);
                break;
            }
            let mut buf = self.backend.take_buffer();
            let Some(transmit) = state.conn.poll_transmit(now, max_segments, &mut buf) else { break };
            buf.truncate(transmit.size);
            let batch = to_batch(&transmit, buf, self.ipv6_socket);
            if let Err(SendRefused::WouldBlock(batch)) = self.backend.send(batch) {
                self.blocked = Some(batch);
            }
            budget -= 1;
        }

        if let Some(deadline) = state.conn.poll_timeout() {
            if state.queued_deadline.is_none_or(|queued| deadline < queued) {
                state.queued_deadline = Some(deadline);
                self.timers.push(Reverse((deadline, index)));
            }
        }

        if drained || state.conn.is_drained() {
            if !state.closed_reported {
                self.shared.stats.count_close(CloseClass::Local);
                self.app.on_closed(id, state.tag, &ConnectionError::LocallyClosed);
            }
            if let Some(slot) = self.conns.get_mut(index) {
                *slot = None;
            }
            self.publish_active();
        }
    }

    fn wake_peers(&mut self) {
        for (core, flag) in self.wake_mask.iter_mut().enumerate() {
            if std::mem::take(flag) {
                if let Some(peer) = self.all.get(core) {
                    peer.waker.wake();
                }
            }
        }
    }
}

fn to_batch(transmit: &Transmit, buf: Vec<u8>, ipv6_socket: bool) -> OutBatch {
    let destination = match transmit.destination {
        SocketAddr::V4(v4) if ipv6_socket => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    };
    OutBatch {
        destination,
        ecn: transmit.ecn,
        src_ip: transmit.src_ip,
        segment_size: transmit.segment_size.unwrap_or(transmit.size),
        buf,
    }
}
