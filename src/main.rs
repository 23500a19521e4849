//! The `ant-quic` command: run a node, or fetch files over hq-interop.

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic::client::{Fetched, GetApp};
use ant_quic::config::{Loader, Overrides};
use ant_quic::dataplane::sys::signal::BlockedSignals;
use ant_quic::dataplane::BackendKind;
use ant_quic::identity::PeerId;
use ant_quic::node::{connect_request, start_client, start_server_with, NodeOptions};
use ant_quic::takeover::{Incumbent, Lineage, Successor, Takeover};
use ant_quic::tls::{ServerAuth, ALPN_HQ_INTEROP};
use ant_quic::Error;
use ant_quic_control::admin::PreviousGeneration;
use ant_quic_control::{AdminServer, AdminView};
use clap::{Parser, Subcommand};

/// A QUIC node for peer-to-peer networks behind NATs.
#[derive(Debug, Parser)]
#[command(name = "ant-quic", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Configuration file (default: ./ant-quic.toml, then /etc/ant-quic/ant-quic.toml, if present).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// UDP address to listen on (default: 0.0.0.0:9000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data-plane cores (default: one per CPU this process may run on).
    #[arg(long)]
    cores: Option<usize>,
    /// I/O backend: io-uring or portable (default: io-uring when the kernel allows it).
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Directory holding the node's identity key (default: ~/.ant-quic).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve the files of this directory over hq-interop (HTTP/0.9 over QUIC).
    #[arg(long)]
    www: Option<PathBuf>,
    /// TCP port of the admin HTTP listener (default: the number of the UDP listen port).
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Log level or filter (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Register with this bootstrap node (repeatable; replaces `[node] bootstrap`).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// Reach this peer through the bootstrap (direct when possible, relayed otherwise), report
    /// the path and exit.
    #[arg(long, value_name = "PEER_ID", requires = "bootstrap", conflicts_with = "test")]
    connect: Option<PeerId>,
    /// Connectivity check: reach the bootstraps, report the observed address, the NAT mapping
    /// behaviour and the RTT; exit 0 when reachable.
    #[arg(long, requires = "bootstrap")]
    test: bool,
    /// With --connect or --test: print one JSON line.
    #[arg(long)]
    json: bool,
    /// With --connect: send this many random bytes over the connection and check their SHA-256.
    #[arg(long, value_name = "BYTES", requires = "connect")]
    send_bytes: Option<u64>,
    /// With --connect or --test: give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
    /// Take the UDP port over from the node running on it: new connections come here from the
    /// moment this node is ready, the old one drains its own and exits (just start when none runs).
    #[arg(long, conflicts_with_all = ["connect", "test"])]
    takeover: bool,
    /// Seconds this node, once taken over, keeps serving its live connections before it closes
    /// them (default 60; 0: at once).
    #[arg(long, value_name = "SECONDS")]
    drain_timeout: Option<u64>,
}

impl NodeArgs {
    /// A one-shot command (--connect, --test) rather than a long-running node.
    fn one_shot(&self) -> bool {
        self.connect.is_some() || self.test
    }

    fn loader(&self) -> Loader {
        // A one-shot command takes any free port unless told otherwise, so that it runs beside a
        // node on the same host.
        let listen = match self.listen {
            None if self.one_shot() => Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            listen => listen,
        };
        Loader {
            path: self.config.clone(),
            overrides: Overrides {
                listen,
                cores: self.cores,
                backend: self.backend,
                data_dir: self.data_dir.clone(),
                www: self.www.clone(),
                metrics_port: self.metrics_port,
                log_level: self.log_level.clone(),
                bootstrap: self.bootstrap.clone(),
                drain_timeout: self.drain_timeout,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download files over hq-interop on one connection.
    Get(GetArgs),
    /// Check a configuration file, or print the default one.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE (with the ANT_QUIC_* environment applied) and print the effective config.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print a commented configuration file holding every default.
    Default,
}

/// Exit status for a configuration that cannot be used (as clap uses for bad arguments).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// URLs of the form https://HOST:PORT/PATH, all on the same server.
    #[arg(required = true)]
    urls: Vec<String>,
    /// Directory to write the files to (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// Accept any server certificate (the handshake signature is still verified).
    #[arg(long, conflicts_with = "peer_id")]
    insecure: bool,
    /// Require the server to prove this peer ID (64 hex digits).
    #[arg(long)]
    peer_id: Option<PeerId>,
    /// I/O backend: io-uring or portable.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Get(args)) => {
            let _logging = match ant_quic::logging::init(&ant_quic::config::LoggingSection::default()) {
                Ok(logging) => logging,
                Err(error) => return config_error(&error),
            };
            finish(get(&args))
        }
        Some(Command::Config(ConfigCommand::Default)) => {
            print!("{}", ant_quic::config::DEFAULT_FILE);
            ExitCode::SUCCESS
        }
        Some(Command::Config(ConfigCommand::Check { file })) => {
            match ant_quic::config::load(Some(&file), std::env::vars(), &Overrides::default()) {
                Ok(loaded) => {
                    for warning in &loaded.warnings {
                        eprintln!("warning: {warning}");
                    }
                    print!("{}", loaded.config.effective().to_toml());
                    ExitCode::SUCCESS
                }
                Err(error) => config_error(&error),
            }
        }
        None => run_node(&cli.node),
    }
}

