//! Starting, addressing and stopping the cores of a node.
//!
//! Three handles, each adding to the one below it through `Deref`, so every operation has one
//! implementation: [`NodeHandle`] (counters, wake-ups, connections, relays, paths, datagrams: what
//! any thread may touch, whatever the application), [`Messenger`] (also delivers the
//! application's messages of type `M`), and [`Node`] (also owns the threads: `shutdown`, `join`).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use quinn_proto::{Endpoint, EndpointConfig, ServerConfig};

use crate::admission::AdmissionConfig;
use crate::app::AppFactory;
use crate::backend::portable::PortableBackend;
use crate::backend::{Backend, BackendKind, BackendParams};
use crate::cid::{configure_core_endpoint, CidKey, Generation};
use crate::connection::ConnectRequest;
use crate::core_loop::{Command, CommandQueue, Core, CoreInput, CoreOptions, CoreShared, Inbox, Stop, QUEUE_CAPACITY};
use crate::datagram::ControlDatagram;
use crate::latency::LatencySet;
use crate::relay::{is_alias, PathRoute, RelayAllocation};
use crate::socket::{bind_reuseport_group, join_reuseport_group, steer_group, steer_group_to};
use crate::stats::{CoreStats, CoreStatus};
use crate::steering::SteeringTable;
use crate::sys::thread::{allowed_cpus, pin_current_thread};

/// Most cores one node runs: the owning core is one byte of each connection ID.
pub const MAX_CORES: usize = 256;

/// How a node's data plane is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// UDP address every core binds (with `SO_REUSEPORT`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of cores; `None`: one per CPU this process may run on.
    pub cores: Option<usize>,
    /// Backend to use; `None`: io_uring when the kernel allows it, else portable.
    pub backend: Option<BackendKind>,
    /// Pin each core's thread to its own CPU.
    pub pin_threads: bool,
    /// CPUs to pin cores to, in order; `None`: the CPUs this process may run on.
    pub cpus: Option<Vec<usize>>,
    /// Endpoint settings; the connection ID generator is replaced by the per-core one.
    pub endpoint: EndpointConfig,
    /// Accept incoming connections with these settings; `None`: client only.
    pub server: Option<Arc<ServerConfig>>,
    /// Steer every received datagram to this core's socket (a reuseport BPF program), so that
    /// datagrams for connections owned by other cores take the hand-off path. For tests.
    #[doc(hidden)]
    pub steer_all_to_core: Option<usize>,
    /// With more than one core, have the kernel deliver each datagram to the socket of the core
    /// that owns its connection, read from the destination connection ID (a reuseport BPF
    /// program, [`crate::steering`]); otherwise the kernel hashes the 4-tuple and a datagram
    /// for another core's connection is handed over through a queue. On by default; off to
    /// compare the two.
    pub cid_steering: bool,
    /// Where the cores pass the control datagrams they receive (first byte 0x21: NAT traversal
    /// probes). A core never waits: when the channel is full, or this is `None`, the datagram is
    /// dropped and counted.
    pub control_datagrams: Option<crossbeam_channel::Sender<ControlDatagram>>,
    /// This process's generation, carried in its connection IDs (`crate::cid`); 1 unless it takes
    /// the port over from a predecessor.
    pub generation: Generation,
    /// The key behind the connection IDs' check; `None`: a fresh one. A process taking the port
    /// over uses its predecessor's.
    pub cid_key: Option<CidKey>,
    /// Join the reuseport group already on `listen` (a takeover) instead of refusing a port in use;
    /// no steering program is attached: the caller steers with [`NodeHandle::steer`] once it knows
    /// the group's layout.
    pub join_group: bool,
    /// Which connection attempts each core takes on: Retry, the half-open cap, the handshake
    /// timeout ([`crate::admission`]).
    pub admission: AdmissionConfig,
    /// With the af-xdp backend: the interface to attach the XDP program to; `None`: the one that
    /// holds the listen address (which must then be a specific address).
    pub xdp_interface: Option<String>,
    /// With the af-xdp backend: established relay channels are forwarded by the XDP program
    /// (`crate::relay::offload`); `false`: every relay frame goes through a core.
    pub xdp_relay: bool,
}

