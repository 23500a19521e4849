//! One core's event loop: receive a batch, route each datagram to its owner, feed the QUIC
//! endpoint and connections, run the application, seal and send the answers in GSO batches, sleep
//! until the next datagram, timer or wake-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;
use quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, StreamId, Transmit,
};

use crate::address::unmapped;
use crate::admission::{Admission, AdmissionConfig};
use crate::app::Application;
use crate::backend::{Backend, OutBatch, RecvMeta};
use crate::batch::split_gro_owned;
use crate::cid::{route, CidKey, Generation, Route};
use crate::connection::{ConnId, ConnRef, ConnState, ConnectRequest, Connections};
use crate::datagram::{classify, ControlDatagram, DatagramKind};
use crate::latency::Recorder;
use crate::probe::SocketOwner;
use crate::relay::io::{Received, RelayIo};
use crate::relay::{PathRoute, RelayAllocation};
use crate::stats::{bump, CloseClass, CoreStats, DropReason};
use crate::transmit::{to_batch, Transmitter};

mod admit;
mod drive;
mod shared;

pub(crate) use shared::CoreShared;

/// How long a draining core waits for its connections to close before it exits.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// GSO batches one connection may send per loop turn before others get a turn.
const TRANSMIT_BUDGET: usize = 16;
/// Datagrams from `NodeHandle::send_datagram` a core holds while its socket is back-pressured.
const DEFERRED_CAPACITY: usize = 4096;
/// Capacity of each core's command and hand-off queues.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Least time between two RTT samples of one connection.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How a core stops: either way every connection is closed (CONNECTION_CLOSE sent) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Wait (at most [`DRAIN_LIMIT`]) until each connection's closing period is over, so that a
    /// peer whose CONNECTION_CLOSE was lost is answered again (RFC 9000 §10.2.1).
    Drain,
    /// Stop once the CONNECTION_CLOSE packets are with the kernel: for a process that exits next
    /// (RFC 9000 §10.2 lets an endpoint discard the state of a closing connection).
    Immediate,
}

/// What other threads ask of a core, whatever its application.
pub(crate) enum Command {
    Connect(Box<ConnectRequest>),
    Shutdown(Stop),
    /// A successor takes new connections (`true`: a takeover's drain; live ones go on), or this
    /// process takes them again (`false`).
    SetHandedOver(bool),
    /// Use these settings for connections accepted from now on (live ones keep theirs).
    SetServerConfig(Option<Arc<quinn_proto::ServerConfig>>),
    /// Test hook: block the core's thread for this long.
    Stall(Duration),
    /// Forward relay frames on this allocation (install or renew).
    InstallRelay(RelayAllocation),
    /// Stop forwarding this channel.
    RemoveRelay(u32),
    /// Route a path alias (or forget it with `None`). Validated by the sender.
    SetPath(SocketAddr, Option<PathRoute>),
    /// Send these bytes as one datagram from the node's socket.
    SendDatagram(SocketAddr, Vec<u8>),
}

/// What arrives in a core's queue: a command, or a message for its application. One queue keeps
/// them in the order they were sent.
pub(crate) enum CoreInput<M> {
    Command(Command),
    Message(M),
}

/// A core's input queue, typed by its application's message.
pub(crate) type Inbox<M> = ArrayQueue<CoreInput<M>>;

/// A core's input queue as code that sends no messages sees it (the node handle does not know the
/// message type). Commands come from control threads, never from the packet path.
pub(crate) trait CommandQueue: Send + Sync {
    /// Queue `command`; false when the queue is full.
    fn push_command(&self, command: Command) -> bool;
}

impl<M: Send> CommandQueue for Inbox<M> {
    fn push_command(&self, command: Command) -> bool {
        self.push(CoreInput::Command(command)).is_ok()
    }
}

/// A datagram received by one core for a connection owned by another.
#[derive(Debug)]
pub(crate) struct Handoff {
    remote: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: BytesMut,
}

/// What a core is started with besides its socket, endpoint and application.
pub(crate) struct CoreOptions {
    /// The socket is IPv6 (dual-stack): IPv4 peers appear as mapped addresses.
    pub(crate) ipv6_socket: bool,
    /// Where control datagrams go; `None`: they are dropped.
    pub(crate) control: Option<Sender<ControlDatagram>>,
    pub(crate) admission: AdmissionConfig,
}

