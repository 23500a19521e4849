//! `xdp-bulk`: downloads from an ant-quic node on a veth between two network namespaces, the node
//! on io-uring against the same node on af-xdp, alternated in every pair of runs.
//!
//! The namespaces and the pair are made for the session and removed at its end
//! ([`crate::veth::VethPair`]). Each run is a fresh `server` process in the node's namespace,
//! pinned to the first allowed CPU, on the backend of the run, and a fresh `client` process
//! (ant-quic on io-uring) in the peer's, pinned to the last, doing one of two workloads: one
//! connection downloading `--bytes`, or `--connections` connections at once downloading
//! `--bytes-per-connection` each (aggregate). The node's CPU time is read from /proc/PID/stat
//! (user + system, every thread) before and after the client's run.
//!
//! A veth has no zero-copy AF_XDP: the af-xdp runs are in copy mode, a floor for the backend.

use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::harness::{
    command_json_watching, command_line, cpu_seconds, fmt_opt, loadavg, machine, median, print_report, sorted,
    write_header, Machine, ServerChild,
};
use crate::load::LoadResult;
use crate::veth::{VethPair, NODE_IP};

const BACKENDS: [&str; 2] = ["io-uring", "af-xdp"];
const PORT: u16 = 4433;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Args)]
pub struct XdpBulkArgs {
    /// Pairs of runs (io-uring, af-xdp) per workload.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Bytes of the one-connection download.
    #[arg(long, default_value_t = 200_000_000)]
    bytes: u64,
    /// Connections of the aggregate workload (0: leave it out).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Bytes each of them downloads.
    #[arg(long, default_value_t = 4_000_000)]
    bytes_per_connection: u64,
    /// Leave out the one-connection download.
    #[arg(long)]
    no_single: bool,
    /// Give up on a run after this many seconds (the client is killed).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Workload {
    connections: usize,
    bytes_per_connection: u64,
}

impl Workload {
    fn name(self) -> String {
        if self.connections == 1 {
            format!("bulk download, 1 connection, {} MB", self.bytes_per_connection / 1_000_000)
        } else {
            format!(
                "{} connections at once, {} MB each (aggregate)",
                self.connections,
                self.bytes_per_connection as f64 / 1e6
            )
        }
    }
}

#[derive(Debug, Serialize)]
struct Run {
    seq: usize,
    pair: usize,
    backend: String,
    workload: String,
    gbps: Option<f64>,
    seconds: Option<f64>,
    bytes: Option<u64>,
    /// The node process's user + system CPU seconds during the client's run.
    node_cpu_seconds: Option<f64>,
    /// `node_cpu_seconds` per GiB moved.
    node_cpu_seconds_per_gib: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    workload: String,
    backend: String,
    ok: usize,
    runs: usize,
    median_gbps: Option<f64>,
    min_gbps: Option<f64>,
    max_gbps: Option<f64>,
    median_cpu_per_gib: Option<f64>,
    /// Median Gbit/s over io-uring's median in the same session.
    of_io_uring: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    machine: Machine,
    pairs: usize,
    load_start: Option<f64>,
    load_end: Option<f64>,
    node_cpu: usize,
    client_cpu: usize,
    summaries: Vec<Summary>,
    runs: Vec<Run>,
}

