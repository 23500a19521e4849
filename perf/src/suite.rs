//! The rows of `compare` beyond single-connection bulk: many connections, handshake rate,
//! request/response latency, memory per idle connection, relay forwarding, the packet-crypto
//! ceiling, and the cost curve. Every row runs ant-quic and quinn alternately, each run a fresh
//! `server` process and a fresh `client` process (`load.rs`), at each core count asked for.

use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::aead_ceiling::AeadResult;
use crate::engine_ceiling::EngineResult;
use crate::harness::{child_json, child_json_watching, cpu_seconds, median, progress, rss_kib, ServerChild};
use crate::load::{Implementation, LoadResult};
use crate::plot::{PlotRow, Spread};

/// Rows `compare` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowKind {
    /// Single connection bulk throughput, both directions (the first table).
    Bulk,
    /// 64 concurrent connections, aggregate download throughput.
    Conns,
    /// New connections per second, full 1-RTT handshake, no resumption.
    Handshakes,
    /// Request/response latency at a fixed rate.
    Rr,
    /// Server memory per idle connection over 10 000 connections.
    Idle,
    /// Relay forwarding through a relay node against the raw UDP ceiling.
    Relay,
    /// Packet crypto (seal + open) on one core.
    Aead,
    /// The shared QUIC engine with no I/O: CPU per handshake, sender and receiver throughput.
    Engine,
    /// Throughput and handshake rate as connections grow (1, 64, 1 000, 10 000).
    Curve,
}

#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Rows to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,conns,handshakes,rr,idle,relay,aead,engine,curve"
    )]
    pub rows: Vec<RowKind>,
    /// Alternating (ant-quic, quinn) pairs per load row.
    #[arg(long, default_value_t = 5)]
    pub row_pairs: usize,
    /// Alternating pairs per point of the cost curve.
    #[arg(long, default_value_t = 3)]
    pub curve_pairs: usize,
    /// Core counts (server and client each) the load rows run at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub core_counts: Vec<usize>,
    /// Connections of the idle-memory row.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Requests per second of the latency row.
    #[arg(long, default_value_t = 5_000)]
    pub rr_rate: u64,
}

/// What a row measures, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Metric {
    Gbps,
    PerSecond,
    P50Micros,
    P99Micros,
    /// Server RSS growth per established connection, in KB.
    RssKbPerConnection,
    /// Server CPU time (user + system, all threads) per completed operation, in µs.
    ServerCpuMicrosPerOp,
    /// Server CPU time per GiB of payload, in seconds.
    ServerCpuSecondsPerGib,
}

impl Metric {
    fn unit(self) -> &'static str {
        match self {
            Metric::Gbps => "Gbit/s",
            Metric::PerSecond => "/s",
            Metric::P50Micros | Metric::P99Micros => "µs",
            Metric::RssKbPerConnection => "KB/conn",
            Metric::ServerCpuMicrosPerOp => "server CPU µs/op",
            Metric::ServerCpuSecondsPerGib => "server CPU s/GiB",
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Metric::Gbps | Metric::PerSecond)
    }
}

/// One load configuration, run for both implementations.
#[derive(Debug, Clone, Serialize)]
struct Point {
    /// What the table calls it.
    label: String,
    /// Which row or curve it belongs to.
    group: &'static str,
    cores: usize,
    /// Client arguments after `--impl` and `--server`.
    client_args: Vec<String>,
    metrics: Vec<Metric>,
    /// ant-quic / quinn must reach at least (higher is better) or at most (lower) this.
    target: Option<f64>,
    /// Connections whose server RSS growth is measured (idle rows).
    rss_connections: Option<usize>,
    pairs: usize,
}

/// One client run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    seq: usize,
    label: String,
    cores: usize,
    #[serde(rename = "impl")]
    implementation: &'static str,
    pair: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<LoadResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_kb_per_connection: Option<f64>,
    /// Server CPU seconds (user + system) while the client ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Median and spread of one metric of one implementation at one point.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    ok: usize,
    runs: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Line {
    label: String,
    group: &'static str,
    cores: usize,
    metric: Metric,
    ant_quic: Figure,
    quinn: Figure,
    /// ant-quic median / quinn median.
    ratio: Option<f64>,
    target: Option<f64>,
    met: Option<bool>,
    cipher: Option<String>,
}

