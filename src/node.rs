//! Assembling a node: identity, TLS, the per-core services, and the data plane under them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ant_quic_dataplane::cid::{CidKey, Generation};
use ant_quic_dataplane::{AdmissionConfig, AppFactory, Application, BackendKind, ConnectRequest, Node, NodeConfig};

use crate::identity::Identity;
use crate::nat::link::CoreRequest;
use crate::nat::{Nat, NatOptions};
use crate::service::{ServiceApp, WwwRoot};
use crate::tls::{self, ServerAuth, ServerSecurity, ALPN_ANT_QUIC, ALPN_HQ_INTEROP};
use crate::Error;

/// The UDP address a node listens on when none is given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9000);

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Cores; `None`: one per allowed CPU.
    pub cores: Option<usize>,
    /// Backend; `None`: io_uring when available.
    pub backend: Option<BackendKind>,
    /// Where the identity key lives; `None`: an identity that lives only in memory.
    pub data_dir: Option<PathBuf>,
    /// Serve this directory over hq-interop.
    pub www: Option<PathBuf>,
    /// CPUs to pin cores to; `None`: the allowed CPUs in order.
    pub cpus: Option<Vec<usize>>,
    /// NAT traversal: the bootstraps to register with, and the settings of both roles.
    pub nat: NatOptions,
    /// Join the port of a running node (a takeover, [`crate::takeover`]); `None`: the port must
    /// be free.
    pub join: Option<JoinPort>,
    /// Retry, the half-open cap and the handshake timeout (`[security]`).
    pub admission: AdmissionConfig,
    /// The af-xdp backend's interface (`[node] xdp_interface`); `None`: the listen address's.
    pub xdp_interface: Option<String>,
    /// The af-xdp backend forwards established relay channels in XDP (`[node] xdp_relay`).
    pub xdp_relay: bool,
}

/// What a process taking over a port joins with: its generation and the key every process on the
/// port shares (from [`crate::takeover::Takeover`]).
#[derive(Debug, Clone)]
pub struct JoinPort {
    /// This process's generation.
    pub generation: Generation,
    /// The connection-ID key.
    pub cid_key: CidKey,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            cores: None,
            backend: None,
            data_dir: None,
            www: None,
            cpus: None,
            nat: NatOptions::default(),
            join: None,
            admission: AdmissionConfig::DEFAULT,
            xdp_interface: None,
            xdp_relay: true,
        }
    }
}

/// A node serving `ant-quic/1` (and hq-interop), with its identity and its NAT traversal.
#[derive(Debug)]
pub struct Server {
    /// The data plane; its applications take the NAT driver's and the owner's requests.
    pub node: Node<CoreRequest>,
    /// Who it is.
    pub identity: Identity,
    /// NAT traversal: coordinator for peers registered here, and this node's own registrations.
    pub nat: Nat,
}

/// Start a node that accepts connections and serves its protocols.
pub fn start_server(options: &NodeOptions) -> Result<Server, Error> {
    start_server_with(options, &ServerSecurity::default())
}

/// [`start_server`] with the `[security]` settings: the certificate to present and the client
/// certificate policy.
pub fn start_server_with(options: &NodeOptions, security: &ServerSecurity) -> Result<Server, Error> {
    let identity = match &options.data_dir {
        Some(dir) => Identity::load_or_create(dir)?,
        None => Identity::ephemeral()?,
    };
    let www = match &options.www {
        Some(dir) => Some(Arc::new(
            WwwRoot::new(dir).map_err(|source| Error::Io { context: format!("--www {}", dir.display()), source })?,
        )),
        None => None,
    };
    let server = server_tls(&identity, security)?;
    let (events, events_rx) = crossbeam_channel::bounded(crate::nat::EVENT_QUEUE);
    let (datagrams, datagrams_rx) = crossbeam_channel::bounded(crate::nat::EVENT_QUEUE);
    let mut config = NodeConfig::new(options.listen, Some(Arc::new(server)));
    config.cores = options.cores;
    config.backend = options.backend;
    config.cpus = options.cpus.clone();
    config.control_datagrams = Some(datagrams);
    config.admission = options.admission.clone();
    config.xdp_interface = options.xdp_interface.clone();
    config.xdp_relay = options.xdp_relay;
    if let Some(join) = &options.join {
        config.generation = join.generation;
        config.cid_key = Some(join.cid_key.clone());
        config.join_group = true;
    }
    let factory: Arc<dyn AppFactory<CoreRequest>> = Arc::new(move |_core: usize| {
        Box::new(ServiceApp::with_nat(www.clone(), events.clone())) as Box<dyn Application<CoreRequest>>
    });
    let node = Node::start(config, factory)?;
    // Relay channels carry the generation that allocated them, as connection IDs do, so that a
    // takeover's steering keeps each flow with its process.
    let mut nat_options = options.nat.clone();
    nat_options.coordinator.channel_prefix = node.handle().generation();
    let nat =
        match Nat::start(node.messenger(), &identity, nat_options, events_rx, datagrams_rx, options.join.is_some()) {
            Ok(nat) => nat,
            Err(error) => {
                node.shutdown();
                let _ = node.join();
                return Err(error);
            }
        };
    Ok(Server { node, identity, nat })
}