fn config_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_CONFIG)
}

fn finish(result: Result<ExitCode, Error>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: &NodeArgs) -> ExitCode {
    let loaded = match args.loader().load() {
        Ok(loaded) => loaded,
        Err(error) => return config_error(&error),
    };
    let config = loaded.config;
    let security = match config.server_security() {
        Ok(security) => security,
        Err(error) => return config_error(&error),
    };
    // Block the shutdown signals before any thread starts (the log writers are the first), so
    // that every thread inherits the mask and only this thread receives them, in sigwait.
    let signals = match ShutdownSignals::block() {
        Ok(signals) => signals,
        Err(error) => return finish(Err(error)),
    };
    // Kept until exit: dropping it flushes the log writers.
    let logging = match ant_quic::logging::init(&config.logging) {
        Ok(logging) => logging,
        Err(error) => return config_error(&error),
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(file) = &loaded.file {
        tracing::info!(config = %file.display(), "configuration loaded");
    }
    let bootstraps = match resolve_bootstraps(&config.node.bootstrap) {
        Ok(bootstraps) => bootstraps,
        Err(error) => return config_error(&error),
    };
    let mut options = NodeOptions {
        listen: config.node.listen,
        cores: config.node.cores,
        backend: config.node.backend.map(Into::into),
        data_dir: Some(config.data_dir()),
        www: config.node.www.clone(),
        cpus: None,
        nat: ant_quic::nat::NatOptions { bootstraps, ..Default::default() },
        join: None,
    };
    if args.one_shot() {
        return finish(one_shot(args, &options, &security));
    }
    if !args.takeover {
        return match serve(&options, &security, &config, &args.loader(), &logging, &signals, None) {
            Err(Error::Start(ant_quic::dataplane::StartError::Bind { addr, source }))
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                eprintln!("error: cannot bind UDP {addr}: {source}; to replace the node running there, add --takeover");
                ExitCode::FAILURE
            }
            result => finish(result),
        };
    }
    // A takeover that cannot go ahead leaves the running node as it was: one line, status 2.
    let takeover = match ant_quic::takeover::reach_incumbent(options.listen) {
        Ok(takeover) => takeover,
        Err(error) => return config_error(&error),
    };
    if let Some(takeover) = &takeover {
        options.join =
            Some(ant_quic::node::JoinPort { generation: takeover.generation, cid_key: takeover.cid_key.clone() });
    }
    match serve(&options, &security, &config, &args.loader(), &logging, &signals, takeover) {
        Ok(code) => code,
        Err(error) => config_error(&error),
    }
}