/// Runs the session and prints the table (or JSON) on stdout, progress on stderr.
pub fn run(args: &XdpBulkArgs) -> Result<()> {
    if args.pairs == 0 || args.pairs > 50 {
        bail!("--pairs must be between 1 and 50");
    }
    if args.bytes == 0 || args.bytes_per_connection == 0 || args.connections > 1024 {
        bail!("--bytes and --bytes-per-connection must be at least 1, --connections at most 1024");
    }
    if !(5..=3600).contains(&args.timeout) {
        bail!("--timeout must be between 5 and 3600 seconds");
    }
    let mut workloads = Vec::new();
    if !args.no_single {
        workloads.push(Workload { connections: 1, bytes_per_connection: args.bytes });
    }
    if args.connections > 0 {
        workloads.push(Workload { connections: args.connections, bytes_per_connection: args.bytes_per_connection });
    }
    if workloads.is_empty() {
        bail!("nothing to run: --no-single and --connections 0");
    }
    let exe = std::env::current_exe()?;
    let cpus = ant_quic_dataplane::sys::thread::allowed_cpus();
    let (node_cpu, client_cpu) = (cpus.first().copied().unwrap_or(0), cpus.last().copied().unwrap_or(0));
    let veth = VethPair::create("bulk")?;
    let load_start = loadavg();
    let mut runs = Vec::new();
    for workload in &workloads {
        for pair in 1..=args.pairs {
            for backend in BACKENDS {
                eprintln!("[xdp-bulk] {} on {backend}, pair {pair}/{} …", workload.name(), args.pairs);
                let seq = runs.len() + 1;
                let measured = run_once(&exe, &veth, backend, *workload, (node_cpu, client_cpu), args.timeout);
                let run = match measured {
                    Ok((result, cpu)) => {
                        let per_gib = cpu.filter(|_| result.bytes > 0).map(|c| c / (result.bytes as f64 / GIB));
                        eprintln!("[xdp-bulk]   {:.3} Gbit/s, node CPU {} s/GiB", result.gbps, fmt_opt(per_gib, 2));
                        let failed = (result.errors > 0).then(|| {
                            format!("{} transfers failed: {}", result.errors, result.first_error.unwrap_or_default())
                        });
                        Run {
                            seq,
                            pair,
                            backend: backend.to_owned(),
                            workload: workload.name(),
                            gbps: failed.is_none().then_some(result.gbps),
                            seconds: Some(result.seconds),
                            bytes: Some(result.bytes),
                            node_cpu_seconds: cpu,
                            node_cpu_seconds_per_gib: per_gib,
                            error: failed,
                        }
                    }
                    Err(e) => {
                        eprintln!("[xdp-bulk]   failed: {e:#}");
                        Run {
                            seq,
                            pair,
                            backend: backend.to_owned(),
                            workload: workload.name(),
                            gbps: None,
                            seconds: None,
                            bytes: None,
                            node_cpu_seconds: None,
                            node_cpu_seconds_per_gib: None,
                            error: Some(format!("{e:#}")),
                        }
                    }
                };
                runs.push(run);
            }
        }
    }
    let load_end = loadavg();
    drop(veth);
    let mut summaries = Vec::new();
    for workload in &workloads {
        let name = workload.name();
        let mut of_workload: Vec<Summary> = BACKENDS.iter().map(|b| summarize(&runs, &name, b, args.pairs)).collect();
        let base = of_workload.first().and_then(|s| s.median_gbps);
        for s in &mut of_workload {
            s.of_io_uring = match (s.median_gbps, base) {
                (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                _ => None,
            };
        }
        summaries.extend(of_workload);
    }
    let report = Report {
        command: command_line(),
        machine: machine(),
        pairs: args.pairs,
        load_start,
        load_end,
        node_cpu,
        client_cpu,
        summaries,
        runs,
    };
    print_report(&report, args.json, markdown)
}

/// One run: a node on `backend` in the node's namespace, a client in the peer's. Returns the
/// client's result and the node's CPU seconds during it.
fn run_once(
    exe: &Path,
    veth: &VethPair,
    backend: &str,
    workload: Workload,
    (node_cpu, client_cpu): (usize, usize),
    timeout: u64,
) -> Result<(LoadResult, Option<f64>)> {
    let mut server = VethPair::command(&veth.node, Path::new("taskset"));
    server.args(["-c", &node_cpu.to_string()]).arg(exe).args([
        "server",
        "--impl",
        "ant-quic",
        "--cores",
        "1",
        "--listen",
        &format!("{NODE_IP}:{PORT}"),
        "--backend",
        backend,
    ]);
    let server = ServerChild::start_command(server)?;
    let mut client = VethPair::command(&veth.peer, Path::new("taskset"));
    client.args(["-c", &client_cpu.to_string()]).arg(exe).args([
        "client",
        "--impl",
        "ant-quic",
        "--backend",
        "io-uring",
        "--server",
        &server.line,
        "--workload",
        "bulk",
        "--connections",
        &workload.connections.to_string(),
        "--bytes",
        &workload.bytes_per_connection.to_string(),
        "--timeout",
        &timeout.to_string(),
        "--json",
    ]);
    // Let the server settle before its baseline reading.
    thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds(server.info.pid);
    let result = command_json_watching::<LoadResult>(client, Duration::from_secs(timeout + 30), &mut || {});
    let after = cpu_seconds(server.info.pid);
    drop(server);
    let cpu = match (before, after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok((result?, cpu))
}

fn summarize(runs: &[Run], workload: &str, backend: &str, planned: usize) -> Summary {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.workload == workload && r.backend == backend).collect();
    let rates = sorted(mine.iter().filter_map(|r| r.gbps));
    let cpu = sorted(mine.iter().filter(|r| r.gbps.is_some()).filter_map(|r| r.node_cpu_seconds_per_gib));
    Summary {
        workload: workload.to_owned(),
        backend: backend.to_owned(),
        ok: rates.len(),
        runs: planned,
        median_gbps: median(&rates),
        min_gbps: rates.first().copied(),
        max_gbps: rates.last().copied(),
        median_cpu_per_gib: median(&cpu),
        of_io_uring: None,
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    write_header(&mut s, &r.machine, (r.load_start, r.load_end), &r.command);
    let _ = writeln!(
        s,
        "- Path: a veth pair between two network namespaces made for the session; the node (`ant-quic-perf server`, \
         1 data-plane core) in one, pinned to CPU {}; the client (ant-quic on io-uring) in the other, pinned to CPU {}",
        r.node_cpu, r.client_cpu
    );
    let _ = writeln!(
        s,
        "- Runs: {} pairs per workload, io-uring then af-xdp in every pair, each a fresh server and client process",
        r.pairs
    );
    let _ = writeln!(
        s,
        "- af-xdp on a veth runs in copy mode (no zero-copy on veth): a floor for the backend, not what it does on a NIC"
    );
    let _ = writeln!(
        s,
        "- Node CPU: user + system seconds of the server process (/proc/PID/stat) during the client's run, per GiB moved"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| workload | node backend | median Gbit/s | min–max Gbit/s | runs ok | of io-uring | node CPU s/GiB (median) |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for x in &r.summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}–{} | {}/{} | {} | {} |",
            x.workload,
            x.backend,
            fmt_opt(x.median_gbps, 3),
            fmt_opt(x.min_gbps, 3),
            fmt_opt(x.max_gbps, 3),
            x.ok,
            x.runs,
            if x.backend == "io-uring" { "1 (baseline)".to_owned() } else { fmt_opt(x.of_io_uring, 2) },
            fmt_opt(x.median_cpu_per_gib, 2),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Runs in order (Gbit/s; node CPU s/GiB):");
    let _ = writeln!(s);
    for run in &r.runs {
        let _ = writeln!(
            s,
            "{}. {}, {}: {} ({}){}",
            run.seq,
            run.workload,
            run.backend,
            fmt_opt(run.gbps, 3),
            fmt_opt(run.node_cpu_seconds_per_gib, 2),
            run.error.as_ref().map_or_else(String::new, |e| format!(" — failed: {e}")),
        );
    }
    s
}