impl NodeConfig {
    /// Defaults for `listen`: every CPU, automatic backend, pinned threads, the server role when
    /// `server` is given, and quinn-proto's default endpoint settings.
    #[cfg(any(feature = "aws-lc-rs", feature = "rustls-ring"))]
    pub fn new(listen: SocketAddr, server: Option<Arc<ServerConfig>>) -> Self {
        Self::with_endpoint(listen, EndpointConfig::default(), server)
    }

    /// Like `new`, with explicit endpoint settings (no crypto provider needed to build it).
    pub fn with_endpoint(listen: SocketAddr, endpoint: EndpointConfig, server: Option<Arc<ServerConfig>>) -> Self {
        Self {
            listen,
            cores: None,
            backend: None,
            pin_threads: true,
            cpus: None,
            endpoint,
            server,
            steer_all_to_core: None,
            cid_steering: true,
            control_datagrams: None,
            generation: 1,
            cid_key: None,
            join_group: false,
            admission: AdmissionConfig::DEFAULT,
            xdp_interface: None,
            xdp_relay: true,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The requested backend cannot run here.
    #[error("backend {kind} unavailable: {reason}; use --backend portable or fix the cause")]
    BackendUnavailable {
        /// The backend asked for.
        kind: BackendKind,
        /// Why it cannot run.
        reason: String,
    },
    /// More cores than connection IDs can name, or zero.
    #[error("cannot run {0} cores: choose between 1 and {MAX_CORES}")]
    Cores(usize),
    /// Threads, eventfds or queues could not be created.
    #[error("cannot start core: {0}")]
    Core(String),
}

/// Why a request to a running node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No core has that index.
    #[error("no core {0}")]
    NoSuchCore(usize),
    /// The core's command queue is full; retry later.
    #[error("core {0} is busy: its command queue is full")]
    Busy(usize),
    /// A path alias request that cannot be carried out.
    #[error("path alias {alias}: {reason}")]
    InvalidPath {
        /// The alias asked for.
        alias: SocketAddr,
        /// What is wrong.
        reason: &'static str,
    },
    /// A core thread ended with an error or panicked.
    #[error("core {core} failed: {reason}")]
    CoreFailed {
        /// The core.
        core: usize,
        /// What happened.
        reason: String,
    },
}

/// A running node: its cores' threads, and (through `Deref` to its [`Messenger`] and
/// [`NodeHandle`]) every way to reach them. `M` is the type of the applications' messages.
pub struct Node<M = ()> {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    messenger: Messenger<M>,
    /// Held here so that the duplicate closes with the node, not with the last handle.
    _group_socket: Option<Arc<GroupSocket>>,
    /// The XDP program of the af-xdp backend: detached when the node drops (or the process dies).
    #[cfg(target_os = "linux")]
    xdp: Option<crate::xdp::Redirect>,
}

impl<M> std::fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("handle", &self.messenger.handle).finish_non_exhaustive()
    }
}

impl<M> Deref for Node<M> {
    type Target = Messenger<M>;

    fn deref(&self) -> &Messenger<M> {
        &self.messenger
    }
}

/// A duplicate of one of the node's sockets, through which a steering program is attached to the
/// whole reuseport group.
#[derive(Debug)]
struct GroupSocket(std::net::UdpSocket);