fn serve(
    options: &NodeOptions,
    security: &ant_quic::tls::ServerSecurity,
    config: &ant_quic::config::Config,
    loader: &ant_quic::config::Loader,
    logging: &ant_quic::logging::Logging,
    signals: &ShutdownSignals,
    takeover: Option<Takeover>,
) -> Result<ExitCode, Error> {
    let started = Instant::now();
    // Under systemd a node taken over is on its way out (STOPPING=1 arms the stop timeout), and
    // the unit's restart policy or the deploy's rollback replaces a successor that dies: it only
    // drains. On its own it serves again when its successor dies.
    let supervised = std::env::var_os("NOTIFY_SOCKET").is_some();
    let server = start_server_with(options, security)?;
    let node = &server.node;
    // The admin listener takes the UDP port's number unless told otherwise (the runbook's
    // `curl localhost:9000/health`); with port 0 that is the port the node was given.
    let admin_port = config.metrics.port.unwrap_or(node.local_addr().port());
    let admin_addr = SocketAddr::new(config.metrics.bind, admin_port);
    // The draining predecessor, as it last reported, for /health.
    let previous: Arc<Mutex<Option<PreviousGeneration>>> = Arc::default();
    let view = AdminView {
        node: node.handle(),
        version: env!("CARGO_PKG_VERSION").into(),
        peer_id: server.identity.peer_id().to_string(),
        started,
        log_lines_dropped: Some(Arc::new(ant_quic::logging::dropped_lines)),
        bootstraps: Some(server.nat.bootstraps_json()),
        nat: Some(server.nat.metrics()),
        generation: node.handle().generation(),
        previous: Arc::clone(&previous),
    };
    // Kept to serve admin HTTP again if a successor dies after the switch.
    let admin_view = view.clone();
    // A successor joins the predecessor's admin listener; the predecessor closes its own at the switch.
    let admin_started = if takeover.is_some() {
        AdminServer::start_joining(admin_addr, view)
    } else {
        AdminServer::start(admin_addr, view)
    };
    let admin = match admin_started {
        Ok(admin) => admin,
        Err(source) => {
            node.shutdown();
            let _ = server.node.join();
            return Err(Error::Io {
                context: format!("cannot serve admin HTTP on TCP {admin_addr} (set --metrics-port or [metrics] port)"),
                source,
            });
        }
    };
    // From here on, with a predecessor, new connections come to this process.
    let successor: Arc<Mutex<Option<Successor>>> = Arc::default();
    let (lineage, predecessor) = match takeover {
        Some(takeover) => match takeover.complete(&node.handle()) {
            Ok(predecessor) => (Arc::clone(&predecessor.lineage), Some(predecessor)),
            Err(error) => {
                node.shutdown();
                let _ = server.node.join();
                return Err(error.into());
            }
        },
        None => (Arc::new(Mutex::new(Lineage::alone(node.handle().generation(), node.cores()))), None),
    };
    if let Some(predecessor) = predecessor {
        let (pid, drain) = (predecessor.pid, predecessor.drain_timeout.as_secs());
        let connections = predecessor.connections;
        let (new, old) = (node.handle().generation(), predecessor.generation);
        println!(
            "took over UDP {} from pid {pid}: generation {new} serves new connections; generation {old} drains \
             {connections} connections for at most {drain} s",
            node.local_addr(),
        );
        if let Ok(mut shown) = previous.lock() {
            *shown = Some(PreviousGeneration { pid, generation: old, connections });
        }
        let report = move |status: Option<ant_quic::takeover::DrainReport>| {
            if let Ok(mut shown) = previous.lock() {
                match (status, shown.as_mut()) {
                    (Some(status), Some(shown)) => shown.connections = status.connections,
                    (Some(_), None) => {}
                    (None, _) => *shown = None,
                }
            }
        };
        if let Err(error) = predecessor.follow(node.handle(), report, Arc::clone(&successor)) {
            tracing::warn!(%error, "cannot follow the predecessor's drain; steering stays as set at the switch");
        }
    }
    println!("ant-quic {} peer id {}", env!("CARGO_PKG_VERSION"), server.identity.peer_id());
    println!(
        "listening on {} (udp, {} cores, backend {}, crypto {})",
        node.local_addr(),
        node.cores(),
        node.backend(),
        ant_quic::tls::provider_name()
    );
    println!("admin http on {} (/metrics /health /ready)", admin.local_addr());
    #[cfg(feature = "profiling")]
    println!(
        "profiling build: pid {pid}; attach with `perf record -e cpu-clock --call-graph=dwarf -p {pid}` \
         (core threads are ant-quic-core-N)",
        pid = std::process::id()
    );
    let _ = std::io::stdout().flush();
    systemd_notify(&[sd_notify::NotifyState::Ready]);

    let drain_timeout = Duration::from_secs(config.node.drain_timeout);
    // A process on port 0 was given a port nobody else knows: nothing can take it over.
    let incumbent = if options.listen.port() == 0 {
        None
    } else {
        match Incumbent::start(node.handle(), Arc::clone(&lineage), drain_timeout) {
            Ok(incumbent) => Some(incumbent),
            Err(error) => {
                tracing::warn!(%error, "cannot offer a takeover of this port (--takeover will not find this node)");
                None
            }
        }
    };

    // With a systemd watchdog, pet it at half its interval, and only while every core is alive.
    let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
    let mut last_pet = Instant::now();
    let mut pet_watchdog = |admin: &AdminServer| {
        if watchdog.is_some_and(|interval| last_pet.elapsed() >= interval) {
            last_pet = Instant::now();
            if admin.healthy() {
                systemd_notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::warn!("a core is not alive: withholding the systemd watchdog");
            }
        }
    };
    let mut admin = admin;
    let mut incumbent = incumbent;
    loop {
        let taken_over = loop {
            match signals.wait(Some(TICK)) {
                Some(libc::SIGHUP) => reload(&server, loader, logging),
                Some(signal) => {
                    tracing::info!(signal, "shutting down: closing connections");
                    break None;
                }
                None => {
                    pet_watchdog(&admin);
                    if let Some(ready) = incumbent.as_ref().and_then(Incumbent::ready_successor) {
                        break Some(ready);
                    }
                }
            }
        };
        // Releases the takeover socket's name: the successor takes it.
        drop(incumbent.take());
        let Some(ready) = taken_over else {
            systemd_notify(&[sd_notify::NotifyState::Stopping]);
            admin.set_draining();
            break;
        };
        let (pid, generation) = (ready.pid, ready.generation);
        if let Ok(mut slot) = successor.lock() {
            *slot = Some(ready);
        }
        let handle = node.handle();
        tracing::info!(
            pid,
            generation,
            connections = handle.active_connections(),
            relay_allocations = handle.relay_allocations(),
            drain_timeout_s = drain_timeout.as_secs(),
            "taken over by pid {pid} (generation {generation}): draining"
        );
        systemd_notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status(&format!("taken over by pid {pid}: draining")),
        ]);
        admin.set_draining();
        admin.close_listener();
        if let Err(error) = node.set_accepting(false) {
            tracing::warn!(%error, "a core did not take the stop-accepting request; it refuses nothing new");
        }
        // Registered peers move to the successor, spread over the first half of the drain.
        server.nat.begin_handover(drain_timeout / 2);
        match drain(&handle, drain_timeout, signals, &successor, &mut pet_watchdog, &admin, supervised) {
            DrainEnd::Finished => {
                if let Some(ready) = successor.lock().ok().as_mut().and_then(|s| s.as_mut()) {
                    ready.leaving();
                }
                break;
            }
            DrainEnd::SuccessorLost => {
                // The successor died after it said ready: new connections are steered to sockets
                // that are gone. Serve everything again rather than leave the port dark.
                tracing::error!(pid, "the successor is gone after the switch; taking new connections back");
                if let Ok(mut slot) = successor.lock() {
                    *slot = None;
                }
                ant_quic::takeover::steer_by_probes(&node.handle(), &lineage);
                if let Err(error) = node.set_accepting(true) {
                    tracing::warn!(%error, "a core did not take the accept request");
                }
                admin.shutdown();
                admin = match AdminServer::start_joining(admin_addr, admin_view.clone()) {
                    Ok(admin) => admin,
                    Err(source) => {
                        return Err(Error::Io {
                            context: format!("cannot serve admin HTTP on TCP {admin_addr} again"),
                            source,
                        })
                    }
                };
                incumbent = Incumbent::start(node.handle(), Arc::clone(&lineage), drain_timeout).ok();
                tracing::info!("serving new connections again");
                systemd_notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("serving again: the successor died after the switch"),
                ]);
            }
        }
    }
    let stats = server.node.stats();
    let mut nat = server.nat;
    nat.stop();
    server.node.shutdown();
    let joined = server.node.join();
    admin.shutdown();
    joined?;
    tracing::info!("stopped; {}", ant_quic_control::Totals::collect(&stats));
    Ok(ExitCode::SUCCESS)
}

