//! `ant-quic-perf soak`: the `ant-quic` binary under steady load for a long time, to find what
//! grows. Idle connections held open with keep-alives (one `client --workload idle` child for
//! the whole run) plus churn: every second a `client --workload bulk` child opens connections,
//! downloads, closes. Every `--sample-seconds` the node's RSS, open descriptors, threads and
//! `quic_connections_active` (from its admin listener) are recorded. At the end the load stops,
//! and the node must come back to where it started: no connection left, no descriptor more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::harness::{loadavg, machine, print_report, progress, rss_kib};
use crate::load::{LoadResult, ServerInfo};

/// `ant-quic-perf soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Idle connections held for the whole run (keep-alives every few seconds).
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Connections opened, used and closed every second.
    #[arg(long, default_value_t = 20)]
    pub churn: usize,
    /// Bytes each churn connection downloads.
    #[arg(long, default_value_t = 64 * 1024)]
    pub churn_bytes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60.0)]
    pub sample_seconds: f64,
    /// The node binary; default: `ant-quic` next to this executable.
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Pretty JSON instead of the markdown report.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file (for the plot).
    #[arg(long)]
    pub json_file: Option<PathBuf>,
}

/// One reading of the node.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub rss_mb: f64,
    pub fds: usize,
    pub threads: usize,
    pub connections_active: u64,
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub command: String,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub minutes: f64,
    pub idle: usize,
    pub churn_per_second: usize,
    pub churn_bytes: u64,
    /// Before any load.
    pub start: Sample,
    pub samples: Vec<Sample>,
    /// After the load stopped and the node settled.
    pub end: Sample,
    /// Idle connections the client established.
    pub idle_established: u64,
    pub churn_connections: u64,
    pub churn_errors: u64,
    /// What the first failed churn round said.
    pub churn_first_error: Option<String>,
    /// Largest RSS over the smallest, of the samples after the first quarter (the warm-up).
    pub rss_spread_after_warmup: f64,
    pub rss_flat: bool,
    pub fds_back: bool,
    pub connections_back: bool,
}

/// The node under test: a child `ant-quic`, its UDP address, admin address and peer ID.
struct NodeChild {
    child: Child,
    pid: u32,
    admin: SocketAddr,
    line: String,
    _data: TempData,
}

/// A scratch directory for the node's identity, removed at the end.
struct TempData(PathBuf);

impl Drop for TempData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl NodeChild {
    fn start(bin: &Path) -> Result<Self> {
        let data = TempData(std::env::temp_dir().join(format!("ant-quic-soak-{}", std::process::id())));
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log-level", "warn", "--data-dir"])
            .arg(&data.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no node stdout"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut peer_id, mut admin) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| anyhow!("the node announced no admin address"))?;
            if let Some(rest) = line.split("peer id ").nth(1) {
                peer_id = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if let Some(rest) = line.strip_prefix("admin http on ") {
                admin = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
            }
        }
        let (Some(addr), Some(peer_id), Some(admin)) = (addr, peer_id, admin) else {
            bail!("the node did not print its address and peer id");
        };
        let info =
            ServerInfo { implementation: "ant-quic".into(), addr, pid, peer_id: Some(peer_id), cert_der_hex: None };
        Ok(Self { child, pid, admin, line: serde_json::to_string(&info)?, _data: data })
    }

    fn sample(&self, since: Instant) -> Result<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).context("the node is gone")?;
        let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok());
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count();
        Ok(Sample {
            seconds: since.elapsed().as_secs_f64(),
            rss_mb: rss_kib(self.pid).unwrap_or(0) as f64 / 1024.0,
            fds,
            threads: threads.unwrap_or(0),
            connections_active: metric(self.admin, "quic_connections_active")?,
        })
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        // Only this child, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the node's `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> Result<u64> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("{name} missing from /metrics"))
}