/// One core's loop and everything it owns.
pub(crate) struct Core<B: Backend, M> {
    index: usize,
    shared: Arc<CoreShared>,
    /// The same queue as `shared.commands`, typed: commands and the application's messages.
    inbox: Arc<Inbox<M>>,
    all: Arc<[Arc<CoreShared>]>,
    cid_key: CidKey,
    /// This process's generation (`crate::cid`): datagrams for another one are counted and dropped.
    generation: Generation,
    /// Every send goes through it; it owns the backend and the path aliases' routes.
    tx: Transmitter<B>,
    endpoint: Endpoint,
    app: Box<dyn Application<M>>,
    conns: Vec<Option<ConnState>>,
    /// Live connections (`Some` slots of `conns`), kept as they come and go: counting the slots
    /// on every change costs O(connections) per handshake.
    active: usize,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: Vec<usize>,
    /// Streams of the connection being driven that `on_readable` was called for (`drive.rs`).
    readable_seen: Vec<StreamId>,
    received: Vec<(RecvMeta, BytesMut)>,
    /// Datagrams other threads asked this core to send (`NodeHandle::send_datagram`) that arrived while
    /// the socket applied back-pressure: sent, in order, once it takes data again.
    deferred: std::collections::VecDeque<OutBatch>,
    /// Cores to wake after this turn's hand-offs (bit per core).
    wake_mask: Vec<bool>,
    response_buf: Vec<u8>,
    draining_since: Option<Instant>,
    /// Stop without waiting for closing periods ([`Stop::Immediate`]).
    stop_immediately: bool,
    /// A successor takes new connections; live ones go on here.
    handed_over: bool,
    recorder: Recorder,
    /// Relay frames this core forwards (bootstrap role) or unwraps (peer role).
    relay: RelayIo,
    /// Where control datagrams go; `None`: they are dropped.
    control: Option<Sender<ControlDatagram>>,
    /// Retry, the half-open cap and the handshake deadlines of accepted connections.
    admission: Admission,
}

