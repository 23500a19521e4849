//! One core's event loop: receive a batch, route each datagram to its owner, feed the QUIC
//! endpoint and connections, run the application, seal and send the answers in GSO batches, sleep
//! until the next datagram, timer or wake-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;
use quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, Event, StreamEvent, Transmit,
};

use crate::app::Application;
use crate::backend::{Backend, OutBatch, RecvMeta, SendRefused};
use crate::batch::split_gro;
use crate::cid::{route, CidKey, Generation, Route};
use crate::connection::{ConnId, ConnRef, ConnState, ConnectRequest, Connections};
use crate::datagram::{classify, ControlDatagram, DatagramKind};
use crate::latency::{LatencySet, Recorder, LATENCY_QUEUE_CAPACITY};
use crate::probe::SocketOwner;
use crate::relay::{
    frame_segments, is_alias, normalize, ForwardingTable, PathRoute, PathTable, RelayAllocation, RelayDrop, RelayFrame,
    RELAY_HEADER_LEN,
};
use crate::socket::Waker;
use crate::stats::{bump, CloseClass, CoreStats, DropReason};

/// How long a draining core waits for its connections to close before it exits.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// GSO batches one connection may send per loop turn before others get a turn.
const TRANSMIT_BUDGET: usize = 16;
/// Largest UDP payload one GSO send may carry (65 535 minus the IPv4 and UDP headers).
const MAX_GSO_BYTES: usize = 65_507;
/// Datagrams from `Node::send_datagram` a core holds while its socket is back-pressured.
const DEFERRED_CAPACITY: usize = 4096;
/// Capacity of each core's command and hand-off queues.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Least time between two RTT samples of one connection.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How often expired relay allocations are swept from the forwarding table (until then their
/// frames count as `expired`).
const RELAY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What other threads ask of a core, whatever its application.
pub(crate) enum Command {
    Connect(Box<ConnectRequest>),
    Shutdown,
    /// Refuse new connections (`false`: a takeover's drain; live ones go on) or accept them again.
    SetAccepting(bool),
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

/// What a core shares with the node handle and the other cores.
pub(crate) struct CoreShared {
    pub(crate) waker: Waker,
    /// The core's input queue; the core itself reads it typed.
    pub(crate) commands: Arc<dyn CommandQueue>,
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
    pub(crate) fn new(commands: Arc<dyn CommandQueue>) -> std::io::Result<Self> {
        Ok(Self {
            waker: Waker::new()?,
            commands,
            handoffs: ArrayQueue::new(QUEUE_CAPACITY),
            stats: Arc::new(CoreStats::default()),
            latency: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_spare: ArrayQueue::new(LATENCY_QUEUE_CAPACITY),
            latency_wanted: AtomicBool::new(false),
        })
    }
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
    backend: B,
    endpoint: Endpoint,
    app: Box<dyn Application<M>>,
    conns: Vec<Option<ConnState>>,
    /// Live connections (`Some` slots of `conns`), kept as they come and go: counting the slots
    /// on every change costs O(connections) per handshake.
    active: usize,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    dirty: Vec<usize>,
    received: Vec<(RecvMeta, BytesMut)>,
    /// A batch the kernel refused for back-pressure; sent before anything else.
    blocked: Option<OutBatch>,
    /// Datagrams other threads asked this core to send (`Node::send_datagram`) that arrived while
    /// the socket applied back-pressure: sent, in order, once it takes data again.
    deferred: std::collections::VecDeque<OutBatch>,
    /// Cores to wake after this turn's hand-offs (bit per core).
    wake_mask: Vec<bool>,
    response_buf: Vec<u8>,
    draining_since: Option<Instant>,
    /// New connections are refused (a successor takes them), live ones go on.
    refusing: bool,
    /// The socket is IPv6 (dual-stack): IPv4 peers are addressed as IPv4-mapped IPv6.
    ipv6_socket: bool,
    recorder: Recorder,
    /// Relay allocations this core forwards (bootstrap role).
    relays: ForwardingTable,
    /// Forwarded relay frames being gathered into one GSO send (same destination and size);
    /// sent once the received batch is handled.
    forwarding: Option<OutBatch>,
    next_relay_sweep: Instant,
    /// Routes of path aliases (peer role).
    paths: PathTable,
    /// Where control datagrams go; `None`: they are dropped.
    control: Option<Sender<ControlDatagram>>,
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
        ipv6_socket: bool,
        control: Option<Sender<ControlDatagram>>,
    ) -> Option<Self> {
        let shared = Arc::clone(all.get(index)?);
        let cores = all.len();
        Some(Self {
            index,
            shared,
            inbox,
            all,
            cid_key,
            generation,
            backend,
            endpoint,
            app,
            conns: Vec::new(),
            active: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            received: Vec::new(),
            blocked: None,
            deferred: std::collections::VecDeque::new(),
            wake_mask: vec![false; cores],
            response_buf: Vec::new(),
            draining_since: None,
            refusing: false,
            ipv6_socket,
            recorder: Recorder::new(),
            relays: ForwardingTable::new(),
            forwarding: None,
            next_relay_sweep: Instant::now(),
            paths: PathTable::new(),
            control,
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
            self.sweep_relays(now);
            self.take_handoffs(now);
            self.receive(now)?;
            self.fire_timers(now);
            self.drive_dirty(now);
            self.wake_peers();

            if let Some(since) = self.draining_since {
                if self.active == 0 || now.duration_since(since) > DRAIN_LIMIT {
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
                Command::Shutdown => self.start_draining(now),
                Command::SetAccepting(accepting) => self.refusing = !accepting,
                Command::SetServerConfig(config) => self.endpoint.set_server_config(config),
                Command::Stall(duration) => {
                    tracing::warn!(core = self.index, ?duration, "core stalled on request (test hook)");
                    std::thread::sleep(duration);
                }
                Command::InstallRelay(allocation) => {
                    self.relays.install(allocation, now);
                    self.publish_relays();
                }
                Command::RemoveRelay(channel) => {
                    self.relays.remove(channel);
                    self.publish_relays();
                }
                Command::SetPath(alias, route) => {
                    if !self.paths.set(alias, route) {
                        tracing::warn!(core = self.index, %alias, ?route, "path alias refused");
                    }
                }
                Command::SendDatagram(destination, payload) => {
                    let batch =
                        OutBatch { destination, ecn: None, src_ip: None, segment_size: payload.len(), buf: payload };
                    if self.blocked.is_some() || !self.deferred.is_empty() {
                        // Bursts (hundreds of probes at once) exceed the backend's send slots:
                        // keep them for the next turns rather than drop them.
                        if self.deferred.len() < DEFERRED_CAPACITY {
                            self.deferred.push_back(batch);
                        } else {
                            bump(&self.shared.stats.send_datagrams_dropped, 1);
                        }
                        continue;
                    }
                    transmit_out(
                        &mut self.backend,
                        &mut self.blocked,
                        &self.paths,
                        &self.shared.stats,
                        self.ipv6_socket,
                        batch,
                    );
                }
            }
        }
    }

    fn sweep_relays(&mut self, now: Instant) {
        if now < self.next_relay_sweep || self.relays.is_empty() {
            return;
        }
        self.next_relay_sweep = now + RELAY_SWEEP_INTERVAL;
        if self.relays.purge_expired(now) > 0 {
            self.publish_relays();
        }
    }

    fn publish_relays(&self) {
        self.shared.stats.relay_allocations.store(self.relays.len() as u64, Ordering::Relaxed);
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
            if slot.is_none() {
                self.active += 1;
            }
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
        self.flush_forwarding();
        Ok(())
    }

    /// Sort a received datagram by its first byte (`docs/nat-traversal.md`, "Datagrams on the
    /// node socket"): QUIC, relay frame, control datagram, or neither.
    fn handle_datagram(&mut self, now: Instant, mut meta: RecvMeta, data: BytesMut) {
        match classify(&data) {
            DatagramKind::Quic => {
                if !self.paths.is_empty() {
                    // The direct path of an alias: the connection knows the peer by its alias.
                    if let Some(alias) = self.paths.alias_for_direct(meta.remote) {
                        bump(&self.shared.stats.alias_received_direct, 1);
                        meta.remote = alias;
                    }
                }
                self.handle_quic(now, meta, data);
            }
            DatagramKind::Relay => self.handle_relay(now, meta, data),
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
        let mut buf = self.backend.take_buffer();
        buf.extend_from_slice(&answer);
        let batch =
            OutBatch { destination: meta.remote, ecn: None, src_ip: meta.local_ip, segment_size: buf.len(), buf };
        send_raw(&mut self.backend, &mut self.blocked, self.ipv6_socket, batch);
    }

    /// A relay frame: from the relay of one of our aliases (peer role), or to forward between the
    /// ends of an allocation (bootstrap role).
    fn handle_relay(&mut self, now: Instant, meta: RecvMeta, mut data: BytesMut) {
        let Ok(channel) = RelayFrame::new_checked(&data[..]).map(|frame| frame.channel()) else {
            self.shared.stats.relay_drop(RelayDrop::Malformed);
            return;
        };
        if let Some(alias) = self.paths.alias_for_relay(meta.remote, channel) {
            bump(&self.shared.stats.alias_received_relay, 1);
            data.advance(RELAY_HEADER_LEN);
            let meta = RecvMeta { remote: alias, len: data.len(), stride: data.len(), ..meta };
            // One level only: a relay frame inside a relay frame is not unwrapped again.
            match classify(&data) {
                DatagramKind::Quic => self.handle_quic(now, meta, data),
                DatagramKind::Control => self.deliver_control(alias, data),
                DatagramKind::Relay | DatagramKind::Probe | DatagramKind::NotQuic => {
                    self.shared.stats.drop_datagram(DropReason::NotQuic);
                }
            }
            return;
        }
        match self.relays.forward(now, meta.remote, channel, data.len()) {
            // Forwarded unchanged, from the local address it arrived on, with its ECN codepoint
            // (as a TURN relay does, RFC 8656 §12), so congestion marks reach the peer.
            Ok(destination) => self.forward(destination, meta.ecn, meta.local_ip, &data),
            // The high half of a channel names the generation that allocated it (0: none).
            Err(RelayDrop::UnknownChannel) if ![0, self.generation].contains(&((channel >> 16) as Generation)) => {
                bump(&self.shared.stats.foreign_generation, 1)
            }
            Err(reason) => self.shared.stats.relay_drop(reason),
        }
    }

    /// Queue a frame to forward. A peer's frames come in bursts of equal size (full packets), so
    /// consecutive frames to one destination share a GSO send, as the core's own transmits do:
    /// one send per burst rather than per frame keeps the backend's send slots free.
    fn forward(&mut self, destination: SocketAddr, ecn: Option<EcnCodepoint>, src_ip: Option<IpAddr>, frame: &[u8]) {
        let max_segments = self.backend.max_gso_segments();
        if let Some(batch) = &mut self.forwarding {
            let joins = batch.destination == destination
                && batch.ecn == ecn
                && batch.src_ip == src_ip
                && frame.len() <= batch.segment_size
                // Only the last segment may be shorter: the batch must end on a full one.
                && batch.buf.len() % batch.segment_size.max(1) == 0
                && batch.segments() < max_segments
                && batch.buf.len() + frame.len() <= MAX_GSO_BYTES;
            if joins {
                batch.buf.extend_from_slice(frame);
                return;
            }
        }
        self.flush_forwarding();
        let mut buf = self.backend.take_buffer();
        buf.extend_from_slice(frame);
        self.forwarding = Some(OutBatch { destination, ecn, src_ip, segment_size: frame.len(), buf });
    }

    fn flush_forwarding(&mut self) {
        let Some(batch) = self.forwarding.take() else { return };
        let (frames, bytes) = (batch.segments() as u64, batch.buf.len() as u64);
        let stats = &self.shared.stats;
        if self.blocked.is_some() {
            if let Some(counter) = stats.relay_drops.get(RelayDrop::SendBlocked.index()) {
                bump(counter, frames);
            }
            return;
        }
        // Counted before the send, so a reader who saw the datagram arrive also sees the count.
        bump(&stats.relay_forwarded, frames);
        bump(&stats.relay_forwarded_bytes, bytes);
        send_raw(&mut self.backend, &mut self.blocked, self.ipv6_socket, batch);
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
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.draining_since.is_some() || self.refusing {
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
        let batch = to_batch(transmit, out);
        // Endpoint responses under back-pressure are dropped: the peer retransmits.
        transmit_out(&mut self.backend, &mut self.blocked, &self.paths, &self.shared.stats, self.ipv6_socket, batch);
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
        while self.blocked.is_none() {
            let Some(batch) = self.deferred.pop_front() else { break };
            transmit_out(
                &mut self.backend,
                &mut self.blocked,
                &self.paths,
                &self.shared.stats,
                self.ipv6_socket,
                batch,
            );
        }
        if self.blocked.is_some() {
            return;
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
        // A relayed datagram grows by the relay header: leave room for it in every segment.
        let overhead = if is_alias(&state.conn.remote_address()) { RELAY_HEADER_LEN } else { 0 };
        let mtu = usize::from(state.conn.current_mtu()).max(1);
        let max_segments = self.backend.max_gso_segments().min(MAX_GSO_BYTES / (mtu + overhead)).max(1);
        let mut budget = TRANSMIT_BUDGET;
        loop {
            if self.blocked.is_some() || budget == 0 {
                // More may be waiting: come back next turn.
                state.dirty = true;
                self.dirty.push(index);
                break;
            }
            let mut buf = self.backend.take_buffer();
            if overhead > 0 {
                // Room for the relay headers too, so framing in place never reallocates (a no-op
                // once recycled buffers have grown).
                buf.reserve(max_segments * (mtu + overhead));
            }
            let Some(transmit) = state.conn.poll_transmit(now, max_segments, &mut buf) else { break };
            buf.truncate(transmit.size);
            let batch = to_batch(&transmit, buf);
            transmit_out(
                &mut self.backend,
                &mut self.blocked,
                &self.paths,
                &self.shared.stats,
                self.ipv6_socket,
                batch,
            );
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
                if slot.take().is_some() {
                    self.active = self.active.saturating_sub(1);
                }
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

/// A batch for `transmit`, still addressed as quinn-proto addressed it (perhaps to an alias).
fn to_batch(transmit: &Transmit, buf: Vec<u8>) -> OutBatch {
    OutBatch {
        destination: transmit.destination,
        ecn: transmit.ecn,
        src_ip: transmit.src_ip,
        segment_size: transmit.segment_size.unwrap_or(transmit.size),
        buf,
    }
}

/// Send a batch addressed as quinn-proto (or the control thread) addressed it: a path alias goes
/// by its route, through the relay or direct. Returns false when the batch was dropped (no route
/// for the alias, or the socket is applying back-pressure to an earlier batch).
fn transmit_out<B: Backend>(
    backend: &mut B,
    blocked: &mut Option<OutBatch>,
    paths: &PathTable,
    stats: &CoreStats,
    ipv6_socket: bool,
    mut batch: OutBatch,
) -> bool {
    if is_alias(&batch.destination) {
        let segments = batch.segments() as u64;
        match paths.route(&normalize(batch.destination)) {
            None => {
                bump(&stats.alias_dropped_no_route, segments);
                return false;
            }
            Some(PathRoute::Direct(to)) => {
                bump(&stats.alias_sent_direct, segments);
                batch.destination = to;
            }
            Some(PathRoute::Relay { relay, channel }) => {
                bump(&stats.alias_sent_relay, segments);
                return send_relayed(backend, blocked, ipv6_socket, batch, relay, channel);
            }
        }
    }
    send_raw(backend, blocked, ipv6_socket, batch)
}

/// Send a batch in relay frames to `relay`: a header in front of every segment, and no more
/// segments per send than fit the kernel's 64 KiB GSO limit once they have grown.
fn send_relayed<B: Backend>(
    backend: &mut B,
    blocked: &mut Option<OutBatch>,
    ipv6_socket: bool,
    mut batch: OutBatch,
    relay: SocketAddr,
    channel: u32,
) -> bool {
    let (ecn, src_ip) = (batch.ecn, batch.src_ip);
    let segment = if batch.segment_size == 0 { batch.buf.len().max(1) } else { batch.segment_size };
    // The core sizes its batches to leave room for the headers; this only splits batches built
    // for a larger segment than the path's (never seen), rather than have the kernel refuse them.
    let per_send = (MAX_GSO_BYTES / (segment + RELAY_HEADER_LEN)).max(1) * segment;
    let mut all_sent = true;
    loop {
        let rest = (batch.buf.len() > per_send).then(|| {
            let mut rest = backend.take_buffer();
            rest.extend_from_slice(batch.buf.get(per_send..).unwrap_or_default());
            batch.buf.truncate(per_send);
            rest
        });
        let segment_size = frame_segments(&mut batch.buf, segment, channel);
        all_sent &= send_raw(
            backend,
            blocked,
            ipv6_socket,
            OutBatch { destination: relay, ecn, src_ip, segment_size, buf: batch.buf },
        );
        match rest {
            Some(buf) => batch = OutBatch { destination: relay, ecn, src_ip, segment_size: segment, buf },
            None => return all_sent,
        }
    }
}

/// Hand a batch to the backend as it is (its destination made IPv4-mapped on a dual-stack
/// socket). A batch refused for back-pressure is kept and sent first next turn; while one is
/// kept, others are dropped (UDP: QUIC retransmits). Returns false when dropped.
fn send_raw<B: Backend>(
    backend: &mut B,
    blocked: &mut Option<OutBatch>,
    ipv6_socket: bool,
    mut batch: OutBatch,
) -> bool {
    if blocked.is_some() {
        return false;
    }
    if let SocketAddr::V4(v4) = batch.destination {
        if ipv6_socket {
            batch.destination = SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port());
        }
    }
    if let Err(SendRefused::WouldBlock(batch)) = backend.send(batch) {
        *blocked = Some(batch);
    }
    true
}
