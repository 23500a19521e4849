//! Load workloads, shared by both implementations: a `server` process and a `client` process.
//!
//! The server serves the `ant-quic/1` stream operations (see `src/protocol.rs` of the ant-quic
//! crate: `D` + u64 BE length → that many bytes; `U` → byte count; `E` → echo) on ALPN
//! `ant-quic/1`, whichever implementation runs it, so either client can talk to either server.
//! It prints one JSON line ([`ServerInfo`]) on stdout, then serves until its standard input
//! closes (so it never outlives the process that started it) or it gets SIGTERM / SIGINT.
//!
//! The client runs one [`Workload`] and prints a readable table, or one JSON line with `--json`
//! ([`LoadResult`]). Progress goes to stderr once a second when stderr is a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Which QUIC implementation runs a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Implementation {
    /// This repository's engine: data-plane cores, io_uring or portable I/O.
    AntQuic,
    /// quinn 0.11 from crates.io on tokio with quinn-udp.
    Quinn,
}

impl Implementation {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::AntQuic => "ant-quic",
            Implementation::Quinn => "quinn",
        }
    }
}

/// `ant-quic-perf server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Implementation to serve with.
    #[arg(long = "impl", value_enum)]
    pub implementation: Implementation,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Cores (ant-quic data-plane cores; quinn: tokio worker threads, 1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// ant-quic I/O backend (io-uring or portable); default: the library's choice.
    #[arg(long)]
    pub backend: Option<String>,
}

/// What a server prints when it is ready: one JSON line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// "ant-quic" or "quinn".
    #[serde(rename = "impl")]
    pub implementation: String,
    /// The bound UDP address.
    pub addr: std::net::SocketAddr,
    /// The server process, for RSS readings.
    pub pid: u32,
    /// ant-quic: the server's peer ID, which the client pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// quinn: the server's self-signed certificate (DER, hex), which the client pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_der_hex: Option<String>,
}

/// What a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every connection moves `--bytes` on one stream (download, or upload with `--upload`);
    /// the clock starts once every connection is established.
    Bulk,
    /// Request/response at a fixed aggregate `--rate` over `--connections` (open loop: latency
    /// counts from when a request was due, so a stall is not hidden). Each request is a new
    /// stream: `D` asking for `--response-bytes`.
    Rr,
    /// New connections with a full 1-RTT handshake (no resumption, no 0-RTT), `--concurrency`
    /// in flight, each closed as soon as it is established, for `--seconds`.
    Handshakes,
    /// Establish `--connections` and hold them idle for `--hold` seconds; with `--ready-file`
    /// the client creates that file once all are established (for server RSS readings).
    Idle,
}

