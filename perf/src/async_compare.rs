//! `async-compare`: ant-quic's async API against its callback API and against quinn 0.11, in one
//! run: bulk transfers of the three alternating (async, callback, quinn) in both directions, then
//! request/response latency alternating (async, quinn); each run a fresh child process.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::compare::PrivateExe;
use crate::harness::{
    child_json, command_line, fmt_opt, loadavg, machine, median, print_report, progress, sorted, write_header,
    BulkResult, Machine, DEFAULT_BYTES,
};
use crate::rpc_latency::{RpcImpl, RpcResult};

#[derive(Debug, Args)]
pub struct AsyncCompareArgs {
    /// Alternating rounds (async, callback, quinn) per direction, and (async, quinn) of latency.
    /// On a shared 2-core host one round's ratio moves by ±20 %; 21 rounds put the median within
    /// a few hundredths.
    #[arg(long, default_value_t = 21)]
    pairs: usize,
    /// Bytes per bulk transfer.
    #[arg(long, default_value_t = DEFAULT_BYTES)]
    bytes: u64,
    /// Timed requests per latency run.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// A latency run stops early after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    request_seconds: f64,
    /// tokio worker threads of the async-API and quinn latency runs and of the async bulk runs.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// A child running longer than this many seconds is killed and reported as failed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// Exit with an error (after the report) when any run failed: the smoke test of the runners.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    Async,
    Callback,
    Quinn,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Self::Async => "ant-quic async API",
            Self::Callback => "ant-quic callback API",
            Self::Quinn => "quinn 0.11",
        }
    }
}

