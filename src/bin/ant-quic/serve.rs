//! The node's long-running life: start it, serve until a signal or a takeover, drain, reload on
//! SIGHUP, and tell systemd as it goes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::signal::BlockedSignals;
use ant_quic::dataplane::BackendKind;
use ant_quic::node::{start_server_with, NodeOptions};
use ant_quic::takeover::{Incumbent, Lineage, Successor, Takeover};
use ant_quic::Error;
use ant_quic_control::admin::PreviousGeneration;
use ant_quic_control::nat::coordinator::CoordinatorConfig;
use ant_quic_control::{AdminServer, AdminView};

use ant_quic::config::resolve_bootstraps;

use crate::peer::one_shot;
use crate::{config_error, finish, NodeArgs};

pub(crate) fn run_node(args: &NodeArgs) -> ExitCode {
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
    let (bootstraps, federation) =
        match (resolve_bootstraps(&config.node.bootstrap), resolve_bootstraps(&config.registry.bootstraps)) {
            (Ok(bootstraps), Ok(federation)) => (bootstraps, federation),
            (Err(error), _) | (_, Err(error)) => return config_error(&error),
        };
    // This node links to the other bootstraps of its federation as to any bootstrap, pinned by
    // peer ID; they are the allow-list of forwarded connection requests.
    let peer_bootstraps = federation.iter().filter_map(|b| b.peer).collect();
    let bootstraps = bootstraps.into_iter().chain(federation).collect();
    let mut options = NodeOptions {
        listen: config.node.listen,
        cores: config.node.cores,
        backend: config.node.backend.map(Into::into),
        data_dir: Some(config.data_dir()),
        www: config.node.www.clone(),
        cpus: None,
        nat: ant_quic::nat::NatOptions {
            bootstraps,
            coordinator: CoordinatorConfig {
                relay_lifetime: Duration::from_secs(config.nat.relay_lifetime),
                peer_bootstraps,
                ..CoordinatorConfig::default()
            },
            alternate: config.alternate(),
            traversal: config.nat.traversal(),
            peer_alpns: Vec::new(),
            registry: (&config.registry).into(),
        },
        join: None,
        admission: config.security.admission(),
        xdp_interface: config.node.xdp_interface.clone(),
        xdp_relay: config.node.xdp_relay,
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
            // Like a config error: the interface or kernel cannot do what the config asks.
            Err(
                error @ Error::Start(ant_quic::dataplane::StartError::BackendUnavailable {
                    kind: BackendKind::AfXdp,
                    ..
                }),
            ) => config_error(&error),
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
    // `curl localhost:9000/health`); with port 0 that is the port the node was given, or any
    // free TCP port when that number is taken.
    let admin_port = config.metrics.port.unwrap_or(node.local_addr().port());
    let admin_addr = SocketAddr::new(config.metrics.bind, admin_port);
    // The draining predecessor, as it last reported, for /health.
    let previous: Arc<Mutex<Option<PreviousGeneration>>> = Arc::default();
    let view = AdminView {
        node: node.handle(),
        version: env!("CARGO_PKG_VERSION").into(),
        build: ant_quic::build_info::build_line().into(),
        peer_id: server.identity.peer_id().to_string(),
        started,
        log_lines_dropped: Some(Arc::new(ant_quic::logging::dropped_lines)),
        bootstraps: Some(server.nat.bootstraps_json()),
        nat: Some(server.nat.metrics()),
        registry: Some(server.nat.registry()),
        generation: node.handle().generation(),
        previous: Arc::clone(&previous),
    };
    // Kept to serve admin HTTP again if a successor dies after the switch.
    let admin_view = view.clone();
    // A successor joins the predecessor's admin listener; the predecessor closes its own at the switch.
    let admin_started = if takeover.is_some() {
        AdminServer::start_joining(admin_addr, view)
    } else {
        match AdminServer::start(admin_addr, view.clone()) {
            // `listen` on port 0 asked for any port: when the UDP port's number is taken on TCP
            // (another process's connection may hold it), any free TCP port will do as well.
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && config.metrics.port.is_none()
                    && config.node.listen.port() == 0 =>
            {
                tracing::warn!(%admin_addr, "TCP port of the UDP port's number is taken; admin HTTP on any free port");
                AdminServer::start(SocketAddr::new(config.metrics.bind, 0), view)
            }
            started => started,
        }
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
    let build = ant_quic::build_info::build_line();
    println!("ant-quic {build} peer id {}", server.identity.peer_id());
    tracing::info!(peer_id = %server.identity.peer_id(), listen = %node.local_addr(), "ant-quic {build} serving");
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
        if let Err(error) = node.set_handed_over(true) {
            tracing::warn!(%error, "a core did not take the hand-over request; it goes on accepting new connections");
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
                if let Err(error) = node.set_handed_over(false) {
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
