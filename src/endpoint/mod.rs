//! The async API: [`Endpoint`], [`Connection`], [`SendStream`] and [`RecvStream`], for
//! applications that run as tasks on a runtime of their choice (tokio, smol, any executor)
//! rather than as callbacks on the cores.
//!
//! ```no_run
//! # async fn run() -> Result<(), ant_quic::endpoint::Error> {
//! use ant_quic::endpoint::Endpoint;
//! use ant_quic::tls::ServerAuth;
//!
//! let endpoint = Endpoint::builder().alpn(b"echo").bind()?;
//! let conn = endpoint.connect("127.0.0.1:4433".parse().unwrap(), ServerAuth::Insecure).await?;
//! let (mut send, mut recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish().await?;
//! let answer = recv.read_to_end(1 << 20).await?;
//! # Ok(()) }
//! ```
//!
//! `docs/api.md` in the repository walks through this API and sets it beside quinn's and iroh's,
//! call by call.
//!
//! # How it works
//!
//! The API is built on the callback API ([`crate::dataplane::Application`]), not beside it: every
//! core of the endpoint's node runs an async bridge (`bridge.rs`), an `Application` that owns the
//! core's side of each connection and stream the tasks use. No runtime is started and no thread
//! is added: the cores are the node's, the tasks are the application's.
//!
//! - **Tasks to core**: a task's request (open a stream, write bytes, finish, stop, close) is a
//!   `Command`, delivered through the node's bounded lock-free command queue of the core that owns
//!   the connection ([`crate::dataplane::Messenger::send_message`]), in order with everything
//!   else sent to that core. A full queue makes the task poll again soon; nothing is dropped
//!   silently but unreliable datagrams.
//! - **Core to tasks**: the bridge writes into state it shares with the tasks (`shared.rs`):
//!   atomics, bounded lock-free queues (`crossbeam-queue`) of received chunks, accepted streams
//!   and datagrams, and one waker per stream direction (`atomic-waker`), which it wakes after
//!   writing. Events many tasks may wait on at once (a new connection or stream, a datagram, the
//!   close) keep a short list of wakers; they come once per such event, never per packet.
//!
//! # Memory and backpressure
//!
//! Between a task and its core, each stream holds at most [`STREAM_BUDGET`] (1 MiB) in each
//! direction. Sending, a `write` takes bytes only while fewer than the budget wait for the core to
//! hand them to QUIC; QUIC takes them only within the peer's flow-control credit, so a peer that
//! does not read stalls the writer: what a writer has had accepted never exceeds the peer's
//! stream window plus the two budgets (ours sending, the peer's receiving). Receiving, the core
//! reads from QUIC only while fewer than the budget wait for the task; the rest stays in QUIC,
//! whose receive window (quinn-proto's default, 1.25 MB per stream) stalls the peer. Per stream,
//! then: at most 2 × 1 MiB here plus QUIC's own send buffer and receive window.
//!
//! # Cancellation
//!
//! Every future can be dropped at any point without losing an acknowledged byte or panicking:
//! `write` takes bytes only in the poll that returns them as written, and `read` removes bytes
//! only in the poll that returns them. A request that needs the core's answer (`connect`,
//! `open_bi`, `open_uni`) is undone when its future is dropped: the core closes the connection,
//! or finishes and stops the stream, whichever side sees the other give up. Dropping
//! `connect_peer`'s future leaves the traversal to finish on its own; the connection it makes
//! then is closed, nobody having taken it. Dropping a
//! [`SendStream`] finishes it, a [`RecvStream`] stops it (code 0), the last handle of a
//! [`Connection`] closes it (code 0).
//!
//! # Paths
//!
//! [`Connection::path`] reports [`PathKind::Direct`] for the connections made here by address.
//!
//! # Peers behind NATs
//!
//! An endpoint given bootstraps ([`EndpointBuilder::bootstrap`], or `[node] bootstrap`) runs the
//! node's NAT traversal (`peer.rs`): it registers with them ([`Endpoint::registered`],
//! [`Endpoint::observed_address`]), and [`Endpoint::connect_peer`] reaches a peer by its ID
//! exactly as `ant-quic --connect` does: directly, through a punched hole, or through a
//! bootstrap's relay. The signalling connections to the bootstraps (`ant-quic/1`) stay on the
//! cores; the connection to the peer carries the endpoint's ALPNs and is an ordinary
//! [`Connection`] on both sides (the peer's [`Endpoint::accept`] returns it).
//! [`Connection::path`] reports [`PathKind::Relayed`] while it goes through a relay, and
//! [`Connection::path_events`] the move to a direct path when a later punch finds one.