/// Everything the suite measured.
#[derive(Debug, Serialize)]
pub struct SuiteReport {
    lines: Vec<Line>,
    aead: Option<AeadResult>,
    engine: Option<EngineResult>,
    relay: Option<serde_json::Value>,
    errors: Vec<String>,
    runs: Vec<Run>,
}

const MIB: u64 = 1 << 20;
/// Runs of `engine-ceiling`; the best of each figure is the ceiling.
const ENGINE_RUNS: usize = 3;

fn points(args: &SuiteArgs) -> Vec<Point> {
    let mut out = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    for &cores in &args.core_counts {
        if args.rows.contains(&RowKind::Conns) {
            out.push(Point {
                label: "64 connections, aggregate download (16 MiB each)".into(),
                group: "rows",
                cores,
                client_args: s(&["--workload", "bulk", "--connections", "64", "--bytes", &(16 * MIB).to_string()]),
                metrics: vec![Metric::Gbps, Metric::ServerCpuSecondsPerGib],
                target: Some(3.0),
                rss_connections: None,
                pairs: args.row_pairs,
            });
        }
        if args.rows.contains(&RowKind::Handshakes) {
            out.push(Point {
                label: "new connections per second (full handshake, 16 in flight)".into(),
                group: "rows",
                cores,
                client_args: s(&["--workload", "handshakes", "--concurrency", "16", "--seconds", "3"]),
                metrics: vec![Metric::PerSecond, Metric::ServerCpuMicrosPerOp],
                target: Some(2.0),
                rss_connections: None,
                pairs: args.row_pairs,
            });
        }
        if args.rows.contains(&RowKind::Rr) {
            let rate = args.rr_rate.to_string();
            out.push(Point {
                label: format!("request/response at {rate}/s over 16 connections (1 KiB responses)"),
                group: "rows",
                cores,
                client_args: s(&[
                    "--workload",
                    "rr",
                    "--connections",
                    "16",
                    "--rate",
                    &rate,
                    "--response-bytes",
                    "1024",
                    "--seconds",
                    "5",
                ]),
                metrics: vec![Metric::P50Micros, Metric::P99Micros],
                target: Some(1.0),
                rss_connections: None,
                pairs: args.row_pairs,
            });
        }
        if args.rows.contains(&RowKind::Idle) {
            let n = args.idle_connections.to_string();
            out.push(Point {
                label: format!("server memory per idle connection ({n} connections)"),
                group: "rows",
                cores,
                client_args: s(&["--workload", "idle", "--connections", &n, "--concurrency", "64", "--hold", "1"]),
                metrics: vec![Metric::RssKbPerConnection],
                target: Some(1.0),
                rss_connections: Some(args.idle_connections),
                pairs: args.row_pairs,
            });
        }
        if args.rows.contains(&RowKind::Curve) {
            for n in [1u64, 64, 1000, 10_000] {
                // About 1 GiB in all, at least 64 KiB per connection.
                let each = ((1u64 << 30) / n).max(64 * 1024);
                out.push(Point {
                    label: format!("throughput, {n} connections ({} KiB each)", each / 1024),
                    group: "curve",
                    cores,
                    client_args: s(&[
                        "--workload",
                        "bulk",
                        "--connections",
                        &n.to_string(),
                        "--bytes",
                        &each.to_string(),
                    ]),
                    metrics: vec![Metric::Gbps],
                    target: None,
                    rss_connections: None,
                    pairs: args.curve_pairs,
                });
            }
            for n in [1u64, 64, 1000, 10_000] {
                out.push(Point {
                    label: format!("handshakes, {n} in flight"),
                    group: "curve",
                    cores,
                    client_args: s(&["--workload", "handshakes", "--concurrency", &n.to_string(), "--seconds", "3"]),
                    metrics: vec![Metric::PerSecond],
                    target: None,
                    rss_connections: None,
                    pairs: args.curve_pairs,
                });
            }
        }
    }
    out
}