/// `ant-quic-perf client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Implementation to connect with.
    #[arg(long = "impl", value_enum)]
    pub implementation: Implementation,
    /// The server's JSON line as printed by `ant-quic-perf server` (address and pinned identity).
    #[arg(long)]
    pub server: String,
    /// What to run.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Connections (bulk, rr, idle).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Bytes per connection (bulk).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub bytes: u64,
    /// Bulk: the client sends instead of receiving.
    #[arg(long)]
    pub upload: bool,
    /// rr: aggregate requests per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// rr: response size.
    #[arg(long, default_value_t = 1024)]
    pub response_bytes: u64,
    /// rr and handshakes: how long to run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// handshakes and idle: connection attempts in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// idle: how long to hold the connections once established.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// idle: create this file once every connection is established.
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// Client cores (ant-quic data-plane cores; quinn: tokio worker threads, 1 = current-thread).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// ant-quic I/O backend (io-uring or portable); default: the library's choice.
    #[arg(long)]
    pub backend: Option<String>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// Reject values that would make a run meaningless or unbounded.
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 || self.connections > 100_000 {
            bail!("--connections must be between 1 and 100000");
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            bail!("--concurrency must be between 1 and 10000");
        }
        if !(0.1..=600.0).contains(&self.seconds) || !(0.0..=7200.0).contains(&self.hold) {
            bail!("--seconds must be between 0.1 and 600, --hold between 0 and 7200");
        }
        if !(1.0..=7800.0).contains(&self.timeout) {
            bail!("--timeout must be between 1 and 7800 seconds");
        }
        if self.rate == 0 || self.rate > 10_000_000 {
            bail!("--rate must be between 1 and 10000000");
        }
        if self.cores == 0 || self.cores > 256 {
            bail!("--cores must be between 1 and 256");
        }
        Ok(())
    }

    /// The parsed `--server` line.
    pub fn server_info(&self) -> Result<ServerInfo> {
        serde_json::from_str(&self.server).map_err(|e| {
            anyhow::anyhow!("--server is not a server's JSON line ({e}); pass what `ant-quic-perf server` printed")
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// Record `d` in microseconds, saturating at the histogram's top.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, h.high());
    h.saturating_record(us);
}

/// What one client run measured: one JSON line with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadResult {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub workload: Workload,
    /// Connections asked for (bulk, rr, idle) or in flight (handshakes).
    pub connections: usize,
    pub cores: usize,
    /// Length of the measured phase.
    pub seconds: f64,
    /// Payload bytes moved in the measured phase (bulk, rr responses).
    pub bytes: u64,
    /// bytes × 8 / seconds / 1e9.
    pub gbps: f64,
    /// Completed operations: transfers (bulk), responses (rr), handshakes, established (idle).
    pub completed: u64,
    /// completed / seconds.
    pub per_second: f64,
    /// Operations that failed.
    pub errors: u64,
    /// Per operation: transfer time (bulk), response latency (rr), handshake time (handshakes,
    /// idle).
    pub latency_us: Option<Latency>,
    /// Negotiated TLS 1.3 cipher suite.
    pub cipher: String,
    /// I/O backend, when the implementation has a choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The first error seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl LoadResult {
    /// The readable form: a small table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} {:?}: {} connection(s), {} core(s), {:.2} s, cipher {}{}\n",
            self.implementation,
            self.workload,
            self.connections,
            self.cores,
            self.seconds,
            self.cipher,
            self.backend.as_deref().map(|b| format!(", {b}")).unwrap_or_default()
        );
        out.push_str(&format!(
            "  completed {}  ({:.1}/s)  errors {}  bytes {}  ({:.3} Gbit/s)\n",
            self.completed, self.per_second, self.errors, self.bytes, self.gbps
        ));
        if let Some(l) = &self.latency_us {
            out.push_str("  latency µs:   p50      p90      p99    p99.9      max     mean\n");
            out.push_str(&format!(
                "           {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.0}\n",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("  first error: {e}\n"));
        }
        out
    }
}

/// Prints one progress line a second on stderr, when stderr is a terminal.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub fn new() -> Self {
        let now = Instant::now();
        Self { enabled: std::io::stderr().is_terminal(), started: now, last: now }
    }

    /// Call often; prints `what` at most once a second.
    pub fn tick(&mut self, what: impl FnOnce() -> String) {
        if self.enabled && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!("[{:>5.1} s] {}", self.started.elapsed().as_secs_f64(), what());
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Lets the calling thread's sleeps end within microseconds of their deadline (the default slack is
/// 50 µs, a quarter of a request interval at 5000 requests a second). Both
/// clients' request pacers call it, so that neither adds its wake-up lateness to the latencies.
pub fn fine_timer_slack() {
    // Best effort: with the default slack the latencies are only a little worse.
    let _ = ant_quic_dataplane::sys::thread::set_timer_slack(std::time::Duration::from_nanos(1));
}

/// Print a client's result as asked.
pub fn print(result: &LoadResult, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        print!("{}", result.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_of_a_known_histogram() {
        let mut h = latency_histogram().unwrap();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = Latency::of(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50), "{l:?}");
        assert!((989..=991).contains(&l.p99), "{l:?}");
        assert_eq!(l.max, 1000);
        assert!(Latency::of(&latency_histogram().unwrap()).is_none());
    }

    #[test]
    fn server_line_round_trips_and_garbage_is_refused() {
        let info = ServerInfo {
            implementation: "quinn".into(),
            addr: "127.0.0.1:4433".parse().unwrap(),
            pid: 7,
            peer_id: None,
            cert_der_hex: Some("3082".into()),
        };
        let line = serde_json::to_string(&info).unwrap();
        let parsed: ServerInfo = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed.addr, info.addr);
        assert_eq!(parsed.cert_der_hex.as_deref(), Some("3082"));
        let args = ClientArgs {
            implementation: Implementation::Quinn,
            server: "not json".into(),
            workload: Workload::Rr,
            connections: 1,
            bytes: 1,
            upload: false,
            rate: 1,
            response_bytes: 1,
            seconds: 1.0,
            concurrency: 1,
            hold: 0.0,
            ready_file: None,
            cores: 1,
            backend: None,
            timeout: 10.0,
            json: true,
        };
        assert!(args.server_info().unwrap_err().to_string().contains("--server"));
    }
}
