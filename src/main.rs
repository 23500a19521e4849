//! The `ant-quic` command: run a node, or fetch files over hq-interop.

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic::client::{Fetched, GetApp};
use ant_quic::dataplane::{Application, BackendKind};
use ant_quic::identity::PeerId;
use ant_quic::node::{connect_request, start_client, start_server, NodeOptions, DEFAULT_LISTEN};
use ant_quic::tls::{ServerAuth, ALPN_HQ_INTEROP};
use ant_quic::Error;
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
    /// UDP address to listen on.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,
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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download files over hq-interop on one connection.
    Get(GetArgs),
}

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
    init_logging();
    let result = match cli.command {
        Some(Command::Get(args)) => get(&args),
        None => run_node(&cli.node),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".ant-quic"),
        None => PathBuf::from(".ant-quic"),
    }
}

fn run_node(args: &NodeArgs) -> Result<ExitCode, Error> {
    // Block the shutdown signals before any core thread starts, so that every thread inherits
    // the mask and only this thread receives them, in sigwait.
    let signals = ShutdownSignals::block()?;
    let options = NodeOptions {
        listen: args.listen,
        cores: args.cores,
        backend: args.backend,
        data_dir: Some(args.data_dir.clone().unwrap_or_else(default_data_dir)),
        www: args.www.clone(),
        cpus: None,
    };
    let server = start_server(&options)?;
    let node = &server.node;
    println!("ant-quic {} peer id {}", env!("CARGO_PKG_VERSION"), server.identity.peer_id());
    println!(
        "listening on {} (udp, {} cores, backend {}, crypto {})",
        node.local_addr(),
        node.cores(),
        node.backend(),
        ant_quic::tls::provider_name()
    );
    let _ = std::io::stdout().flush();

    let signal = signals.wait();
    tracing::info!(signal, "shutting down: closing connections");
    let stats = server.node.stats();
    server.node.shutdown();
    server.node.join()?;
    tracing::info!("stopped; {}", ant_quic_control::Totals::collect(&stats));
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, taken synchronously by the main thread.
struct ShutdownSignals {
    set: libc::sigset_t,
}

impl ShutdownSignals {
    fn block() -> Result<Self, Error> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; the signal numbers are valid; pthread_sigmask only
        // reads `set` and changes this thread's mask.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::Io {
                context: "blocking SIGINT/SIGTERM".into(),
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(Self { set })
    }

    /// Wait for one of the signals; returns its number.
    fn wait(&self) -> i32 {
        let mut signal: libc::c_int = 0;
        loop {
            // SAFETY: `self.set` is an initialised sigset_t and `signal` a live int to write.
            let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
            if rc == 0 {
                return signal;
            }
        }
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
    let app = Mutex::new(Some(GetApp::new(requests, tx)));
    let node = start_client(
        args.backend,
        Arc::new(move |_core: usize| -> Box<dyn Application> {
            match app.lock().ok().and_then(|mut a| a.take()) {
                Some(app) => Box::new(app),
                None => Box::new(NoApp),
            }
        }),
    )?;
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

struct NoApp;
impl Application for NoApp {}