/// How often the main thread looks up from waiting for signals (watchdog, takeover, drain).
const TICK: Duration = Duration::from_millis(50);

/// How a drain ended.
enum DrainEnd {
    /// Every connection is gone, the drain timeout passed, or a signal asked to stop.
    Finished,
    /// The successor went away: nobody serves new connections.
    SuccessorLost,
}

/// A node taken over: serve the live connections until they end, the drain timeout passes, or a
/// signal asks to stop; report to the successor as they go.
fn drain(
    node: &ant_quic::dataplane::NodeHandle,
    timeout: Duration,
    signals: &ShutdownSignals,
    successor: &Mutex<Option<Successor>>,
    pet_watchdog: &mut impl FnMut(&AdminServer),
    admin: &AdminServer,
    supervised: bool,
) -> DrainEnd {
    let deadline = Instant::now() + timeout;
    let mut next_report = Instant::now();
    let mut successor_lost = false;
    loop {
        let (connections, relays) = (node.active_connections(), node.relay_allocations());
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(1);
            let alive =
                successor.lock().ok().as_mut().and_then(|s| s.as_mut()).is_some_and(|s| s.report(connections, relays));
            if !alive && !supervised {
                return DrainEnd::SuccessorLost;
            }
            if !alive && !successor_lost {
                successor_lost = true;
                tracing::error!(
                    "the successor is gone after the switch; draining on (systemd or the deploy replaces it)"
                );
            }
        }
        if connections == 0 && relays == 0 {
            tracing::info!("drained: every connection and relay allocation has ended");
            return DrainEnd::Finished;
        }
        if Instant::now() >= deadline {
            tracing::info!(connections, relay_allocations = relays, "drain timeout: closing what is left");
            return DrainEnd::Finished;
        }
        match signals.wait(Some(TICK)) {
            Some(libc::SIGHUP) | None => pet_watchdog(admin),
            Some(signal) => {
                tracing::info!(signal, connections, "stopping the drain: closing what is left");
                return DrainEnd::Finished;
            }
        }
    }
}