const DIRECTIONS: [&str; 2] = ["download", "upload"];

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Serialize)]
struct BulkRun {
    seq: usize,
    api: Api,
    direction: &'static str,
    pair: usize,
    result: Option<BulkResult>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RpcRun {
    seq: usize,
    api: Api,
    pair: usize,
    result: Option<RpcResult>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    machine: Machine,
    bytes: u64,
    pairs: usize,
    requests: u64,
    workers: usize,
    load_start: Option<f64>,
    load_end: Option<f64>,
    bulk: Vec<BulkRun>,
    rpc: Vec<RpcRun>,
}

pub fn run(args: &AsyncCompareArgs) -> Result<()> {
    if args.pairs == 0 || args.pairs > 100 {
        bail!("--pairs must be between 1 and 100");
    }
    if args.bytes == 0 || args.requests == 0 || args.workers == 0 {
        bail!("--bytes, --requests and --workers must be at least 1");
    }
    let private = PrivateExe::new()?;
    let exe = private.path.as_path();
    let timeout = Duration::from_secs(args.timeout);
    let command = command_line();
    let machine = machine();
    let load_start = loadavg();

    let mut bulk = Vec::new();
    for direction in DIRECTIONS {
        for pair in 1..=args.pairs {
            for api in [Api::Async, Api::Callback, Api::Quinn] {
                progress(format_args!("{direction} {} pair {pair}/{}", api.name(), args.pairs));
                let (result, error) = outcome(child_json::<BulkResult>(exe, &bulk_args(args, api, direction), timeout));
                if let Some(r) = &result {
                    progress(format_args!("  {:.3} Gbit/s", r.gbps));
                }
                bulk.push(BulkRun { seq: bulk.len() + 1, api, direction, pair, result, error });
            }
        }
    }
    let mut rpc = Vec::new();
    for pair in 1..=args.pairs {
        for (api, implementation) in [(Api::Async, RpcImpl::Async), (Api::Quinn, RpcImpl::Quinn)] {
            progress(format_args!("latency {} pair {pair}/{}", api.name(), args.pairs));
            let child_args = vec![
                "rpc-latency".to_owned(),
                "--impl".to_owned(),
                implementation.name().to_owned(),
                "--requests".to_owned(),
                args.requests.to_string(),
                "--seconds".to_owned(),
                args.request_seconds.to_string(),
                "--workers".to_owned(),
                args.workers.to_string(),
            ];
            let (result, error) = outcome(child_json::<RpcResult>(exe, &child_args, timeout));
            if let Some(r) = &result {
                let l = &r.latency_us;
                progress(format_args!("  p50 {} µs, p99 {} µs, p99.9 {} µs", l.p50, l.p99, l.p999));
            }
            rpc.push(RpcRun { seq: rpc.len() + 1, api, pair, result, error });
        }
    }
    let report = Report {
        command,
        machine,
        bytes: args.bytes,
        pairs: args.pairs,
        requests: args.requests,
        workers: args.workers,
        load_start,
        load_end: loadavg(),
        bulk,
        rpc,
    };
    print_report(&report, args.json, markdown)?;
    let failed = report.bulk.iter().filter(|b| b.error.is_some()).count()
        + report.rpc.iter().filter(|x| x.error.is_some()).count();
    if args.strict && failed > 0 {
        bail!("{failed} of {} runs failed", report.bulk.len() + report.rpc.len());
    }
    Ok(())
}

/// A child's result or its error line, with the error on the progress output.
fn outcome<T>(result: Result<T>) -> (Option<T>, Option<String>) {
    match result {
        Ok(r) => (Some(r), None),
        Err(e) => {
            progress(format_args!("  failed: {e:#}"));
            (None, Some(format!("{e:#}")))
        }
    }
}

fn bulk_args(args: &AsyncCompareArgs, api: Api, direction: &str) -> Vec<String> {
    let sub = match api {
        Api::Async => "async-bulk",
        Api::Callback => "ant-quic-bulk",
        Api::Quinn => "quinn-bulk",
    };
    let mut v = vec![sub.to_owned(), "--bytes".to_owned(), args.bytes.to_string()];
    if direction == "upload" {
        v.push("--upload".to_owned());
    }
    if api == Api::Async {
        v.push("--workers".to_owned());
        v.push(args.workers.to_string());
    }
    v
}

/// Sorted figures of the successful runs, and how many runs there were.
fn figures<'a, R: 'a>(runs: impl Iterator<Item = &'a Option<R>>, figure: impl Fn(&R) -> f64) -> (Vec<f64>, usize) {
    let mut total = 0;
    let ok =
        sorted(runs.inspect(|_| total += 1).filter_map(|r| r.as_ref().map(&figure)).collect::<Vec<_>>().into_iter());
    (ok, total)
}

fn spread(v: &[f64], digits: usize) -> String {
    match (v.first(), v.last()) {
        (Some(a), Some(b)) => format!("{a:.digits$}–{b:.digits$}"),
        _ => "—".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    quotient(a, b).map_or_else(|| "—".to_owned(), |x| format!("**{x:.2}**"))
}

fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The ratios of one direction within each round (async, callback and quinn run back to back),
/// sorted; rounds with a failed run are left out.
#[derive(Debug, Default)]
struct RoundRatios {
    async_vs_callback: Vec<f64>,
    async_vs_quinn: Vec<f64>,
    cpu_callback_vs_async: Vec<f64>,
    cpu_quinn_vs_async: Vec<f64>,
}

impl RoundRatios {
    fn of(r: &Report, direction: &str) -> Self {
        let run = |pair: usize, api: Api| {
            r.bulk
                .iter()
                .find(|b| b.direction == direction && b.pair == pair && b.api == api)
                .and_then(|b| b.result.as_ref())
        };
        let mut out = Self::default();
        for pair in 1..=r.pairs {
            let (Some(asy), Some(cb), Some(qn)) =
                (run(pair, Api::Async), run(pair, Api::Callback), run(pair, Api::Quinn))
            else {
                continue;
            };
            out.async_vs_callback.push(asy.gbps / cb.gbps);
            out.async_vs_quinn.push(asy.gbps / qn.gbps);
            if let (Some(asy_cpu), Some(cb_cpu), Some(qn_cpu)) = (asy.cpu_seconds, cb.cpu_seconds, qn.cpu_seconds) {
                out.cpu_callback_vs_async.push(cb_cpu / asy_cpu);
                out.cpu_quinn_vs_async.push(qn_cpu / asy_cpu);
            }
        }
        for v in [
            &mut out.async_vs_callback,
            &mut out.async_vs_quinn,
            &mut out.cpu_callback_vs_async,
            &mut out.cpu_quinn_vs_async,
        ] {
            *v = sorted(std::mem::take(v).into_iter());
        }
        out
    }
}

/// The median of `v` (sorted) in bold, the headline form of a ratio.
fn headline(v: &[f64]) -> String {
    median(v).map_or_else(|| "—".to_owned(), |x| format!("**{x:.2}**"))
}

/// How far the ratios moved from round to round, and the ratio of the medians over all rounds,
/// which drift between rounds can move away from the median of the rounds.
fn round_spread(s: &mut String, directions: &[(&str, RoundRatios, [Option<f64>; 2])]) {
    use std::fmt::Write;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| direction | rounds | async / callback per round: min–max | async / quinn per round: min–max | \
         rounds with async / quinn ≥ 1.2 | CPU: quinn / async per round: min–max | ratio of medians: async / \
         callback, async / quinn |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for (direction, rounds, [vs_callback, vs_quinn]) in directions {
        let above = rounds.async_vs_quinn.iter().filter(|&&x| x >= 1.2).count();
        let n = rounds.async_vs_quinn.len();
        let _ = writeln!(
            s,
            "| {direction} | {n} | {} | {} | {above} of {n} | {} | {}, {} |",
            spread(&rounds.async_vs_callback, 2),
            spread(&rounds.async_vs_quinn, 2),
            spread(&rounds.cpu_quinn_vs_async, 2),
            fmt_opt(*vs_callback, 2),
            fmt_opt(*vs_quinn, 2),
        );
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    write_header(&mut s, &r.machine, (r.load_start, r.load_end), &r.command);
    let _ = writeln!(
        s,
        "- Bulk: {} bytes on one stream of one connection over 127.0.0.1; {} alternating rounds \
         (async, callback, quinn) per direction, each run a fresh process; the async API on a \
         tokio multi-thread runtime with {} worker(s).",
        r.bytes, r.pairs, r.workers
    );
    let _ = writeln!(
        s,
        "- Latency: {} sequential requests per run (after 100 untimed), each a new bidirectional \
         stream with a 64-byte request and a 64-byte answer; {} alternating pairs (async, quinn), \
         both on a tokio multi-thread runtime with {} worker(s).",
        r.requests, r.pairs, r.workers
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Each ratio of the async API is the median over the rounds of that round's ratio: a round runs \
         the three APIs back to back, so what the host's speed does between rounds cancels out."
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| direction | API | median Gbit/s | min–max Gbit/s | runs ok | async / callback | async / quinn | \
         median CPU s per GiB | CPU: callback / async | CPU: quinn / async | MTU |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut spreads = Vec::new();
    for direction in DIRECTIONS {
        let of = |api: Api| {
            figures(r.bulk.iter().filter(|b| b.direction == direction && b.api == api).map(|b| &b.result), |x| x.gbps)
        };
        let (asy, cb, qn) = (of(Api::Async), of(Api::Callback), of(Api::Quinn));
        let asy_median = median(&asy.0);
        // CPU seconds per GiB moved, of the runs that report it.
        let cpu_of = |api: Api| {
            let runs = r.bulk.iter().filter(|b| b.direction == direction && b.api == api);
            let per_gib = runs
                .filter_map(|b| b.result.as_ref())
                .filter_map(|x| x.cpu_seconds.filter(|_| x.bytes > 0).map(|cpu| cpu / (x.bytes as f64 / GIB)));
            median(&sorted(per_gib))
        };
        let rounds = RoundRatios::of(r, direction);
        for (api, (v, total)) in [(Api::Async, &asy), (Api::Callback, &cb), (Api::Quinn, &qn)] {
            let (vs_callback, vs_quinn, cpu_vs_callback, cpu_vs_quinn) = match api {
                Api::Async => (
                    headline(&rounds.async_vs_callback),
                    headline(&rounds.async_vs_quinn),
                    headline(&rounds.cpu_callback_vs_async),
                    headline(&rounds.cpu_quinn_vs_async),
                ),
                Api::Callback => ("1 (baseline)".to_owned(), "—".to_owned(), "1 (baseline)".to_owned(), "—".to_owned()),
                Api::Quinn => ("—".to_owned(), "1 (baseline)".to_owned(), "—".to_owned(), "1 (baseline)".to_owned()),
            };
            let mtu = r
                .bulk
                .iter()
                .filter(|b| b.direction == direction && b.api == api)
                .find_map(|b| b.result.as_ref().and_then(|x| x.mtu))
                .map_or_else(|| "—".to_owned(), |m| m.to_string());
            let _ = writeln!(
                s,
                "| {direction} | {} | {} | {} | {}/{total} | {vs_callback} | {vs_quinn} | {} | {cpu_vs_callback} | \
                 {cpu_vs_quinn} | {mtu} |",
                api.name(),
                fmt_opt(median(v), 2),
                spread(v, 2),
                v.len(),
                fmt_opt(cpu_of(api), 2),
            );
        }
        let of_medians = [quotient(asy_median, median(&cb.0)), quotient(asy_median, median(&qn.0))];
        spreads.push((direction, rounds, of_medians));
    }
    round_spread(&mut s, &spreads);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| request/response | median p50 µs | median p99 µs | median p99.9 µs | p50 min–max µs | median requests/s | runs ok | quinn p50 / async p50 |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    let rpc_of =
        |api: Api, f: fn(&RpcResult) -> f64| figures(r.rpc.iter().filter(|x| x.api == api).map(|x| &x.result), f);
    let p50 = |x: &RpcResult| x.latency_us.p50 as f64;
    let quinn_p50 = median(&rpc_of(Api::Quinn, p50).0);
    for api in [Api::Async, Api::Quinn] {
        let (p50s, total) = rpc_of(api, p50);
        let p99 = median(&rpc_of(api, |x| x.latency_us.p99 as f64).0);
        let p999 = median(&rpc_of(api, |x| x.latency_us.p999 as f64).0);
        let rate = median(&rpc_of(api, |x| x.rate).0);
        let vs = match api {
            Api::Async => ratio(quinn_p50, median(&p50s)),
            _ => "1 (baseline)".to_owned(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {}/{total} | {vs} |",
            api.name(),
            fmt_opt(median(&p50s), 0),
            fmt_opt(p99, 0),
            fmt_opt(p999, 0),
            spread(&p50s, 0),
            fmt_opt(rate, 0),
            p50s.len(),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Runs in order:");
    let _ = writeln!(s);
    for b in &r.bulk {
        let figure = match (&b.result, &b.error) {
            (Some(x), _) => match x.cpu_seconds {
                Some(cpu) => format!("{:.3} Gbit/s, {cpu:.2} s CPU", x.gbps),
                None => format!("{:.3} Gbit/s", x.gbps),
            },
            (None, e) => format!("failed: {}", e.as_deref().unwrap_or("")),
        };
        let _ = writeln!(s, "{}. {} {} pair {}: {figure}", b.seq, b.direction, b.api.name(), b.pair);
    }
    let base = r.bulk.len();
    for x in &r.rpc {
        let figure = match (&x.result, &x.error) {
            (Some(x), _) => {
                let l = &x.latency_us;
                format!("p50 {} µs, p99 {} µs, p99.9 {} µs, {} requests", l.p50, l.p99, l.p999, x.requests)
            }
            (None, e) => format!("failed: {}", e.as_deref().unwrap_or("")),
        };
        let _ = writeln!(s, "{}. latency {} pair {}: {figure}", base + x.seq, x.api.name(), x.pair);
    }
    s
}