impl<M: Send + 'static> Node<M> {
    /// Bind the sockets and start one thread per core, each with an application from `apps`.
    pub fn start(config: NodeConfig, apps: Arc<dyn AppFactory<M>>) -> Result<Self, StartError> {
        let cpus = config.cpus.clone().filter(|c| !c.is_empty()).unwrap_or_else(allowed_cpus);
        let count = config.cores.unwrap_or(cpus.len());
        if count == 0 || count > MAX_CORES {
            return Err(StartError::Cores(count));
        }
        let kind = choose_backend(config.backend)?;

        let generation = config.generation;
        let bound = if config.join_group {
            join_reuseport_group(config.listen, count)
        } else {
            bind_reuseport_group(config.listen, count)
        };
        let sockets = bound.map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .ok_or_else(|| StartError::Core("no socket bound".into()))?;
        let group_socket = sockets
            .first()
            .map(|first| first.try_clone().map(|s| Arc::new(GroupSocket(s))))
            .transpose()
            .map_err(|source| StartError::Bind { addr: local_addr, source })?;
        if let (Some(core), Some(first)) = (config.steer_all_to_core, sockets.first()) {
            let index = u32::try_from(core).map_err(|_| StartError::Cores(core))?;
            steer_group_to(first, index).map_err(|source| StartError::Bind { addr: local_addr, source })?;
        } else if let (true, false, Some(first)) = (config.cid_steering, config.join_group, sockets.first()) {
            if count > 1 {
                match steer_group(first, &SteeringTable::single(generation, count)) {
                    Ok(()) => tracing::debug!(cores = count, "datagrams steered to cores by connection ID"),
                    // The hand-off path keeps every datagram correct without it, at a cost.
                    Err(error) => tracing::warn!(
                        %error,
                        "cannot attach the CID steering program; the kernel hashes datagrams to cores"
                    ),
                }
            }
        }

        #[cfg(target_os = "linux")]
        let (xdp, mut xdp_cores) = if kind == BackendKind::AfXdp {
            let (redirect, cores) = crate::backend::xdp_attach::attach(
                local_addr,
                config.xdp_interface.as_deref(),
                count,
                config.xdp_relay,
            )
            .map_err(|reason| StartError::BackendUnavailable { kind, reason })?;
            (Some(redirect), cores.into_iter().map(Some).collect())
        } else {
            (None, Vec::new())
        };

        let inboxes: Arc<[Arc<Inbox<M>>]> = (0..count).map(|_| Arc::new(Inbox::new(QUEUE_CAPACITY))).collect();
        let shared: Vec<Arc<CoreShared>> = inboxes
            .iter()
            .map(|inbox| CoreShared::new(Arc::clone(inbox) as Arc<dyn CommandQueue>).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::Core(e.to_string()))?;
        let all: Arc<[Arc<CoreShared>]> = shared.into();
        let cid_key = config.cid_key.clone().unwrap_or_else(CidKey::random);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();

        let mut threads = Vec::with_capacity(count);
        for (index, socket) in sockets.into_iter().enumerate() {
            let all = Arc::clone(&all);
            let inbox = inboxes.get(index).cloned().ok_or(StartError::Cores(count))?;
            let apps = Arc::clone(&apps);
            let cid_key = cid_key.clone();
            let ready = ready_tx.clone();
            let mut endpoint_config = config.endpoint.clone();
            let server = config.server.clone();
            let control = config.control_datagrams.clone();
            let admission = config.admission.clone();
            let automatic = config.backend.is_none();
            let cpu = config.pin_threads.then(|| cpus.get(index % cpus.len()).copied()).flatten();
            let core_byte = u8::try_from(index).map_err(|_| StartError::Cores(count))?;
            let stats = all.get(index).map(|c| Arc::clone(&c.stats)).unwrap_or_default();
            #[cfg(target_os = "linux")]
            let xdp_core = xdp_cores.get_mut(index).and_then(Option::take);
            let thread = std::thread::Builder::new()
                .name(format!("ant-quic-core-{index}"))
                .spawn(move || {
                    // A panic on a core is caught here and reported (status, log, join), never silent.
                    let run = std::panic::AssertUnwindSafe(move || -> std::io::Result<()> {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_current_thread(cpu) {
                            tracing::warn!(core = index, cpu, error = %e, "cannot pin core thread; running unpinned");
                        }
                    }
                    configure_core_endpoint(&mut endpoint_config, core_byte, generation, &cid_key);
                    let endpoint = Endpoint::new(Arc::new(endpoint_config), server, true, None);
                    let app = apps.create(index);
                    let Some(shared) = all.get(index).cloned() else { return Ok(()) };
                    let options = CoreOptions { ipv6_socket: local_addr.is_ipv6(), control, admission };
                    let params = BackendParams { socket, wake_fd: shared.waker.fd(), stats: &shared.stats };
                    match kind {
                        BackendKind::Portable => match PortableBackend::open(params) {
                            Ok(backend) => run_core(index, (all, inbox), (cid_key, generation), backend, endpoint, app, options, &ready),
                            Err(e) => fail(&ready, StartError::Core(format!("core {index}: {e}"))),
                        },
                        #[cfg(target_os = "linux")]
                        BackendKind::IoUring => match crate::backend::uring::UringBackend::open(params) {
                            Ok(backend) => run_core(index, (all, inbox), (cid_key, generation), backend, endpoint, app, options, &ready),
                            Err(mut error) => match error.take_socket() {
                                // Chosen automatically: this core falls back rather than fail.
                                Some(socket) if automatic => {
                                    tracing::warn!(core = index, %error, "io_uring failed on this core; using the portable backend");
                                    let params = BackendParams { socket, wake_fd: shared.waker.fd(), stats: &shared.stats };
                                    match PortableBackend::open(params) {
                                        Ok(backend) => {
                                            run_core(index, (all, inbox), (cid_key, generation), backend, endpoint, app, options, &ready)
                                        }
                                        Err(e) => fail(&ready, StartError::Core(format!("core {index}: {e}"))),
                                    }
                                }
                                _ => fail(&ready, StartError::BackendUnavailable { kind, reason: error.to_string() }),
                            },
                        },
                        #[cfg(target_os = "linux")]
                        BackendKind::AfXdp => match xdp_core.map(|x| crate::backend::xdp::XdpBackend::open(params, x)) {
                            Some(Ok(backend)) => run_core(index, (all, inbox), (cid_key, generation), backend, endpoint, app, options, &ready),
                            Some(Err(e)) => fail(&ready, StartError::Core(format!("core {index}: {e}"))),
                            None => fail(&ready, StartError::Core(format!("core {index} has no AF_XDP socket"))),
                        },
                        #[cfg(not(target_os = "linux"))]
                        BackendKind::AfXdp => fail(
                            &ready,
                            StartError::BackendUnavailable { kind, reason: "AF_XDP needs Linux".into() },
                        ),
                        #[cfg(not(target_os = "linux"))]
                        BackendKind::IoUring => fail(
                            &ready,
                            StartError::BackendUnavailable { kind, reason: "io_uring needs Linux".into() },
                        ),
                    }
                    });
                    let outcome = match std::panic::catch_unwind(run) {
                        Ok(outcome) => outcome,
                        Err(panic) => Err(std::io::Error::other(panic_message(panic.as_ref()))),
                    };
                    match &outcome {
                        Ok(()) => stats.set_status(CoreStatus::Stopped),
                        Err(error) => {
                            tracing::error!(core = index, %error, "core failed");
                            let _ = stats.failure.set(error.to_string());
                            stats.set_status(CoreStatus::Failed);
                        }
                    }
                    outcome
                })
                .map_err(|e| StartError::Core(e.to_string()))?;
            threads.push(thread);
        }
        drop(ready_tx);

        let handle = NodeHandle {
            cores: all,
            backend: kind,
            local_addr,
            next_core: Arc::new(AtomicUsize::new(0)),
            next_connect_core: Arc::new(AtomicUsize::new(0)),
            generation,
            cid_key,
            group_socket: group_socket.as_ref().map(Arc::downgrade),
            #[cfg(target_os = "linux")]
            xdp_program: xdp.as_ref().map(crate::xdp::Redirect::counters),
        };
        let node = Self {
            threads,
            messenger: Messenger { handle, inboxes },
            _group_socket: group_socket,
            #[cfg(target_os = "linux")]
            xdp,
        };
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    node.shutdown();
                    let _ = node.join();
                    return Err(error);
                }
                Err(_) => {
                    node.shutdown();
                    let _ = node.join();
                    return Err(StartError::Core("a core thread exited during start".into()));
                }
            }
        }
        Ok(node)
    }
}