/// The server's QUIC/TLS settings for `security`, warning when the certificate is not the identity's.
fn server_tls(identity: &Identity, security: &ServerSecurity) -> Result<quinn_proto::ServerConfig, Error> {
    if let Some(certified) = &security.certificate {
        if !certified.is_for(identity) {
            tracing::warn!(
                peer_id = %identity.peer_id(),
                "the configured TLS certificate does not carry this node's identity key: clients that \
                 authenticate the node by peer ID will refuse it"
            );
        }
    }
    Ok(tls::server_config_with(identity, &[ALPN_ANT_QUIC, ALPN_HQ_INTEROP], security)?)
}

impl Server {
    /// Use new `[security]` settings (certificate, client authentication) for the handshakes that
    /// start from now on; live connections are not touched.
    pub fn reload_security(&self, security: &ServerSecurity) -> Result<(), Error> {
        let server = server_tls(&self.identity, security)?;
        self.node.set_server_config(Arc::new(server))?;
        Ok(())
    }
}

/// Start a one-core client node on an ephemeral port (any address, IPv4 and IPv6) that runs `app`.
pub fn start_client<M: Send + 'static, A: Application<M> + Send + 'static>(
    backend: Option<BackendKind>,
    app: A,
) -> Result<Node<M>, Error> {
    start_client_app(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0), backend, None, app)
}

/// Start a client-only node bound to `local` with `cores` cores, pinned to `cpus` if given and
/// left to the scheduler otherwise (a client shares its host with other programs).
pub fn start_client_on<M: Send + 'static>(
    local: SocketAddr,
    cores: usize,
    backend: Option<BackendKind>,
    cpus: Option<Vec<usize>>,
    apps: Arc<dyn AppFactory<M>>,
) -> Result<Node<M>, Error> {
    let mut config = NodeConfig::new(local, None);
    config.cores = Some(cores);
    config.backend = backend;
    config.pin_threads = cpus.is_some();
    config.cpus = cpus;
    Ok(Node::start(config, apps)?)
}

/// Start a one-core client node bound to `local` that runs `app`: the usual shape of a client
/// program (one application object, its connections on one core). `cpus`: pin it; `None`: don't.
pub fn start_client_app<M: Send + 'static, A: Application<M> + Send + 'static>(
    local: SocketAddr,
    backend: Option<BackendKind>,
    cpus: Option<Vec<usize>>,
    app: A,
) -> Result<Node<M>, Error> {
    // Taken once, when the core creates its application; never touched on the packet path.
    let slot = std::sync::Mutex::new(Some(app));
    let factory = move |_core: usize| -> Box<dyn Application<M>> {
        match slot.lock().ok().and_then(|mut slot| slot.take()) {
            Some(app) => Box::new(app),
            None => Box::new(NoApplication),
        }
    };
    start_client_on(local, 1, backend, cpus, Arc::new(factory))
}

/// Application of cores that have nothing to run.
struct NoApplication;
impl<M> Application<M> for NoApplication {}

/// A request to connect to `remote`, authenticating it as `auth`, offering `alpns`.
pub fn connect_request(
    remote: SocketAddr,
    auth: ServerAuth,
    alpns: &[&[u8]],
    tag: u64,
) -> Result<ConnectRequest, Error> {
    Ok(ConnectRequest {
        remote,
        server_name: tls::default_server_name().to_owned(),
        config: tls::client_config(auth, alpns)?,
        tag,
    })
}
