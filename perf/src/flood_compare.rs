//! `ant-quic-perf flood-compare`: each implementation's server under the same handshake flood,
//! side by side. For each server: a legitimate client's handshakes unloaded, then the same
//! client during a `flood`, the server's resident memory sampled throughout. The legitimate
//! client is quinn's for both servers, so only the server differs.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::flood::{FloodResult, FloodShape};
use crate::harness::{child_json, child_json_watching, loadavg, machine, print_report, progress, rss_kib, ServerChild};
use crate::load::{Implementation, LoadResult};

/// `ant-quic-perf flood-compare`.
#[derive(Debug, Clone, Args)]
pub struct FloodCompareArgs {
    #[command(flatten)]
    pub shape: FloodShape,
    /// Server cores (ant-quic data-plane cores; quinn: tokio worker threads).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Seconds of unloaded handshakes before the flood (the baseline latency).
    #[arg(long, default_value_t = 3)]
    pub unloaded_seconds: u64,
    /// Implementations to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ant-quic,quinn")]
    pub impls: Vec<Implementation>,
    /// Pretty JSON instead of the markdown table.
    #[arg(long)]
    pub json: bool,
}

/// One server under the flood.
#[derive(Debug, Clone, Serialize)]
pub struct FloodRun {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub rss_before_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_growth_mb: f64,
    pub unloaded: LoadResult,
    pub loaded: LoadResult,
    /// Legitimate handshakes that succeeded during the flood, in percent.
    pub success_percent: f64,
    /// p99 handshake time during the flood over p99 unloaded.
    pub p99_ratio: Option<f64>,
    pub flood: FloodResult,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub command: String,
    pub initials: u64,
    pub rate: u64,
    pub ports: usize,
    pub whole_flight: bool,
    pub cores: usize,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub runs: Vec<FloodRun>,
}

/// Run the comparison and print it.
pub fn run(args: &FloodCompareArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let load_before = loadavg();
    let mut runs = Vec::new();
    for &implementation in &args.impls {
        progress(format_args!(
            "{} server under a flood of {} Initials at {}/s",
            implementation.name(),
            args.shape.initials,
            args.shape.rate
        ));
        runs.push(run_one(&exe, args, implementation)?);
    }
    let report = FloodReport {
        command: crate::harness::command_line(),
        initials: args.shape.initials,
        rate: args.shape.rate,
        ports: args.shape.ports,
        whole_flight: args.shape.whole_flight,
        cores: args.cores,
        load_before,
        load_after: loadavg(),
        runs,
    };
    print_report(&report, args.json, markdown)
}

fn run_one(exe: &Path, args: &FloodCompareArgs, implementation: Implementation) -> Result<FloodRun> {
    let server = ServerChild::start(exe, implementation, args.cores)?;
    let pid = server.info.pid;
    let handshakes = |seconds: u64| -> Vec<String> {
        ["client", "--impl", "quinn", "--server", &server.line, "--workload", "handshakes", "--concurrency", "1"]
            .into_iter()
            .map(str::to_owned)
            .chain(["--seconds".to_owned(), seconds.to_string(), "--json".to_owned()])
            .collect()
    };
    let unloaded: LoadResult =
        child_json(exe, &handshakes(args.unloaded_seconds), Duration::from_secs(60)).context("unloaded handshakes")?;
    let rss_before = rss_kib(pid).ok_or_else(|| anyhow!("cannot read the server's RSS"))?;

    let flood_seconds = args.shape.initials.div_ceil(args.shape.rate.max(1));
    let mut flood_args = vec!["flood".to_owned(), "--server".to_owned(), server.line.clone(), "--json".to_owned()];
    flood_args.extend(args.shape.args());
    let flood_exe = exe.to_owned();
    let timeout = Duration::from_secs(flood_seconds * 3 + 30);
    let flood = std::thread::spawn(move || child_json::<FloodResult>(&flood_exe, &flood_args, timeout));
    let mut peak = rss_before;
    let loaded: LoadResult = child_json_watching(exe, &handshakes(flood_seconds), timeout, &mut || {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    })
    .context("handshakes during the flood")?;
    let flood = flood.join().map_err(|_| anyhow!("the flood thread panicked"))?.context("the flood")?;
    peak = peak.max(rss_kib(pid).unwrap_or(0));
    drop(server);

    let attempts = loaded.completed + loaded.errors;
    let p99 = |r: &LoadResult| r.latency_us.map(|l| l.p99 as f64);
    let mb = |kib: u64| kib as f64 / 1024.0;
    Ok(FloodRun {
        implementation: implementation.name().to_owned(),
        rss_before_mb: mb(rss_before),
        rss_peak_mb: mb(peak),
        rss_growth_mb: mb(peak.saturating_sub(rss_before)),
        success_percent: if attempts == 0 { 0.0 } else { 100.0 * loaded.completed as f64 / attempts as f64 },
        p99_ratio: match (p99(&loaded), p99(&unloaded)) {
            (Some(l), Some(u)) if u > 0.0 => Some(l / u),
            _ => None,
        },
        unloaded,
        loaded,
        flood,
    })
}

fn markdown(r: &FloodReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    crate::harness::write_header(&mut s, &machine(), (r.load_before, r.load_after), &r.command);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| server | RSS before → peak (MB) | growth (MB) | legitimate handshakes (ok / tried) | success | p99 unloaded (ms) | p99 flooded (ms) | p99 ratio | answers per Initial | amplification | Retry sent |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in &r.runs {
        let ms = |l: &LoadResult| l.latency_us.map_or("-".to_owned(), |l| format!("{:.2}", l.p99 as f64 / 1000.0));
        let f = &run.flood;
        let _ = writeln!(
            s,
            "| {} | {:.1} → {:.1} | {:.1} | {} / {} | {:.2} % | {} | {} | {} | {:.2} | {:.3} | {} |",
            run.implementation,
            run.rss_before_mb,
            run.rss_peak_mb,
            run.rss_growth_mb,
            run.loaded.completed,
            run.loaded.completed + run.loaded.errors,
            run.success_percent,
            ms(&run.unloaded),
            ms(&run.loaded),
            run.p99_ratio.map_or("-".to_owned(), |x| format!("{x:.2}")),
            if f.initials == 0 { 0.0 } else { f.answers as f64 / f.initials as f64 },
            f.amplification,
            f.retries,
        );
    }
    let _ = writeln!(
        s,
        "\nFlood: {} connections per run at {}/s, each fresh and never answered, sending {} of its first flight, from {} source ports, against a server of {} core(s); the legitimate client is quinn's, one handshake at a time, for every server. Answers per Initial: datagrams back per connection.",
        r.initials,
        r.rate,
        if r.whole_flight { "every datagram" } else { "the first datagram" },
        r.ports,
        r.cores
    );
    s
}