/// SIGHUP: re-read the configuration; apply the log level and the TLS settings for new
/// handshakes. A configuration that does not validate changes nothing.
fn reload(server: &ant_quic::node::Server, loader: &ant_quic::config::Loader, logging: &ant_quic::logging::Logging) {
    let loaded = match loader.load() {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "reload refused: the configuration is not valid; keeping the running one");
            return;
        }
    };
    let security = match loaded.config.server_security() {
        Ok(security) => security,
        Err(error) => {
            tracing::error!(%error, "reload refused: the TLS settings are not valid; keeping the running ones");
            return;
        }
    };
    if let Err(error) = server.reload_security(&security) {
        tracing::error!(%error, "reload refused: the TLS settings cannot be used; keeping the running ones");
        return;
    }
    let level = ant_quic::logging::initial_filter(&loaded.config.logging.level);
    if let Err(error) = logging.set_level(&level) {
        tracing::error!(%error, "reload: log level not changed");
    }
    tracing::info!(level = %loaded.config.logging.level, "configuration reloaded: log level and TLS settings apply to new handshakes");
}

/// Tell systemd (when it started us with NOTIFY_SOCKET); silent otherwise.
fn systemd_notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "systemd notification not sent");
    }
}

/// SIGINT, SIGTERM and SIGHUP, taken synchronously by the main thread.
struct ShutdownSignals(BlockedSignals);

impl ShutdownSignals {
    fn block() -> Result<Self, Error> {
        BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
            .map(Self)
            .map_err(|source| Error::Io { context: "blocking SIGINT/SIGTERM/SIGHUP".into(), source })
    }

    /// Wait for one of the signals (returns its number), or until `timeout` passes (`None`).
    fn wait(&self, timeout: Option<Duration>) -> Option<i32> {
        self.0.wait(timeout)
    }
}