/// Run the soak and print it; an error when the node did not come back to where it started.
pub fn run(args: &SoakArgs) -> Result<()> {
    if !(0.1..=120.0).contains(&args.minutes) || args.sample_seconds < 1.0 {
        bail!("--minutes must be between 0.1 and 120, --sample-seconds at least 1");
    }
    let exe = std::env::current_exe()?;
    let bin = args.node_bin.clone().unwrap_or_else(|| exe.with_file_name("ant-quic"));
    let load_before = loadavg();
    let node = NodeChild::start(&bin)?;
    let started = Instant::now();
    let start = node.sample(started)?;
    let seconds = args.minutes * 60.0;

    let mut idle = Command::new(&exe)
        .args(["client", "--impl", "ant-quic", "--server", &node.line, "--workload", "idle", "--json"])
        .args(["--connections", &args.idle.to_string(), "--concurrency", "64"])
        .args(["--hold", &format!("{seconds}"), "--timeout", &format!("{}", seconds + 600.0)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the idle client")?;

    let churn_args: Vec<String> =
        ["client", "--impl", "ant-quic", "--server", &node.line, "--workload", "bulk", "--json"]
            .into_iter()
            .map(str::to_owned)
            .chain(["--connections".into(), args.churn.to_string(), "--bytes".into(), args.churn_bytes.to_string()])
            .chain(["--timeout".into(), "60".into()])
            .collect();
    let (mut churn_connections, mut churn_errors) = (0u64, 0u64);
    let mut churn_first_error = None;
    let mut samples = Vec::new();
    let mut next_sample = started + Duration::from_secs_f64(args.sample_seconds);
    let end = started + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let round = Instant::now();
        if args.churn > 0 {
            match crate::harness::child_json::<LoadResult>(&exe, &churn_args, Duration::from_secs(90)) {
                Ok(result) => {
                    churn_connections += result.completed;
                    churn_errors += result.errors;
                    if churn_first_error.is_none() {
                        churn_first_error = result.first_error;
                    }
                }
                Err(error) => {
                    churn_errors += args.churn as u64;
                    churn_first_error.get_or_insert_with(|| format!("{error:#}"));
                }
            }
        }
        if Instant::now() >= next_sample {
            let sample = node.sample(started)?;
            progress(format_args!(
                "soak {:.0} s: RSS {:.1} MB, {} fds, {} threads, {} connections",
                sample.seconds, sample.rss_mb, sample.fds, sample.threads, sample.connections_active
            ));
            samples.push(sample);
            next_sample += Duration::from_secs_f64(args.sample_seconds);
        }
        thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }

    // The idle client closes its connections when its hold ends.
    let idle_result = wait_json(&mut idle, Duration::from_secs(120)).context("the idle client")?;
    let settle = Instant::now() + Duration::from_secs(45);
    let mut final_sample = node.sample(started)?;
    while (final_sample.connections_active != 0 || final_sample.fds != start.fds) && Instant::now() < settle {
        thread::sleep(Duration::from_millis(500));
        final_sample = node.sample(started)?;
    }
    drop(node);

    let warm = samples.len() / 4;
    let after: Vec<f64> = samples.iter().skip(warm).map(|s| s.rss_mb).collect();
    let (low, high) = after.iter().fold((f64::MAX, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
    let spread = if after.is_empty() || low <= 0.0 { 0.0 } else { high / low - 1.0 };
    let report = SoakReport {
        command: crate::harness::command_line(),
        load_before,
        load_after: loadavg(),
        minutes: args.minutes,
        idle: args.idle,
        churn_per_second: args.churn,
        churn_bytes: args.churn_bytes,
        rss_flat: spread <= 0.10,
        fds_back: final_sample.fds == start.fds,
        connections_back: final_sample.connections_active == 0,
        rss_spread_after_warmup: spread,
        idle_established: idle_result.completed,
        churn_connections,
        churn_errors,
        churn_first_error,
        start,
        samples,
        end: final_sample,
    };
    if let Some(path) = &args.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json-file {}", path.display()))?;
    }
    print_report(&report, args.json, markdown)?;
    if !(report.fds_back && report.connections_back) {
        bail!(
            "the node did not come back: {} fds (started with {}), {} connections active",
            report.end.fds,
            report.start.fds,
            report.end.connections_active
        );
    }
    Ok(())
}

/// Wait for a child that prints one JSON line, at most `limit`.
fn wait_json(child: &mut Child, limit: Duration) -> Result<LoadResult> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?.read_to_string(&mut out)?;
    crate::harness::last_json(&out)
}

fn markdown(r: &SoakReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    crate::harness::write_header(&mut s, &machine(), (r.load_before, r.load_after), &r.command);
    let _ = writeln!(
        s,
        "- Load: {} idle connections ({} established) and {} connections a second opened, used ({} bytes each) and closed, for {} minutes\n",
        r.idle, r.idle_established, r.churn_per_second, r.churn_bytes, r.minutes
    );
    let _ = writeln!(s, "| time (s) | RSS (MB) | descriptors | threads | quic_connections_active |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let row = |s: &mut String, label: &str, x: &Sample| {
        let _ = writeln!(s, "| {label} | {:.1} | {} | {} | {} |", x.rss_mb, x.fds, x.threads, x.connections_active);
    };
    row(&mut s, "start", &r.start);
    for sample in &r.samples {
        row(&mut s, &format!("{:.0}", sample.seconds), sample);
    }
    row(&mut s, "end, load stopped", &r.end);
    let _ = writeln!(
        s,
        "\nChurn: {} connections, {} errors{}. RSS after the first quarter: largest {:.1} % over smallest ({}). Descriptors back to the start: {}. Connections back to 0: {}.",
        r.churn_connections,
        r.churn_errors,
        r.churn_first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        r.rss_spread_after_warmup * 100.0,
        if r.rss_flat { "flat within 10 %" } else { "NOT flat within 10 %" },
        if r.fds_back { "yes" } else { "NO" },
        if r.connections_back { "yes" } else { "NO" },
    );
    s
}