impl<M> Node<M> {
    /// The XDP program of the af-xdp backend (its counters and relay channel map); `None` with
    /// other backends.
    #[cfg(target_os = "linux")]
    pub fn xdp(&self) -> Option<&crate::xdp::Redirect> {
        self.xdp.as_ref()
    }

    /// Each core's counters, by core index; they outlive the node.
    pub fn stats(&self) -> Vec<Arc<CoreStats>> {
        self.messenger.handle.cores.iter().map(|c| Arc::clone(&c.stats)).collect()
    }

    /// A cheap, cloneable handle for other threads that send no messages: counters, latency
    /// histograms, wake-ups, connections, relay and path commands, datagrams to send. It outlives
    /// nothing: it only keeps the shared state alive.
    pub fn handle(&self) -> NodeHandle {
        self.messenger.handle.clone()
    }

    /// A cheap, cloneable handle that also delivers messages to the cores' applications.
    pub fn messenger(&self) -> Messenger<M> {
        self.messenger.clone()
    }

    /// Ask every core to close its connections (CONNECTION_CLOSE is sent) and stop once they have
    /// drained: each connection's closing period (three PTOs) is waited out, at most 2 s, so that a
    /// peer whose CONNECTION_CLOSE was lost gets it again. What a server does.
    pub fn shutdown(&self) {
        self.stop(Stop::Drain);
    }