/// A parsed `https://HOST:PORT/PATH` URL.
struct Url {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, Error> {
    let bad = |why: &str| Error::Invalid(format!("bad URL '{url}': {why}; expected https://HOST:PORT/PATH"));
    let rest = url.strip_prefix("https://").ok_or_else(|| bad("not https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Ok(Url { authority, path: path.to_owned() })
}

/// Where a fetched path is written under `output`; `None` if it would escape it.
fn output_file(output: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(output.join(relative))
}

fn get(args: &GetArgs) -> Result<ExitCode, Error> {
    let urls = args.urls.iter().map(|u| parse_url(u)).collect::<Result<Vec<_>, _>>()?;
    let authority = urls.first().map(|u| u.authority.clone()).unwrap_or_default();
    if let Some(other) = urls.iter().find(|u| u.authority != authority) {
        return Err(Error::Invalid(format!(
            "all URLs must name the same server (one connection): {} and {}",
            authority, other.authority
        )));
    }
    let remote = authority
        .to_socket_addrs()
        .map_err(|source| Error::Io { context: format!("resolving {authority}"), source })?
        .next()
        .ok_or_else(|| Error::Invalid(format!("{authority} has no address")))?;
    let mut requests = Vec::new();
    for url in &urls {
        let file = output_file(&args.output, &url.path)
            .ok_or_else(|| Error::Invalid(format!("cannot save '{}' under {}", url.path, args.output.display())))?;
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| Error::Io { context: format!("creating {}", parent.display()), source })?;
        }
        requests.push((url.path.clone(), file));
    }
    let auth = match (args.peer_id, args.insecure) {
        (Some(id), _) => ServerAuth::PeerId(id),
        (None, true) => ServerAuth::Insecure,
        (None, false) => {
            return Err(Error::Invalid("say how to authenticate the server: --peer-id ID or --insecure".into()));
        }
    };

    let (tx, rx) = mpsc::channel::<Option<Fetched>>();
    let expected = requests.len();
    let node = start_client(args.backend, GetApp::new(requests, tx))?;
    let started = Instant::now();
    node.connect(connect_request(remote, auth, &[ALPN_HQ_INTEROP], 0)?, Some(0))?;