mod bridge;
mod connection;
mod error;
mod handle;
mod path;
mod peer;
mod shared;
mod stream;

use std::future::poll_fn;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ant_quic_dataplane::quinn_proto::VarInt;
use ant_quic_dataplane::{AdmissionConfig, AppFactory, Application, BackendKind, Messenger, Node, NodeConfig};
use bytes::Bytes;

use crate::config::Config;
use crate::identity::{Identity, PeerId};
use crate::nat::link::CoreLink;
use crate::nat::Nat;
use crate::tls::{self, ServerAuth, ServerSecurity};
use ant_quic_control::nat::traversal::TraversalConfig;
use bridge::{Bridge, Command};
pub use connection::Connection;
pub use error::Error;
use handle::{send, Awaited};
pub use path::{Path, PathEvents, PathKind};
use shared::EndpointShared;
pub use shared::STREAM_BUDGET;
pub use stream::{RecvStream, SendStream};

/// Connections accepted by the cores and not yet taken by [`Endpoint::accept`], by default.
const ACCEPT_QUEUE: usize = 256;

/// Settings of an [`Endpoint`]: start from [`Endpoint::builder`].
#[derive(Debug)]
pub struct EndpointBuilder {
    listen: SocketAddr,
    cores: usize,
    backend: Option<BackendKind>,
    identity: Option<Identity>,
    data_dir: Option<PathBuf>,
    alpns: Vec<Vec<u8>>,
    security: ServerSecurity,
    accept: bool,
    accept_queue: usize,
    admission: AdmissionConfig,
    xdp_interface: Option<String>,
    bootstraps: Vec<String>,
    traversal: TraversalConfig,
    peer_timeout: Duration,
}

impl Default for EndpointBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            cores: 1,
            backend: None,
            identity: None,
            data_dir: None,
            alpns: Vec::new(),
            security: ServerSecurity::default(),
            accept: true,
            accept_queue: ACCEPT_QUEUE,
            admission: AdmissionConfig::DEFAULT,
            xdp_interface: None,
            bootstraps: Vec::new(),
            traversal: TraversalConfig::default(),
            peer_timeout: peer::PEER_TIMEOUT,
        }
    }
}

impl EndpointBuilder {
    /// The UDP address to bind; default `[::]:0` (any address, IPv4 and IPv6, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How many cores (threads, each with its own socket and connections); default 1.
    pub fn cores(mut self, cores: usize) -> Self {
        self.cores = cores;
        self
    }

    /// The I/O backend; default io_uring where the kernel allows it, else portable.
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The node's identity (key and peer ID); default: the one in [`Self::data_dir`], or a
    /// fresh one that lives in memory only.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Load the identity from `dir` (created there if missing), as the node's `--data-dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Offer and accept the application protocol `alpn` (ALPN); at least one is needed. The
    /// first given is preferred.
    pub fn alpn(mut self, alpn: &[u8]) -> Self {
        self.alpns.push(alpn.to_vec());
        self
    }

    /// The server side's `[security]` settings: certificate, client authentication, 0-RTT.
    pub fn security(mut self, security: ServerSecurity) -> Self {
        self.security = security;
        self
    }

    /// Accept incoming connections (default); `false`: a client only.
    pub fn accept(mut self, accept: bool) -> Self {
        self.accept = accept;
        self
    }

    /// Connections the cores accept ahead of [`Endpoint::accept`]; past it they are refused.
    pub fn accept_queue(mut self, connections: usize) -> Self {
        self.accept_queue = connections;
        self
    }

    /// Register with the bootstrap `entry`, `HOST:PORT` or `PEER_ID@HOST:PORT` (then its
    /// certificate must prove that peer ID), as `--bootstrap`; repeatable, the first given
    /// coordinates. Needed for [`Endpoint::connect_peer`].
    pub fn bootstrap(mut self, entry: &str) -> Self {
        self.bootstraps.push(entry.to_owned());
        self
    }