    /// Ask every core to close its connections and stop as soon as the CONNECTION_CLOSE packets
    /// are with the kernel, without waiting out closing periods. What a client program that exits
    /// next does (`ant-quic get`): a peer that missed the close ends the connection on its idle
    /// timeout instead. After [`Node::shutdown`], it cuts the drain short.
    pub fn shutdown_now(&self) {
        self.stop(Stop::Immediate);
    }

    fn stop(&self, stop: Stop) {
        for (core, shared) in self.messenger.handle.cores.iter().enumerate() {
            // A full queue is drained soon; keep trying briefly rather than lose the request.
            for _ in 0..1000 {
                if shared.commands.push_command(Command::Shutdown(stop)) {
                    break;
                }
                shared.waker.wake();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            shared.waker.wake();
            tracing::debug!(core, ?stop, "shutdown requested");
        }
    }

    /// Wait for every core to stop.
    pub fn join(self) -> Result<(), NodeError> {
        let mut result = Ok(());
        for (core, thread) in self.threads.into_iter().enumerate() {
            let outcome = match thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => panic_message(panic.as_ref()),
            };
            tracing::error!(core, reason = %outcome, "core failed");
            if result.is_ok() {
                result = Err(NodeError::CoreFailed { core, reason: outcome });
            }
        }
        result
    }
}

/// A [`NodeHandle`] that also delivers messages of type `M` to the cores' applications
/// ([`crate::Application::on_message`]). Cheap to clone.
pub struct Messenger<M> {
    handle: NodeHandle,
    /// Each core's input queue, typed; the same queues as `handle`'s.
    inboxes: Arc<[Arc<Inbox<M>>]>,
}

impl<M> Clone for Messenger<M> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone(), inboxes: Arc::clone(&self.inboxes) }
    }
}

impl<M> std::fmt::Debug for Messenger<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl<M> Deref for Messenger<M> {
    type Target = NodeHandle;

    fn deref(&self) -> &NodeHandle {
        &self.handle
    }
}

impl<M> Messenger<M> {
    /// Deliver `message` to the application of `core`, in order with the commands sent to it.
    pub fn send_message(&self, core: usize, message: M) -> Result<(), NodeError> {
        let (inbox, shared) =
            self.inboxes.get(core).zip(self.handle.cores.get(core)).ok_or(NodeError::NoSuchCore(core))?;
        inbox.push(CoreInput::Message(message)).map_err(|_| NodeError::Busy(core))?;
        shared.waker.notify();
        Ok(())
    }
}

/// What any thread may touch of a running node, whatever its application; never makes a core
/// wait.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    cores: Arc<[Arc<CoreShared>]>,
    backend: BackendKind,
    local_addr: SocketAddr,
    /// The core that sends the next datagram (in turn).
    next_core: Arc<AtomicUsize>,
    /// The core that opens the next connection not given one (in turn).
    next_connect_core: Arc<AtomicUsize>,
    generation: Generation,
    cid_key: CidKey,
    group_socket: Option<std::sync::Weak<GroupSocket>>,
    /// The af-xdp backend's XDP program counters.
    #[cfg(target_os = "linux")]
    xdp_program: Option<crate::xdp::ProgramCounters>,
}

fn push_command(cores: &[Arc<CoreShared>], core: usize, command: Command) -> Result<(), NodeError> {
    let shared = cores.get(core).ok_or(NodeError::NoSuchCore(core))?;
    if !shared.commands.push_command(command) {
        return Err(NodeError::Busy(core));
    }
    shared.waker.notify();
    Ok(())
}

impl NodeHandle {
    /// How many cores run.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The backend every core runs.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// With the af-xdp backend, the XDP program's frame counters by verdict
    /// ([`crate::xdp::Counter::verdict`]), summed over CPUs; empty otherwise. A counter the
    /// kernel cannot read is left out.
    pub fn xdp_program_frames(&self) -> Vec<(&'static str, u64)> {
        #[cfg(target_os = "linux")]
        if let Some(counters) = &self.xdp_program {
            let read = |c: crate::xdp::Counter| Some((c.verdict(), counters.count(c).ok()?));
            return crate::xdp::Counter::ALL.into_iter().filter_map(read).collect();
        }
        Vec::new()
    }

