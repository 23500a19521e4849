//! The `ant-quic` command: run a node, or fetch files over hq-interop.

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

mod get;
mod peer;
mod progress;
mod serve;
mod top;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ant_quic::config::{Loader, Overrides, RegistryBackend};
use ant_quic::dataplane::BackendKind;
use ant_quic::identity::PeerId;
use ant_quic::Error;
use clap::{CommandFactory, Parser, Subcommand};

use crate::get::get;
use crate::serve::run_node;

/// A QUIC node for peer-to-peer networks behind NATs.
///
/// `--version` prints one line: version, git commit, cargo features, crypto provider and default
/// I/O backend (as `/health` shows in `build` and the node logs when it starts).
#[derive(Debug, Parser)]
#[command(name = "ant-quic", version = ant_quic::build_info::build_line(), about)]
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
    /// I/O backend: io-uring, portable or af-xdp (default: io-uring when the kernel allows it).
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
    /// Register with this bootstrap node (repeatable; replaces `[node] bootstrap`). With
    /// PEER_ID@, its certificate must prove that peer ID. The first one coordinates --connect; the
    /// next one takes the request over when it does not answer.
    #[arg(long, value_name = "[PEER_ID@]HOST:PORT")]
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
    /// On a terminal (and without --json), stderr shows a bar with rate and ETA meanwhile.
    #[arg(long, value_name = "BYTES", requires = "connect")]
    send_bytes: Option<u64>,
    /// With --connect: when the connection went through the relay, wait up to this many seconds
    /// (within --timeout) for it to move to a direct path before reporting.
    #[arg(long, value_name = "SECONDS", requires = "connect")]
    wait_direct: Option<u64>,
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
    /// Seconds a relay allocation this node grants as a bootstrap lives (default 600).
    #[arg(long, value_name = "SECONDS")]
    relay_lifetime: Option<u64>,
    /// Where this node, as a bootstrap, keeps its peers: memory, or etcd shared with other
    /// bootstraps (needs a build with `--features etcd`; docs/federation.md).
    #[arg(long, value_name = "BACKEND")]
    registry_backend: Option<RegistryBackend>,
    /// An etcd client URL, http://HOST:PORT or https://HOST:PORT (repeatable; replaces
    /// `[registry] endpoints`).
    #[arg(long = "registry-endpoint", value_name = "URL")]
    registry_endpoints: Vec<String>,
    /// Another bootstrap of the federation, PEER_ID@HOST:PORT (repeatable; replaces `[registry]
    /// bootstraps`): this node links to it, forwards connection requests for its peers, and
    /// takes forwarded requests from the bootstraps so named only.
    #[arg(long = "registry-bootstrap", value_name = "PEER_ID@HOST:PORT")]
    registry_bootstraps: Vec<String>,
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
                relay_lifetime: self.relay_lifetime,
                registry_backend: self.registry_backend,
                registry_endpoints: self.registry_endpoints.clone(),
                registry_bootstraps: self.registry_bootstraps.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download files over hq-interop on one connection.
    ///
    /// On a terminal, stderr shows progress (bytes, rate and elapsed time per file and in total;
    /// no ETA: hq-interop sends no length), cleared at the end.
    Get(GetArgs),
    /// Live view of a running node, refreshed from its admin endpoint's /metrics.
    ///
    /// Per core: state, connections, packets and bits per second, loop busy share, hand-offs and
    /// drops; node-wide: handshakes per second with p50/p99 handshake time, RTT p50/p99, traffic,
    /// NAT attempts and success rate, registered peers, relay allocations and forwarded traffic,
    /// errors by kind. Keys: q (or Esc, Ctrl-C) quits; left/right, or n s c p b l h d, choose the
    /// column the cores are sorted by. When stdout is not a terminal it prints one plain line per
    /// interval instead; --once prints one JSON snapshot.
    Top(top::TopArgs),
    /// Check a configuration file, or print the default one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the shell completion script for SHELL.
    ///
    /// Release packages install them (setup-server.sh); by hand:
    /// `ant-quic completions bash > /usr/local/share/bash-completion/completions/ant-quic`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this node's peer ID and exit: the key in its data directory (created there if
    /// missing), as other bootstraps name it in `[registry] bootstraps` and peers in
    /// `--bootstrap PEER_ID@HOST:PORT`.
    PeerId {
        /// Directory holding the node's identity key (default: ~/.ant-quic, as for the node).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the manual page (roff).
    ///
    /// Read it with `ant-quic man | man -l -`; release packages install it (setup-server.sh).
    Man,
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
    /// I/O backend: io-uring, portable or af-xdp (default: io-uring when the kernel allows it).
    /// af-xdp needs --bind.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Local address to send from, IP or IP:PORT (default: any address, IPv4 and IPv6, any port).
    /// With --backend af-xdp, an address of the interface to attach to.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_bind)]
    bind: Option<SocketAddr>,
    /// Give up after this many seconds. A handshake keeps trying until then, and so may a
    /// connection that hears nothing (QUIC's idle timeout, the smaller of this and the server's).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Split the URLs, in order, over this many connections made one after another; each after
    /// the first resumes the TLS session of the one before (session tickets kept in memory).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// With --connections: send the requests of resumed connections as 0-RTT data, before the
    /// handshake completes (when the server allows it; requests it refuses are sent again).
    #[arg(long)]
    zero_rtt: bool,
    /// Initiate a key update every this many bytes received (interop tests).
    #[arg(long, hide = true, default_value_t = 0)]
    key_update_every: u64,
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
        Some(Command::Top(args)) => top::top(&args),
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
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ant-quic", &mut script);
            print_all(&script)
        }
        Some(Command::PeerId { data_dir }) => {
            let dir = data_dir.unwrap_or_else(|| ant_quic::config::Config::default().data_dir());
            match ant_quic::identity::Identity::load_or_create(&dir) {
                Ok(identity) => {
                    println!("{}", identity.peer_id());
                    ExitCode::SUCCESS
                }
                Err(error) => config_error(&error),
            }
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => print_all(&page),
                Err(error) => finish(Err(Error::Io { context: "rendering the manual page".into(), source: error })),
            }
        }
        None => run_node(&cli.node),
    }
}

/// Write generated text to stdout. Built in memory first: clap_complete panics when its writer
/// fails. A reader that stops early (`| head`) is not an error.
fn print_all(text: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            finish(Err(Error::Io { context: "writing to stdout".into(), source: error }))
        }
        _ => ExitCode::SUCCESS,
    }
}

/// `--bind IP[:PORT]`: an IP alone takes any free port.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| format!("'{text}' is neither IP nor IP:PORT"))
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

#[cfg(test)]
#[path = "../../../tests/runbook/commands.rs"]
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

    const RUNBOOK_TEXT: &str = include_str!("../../../docs/operations.md");

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

#[cfg(test)]
mod bind {
    use super::parse_bind;

    #[test]
    fn bind_takes_an_ip_with_or_without_a_port_and_refuses_anything_else() {
        assert_eq!(parse_bind("10.0.0.1"), Ok("10.0.0.1:0".parse().unwrap()));
        assert_eq!(parse_bind("10.0.0.1:5000"), Ok("10.0.0.1:5000".parse().unwrap()));
        assert_eq!(parse_bind("::1"), Ok("[::1]:0".parse().unwrap()));
        assert_eq!(parse_bind("[::1]:7"), Ok("[::1]:7".parse().unwrap()));
        assert!(parse_bind("eth0").is_err() && parse_bind("10.0.0.1:x").is_err());
    }
}