/// Runs the rows asked for (other than `bulk`, which `compare` runs itself).
pub fn run(exe: &Path, args: &SuiteArgs, timeout: Duration) -> Result<SuiteReport> {
    if args.row_pairs == 0 || args.row_pairs > 100 || args.curve_pairs == 0 || args.curve_pairs > 100 {
        anyhow::bail!("--row-pairs and --curve-pairs must be between 1 and 100");
    }
    if args.core_counts.iter().any(|&c| c == 0 || c > 256) {
        anyhow::bail!("--core-counts must be between 1 and 256");
    }
    let mut errors = Vec::new();
    let aead = if args.rows.contains(&RowKind::Aead) {
        progress(format_args!("aead ceiling"));
        let aead_args = vec!["aead-ceiling".to_owned(), "--seconds".to_owned(), "2".to_owned()];
        match child_json::<AeadResult>(exe, &aead_args, timeout) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(format!("aead ceiling: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut runs = Vec::new();
    let points = points(args);
    for (i, point) in points.iter().enumerate() {
        for pair in 1..=point.pairs {
            for implementation in [Implementation::AntQuic, Implementation::Quinn] {
                progress(format_args!(
                    "[{}/{}] {} at {} core(s), {} pair {pair}/{}",
                    i + 1,
                    points.len(),
                    point.label,
                    point.cores,
                    implementation.name(),
                    point.pairs
                ));
                let run = run_once(exe, point, implementation, timeout);
                let (result, rss, cpu, error) = match run {
                    Ok(m) => {
                        progress(format_args!("  {}", brief(&m.result, m.rss_kb_per_connection)));
                        (Some(m.result), m.rss_kb_per_connection, m.server_cpu_seconds, None)
                    }
                    Err(e) => {
                        progress(format_args!("  failed: {e:#}"));
                        (None, None, None, Some(format!("{e:#}")))
                    }
                };
                runs.push(Run {
                    seq: runs.len() + 1,
                    label: point.label.clone(),
                    cores: point.cores,
                    implementation: implementation.name(),
                    pair,
                    result,
                    rss_kb_per_connection: rss,
                    server_cpu_seconds: cpu,
                    error,
                });
            }
        }
    }

    let engine = if args.rows.contains(&RowKind::Engine) {
        // A ceiling is the best the engine did: a busy moment of the machine only lowers it.
        let mut best: Option<EngineResult> = None;
        for run in 1..=ENGINE_RUNS {
            progress(format_args!("engine ceiling {run}/{ENGINE_RUNS}"));
            let engine_args = vec!["engine-ceiling".to_owned()];
            match child_json::<EngineResult>(exe, &engine_args, timeout) {
                Ok(r) => best = Some(best.map_or_else(|| r.clone(), |b| b.best_of(&r))),
                Err(e) => errors.push(format!("engine ceiling: {e:#}")),
            }
        }
        best
    } else {
        None
    };

    let relay = if args.rows.contains(&RowKind::Relay) {
        progress(format_args!("relay forwarding (relay-rate)"));
        let relay_args: Vec<String> =
            ["relay-rate", "--json", "--runs", "3", "--sizes", "1200", "--backends", "io-uring", "--seconds", "2"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        match child_json::<serde_json::Value>(exe, &relay_args, timeout * 4) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(format!("relay-rate: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut lines = Vec::new();
    for point in &points {
        for &metric in &point.metrics {
            lines.push(line(point, metric, &runs));
        }
    }
    Ok(SuiteReport { lines, aead, engine, relay, errors, runs })
}

fn brief(r: &LoadResult, rss: Option<f64>) -> String {
    let mut s = format!("{} done, {:.1}/s, {:.3} Gbit/s, {} errors", r.completed, r.per_second, r.gbps, r.errors);
    if let Some(l) = &r.latency_us {
        s.push_str(&format!(", p50 {} µs, p99 {} µs", l.p50, l.p99));
    }
    if let Some(kb) = rss {
        s.push_str(&format!(", server RSS {kb:.1} KB/conn"));
    }
    s
}

fn metric_of(run: &Run, metric: Metric) -> Option<f64> {
    let r = run.result.as_ref()?;
    // A run with failed operations does not count: its figure would flatter it.
    if r.errors > 0 || r.completed == 0 {
        return None;
    }
    match metric {
        Metric::Gbps => Some(r.gbps),
        Metric::PerSecond => Some(r.per_second),
        Metric::P50Micros => r.latency_us.map(|l| l.p50 as f64),
        Metric::P99Micros => r.latency_us.map(|l| l.p99 as f64),
        Metric::RssKbPerConnection => run.rss_kb_per_connection,
        Metric::ServerCpuMicrosPerOp => run.server_cpu_seconds.map(|c| c * 1e6 / r.completed as f64),
        Metric::ServerCpuSecondsPerGib if r.bytes > 0 => {
            run.server_cpu_seconds.map(|c| c / (r.bytes as f64 / (1u64 << 30) as f64))
        }
        Metric::ServerCpuSecondsPerGib => None,
    }
}

fn figure(point: &Point, implementation: &str, metric: Metric, runs: &[Run]) -> Figure {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.label == point.label && r.cores == point.cores && r.implementation == implementation)
        .collect();
    let mut v: Vec<f64> = mine.iter().filter_map(|r| metric_of(r, metric)).collect();
    v.sort_by(f64::total_cmp);
    Figure { median: median(&v), min: v.first().copied(), max: v.last().copied(), ok: v.len(), runs: mine.len() }
}

fn line(point: &Point, metric: Metric, runs: &[Run]) -> Line {
    let ant_quic = figure(point, "ant-quic", metric, runs);
    let quinn = figure(point, "quinn", metric, runs);
    let ratio = match (ant_quic.median, quinn.median) {
        (Some(a), Some(q)) if q > 0.0 => Some(a / q),
        _ => None,
    };
    // The CPU figures explain a row; its target is on what a user sees.
    let target =
        point.target.filter(|_| !matches!(metric, Metric::ServerCpuMicrosPerOp | Metric::ServerCpuSecondsPerGib));
    let met = match (ratio, target) {
        (Some(r), Some(t)) if metric.higher_is_better() => Some(r >= t),
        (Some(r), Some(t)) => Some(r <= t),
        _ => None,
    };
    let cipher =
        runs.iter().filter(|r| r.label == point.label).find_map(|r| r.result.as_ref().map(|x| x.cipher.clone()));
    Line {
        label: point.label.clone(),
        group: point.group,
        cores: point.cores,
        metric,
        ant_quic,
        quinn,
        ratio,
        target,
        met,
        cipher,
    }
}

/// What one run of a point measured.
struct Measured {
    result: LoadResult,
    rss_kb_per_connection: Option<f64>,
    server_cpu_seconds: Option<f64>,
}

fn run_once(exe: &Path, point: &Point, implementation: Implementation, timeout: Duration) -> Result<Measured> {
    let server = ServerChild::start(exe, implementation, point.cores)?;
    let ready_file = point.rss_connections.map(|_| ready_path());
    let mut args = vec![
        "client".to_owned(),
        "--impl".to_owned(),
        implementation.name().to_owned(),
        "--server".to_owned(),
        server.line.clone(),
        "--cores".to_owned(),
        point.cores.to_string(),
        "--json".to_owned(),
        "--timeout".to_owned(),
        timeout.as_secs().to_string(),
    ];
    args.extend(point.client_args.iter().cloned());
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
        args.push("--ready-file".to_owned());
        args.push(path.display().to_string());
    }
    // Let the server settle before its baseline reading.
    thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib(server.info.pid);
    let cpu_before = cpu_seconds(server.info.pid);
    let mut rss_ready = None;
    let result = child_json_watching::<LoadResult>(exe, &args, timeout + Duration::from_secs(30), &mut || {
        if rss_ready.is_none() && ready_file.as_ref().is_some_and(|p| p.exists()) {
            rss_ready = rss_kib(server.info.pid);
        }
    });
    let cpu_after = cpu_seconds(server.info.pid);
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    drop(server);
    let result = result?;
    let rss = match (point.rss_connections, rss_before, rss_ready) {
        (Some(n), Some(before), Some(ready)) if result.completed > 0 => {
            Some(ready.saturating_sub(before) as f64 * 1024.0 / n.max(1) as f64 / 1000.0)
        }
        (Some(_), _, _) => anyhow::bail!("no server RSS reading once the connections were established"),
        _ => None,
    };
    let server_cpu_seconds = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Measured { result, rss_kb_per_connection: rss, server_cpu_seconds })
}

fn ready_path() -> PathBuf {
    std::env::temp_dir().join(format!("ant-quic-perf-ready-{}", std::process::id()))
}

fn fmt_figure(f: &Figure, metric: Metric) -> String {
    let digits = match metric {
        Metric::Gbps | Metric::ServerCpuSecondsPerGib => 2,
        Metric::RssKbPerConnection => 1,
        _ => 0,
    };
    match (f.median, f.min, f.max) {
        (Some(m), Some(a), Some(b)) => {
            let ok = if f.ok < f.runs { format!(", {}/{} ok", f.ok, f.runs) } else { String::new() };
            format!("{m:.digits$} ({a:.digits$}–{b:.digits$}{ok})")
        }
        _ => format!("— (0/{} ok)", f.runs),
    }
}

/// What a table row is called: the point's label and, where it has several, the metric.
fn row_name(l: &Line) -> String {
    match l.metric {
        Metric::P50Micros => format!("{} — p50", l.label),
        Metric::P99Micros => format!("{} — p99", l.label),
        Metric::ServerCpuMicrosPerOp | Metric::ServerCpuSecondsPerGib => format!("{} — server CPU", l.label),
        _ => l.label.clone(),
    }
}

/// The tables `markdown` prints, as plot rows: (file stem, title, rows), from the same lines.
pub fn plot_tables(r: &SuiteReport) -> Vec<(&'static str, &'static str, Vec<PlotRow>)> {
    let spread = |f: &Figure| Spread { median: f.median, min: f.min, max: f.max };
    [("rows", "Rows"), ("curve", "Cost curve")]
        .into_iter()
        .filter_map(|(group, title)| {
            let rows: Vec<PlotRow> = r
                .lines
                .iter()
                .filter(|l| l.group == group)
                .map(|l| PlotRow {
                    label: format!("{}, {} core(s)", row_name(l), l.cores),
                    unit: l.metric.unit().to_owned(),
                    ant_quic: spread(&l.ant_quic),
                    quinn: spread(&l.quinn),
                    ceiling: None,
                })
                .collect();
            (!rows.is_empty()).then_some((group, title, rows))
        })
        .collect()
}

/// The suite's markdown tables.
pub fn markdown(r: &SuiteReport, udp_ceiling_gbps: Option<f64>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for (group, title) in [("rows", "Rows"), ("curve", "Cost curve")] {
        let lines: Vec<&Line> = r.lines.iter().filter(|l| l.group == group).collect();
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n#### {title}\n");
        let _ = writeln!(
            s,
            "| row | cores | unit | ant-quic median (min–max) | quinn 0.11 median (min–max) | ant-quic / quinn | target | met |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for l in lines {
            let target = match l.target {
                Some(t) if l.metric.higher_is_better() => format!("≥ {t}×"),
                Some(t) => format!("≤ {t}×"),
                None => "—".to_owned(),
            };
            let met = match l.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let what = row_name(l);
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {} | {} | {target} | {met} |",
                l.cores,
                l.metric.unit(),
                fmt_figure(&l.ant_quic, l.metric),
                fmt_figure(&l.quinn, l.metric),
                l.ratio.map_or_else(|| "—".to_owned(), |x| format!("**{x:.2}**")),
            );
        }
    }
    if r.aead.is_some() || r.engine.is_some() {
        let _ = writeln!(s, "\n#### Ceilings\n");
    }
    if let Some(a) = &r.aead {
        let _ = writeln!(
            s,
            "- Packet crypto, one core: {:.2} Gbit/s of {}-byte packets sealed and opened ({:.2} Gbit/s sealing alone), {}.",
            a.gbps, a.packet, a.seal_gbps, a.cipher
        );
        if let Some(c) = udp_ceiling_gbps {
            let _ = writeln!(s, "- Raw UDP over loopback (GSO/GRO, best of the run): {c:.2} Gbit/s.");
        }
    }
    if let Some(e) = &r.engine {
        engine_markdown(&mut s, e, &r.lines);
    }
    if let Some(v) = &r.relay {
        if let Some(sums) = v.get("summaries").and_then(|x| x.as_array()) {
            let _ = writeln!(s, "\n#### Relay forwarding (one relay core, 1200-byte frames)\n");
            let _ = writeln!(s, "| path | median Mframes/s | min–max | of the raw UDP ceiling |");
            let _ = writeln!(s, "| --- | --- | --- | --- |");
            for sum in sums {
                let f = |k: &str| sum.get(k).and_then(|x| x.as_f64());
                let kind = sum.get("kind").and_then(|x| x.as_str()).unwrap_or("?");
                let backend =
                    sum.get("backend").and_then(|x| x.as_str()).map(|b| format!(" ({b})")).unwrap_or_default();
                let m = |x: Option<f64>| x.map_or_else(|| "—".to_owned(), |x| format!("{:.2}", x / 1e6));
                let _ = writeln!(
                    s,
                    "| {kind}{backend} | {} | {}–{} | {} |",
                    m(f("median_frames_per_sec")),
                    m(f("min_frames_per_sec")),
                    m(f("max_frames_per_sec")),
                    f("of_ceiling").map_or_else(|| "—".to_owned(), |x| format!("{:.2}", x)),
                );
            }
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "- {e}");
    }
    let failed: Vec<&Run> = r.runs.iter().filter(|x| x.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\nFailed runs:\n");
        for x in failed {
            let _ = writeln!(
                s,
                "- {} at {} core(s), {} pair {}: {}",
                x.label,
                x.cores,
                x.implementation,
                x.pair,
                x.error.as_deref().unwrap_or("")
            );
        }
    }
    s
}

/// The engine ceiling, and each row with a target measured against it: a target above the
/// ceiling cannot be met by any stack built on this engine and crypto on this machine.
fn engine_markdown(s: &mut String, e: &EngineResult, lines: &[Line]) {
    use std::fmt::Write;
    let cpus = ant_quic::dataplane::sys::thread::allowed_cpus().len().max(1);
    let _ = writeln!(
        s,
        "- The QUIC engine both stacks share (quinn-proto, rustls, {}), in memory with no I/O \
         (`engine-ceiling`, one thread, each side timed apart, best of {} runs): a full handshake costs {:.0} µs of client CPU \
         and {:.0} µs of server CPU; one connection's sender moves {:.2} Gbit/s and its receiver {:.2} Gbit/s \
         on one core each.",
        e.cipher, ENGINE_RUNS, e.client_us, e.server_us, e.send_gbps, e.recv_gbps
    );
    let mut checks = Vec::new();
    for l in lines.iter().filter(|l| l.group == "rows") {
        let (Some(target), Some(quinn)) = (l.target, l.quinn.median) else { continue };
        let (ceiling, unit) = match l.metric {
            Metric::PerSecond => (e.handshake_bound(l.cores, cpus), "/s"),
            Metric::Gbps => (e.throughput_bound(l.cores, cpus), " Gbit/s"),
            _ => continue,
        };
        let needed = target * quinn;
        let verdict = if needed > ceiling {
            "**above the ceiling**".to_owned()
        } else {
            format!("{:.0} % of the ceiling", 100.0 * needed / ceiling)
        };
        checks.push(format!(
            "{} at {} core(s): {target}× quinn needs {needed:.0}{unit}; the ceiling is {ceiling:.0}{unit}: {verdict}",
            l.label, l.cores
        ));
    }
    if !checks.is_empty() {
        let _ = writeln!(s, "- Targets against the engine ceiling ({cpus} CPUs shared by client and server):");
        for c in checks {
            let _ = writeln!(s, "  - {c}.");
        }
    }
}