    /// Counters of `core`.
    pub fn stats(&self, core: usize) -> Option<&CoreStats> {
        self.cores.get(core).map(|c| &*c.stats)
    }

    /// Counters of every core, by index.
    pub fn all_stats(&self) -> impl Iterator<Item = &CoreStats> {
        self.cores.iter().map(|c| &*c.stats)
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This process's generation (`crate::cid`).
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The key behind the connection IDs' check, for a successor.
    pub fn cid_key(&self) -> &CidKey {
        &self.cid_key
    }

    /// Connections open on every core.
    pub fn active_connections(&self) -> u64 {
        self.cores.iter().map(|c| crate::stats::read(&c.stats.connections_active)).sum()
    }

    /// Relay allocations forwarded (the largest count on any core: each core has them all).
    pub fn relay_allocations(&self) -> u64 {
        self.cores.iter().map(|c| crate::stats::read(&c.stats.relay_allocations)).max().unwrap_or(0)
    }

    /// Attach the steering program for `table` to the reuseport group (replacing the one there,
    /// whichever process attached it).
    pub fn steer(&self, table: &SteeringTable) -> std::io::Result<()> {
        match self.group_socket.as_ref().and_then(std::sync::Weak::upgrade) {
            Some(socket) => steer_group(&socket.0, table),
            None => Err(std::io::Error::other("the node has stopped")),
        }
    }

    /// Open a connection from `core` (or the next core in turn). The outcome arrives at that
    /// core's application: `on_connected`, `on_closed` or `on_connect_failed`, with `request.tag`.
    pub fn connect(&self, request: ConnectRequest, core: Option<usize>) -> Result<usize, NodeError> {
        let core =
            core.unwrap_or_else(|| self.next_connect_core.fetch_add(1, Ordering::Relaxed) % self.cores.len().max(1));
        push_command(&self.cores, core, Command::Connect(Box::new(request)))?;
        Ok(core)
    }

    /// Accept new connections with `config` on every core (for a certificate reload); live
    /// connections keep the settings they were accepted with.
    pub fn set_server_config(&self, config: Arc<ServerConfig>) -> Result<(), NodeError> {
        self.broadcast(|| Command::SetServerConfig(Some(Arc::clone(&config))))
    }

    /// A successor on the same port takes new connections from now on (`true`), live ones going
    /// on here: an attempt whose ID names this process is refused (CONNECTION_REFUSED), any other
    /// is dropped without state (a steering table not yet updated sent it; the client's
    /// retransmission reaches the successor). `false`: this process takes new connections again.
    pub fn set_handed_over(&self, handed_over: bool) -> Result<(), NodeError> {
        self.broadcast(|| Command::SetHandedOver(handed_over))
    }

    /// Test hook: make `core` block its thread for `duration` (as a stuck core would), for
    /// liveness tests. Not for production use.
    #[doc(hidden)]
    pub fn stall_core(&self, core: usize, duration: Duration) -> Result<(), NodeError> {
        push_command(&self.cores, core, Command::Stall(duration))
    }

    /// Forward relay frames on `allocation` (bootstrap role): a frame on its channel from one
    /// end goes to the other, unchanged; anything else is dropped and counted. Installing a
    /// channel again renews it (new expiry and limits; bytes already carried still count when the
    /// ends are the same). Every core gets its own copy, since a frame may reach any core.
    ///
    /// On `Busy`, some cores may have it already; installing again is harmless.
    pub fn install_relay(&self, allocation: RelayAllocation) -> Result<(), NodeError> {
        self.broadcast(|| Command::InstallRelay(allocation))
    }

    /// Stop forwarding relay frames on `channel`, on every core. On `Busy`, retry.
    pub fn remove_relay(&self, channel: u32) -> Result<(), NodeError> {
        self.broadcast(|| Command::RemoveRelay(channel))
    }

    /// Route the path alias `alias` (240.0.0.0/4, see [`is_alias`]) over `route`, or forget it
    /// (`None`), on every core (peer role). A connection opened to the alias keeps its address
    /// whatever the route: moving the route from the relay to a direct path keeps the connection,
    /// and frames still arriving through the relay are accepted after the move.
    ///
    /// Refused with `InvalidPath` when `alias` is not an alias or the route leads to one. On
    /// `Busy`, some cores may have the new route already; setting it again is harmless.
    pub fn set_path(&self, alias: SocketAddr, route: Option<PathRoute>) -> Result<(), NodeError> {
        if !is_alias(&alias) {
            return Err(NodeError::InvalidPath { alias, reason: "not in 240.0.0.0/4" });
        }
        let target = match route {
            Some(PathRoute::Relay { relay, .. }) => Some(relay),
            Some(PathRoute::Direct(to)) => Some(to),
            None => None,
        };
        if target.is_some_and(|t| is_alias(&t)) {
            return Err(NodeError::InvalidPath { alias, reason: "the route leads to another alias" });
        }
        self.broadcast(|| Command::SetPath(alias, route))
    }

    /// Send `payload` as one UDP datagram from the node's socket (the address peers and NATs
    /// know), by the next core in turn: they all share the port. To a path alias it goes by the
    /// alias's route. Dropped, like any UDP datagram, if the socket is congested.
    pub fn send_datagram(&self, destination: SocketAddr, payload: Vec<u8>) -> Result<(), NodeError> {
        let core = self.next_core.fetch_add(1, Ordering::Relaxed) % self.cores.len().max(1);
        push_command(&self.cores, core, Command::SendDatagram(destination, payload))
    }

    /// Queue a command on every core; stops at the first core whose queue is full.
    fn broadcast(&self, command: impl Fn() -> Command) -> Result<(), NodeError> {
        (0..self.cores.len()).try_for_each(|core| push_command(&self.cores, core, command()))
    }

    /// Wake `core` (its loop turns once even when idle): the liveness heartbeat.
    pub fn wake(&self, core: usize) {
        if let Some(shared) = self.cores.get(core) {
            shared.waker.wake();
        }
    }

    /// Ask every core to hand over its latency histograms at its next turn (and wake it).
    pub fn request_latency(&self) {
        for shared in self.cores.iter() {
            shared.latency_wanted.store(true, Ordering::Relaxed);
            shared.waker.wake();
        }
    }

    /// Take the latency histograms `core` handed over since the last call; each set, once
    /// `read` has seen it, is emptied and given back to the core for reuse.
    pub fn take_latency(&self, core: usize, mut read: impl FnMut(&LatencySet)) {
        if let Some(shared) = self.cores.get(core) {
            while let Some(mut set) = shared.latency.pop() {
                read(&set);
                set.reset();
                // A full spare queue just lets this one go.
                let _ = shared.latency_spare.push(set);
            }
        }
    }
}

fn choose_backend(requested: Option<BackendKind>) -> Result<BackendKind, StartError> {
    match (requested, crate::backend::io_uring_usable()) {
        (Some(BackendKind::IoUring), Err(reason)) => {
            Err(StartError::BackendUnavailable { kind: BackendKind::IoUring, reason })
        }
        (Some(kind), _) => Ok(kind),
        (None, Ok(())) => Ok(BackendKind::IoUring),
        (None, Err(reason)) => {
            tracing::warn!("io_uring unavailable ({reason}); using the portable backend");
            Ok(BackendKind::Portable)
        }
    }
}

fn fail(ready: &mpsc::Sender<Result<(), StartError>>, error: StartError) -> std::io::Result<()> {
    let message = error.to_string();
    let _ = ready.send(Err(error));
    Err(std::io::Error::other(message))
}

#[allow(clippy::too_many_arguments)]
fn run_core<B: Backend, M>(
    index: usize,
    (all, inbox): (Arc<[Arc<CoreShared>]>, Arc<Inbox<M>>),
    (cid_key, generation): (CidKey, Generation),
    backend: B,
    endpoint: Endpoint,
    app: Box<dyn crate::app::Application<M>>,
    options: CoreOptions,
    ready: &mpsc::Sender<Result<(), StartError>>,
) -> std::io::Result<()> {
    let Some(core) = Core::new(index, all, inbox, cid_key, generation, backend, endpoint, app, options) else {
        return fail(ready, StartError::Core(format!("core {index} has no shared state")));
    };
    core.stats().set_status(CoreStatus::Running);
    let _ = ready.send(Ok(()));
    core.run()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}
