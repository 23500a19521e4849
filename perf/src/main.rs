//! `ant-quic-perf`: load generator and side-by-side comparison for ant-quic.
//!
//! Subcommands:
//! - `quinn-bulk`: the baseline, quinn 0.11 on tokio, one connection, one stream;
//! - `ant-quic-bulk`: the same transfer through ant-quic's library;
//! - `quinn-get`: the baseline of `ant-quic get`, the same hq-interop download with quinn;
//! - `udp-ceiling`: raw UDP over loopback with GSO and GRO, the ceiling for both;
//! - `aead-ceiling`: packet crypto (seal + open of 1200-byte packets) on one core;
//! - `engine-ceiling`: quinn-proto and rustls with no I/O: CPU per full handshake on each side,
//!   and the sender's and the receiver's throughput on one core each;
//! - `relay-rate`: relay forwarding rate of a relay node, against the raw UDP ceiling and a
//!   minimal forwarder at the same datagram size, alternating, with a markdown table (or JSON);
//! - `server` / `client`: load workloads (bulk over many connections, request/response latency
//!   at a fixed rate, handshake rate, idle connections) with either implementation (`load.rs`);
//! - `async-bulk`: the same transfer through ant-quic's async API (`ant_quic::endpoint`) on tokio;
//! - `rpc-latency`: sequential 64-byte requests, one stream each, with the async API or quinn;
//! - `async-compare`: the async API against the callback API and quinn (bulk) and against quinn
//!   (latency), alternating, with a markdown table;
//! - `compare`: runs the above as child processes, alternating, and prints a table;
//! - `xdp-bulk`: a node on io-uring against the same node on af-xdp, on a veth between two
//!   network namespaces: one bulk download and many connections at once, with the node's CPU.

#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used, clippy::expect_used))]