    /// How long [`Endpoint::connect_peer`] tries before it gives up; default 30 s.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// The settings of a node's configuration file (`ant-quic.toml`, [`Config`]): `[node]`
    /// listen, cores, backend, data directory, XDP interface and bootstraps; `[nat]` traversal
    /// settings; `[security]` certificate, client certificates, 0-RTT and admission (Retry,
    /// half-open cap, handshake timeout).
    pub fn config(mut self, config: &Config) -> Result<Self, Error> {
        self.listen = config.node.listen;
        if let Some(cores) = config.node.cores {
            self.cores = cores;
        }
        self.backend = config.node.backend.map(Into::into);
        self.data_dir = Some(config.data_dir());
        self.security = config.server_security().map_err(|e| Error::Setup(e.to_string()))?;
        self.admission = config.security.admission();
        self.xdp_interface = config.node.xdp_interface.clone();
        self.bootstraps.clone_from(&config.node.bootstrap);
        self.traversal = config.nat.traversal();
        Ok(self)
    }

    /// Start the endpoint's cores and bind its socket.
    pub fn bind(self) -> Result<Endpoint, Error> {
        if self.alpns.is_empty() {
            return Err(Error::Invalid("no application protocol: name one with .alpn(b\"...\")".into()));
        }
        let identity = match (self.identity, &self.data_dir) {
            (Some(identity), _) => identity,
            (None, Some(dir)) => Identity::load_or_create(dir).map_err(|e| Error::Setup(e.to_string()))?,
            (None, None) => Identity::ephemeral().map_err(|e| Error::Setup(e.to_string()))?,
        };
        let alpns: Vec<&[u8]> = self.alpns.iter().map(Vec::as_slice).collect();
        let server = if self.accept {
            let config = tls::server_config_with(&identity, &alpns, &self.security);
            Some(Arc::new(config.map_err(|e| Error::Setup(e.to_string()))?))
        } else {
            None
        };
        let mut config = NodeConfig::new(self.listen, server);
        config.cores = Some(self.cores);
        config.backend = self.backend;
        config.admission = self.admission;
        config.xdp_interface = self.xdp_interface;
        // A library shares its host with the application's own threads: no pinning.
        config.pin_threads = false;
        let bootstraps = crate::config::resolve_bootstraps(&self.bootstraps).map_err(Error::Invalid)?;
        // With bootstraps, each core runs the traversal's per-core half beside the bridge.
        let (events, events_rx) = crossbeam_channel::bounded(crate::nat::EVENT_QUEUE);
        let (datagrams, datagrams_rx) = crossbeam_channel::bounded(crate::nat::EVENT_QUEUE);
        let with_nat = !bootstraps.is_empty();
        if with_nat {
            config.control_datagrams = Some(datagrams);
        }
        let shared = Arc::new(EndpointShared::new(self.accept_queue));
        let for_cores = Arc::clone(&shared);
        let factory: Arc<dyn AppFactory<Command>> = Arc::new(move |_core: usize| {
            let link = with_nat.then(|| CoreLink::new(events.clone()));
            Box::new(Bridge::new(Arc::clone(&for_cores), link)) as Box<dyn Application<Command>>
        });
        let node = Node::start(config, factory).map_err(|e| Error::Setup(e.to_string()))?;
        let nat = if with_nat {
            let start =
                peer::NatStart { bootstraps, traversal: self.traversal, events: events_rx, datagrams: datagrams_rx };
            match peer::start_nat(&node, &identity, &self.alpns, start) {
                Ok(nat) => Some(nat),
                Err(error) => {
                    node.shutdown_now();
                    let _ = node.join();
                    return Err(error);
                }
            }
        } else {
            None
        };
        let messenger = node.messenger();
        let inner = Inner {
            nat,
            node: Some(node),
            messenger,
            shared,
            identity,
            alpns: self.alpns,
            accepting: self.accept,
            peer_timeout: self.peer_timeout,
        };
        Ok(Endpoint { inner: Arc::new(inner) })
    }
}

#[derive(Debug)]
struct Inner {
    /// The NAT traversal, when the endpoint has bootstraps; stopped before the cores.
    nat: Option<Nat>,
    node: Option<Node<Command>>,
    messenger: Messenger<Command>,
    shared: Arc<EndpointShared>,
    identity: Identity,
    alpns: Vec<Vec<u8>>,
    /// Built with `accept(true)`: a client-only endpoint's `accept` ends at once.
    accepting: bool,
    peer_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mut nat) = self.nat.take() {
            nat.stop();
        }
        if let Some(node) = self.node.take() {
            node.shutdown_now();
            if let Err(error) = node.join() {
                tracing::warn!(%error, "endpoint core failed");
            }
        }
    }
}