impl<B: Backend, M> Core<B, M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        all: Arc<[Arc<CoreShared>]>,
        inbox: Arc<Inbox<M>>,
        cid_key: CidKey,
        generation: Generation,
        backend: B,
        endpoint: Endpoint,
        app: Box<dyn Application<M>>,
        options: CoreOptions,
    ) -> Option<Self> {
        let shared = Arc::clone(all.get(index)?);
        let cores = all.len();
        let stats = Arc::clone(&shared.stats);
        Some(Self {
            index,
            shared,
            inbox,
            all,
            cid_key,
            generation,
            tx: Transmitter::new(backend, Arc::clone(&stats), options.ipv6_socket),
            relay: RelayIo::new(stats, generation),
            endpoint,
            app,
            conns: Vec::new(),
            active: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            readable_seen: Vec::with_capacity(drive::READABLE_SEEN_MAX),
            received: Vec::new(),
            deferred: std::collections::VecDeque::new(),
            wake_mask: vec![false; cores],
            response_buf: Vec::new(),
            draining_since: None,
            stop_immediately: false,
            handed_over: false,
            recorder: Recorder::new(),
            control: options.control,
            admission: Admission::new(options.admission),
        })
    }

    pub(crate) fn stats(&self) -> &CoreStats {
        &self.shared.stats
    }

    /// Run until shut down and every connection is closed. Returns an error only when the
    /// socket or backend fails in a way the core cannot recover from.
    pub(crate) fn run(mut self) -> std::io::Result<()> {
        let result = self.run_loop();
        self.relay.withdraw_all(&mut self.tx.backend);
        // What was recorded since the last hand-over is not lost at shutdown.
        self.recorder.maybe_publish(Instant::now(), &self.shared.latency, &self.shared.latency_spare, true);
        result
    }

    fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            let turn_start = Instant::now();
            let now = turn_start;
            bump(&self.shared.stats.loop_turns, 1);
            self.take_commands(now);
            self.relay.sweep(now, &mut self.tx.backend);
            self.take_handoffs(now);
            self.receive(now)?;
            // Read the clock again: the packets sent now must not carry the time before this
            // turn's work (a handshake's first key generation can take tens of milliseconds),
            // or the peer's acknowledgement yields an RTT sample, and a PTO, that large.
            let now = Instant::now();
            self.fire_timers(now);
            self.expire_handshakes(now);
            self.drive_dirty(now);
            self.wake_peers();

            if let Some(since) = self.draining_since {
                if self.active == 0 || self.closes_sent() || now.duration_since(since) > DRAIN_LIMIT {
                    self.abandon_connections();
                    // The last CONNECTION_CLOSE packets leave before the core does.
                    return self.tx.backend.flush();
                }
            }

            let end = Instant::now();
            self.recorder.loop_turn(end.saturating_duration_since(now));
            let busy = end.saturating_duration_since(turn_start).as_nanos();
            bump(&self.shared.stats.busy_nanos, u64::try_from(busy).unwrap_or(u64::MAX));
            let wanted = self.shared.latency_wanted.load(Ordering::Relaxed)
                && self.shared.latency_wanted.swap(false, Ordering::Relaxed);
            self.recorder.maybe_publish(end, &self.shared.latency, &self.shared.latency_spare, wanted);

            let timeout = if !self.tx.is_blocked() && !self.dirty.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = self.timers.peek().map(|Reverse((at, _))| *at);
                let drain_tick = self.draining_since.map(|since| since + DRAIN_LIMIT);
                let handshake_deadline = self.admission.next_deadline();
                [next, drain_tick, handshake_deadline, self.relay.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            // One submission per turn: `wait` submits what is queued before it sleeps. Commands,
            // messages or hand-offs queued during this turn mean another turn, not a sleep; once
            // parked, a sender writes the eventfd (`CoreWaker`).
            let (inbox, shared) = (&self.inbox, &self.shared);
            if timeout == Some(Duration::ZERO)
                || !shared.waker.park(|| !inbox.is_empty() || !shared.handoffs.is_empty())
            {
                self.tx.backend.flush()?;
            } else {
                let slept = self.tx.backend.wait(timeout);
                self.shared.waker.unpark();
                slept?;
            }
        }
    }

    fn take_commands(&mut self, now: Instant) {
        while let Some(input) = self.inbox.pop() {
            let command = match input {
                CoreInput::Command(command) => command,
                CoreInput::Message(message) => {
                    let mut conns =
                        Connections { core: self.index, now, conns: &mut self.conns, dirty: &mut self.dirty };
                    self.app.on_message(&mut conns, message);
                    continue;
                }
            };
            match command {
                Command::Connect(request) => self.connect(now, *request),
                Command::Shutdown(stop) => {
                    self.stop_immediately |= stop == Stop::Immediate;
                    self.start_draining(now);
                }
                Command::SetHandedOver(handed_over) => self.handed_over = handed_over,
                Command::SetServerConfig(config) => self.endpoint.set_server_config(config),
                Command::Stall(duration) => {
                    tracing::warn!(core = self.index, ?duration, "core stalled on request (test hook)");
                    std::thread::sleep(duration);
                }
                Command::InstallRelay(allocation) => self.relay.install(allocation, now, &mut self.tx.backend),
                Command::RemoveRelay(channel) => self.relay.remove(channel, now, &mut self.tx.backend),
                Command::SetPath(alias, route) => {
                    if !self.tx.paths.set(alias, route) {
                        tracing::warn!(core = self.index, %alias, ?route, "path alias refused");
                    } else if let Some(PathRoute::Relay { relay, channel }) = route {
                        for (meta, data) in self.relay.take_early(now, unmapped(relay), channel, unmapped(alias)) {
                            self.handle_from_alias(now, meta, data);
                        }
                    }
                }
                Command::SendDatagram(destination, payload) => {
                    let batch =
                        OutBatch { destination, ecn: None, src_ip: None, segment_size: payload.len(), buf: payload };
                    if self.tx.is_blocked() || !self.deferred.is_empty() {
                        // Bursts (hundreds of probes at once) exceed the backend's send slots:
                        // keep them for the next turns rather than drop them.
                        if self.deferred.len() < DEFERRED_CAPACITY {
                            self.deferred.push_back(batch);
                        } else {
                            bump(&self.shared.stats.send_datagrams_dropped, 1);
                        }
                        continue;
                    }
                    self.tx.transmit(batch);
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

    /// Stopping immediately, and every CONNECTION_CLOSE has left: none waits to be built, kept
    /// from back-pressure, or in the kernel's hands still.
    fn closes_sent(&self) -> bool {
        self.stop_immediately
            && self.dirty.is_empty()
            && self.deferred.is_empty()
            && !self.tx.is_blocked()
            && self.tx.backend.sends_in_flight() == 0
    }

    /// The core stops with these connections still closing: each ends here, counted and reported
    /// once, as if its closing period were over.
    fn abandon_connections(&mut self) {
        for (index, slot) in self.conns.iter_mut().enumerate() {
            let Some(state) = slot.take() else { continue };
            if !state.closed_reported {
                self.shared.stats.count_close(CloseClass::Local);
                self.app.on_closed(ConnId { core: self.index, index }, state.tag, &ConnectionError::LocallyClosed);
            }
        }
        self.active = 0;
        self.publish_active();
    }

    fn connect(&mut self, now: Instant, request: ConnectRequest) {
        if self.draining_since.is_some() {
            self.app.on_connect_failed(request.tag, &quinn_proto::ConnectError::EndpointStopping);
            return;
        }
        match self.endpoint.connect(now, request.config, request.remote, &request.server_name) {
            Ok((handle, conn)) => {
                bump(&self.shared.stats.connections_opened, 1);
                self.insert(now, handle, conn, request.tag, false);
                let id = ConnId { core: self.index, index: handle.0 };
                if let Some(Some(state)) = self.conns.get_mut(handle.0) {
                    if state.conn.has_0rtt() {
                        self.app.on_zero_rtt(&mut ConnRef { id, tag: state.tag, now, inner: &mut state.conn });
                    }
                }
            }
            Err(error) => {
                bump(&self.shared.stats.connect_failures, 1);
                self.app.on_connect_failed(request.tag, &error);
            }
        }
    }

    fn insert(&mut self, now: Instant, handle: ConnectionHandle, conn: Connection, tag: u64, incoming: bool) {
        let index = handle.0;
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.conns.get_mut(index) {
            if slot.is_none() {
                self.active += 1;
            }
            *slot = Some(ConnState {
                remote: conn.remote_address(),
                local_ip: conn.local_ip(),
                conn,
                tag,
                queued_deadline: None,
                dirty: true,
                closed_reported: false,
                created: now,
                connected: false,
                half_open: incoming,
                next_rtt_sample: now,
            });
            self.dirty.push(index);
            if incoming {
                self.admission.started(index, now);
            }
        }
        self.publish_active();
    }

    fn publish_active(&self) {
        self.shared.stats.connections_active.store(self.active as u64, std::sync::atomic::Ordering::Relaxed);
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
            // Classified (and an alias substituted) by the core that received it.
            self.handle_quic(now, meta, handoff.data);
        }
    }

    fn receive(&mut self, now: Instant) -> std::io::Result<()> {
        let received = &mut self.received;
        let stats = &self.shared.stats;
        self.tx.backend.recv(&mut |meta, data| {
            for datagram in split_gro_owned(data, meta.stride) {
                bump(&stats.rx_datagrams, 1);
                bump(&stats.rx_bytes, datagram.len() as u64);
                received.push((RecvMeta { len: datagram.len(), stride: datagram.len(), ..meta }, datagram));
            }
        })?;
        let mut batch = std::mem::take(&mut self.received);
        for (meta, data) in batch.drain(..) {
            self.handle_datagram(now, meta, data);
        }
        self.received = batch;
        self.relay.flush(&mut self.tx);
        Ok(())
    }

    /// Sort a received datagram by its first byte (`docs/nat-traversal.md`, "Datagrams on the
    /// node socket"): QUIC, relay frame, control datagram, or neither.
    fn handle_datagram(&mut self, now: Instant, mut meta: RecvMeta, data: BytesMut) {
        match classify(&data) {
            DatagramKind::Quic => {
                if !self.tx.paths.is_empty() {
                    // The direct path of an alias: the connection knows the peer by its alias.
                    if let Some(alias) = self.tx.paths.alias_for_direct(meta.remote) {
                        bump(&self.shared.stats.alias_received_direct, 1);
                        meta.remote = alias;
                    }
                }
                self.handle_quic(now, meta, data);
            }
            DatagramKind::Relay => match self.relay.receive(now, meta, data, &mut self.tx) {
                Received::Handled => {}
                Received::FromAlias(meta, data) => self.handle_from_alias(now, meta, data),
            },
            DatagramKind::Control => self.deliver_control(meta.remote, data),
            DatagramKind::Probe => self.answer_probe(meta, &data),
            DatagramKind::NotQuic => self.shared.stats.drop_datagram(DropReason::NotQuic),
        }
    }

    /// A takeover's layout probe (`crate::probe`): say which generation and core read it.
    fn answer_probe(&mut self, meta: RecvMeta, data: &[u8]) {
        let owner = SocketOwner { generation: self.generation, core: self.index as u8 };
        let Some(answer) = crate::probe::answer(&self.cid_key, data, owner) else {
            self.shared.stats.drop_datagram(DropReason::NotQuic);
            return;
        };
        let mut buf = self.tx.backend.take_buffer();
        buf.extend_from_slice(&answer);
        let batch =
            OutBatch { destination: meta.remote, ecn: None, src_ip: meta.local_ip, segment_size: buf.len(), buf };
        self.tx.send_raw(batch);
    }

    /// The datagram a relay frame from an alias's relay carried. One level only: a relay frame
    /// inside a relay frame is not unwrapped again.
    fn handle_from_alias(&mut self, now: Instant, meta: RecvMeta, data: BytesMut) {
        match classify(&data) {
            DatagramKind::Quic => self.handle_quic(now, meta, data),
            DatagramKind::Control => self.deliver_control(meta.remote, data),
            DatagramKind::Relay | DatagramKind::Probe | DatagramKind::NotQuic => {
                self.shared.stats.drop_datagram(DropReason::NotQuic);
            }
        }
    }

    /// Pass a control datagram to the control thread, never waiting for it.
    fn deliver_control(&mut self, source: SocketAddr, data: BytesMut) {
        let delivered = match &self.control {
            Some(sender) => sender.try_send(ControlDatagram { core: self.index, source, bytes: data.freeze() }).is_ok(),
            None => false,
        };
        let stats = &self.shared.stats;
        bump(if delivered { &stats.control_datagrams_in } else { &stats.control_datagrams_dropped }, 1);
    }

    /// A QUIC datagram: to the core that owns its connection, else to this core's endpoint.
    fn handle_quic(&mut self, now: Instant, meta: RecvMeta, data: BytesMut) {
        let owner = match route(&self.cid_key, self.generation, &data) {
            Route::Core(owner) => Some(owner),
            Route::OtherGeneration(_) => {
                // Another process sharing the port owns it: the steering program sends its
                // datagrams there, so this one was misrouted (or the other process is gone).
                bump(&self.shared.stats.foreign_generation, 1);
                return;
            }
            Route::Local => None,
        };
        if let Some(owner) = owner {
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
            Some(DatagramEvent::NewConnection(incoming)) => self.admit(now, incoming, &mut response),
            Some(DatagramEvent::Response(transmit)) => self.send_response(&transmit, &response),
            None => {}
        }
        self.response_buf = response;
    }

    fn send_response(&mut self, transmit: &Transmit, buf: &[u8]) {
        let Some(contents) = buf.get(..transmit.size) else { return };
        let mut out = self.tx.backend.take_buffer();
        out.extend_from_slice(contents);
        let batch = to_batch(transmit, out);
        // Endpoint responses under back-pressure are dropped: the peer retransmits.
        self.tx.transmit(batch);
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

    fn wake_peers(&mut self) {
        for (core, flag) in self.wake_mask.iter_mut().enumerate() {
            if std::mem::take(flag) {
                if let Some(peer) = self.all.get(core) {
                    peer.waker.notify();
                }
            }
        }
    }
}