    let deadline = started + Duration::from_secs(args.timeout);
    let mut results = Vec::new();
    while results.len() < expected {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(fetched)) => results.push(fetched),
            Ok(None) | Err(_) => break,
        }
    }
    node.shutdown();
    let _ = node.join();

    let mut failed = expected.saturating_sub(results.len());
    if failed > 0 {
        eprintln!("error: {failed} file(s) got no answer within {} s", args.timeout);
    }
    for r in &results {
        match &r.error {
            None => {
                let secs = r.elapsed.as_secs_f64().max(1e-9);
                println!(
                    "{}: {} bytes, sha256 {}, {:.3} s, {:.1} MB/s -> {}",
                    r.path,
                    r.bytes,
                    r.sha256,
                    secs,
                    r.bytes as f64 / secs / 1e6,
                    r.file.display()
                );
            }
            Some(error) => {
                failed += 1;
                println!("{}: FAILED: {error}", r.path);
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `[node] bootstrap` / `--bootstrap` entries resolved to addresses (the first address of each).
fn resolve_bootstraps(entries: &[String]) -> Result<Vec<SocketAddr>, String> {
    entries
        .iter()
        .map(|entry| {
            entry
                .to_socket_addrs()
                .map_err(|e| format!("bootstrap '{entry}' cannot be resolved: {e}; give HOST:PORT"))?
                .next()
                .ok_or_else(|| format!("bootstrap '{entry}' has no address"))
        })
        .collect()
}

/// `--connect` and `--test`: start a node on its own port, register with the bootstraps, do the
/// one thing, report, stop.
fn one_shot(
    args: &NodeArgs,
    options: &NodeOptions,
    security: &ant_quic::tls::ServerSecurity,
) -> Result<ExitCode, Error> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let started = Instant::now();
    let server = start_server_with(options, security)?;
    let outcome = match args.connect {
        Some(target) => connect_to_peer(&server, target, args, started + timeout),
        None => connectivity_test(&server, args, started + timeout),
    };
    let mut nat = server.nat;
    nat.stop();
    server.node.shutdown();
    let _ = server.node.join();
    match outcome {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("error: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Wait until a bootstrap told us our observed address (all of them, when `all`), or the deadline.
/// Which bootstraps must have told us our observed address before going on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Registered {
    /// Any one of them.
    Any,
    /// The first one given (it coordinates: its connection is the oldest).
    First,
    /// All of them.
    All,
}

/// Wait until `enough` bootstraps told us our observed address, or the deadline.
fn wait_registered(
    nat: &ant_quic::nat::Nat,
    enough: Registered,
    deadline: Instant,
) -> ant_quic_control::nat::agent::NatStatus {
    loop {
        let status = nat.status();
        let observed = |b: &ant_quic_control::nat::agent::BootstrapStatus| b.observed.is_some();
        let done = match enough {
            Registered::Any => status.bootstraps.iter().any(observed),
            Registered::First => status.bootstraps.first().is_some_and(observed),
            Registered::All => status.bootstraps.iter().all(observed),
        };
        if done || Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long `--connect` waits for the first bootstrap before letting another one coordinate.
const FIRST_BOOTSTRAP_WAIT: Duration = Duration::from_secs(10);

fn unreachable_reason(status: &ant_quic_control::nat::agent::NatStatus, waited: Duration) -> String {
    let reasons: Vec<String> = status
        .bootstraps
        .iter()
        .map(|b| match &b.last_error {
            Some(error) => format!("{}: {error}", b.address),
            None => format!("{}: no answer within {} s", b.address, waited.as_secs()),
        })
        .collect();
    format!(
        "no bootstrap reachable ({}); check the address, that a node listens there, and that UDP is allowed",
        reasons.join("; ")
    )
}

fn connect_to_peer(
    server: &ant_quic::node::Server,
    target: PeerId,
    args: &NodeArgs,
    deadline: Instant,
) -> Result<String, String> {
    // The first bootstrap given coordinates when it answers (on a lossy path its handshake may
    // take seconds); after a while any registered one will do.
    let first_deadline = deadline.min(Instant::now() + FIRST_BOOTSTRAP_WAIT);
    let mut status = wait_registered(&server.nat, Registered::First, first_deadline);
    if status.bootstraps.first().is_none_or(|b| b.observed.is_none()) {
        status = wait_registered(&server.nat, Registered::Any, deadline);
    }
    if !status.bootstraps.iter().any(|b| b.observed.is_some()) {
        return Err(unreachable_reason(&status, Duration::from_secs(args.timeout)));
    }
    let connection = server.nat.connect(target, deadline.saturating_duration_since(Instant::now()))?;
    let core = connection.conn.core;
    let mut line = serde_json::json!({
        "peer": target.to_string(),
        "path": connection.path.name(),
        "remote": connection.remote.to_string(),
        "connect_ms": millis(connection.connect),
    });
    if let Some(bytes) = args.send_bytes {
        let (report, reports) = crossbeam_channel::bounded(1);
        let request = ant_quic::nat::link::CoreRequest::Upload { conn: connection.conn, bytes, report };
        server.node.send_message(core, request).map_err(|e| e.to_string())?;
        let upload = reports
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| format!("the transfer of {bytes} bytes did not finish in time"))?;
        if let Some(error) = &upload.error {
            return Err(format!("transfer failed: {error}"));
        }
        let secs = upload.elapsed.as_secs_f64().max(1e-9);
        if let Some(object) = line.as_object_mut() {
            object.insert("bytes".into(), upload.bytes.into());
            object.insert("sha256".into(), upload.sha256.clone().into());
            object.insert("verified".into(), upload.verified.into());
            object.insert("mbit_s".into(), ((upload.bytes as f64 * 8.0 / secs / 1e6 * 10.0).round() / 10.0).into());
        }
    }
    // The RTT once the handshake (and any transfer) is done.
    let (report, reports) = crossbeam_channel::bounded(1);
    let describe = ant_quic::nat::link::CoreRequest::Describe { conn: connection.conn, report };
    if server.node.send_message(core, describe).is_ok() {
        if let Ok(Some((_, rtt))) = reports.recv_timeout(Duration::from_secs(2)) {
            if let Some(object) = line.as_object_mut() {
                object.insert("rtt_ms".into(), millis(rtt).into());
            }
        }
    }
    if args.json {
        Ok(line.to_string())
    } else {
        let get = |key: &str| line.get(key).map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default();
        let mut text = format!(
            "connected to {} {} via {} in {} ms (rtt {} ms)",
            get("peer"),
            get("path"),
            get("remote"),
            get("connect_ms"),
            get("rtt_ms")
        );
        if args.send_bytes.is_some() {
            text.push_str(&format!(
                "; sent {} bytes, sha256 {}, verified {}, {} Mbit/s",
                get("bytes"),
                get("sha256"),
                get("verified"),
                get("mbit_s")
            ));
        }
        Ok(text)
    }
}

fn connectivity_test(server: &ant_quic::node::Server, args: &NodeArgs, deadline: Instant) -> Result<String, String> {
    use ant_quic_control::nat::candidate::Mapping;
    let status = wait_registered(&server.nat, Registered::All, deadline);
    let observed: Vec<SocketAddr> = status.bootstraps.iter().filter_map(|b| b.observed).collect();
    let Some(first) = observed.first().copied() else {
        return Err(unreachable_reason(&status, Duration::from_secs(args.timeout)));
    };
    let mapping = match status.mapping() {
        Mapping::Unknown => "unknown (give two --bootstrap to detect it)",
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::EndpointDependent => "endpoint-dependent",
    };
    let rtt = status.bootstraps.iter().filter_map(|b| b.rtt).min();
    let bootstraps: Vec<serde_json::Value> = status
        .bootstraps
        .iter()
        .map(|b| {
            serde_json::json!({
                "address": b.address.to_string(),
                "reachable": b.observed.is_some(),
                "observed": b.observed.map(|o| o.to_string()),
                "rtt_ms": b.rtt.map(millis),
                "error": if b.observed.is_some() { None } else { Some(b.last_error.clone().unwrap_or_else(|| "no answer".into())) },
            })
        })
        .collect();
    let line = serde_json::json!({
        "reachable": true,
        "observed": first.to_string(),
        "mapping": mapping,
        "rtt_ms": rtt.map(millis),
        "bootstraps": bootstraps,
    });
    if args.json {
        return Ok(line.to_string());
    }
    let mut text = format!(
        "reachable: observed address {first}, NAT mapping {mapping}, rtt {}",
        rtt.map(|r| format!("{:.1} ms", millis(r))).unwrap_or_else(|| "unknown".into())
    );
    for b in &status.bootstraps {
        match b.observed {
            Some(o) => text.push_str(&format!("\n  {}: observed {o}", b.address)),
            None => text.push_str(&format!(
                "\n  {}: unreachable ({})",
                b.address,
                b.last_error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    Ok(text)
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
#[path = "../tests/runbook/commands.rs"]
mod runbook_commands;

/// Every `ant-quic` command the runbook (docs/operations.md) quotes parses with this CLI: flags,
/// values, subcommands, and what requires or excludes what, by clap's own parser. Nothing runs.
/// tests/runbook.rs checks the runbook's other commands.
#[cfg(test)]
mod runbook {
    use super::runbook_commands::{commands, Command};
    use super::Cli;
    use clap::error::ErrorKind;
    use clap::Parser;

    const RUNBOOK_TEXT: &str = include_str!("../docs/operations.md");

    fn parses(command: &Command) -> Result<(), String> {
        match Cli::try_parse_from(command.argv()) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => Ok(()),
            Err(e) => Err(format!("{}\n{}", command.at(), e.render())),
        }
    }

    #[test]
    fn every_ant_quic_command_in_the_runbook_parses() {
        let all = commands(RUNBOOK_TEXT).unwrap();
        let ours: Vec<&Command> = all.iter().filter(|c| c.program() == "ant-quic").collect();
        assert!(ours.len() >= 5, "only {} ant-quic commands found in the runbook", ours.len());
        let failures: Vec<String> = ours.iter().filter_map(|c| parses(c).err()).collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The check is not vacuous: what clap refuses, it refuses.
    #[test]
    fn a_flag_that_does_not_exist_or_lacks_what_it_requires_is_refused() {
        let bad = "```sh\nant-quic --no-such-flag\nant-quic --test\nant-quic --cores many\nant-quic config frob\n\
                   ant-quic --bootstrap b:9000 --test --connect 00\n```\n";
        for command in commands(bad).unwrap() {
            assert!(parses(&command).is_err(), "accepted: {}", command.text);
        }
    }
}