/// A QUIC endpoint: its own cores and UDP socket, opening and accepting connections. Cheap to
/// clone; when the last clone is dropped its cores stop (connections still open end at once:
/// [`Endpoint::close`] and [`Endpoint::wait_idle`] first for a clean end).
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    /// Settings to start an endpoint with.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder::default()
    }

    /// This node's peer ID (from its identity key).
    pub fn local_peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.messenger.local_addr()
    }

    /// Connect to `addr`, authenticating the server as `auth`, offering the endpoint's ALPNs and
    /// presenting its identity (the server learns its peer ID). Dropping the future before it
    /// completes abandons the connection.
    pub async fn connect(&self, addr: SocketAddr, auth: ServerAuth) -> Result<Connection, Error> {
        if self.inner.shared.closing.load(Ordering::Acquire) {
            return Err(Error::EndpointClosed);
        }
        let alpns: Vec<&[u8]> = self.inner.alpns.iter().map(Vec::as_slice).collect();
        let certified = tls::CertifiedKey::of_identity(&self.inner.identity);
        let config =
            tls::client_config_with(auth, &alpns, Some(&certified)).map_err(|e| Error::Setup(e.to_string()))?;
        let messenger = &self.inner.messenger;
        let tag = self.inner.shared.next_tag.fetch_add(1, Ordering::Relaxed);
        let core = usize::try_from(tag).unwrap_or(0) % messenger.cores().max(1);
        let undo_messenger = messenger.clone();
        let undo = move |result: Result<Arc<shared::ConnShared>, Error>| {
            if let Ok(shared) = result {
                drop(Connection::new(shared, undo_messenger.clone()));
            }
        };
        let awaited = Awaited::new(undo);
        // The bridge learns the tag first, then the core opens the connection: one queue, in order.
        send(messenger, core, || Command::Connect { tag, reply: Arc::clone(&awaited.reply) }).await?;
        poll_fn(|cx| {
            let request = ant_quic_dataplane::ConnectRequest {
                remote: addr,
                server_name: tls::default_server_name().to_owned(),
                config: config.clone(),
                tag,
            };
            match messenger.connect(request, Some(core)) {
                Ok(_) => Poll::Ready(Ok(())),
                Err(ant_quic_dataplane::NodeError::Busy(_)) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(_) => Poll::Ready(Err(Error::EndpointClosed)),
            }
        })
        .await?;
        let conn = awaited.wait().await?;
        Ok(Connection::new(conn, messenger.clone()))
    }

    /// The next connection a peer opened (its handshake complete), with one of the endpoint's
    /// ALPNs (the handshake refuses others); `None` once the endpoint is closed, and at once for
    /// a client-only endpoint.
    pub async fn accept(&self) -> Option<Connection> {
        if !self.inner.accepting {
            return None;
        }
        let shared = &self.inner.shared;
        let conn = poll_fn(|cx| {
            for attempt in 0..2 {
                if let Some(conn) = shared.incoming.pop() {
                    return Poll::Ready(Some(conn));
                }
                if shared.closing.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                if attempt == 0 {
                    shared.incoming_waiters.register(cx);
                }
            }
            Poll::Pending
        })
        .await?;
        Some(Connection::new(conn, self.inner.messenger.clone()))
    }

    /// Close every connection with application `code` and `reason`, and accept no more.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.inner.shared.closing.store(true, Ordering::Release);
        self.inner.shared.incoming_waiters.wake_all();
        let messenger = &self.inner.messenger;
        for core in 0..messenger.cores() {
            let command = || Command::CloseAll { code: VarInt::from_u32(code), reason: Bytes::copy_from_slice(reason) };
            // A full queue drains within a loop turn; keep trying briefly rather than lose it.
            for _ in 0..1000 {
                match messenger.send_message(core, command()) {
                    Err(ant_quic_dataplane::NodeError::Busy(_)) => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    _ => break,
                }
            }
        }
    }

    /// Wait until no connection is left: each closed by either side and its end reported by
    /// its core (a local close is reported once its closing period is over).
    pub async fn wait_idle(&self) {
        let shared = &self.inner.shared;
        poll_fn(|cx| {
            if shared.live.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(());
            }
            shared.idle_waiters.register(cx);
            if shared.live.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
}