mod aead_ceiling;
mod ant_bulk;
mod ant_load;
mod async_bulk;
mod async_compare;
mod compare;
mod engine_ceiling;
mod flood;
mod flood_compare;
mod harness;
mod load;
mod plot;
mod quinn_bulk;
mod quinn_get;
mod quinn_load;
mod relay_rate;
mod rpc_latency;
mod shutdown;
mod soak;
mod suite;
mod tls;
mod udp_ceiling;
mod udp_flow;
mod veth;
mod xdp_bulk;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ant-quic-perf", about = "ant-quic throughput benchmarks over loopback")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// quinn 0.11 (tokio, quinn-udp): one connection, one stream, server sends (or receives) N bytes.
    QuinnBulk {
        /// Bytes to transfer.
        #[arg(long, default_value_t = harness::DEFAULT_BYTES)]
        bytes: u64,
        /// Client sends to the server instead of the server sending to the client.
        #[arg(long)]
        upload: bool,
        /// Pin the server thread to the first allowed CPU and the client thread to the second.
        #[arg(long)]
        pin: bool,
    },
    /// ant-quic: one connection, one stream, server sends (or receives) N bytes.
    AntQuicBulk {
        /// Bytes to transfer.
        #[arg(long, default_value_t = harness::DEFAULT_BYTES)]
        bytes: u64,
        /// Client sends to the server instead of the server sending to the client.
        #[arg(long)]
        upload: bool,
        /// I/O backend (io-uring or portable); default: the library's choice.
        #[arg(long)]
        backend: Option<String>,
        /// Data-plane cores per node.
        #[arg(long, default_value_t = 1)]
        cores: usize,
    },
    /// ant-quic's async API (`ant_quic::endpoint`) on a tokio multi-thread runtime: one
    /// connection, one stream, server sends (or receives) N bytes.
    AsyncBulk {
        /// Bytes to transfer.
        #[arg(long, default_value_t = harness::DEFAULT_BYTES)]
        bytes: u64,
        /// Client sends to the server instead of the server sending to the client.
        #[arg(long)]
        upload: bool,
        /// tokio worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Request/response latency: sequential requests, each a new bidirectional stream with a
    /// 64-byte request and a 64-byte answer; one JSON line with the percentiles.
    RpcLatency(rpc_latency::RpcLatencyArgs),
    /// The async API against the callback API and quinn (bulk, both directions) and against quinn
    /// (request/response latency), alternating, each run a fresh process; prints a markdown table.
    AsyncCompare(async_compare::AsyncCompareArgs),
    /// quinn 0.11 doing what `ant-quic get` does: fetch files over hq-interop on one connection,
    /// write them under `--output`, print one line per file; then close and wait for the endpoint
    /// to be idle, as quinn's example client does.
    QuinnGet(quinn_get::QuinnGetArgs),
    /// Raw UDP over loopback: 1200-byte datagrams, a GSO sender thread and a GRO receiver thread.
    UdpCeiling {
        /// How long the sender runs.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Packet crypto on one core: seal and open 1200-byte packets with the negotiated suite.
    AeadCeiling {
        /// How long to run.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// The shared QUIC engine (quinn-proto, rustls) with no I/O: CPU per full handshake on each
    /// side, then one connection's sender and receiver throughput on one core each.
    EngineCeiling {
        /// Full handshakes to time (each then closed).
        #[arg(long, default_value_t = 500)]
        handshakes: u64,
        /// Payload bytes to move on one stream.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
    },
    /// Relay forwarding over loopback: a relay node between a sender and a receiver socket, against
    /// the raw UDP ceiling and a minimal forwarder at the same datagram size, alternating; print a
    /// markdown table (or JSON).
    RelayRate(relay_rate::RelayRateArgs),
    /// Serve the `ant-quic/1` operations with either implementation until stdin closes; prints
    /// one JSON line (address, pid, pinned identity) when ready.
    Server(load::ServerArgs),
    /// Run one load workload against a `server`; prints a table (or one JSON line).
    Client(load::ClientArgs),
    /// Run ant-quic and quinn alternately in fresh child processes, plus the UDP ceiling at the
    /// start and the end; print a markdown table (or JSON).
    Compare(compare::CompareArgs),
    /// A handshake flood on loopback: valid Initials from fresh connections at a fixed rate,
    /// never answered; counts the server's answers (one JSON line with --json).
    Flood(flood::FloodArgs),
    /// Each implementation's server under the same flood, with a legitimate client's handshakes
    /// and the server's memory measured; prints a markdown table (or JSON).
    FloodCompare(flood_compare::FloodCompareArgs),
    /// A node on io-uring against the same node on af-xdp, downloads on a veth between two
    /// network namespaces it makes (root): one connection and many at once, alternating; prints a
    /// markdown table (or JSON).
    XdpBulk(xdp_bulk::XdpBulkArgs),
    /// The `ant-quic` binary under idle connections and churn for a long time, sampled; fails
    /// unless its descriptors and connections come back to where they started.
    Soak(soak::SoakArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, so that `compare` can quote it.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `result` with the CPU time this process has spent so far.
fn with_cpu(result: harness::BulkResult) -> harness::BulkResult {
    harness::BulkResult { cpu_seconds: harness::cpu_seconds(std::process::id()), ..result }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::QuinnBulk { bytes, upload, pin } => {
            let r = with_cpu(quinn_bulk::run(bytes, upload, pin)?);
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::AntQuicBulk { bytes, upload, backend, cores } => {
            let r = with_cpu(ant_bulk::run(bytes, upload, backend.as_deref(), cores)?);
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::AsyncBulk { bytes, upload, workers } => {
            if bytes == 0 || workers == 0 {
                anyhow::bail!("--bytes and --workers must be at least 1");
            }
            let r = with_cpu(async_bulk::run(bytes, upload, workers)?);
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::RpcLatency(args) => {
            let r = rpc_latency::run(&args)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::AsyncCompare(args) => async_compare::run(&args)?,
        Cmd::QuinnGet(args) => quinn_get::run(&args)?,
        Cmd::UdpCeiling { seconds } => {
            if !(0.1..=60.0).contains(&seconds) {
                anyhow::bail!("--seconds must be between 0.1 and 60");
            }
            let r = udp_ceiling::run(Duration::from_secs_f64(seconds))?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::AeadCeiling { seconds } => {
            if !(0.01..=60.0).contains(&seconds) {
                anyhow::bail!("--seconds must be between 0.01 and 60");
            }
            let r = aead_ceiling::run(Duration::from_secs_f64(seconds))?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::EngineCeiling { handshakes, bytes } => {
            if handshakes == 0 || bytes == 0 {
                anyhow::bail!("--handshakes and --bytes must be at least 1");
            }
            let r = engine_ceiling::run(handshakes, bytes)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::RelayRate(args) => relay_rate::run(&args)?,
        Cmd::Server(args) => match args.implementation {
            load::Implementation::AntQuic => ant_load::serve(&args)?,
            load::Implementation::Quinn => quinn_load::serve(&args)?,
        },
        Cmd::Client(args) => {
            args.validate()?;
            let result = match args.implementation {
                load::Implementation::AntQuic => ant_load::run(&args)?,
                load::Implementation::Quinn => quinn_load::run(&args)?,
            };
            load::print(&result, args.json)?;
        }
        Cmd::Compare(args) => compare::run(&args)?,
        Cmd::Flood(args) => {
            let result = flood::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", result.summary());
            }
        }
        Cmd::FloodCompare(args) => flood_compare::run(&args)?,
        Cmd::Soak(args) => soak::run(&args)?,
        Cmd::XdpBulk(args) => xdp_bulk::run(&args)?,
    }
    Ok(())
}
