//! `compare`: ant-quic against quinn, alternating, each run in a fresh child process, with the raw
//! UDP ceiling measured at the start and at the end of the same run.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::harness::{
    child_json, command_line, fmt_opt, loadavg, machine, median, print_report, progress, sorted, write_header,
    BulkResult, Machine, DEFAULT_BYTES,
};
use crate::plot::{self, PlotRow, PlotTable, Spread};
use crate::suite::{self, RowKind, SuiteArgs, SuiteReport};
use crate::udp_ceiling::CeilingResult;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Alternating (ant-quic, quinn) pairs per direction.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Bytes per transfer.
    #[arg(long, default_value_t = DEFAULT_BYTES)]
    bytes: u64,
    /// Directions to measure, comma-separated: download (server sends), upload (client sends).
    #[arg(long, value_delimiter = ',', default_value = "download,upload")]
    directions: Vec<Direction>,
    /// ant-quic I/O backend (io-uring or portable); default: the library's choice.
    #[arg(long)]
    backend: Option<String>,
    /// ant-quic data-plane cores per node.
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Pin quinn's server and client threads to different CPUs (quinn's own bench does not).
    #[arg(long)]
    quinn_pin: bool,
    /// Seconds of each UDP ceiling run.
    #[arg(long, default_value_t = 3.0)]
    ceiling_seconds: f64,
    /// A child running longer than this many seconds is killed and reported as failed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the markdown table into this file, between the lines `<!-- compare:begin -->`
    /// and `<!-- compare:end -->` (e.g. BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Also draw each table as an SVG plot in this directory (`SECTION-bulk.svg`,
    /// `SECTION-rows.svg`, `SECTION-curve.svg`); with `--write`, the written section embeds them.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// The section `--write` replaces (between `<!-- SECTION:begin -->` and `<!-- SECTION:end -->`)
    /// and the plots' file-name prefix: one file can hold the tables of several runs.
    #[arg(long, default_value = "compare")]
    section: String,
    #[command(flatten)]
    suite: SuiteArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Download,
    Upload,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Download => "download",
            Self::Upload => "upload",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum Impl {
    #[serde(rename = "ant-quic")]
    AntQuic,
    #[serde(rename = "quinn")]
    Quinn,
}

/// One child run, in the order it ran.
#[derive(Debug, Serialize)]
struct Run {
    seq: usize,
    #[serde(rename = "impl")]
    implementation: Impl,
    direction: Direction,
    pair: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<BulkResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    direction: Direction,
    #[serde(rename = "impl")]
    implementation: Impl,
    ok: usize,
    runs: usize,
    median_gbps: Option<f64>,
    min_gbps: Option<f64>,
    max_gbps: Option<f64>,
    cipher: Option<String>,
    backend: Option<String>,
    mtu: Option<u16>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    machine: Machine,
    bytes: u64,
    pairs: usize,
    ceiling_start: Option<CeilingResult>,
    ceiling_end: Option<CeilingResult>,
    ceiling_errors: Vec<String>,
    /// 1-minute load average before the first and after the last run.
    load_start: Option<f64>,
    load_end: Option<f64>,
    summaries: Vec<Summary>,
    /// ant-quic median / quinn median, per direction (None when either is missing).
    ratios: Vec<(Direction, Option<f64>)>,
    runs: Vec<Run>,
    /// The other rows (`suite.rs`).
    suite: Option<SuiteReport>,
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if args.pairs == 0 || args.pairs > 100 {
        bail!("--pairs must be between 1 and 100");
    }
    if args.section.is_empty()
        || !args.section.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("--section must be a name of lowercase letters, digits and '-', e.g. compare-short");
    }
    if let Some(dir) = &args.plot {
        // Fail before the runs, not after them.
        std::fs::create_dir_all(dir).with_context(|| format!("--plot: creating {}", dir.display()))?;
    }
    // The target directory is shared: a build elsewhere may replace this binary mid-run. Run every
    // child from a private copy of the running executable instead.
    let private = PrivateExe::new()?;
    let exe = private.path.as_path();
    let timeout = Duration::from_secs(args.timeout);
    let command = command_line();
    let machine = machine();
    let load_start = loadavg();

    let mut ceiling_errors = Vec::new();
    let ceiling_args = vec!["udp-ceiling".to_owned(), "--seconds".to_owned(), args.ceiling_seconds.to_string()];
    // The ceiling is measured before and after the runs (`when`); a failure is kept as a note.
    let mut ceiling = |when: &str| {
        progress(format_args!("udp ceiling ({when})"));
        child_json::<CeilingResult>(exe, &ceiling_args, timeout)
            .map_err(|e| ceiling_errors.push(format!("{when}: {e:#}")))
            .ok()
    };
    let ceiling_start = ceiling("start");

    let mut runs = Vec::new();
    let bulk = args.suite.rows.contains(&RowKind::Bulk);
    let directions: &[Direction] = if bulk { &args.directions } else { &[] };
    for &direction in directions {
        for pair in 1..=args.pairs {
            for implementation in [Impl::AntQuic, Impl::Quinn] {
                let child_args = bulk_args(args, implementation, direction);
                progress(format_args!("{} {} pair {pair}/{}", direction.name(), impl_name(implementation), args.pairs));
                let (result, error) = match child_json::<BulkResult>(exe, &child_args, timeout) {
                    Ok(r) => {
                        progress(format_args!("  {:.3} Gbit/s", r.gbps));
                        (Some(r), None)
                    }
                    Err(e) => {
                        progress(format_args!("  failed: {e:#}"));
                        (None, Some(format!("{e:#}")))
                    }
                };
                runs.push(Run { seq: runs.len() + 1, implementation, direction, pair, result, error });
            }
        }
    }

    let suite = if args.suite.rows.iter().any(|r| *r != RowKind::Bulk) {
        Some(suite::run(exe, &args.suite, timeout)?)
    } else {
        None
    };

    let ceiling_end = ceiling("end");

    let load_end = loadavg();
    let mut summaries = Vec::new();
    let mut ratios = Vec::new();
    for &direction in directions {
        let a = summarize(&runs, direction, Impl::AntQuic);
        let q = summarize(&runs, direction, Impl::Quinn);
        let ratio = match (a.median_gbps, q.median_gbps) {
            (Some(a), Some(q)) if q > 0.0 => Some(a / q),
            _ => None,
        };
        ratios.push((direction, ratio));
        summaries.push(a);
        summaries.push(q);
    }

    let report = Report {
        command,
        machine,
        bytes: args.bytes,
        pairs: args.pairs,
        ceiling_start,
        ceiling_end,
        ceiling_errors,
        load_start,
        load_end,
        summaries,
        ratios,
        runs,
        suite,
    };
    print_report(&report, args.json, markdown)?;
    let mut plots = Vec::new();
    if let Some(dir) = &args.plot {
        for (name, table) in plot_tables(&report, short_run(args)) {
            let path = plot::write_svg(dir, &format!("{}-{name}", args.section), &table)?;
            progress(format_args!("drew {}", path.display()));
            plots.push((table.title, path));
        }
    }
    if let Some(path) = &args.write {
        let mut section = markdown(&report);
        section.push_str(&embeds(path, &plots));
        let (begin, end) = marks(&args.section);
        let old = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let new = replace_marked(&old, &args.section, &section)
            .with_context(|| format!("{}: no `{begin}` … `{end}` section to replace", path.display()))?;
        std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
        progress(format_args!("wrote the table into {}", path.display()));
    }
    Ok(())
}

/// The lines around a generated section in a markdown file (`--write`).
fn marks(section: &str) -> (String, String) {
    (format!("<!-- {section}:begin -->"), format!("<!-- {section}:end -->"))
}

/// `text` with what lies between the section's marks replaced by `table`; `None` without both.
fn replace_marked(text: &str, section: &str, table: &str) -> Option<String> {
    let (begin_mark, end_mark) = marks(section);
    let begin = text.find(&begin_mark)? + begin_mark.len();
    let end = begin + text.get(begin..)?.find(&end_mark)?;
    Some(format!("{}\n{}\n{}", text.get(..begin)?, table.trim_end(), text.get(end..)?))
}

/// Why a run is shorter than the defaults the published tables use, if it is.
fn short_run(args: &CompareArgs) -> Option<String> {
    let full = args.pairs >= 5
        && args.bytes >= DEFAULT_BYTES
        && args.suite.row_pairs >= 5
        && args.suite.curve_pairs >= 3
        && args.ceiling_seconds >= 3.0;
    (!full).then(|| {
        format!(
            "Short run ({} pairs of {} MiB, {} pairs per row, {} per curve point): noisy, not the published figures",
            args.pairs,
            args.bytes >> 20,
            args.suite.row_pairs,
            args.suite.curve_pairs
        )
    })
}

/// The report's tables as plots, named by their file stem: the bulk rows, then the suite's.
fn plot_tables(r: &Report, short: Option<String>) -> Vec<(&'static str, PlotTable)> {
    let mut header_text = String::new();
    write_header(&mut header_text, &r.machine, (r.load_start, r.load_end), &r.command);
    let mut header = plot::header_lines(&header_text);
    header.extend(short);
    let table = |title: String, rows: Vec<PlotRow>| PlotTable { title, header: header.clone(), rows };
    let mut out = Vec::new();
    if !r.runs.is_empty() {
        let ceiling =
            [&r.ceiling_start, &r.ceiling_end].iter().filter_map(|c| c.as_ref().map(|c| c.gbps)).reduce(f64::max);
        let spread = |d: Direction, i: Impl| {
            r.summaries
                .iter()
                .find(|s| s.direction == d && s.implementation == i)
                .map_or_else(Spread::default, |s| Spread { median: s.median_gbps, min: s.min_gbps, max: s.max_gbps })
        };
        let mut directions: Vec<Direction> = r.summaries.iter().map(|s| s.direction).collect();
        directions.dedup();
        let rows = directions
            .into_iter()
            .map(|d| PlotRow {
                label: format!("{}, one connection, {} MiB", d.name(), r.bytes >> 20),
                unit: "Gbit/s".to_owned(),
                ant_quic: spread(d, Impl::AntQuic),
                quinn: spread(d, Impl::Quinn),
                ceiling: ceiling.map(|c| (c, "raw UDP ceiling".to_owned())),
            })
            .collect();
        out.push(("bulk", table("ant-quic against quinn 0.11: bulk throughput".to_owned(), rows)));
    }
    if let Some(suite) = &r.suite {
        for (name, title, rows) in suite::plot_tables(suite) {
            out.push((name, table(format!("ant-quic against quinn 0.11: {}", title.to_lowercase()), rows)));
        }
    }
    out
}

/// Markdown embedding each plot, with the command that drew it, as seen from `written`'s folder.
fn embeds(written: &Path, plots: &[(String, PathBuf)]) -> String {
    use std::fmt::Write;
    let made_by = std::env::var("ANT_QUIC_PERF_VIA").unwrap_or_else(|_| command_line());
    let base = written.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut s = String::new();
    for (title, path) in plots {
        let shown = match (base.canonicalize(), path.canonicalize()) {
            (Ok(b), Ok(p)) => p.strip_prefix(&b).map(Path::to_path_buf).unwrap_or(p),
            _ => path.clone(),
        };
        let _ = write!(s, "\n<!-- made by: {} -->\n![{title}]({})\n", made_by.trim(), shown.display());
    }
    s
}

/// A copy of the running executable in a private directory, removed on drop.
#[derive(Debug)]
pub(crate) struct PrivateExe {
    dir: std::path::PathBuf,
    pub(crate) path: std::path::PathBuf,
}

impl PrivateExe {
    pub(crate) fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ant-quic-perf-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("ant-quic-perf");
        // /proc/self/exe still reads the running image even if its file was replaced.
        std::fs::copy("/proc/self/exe", &path)
            .or_else(|_| std::fs::copy(std::env::current_exe()?, &path))
            .with_context(|| format!("copying this executable to {}", path.display()))?;
        Ok(Self { dir, path })
    }
}

impl Drop for PrivateExe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn impl_name(i: Impl) -> &'static str {
    match i {
        Impl::AntQuic => "ant-quic",
        Impl::Quinn => "quinn",
    }
}

fn bulk_args(args: &CompareArgs, implementation: Impl, direction: Direction) -> Vec<String> {
    let mut v = vec![
        match implementation {
            Impl::AntQuic => "ant-quic-bulk",
            Impl::Quinn => "quinn-bulk",
        }
        .to_owned(),
        "--bytes".to_owned(),
        args.bytes.to_string(),
    ];
    if direction == Direction::Upload {
        v.push("--upload".to_owned());
    }
    if implementation == Impl::Quinn && args.quinn_pin {
        v.push("--pin".to_owned());
    }
    if implementation == Impl::AntQuic {
        if let Some(b) = &args.backend {
            v.push("--backend".to_owned());
            v.push(b.clone());
        }
        v.push("--cores".to_owned());
        v.push(args.cores.to_string());
    }
    v
}

fn summarize(runs: &[Run], direction: Direction, implementation: Impl) -> Summary {
    let mine: Vec<&Run> =
        runs.iter().filter(|r| r.direction == direction && r.implementation == implementation).collect();
    let ok: Vec<&BulkResult> = mine.iter().filter_map(|r| r.result.as_ref()).collect();
    let g = sorted(ok.iter().map(|r| r.gbps));
    let first = ok.first();
    Summary {
        direction,
        implementation,
        ok: ok.len(),
        runs: mine.len(),
        median_gbps: median(&g),
        min_gbps: g.first().copied(),
        max_gbps: g.last().copied(),
        cipher: first.map(|r| r.cipher.clone()),
        backend: first.and_then(|r| r.backend.clone()),
        mtu: first.and_then(|r| r.mtu),
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    write_header(&mut s, &r.machine, (r.load_start, r.load_end), &r.command);
    let _ = writeln!(
        s,
        "- Payload: {} bytes on one stream of one connection over 127.0.0.1; {} alternating \
         pairs (ant-quic, quinn) per direction, each run a fresh process.",
        r.bytes, r.pairs
    );
    if r.runs.is_empty() {
        // Only the other rows were asked for.
        let ceiling =
            [&r.ceiling_start, &r.ceiling_end].iter().filter_map(|c| c.as_ref().map(|c| c.gbps)).reduce(f64::max);
        if let Some(suite) = &r.suite {
            s.push_str(&suite::markdown(suite, ceiling));
        }
        return s;
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| direction | implementation | median Gbit/s | min–max Gbit/s | runs ok | ant-quic / quinn | % of UDP ceiling (best of 2) | cipher | I/O | MTU |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let ceiling = {
        let v: Vec<f64> =
            [&r.ceiling_start, &r.ceiling_end].iter().filter_map(|c| c.as_ref().map(|c| c.gbps)).collect();
        // The better of the two: on a shared machine a ceiling run can only be pulled down.
        v.into_iter().reduce(f64::max)
    };
    for sum in &r.summaries {
        let ratio = r.ratios.iter().find(|(d, _)| *d == sum.direction).and_then(|(_, x)| *x);
        let ratio_cell = match sum.implementation {
            Impl::AntQuic => ratio.map_or_else(|| "pending".to_owned(), |x| format!("**{x:.2}**")),
            Impl::Quinn => "1 (baseline)".to_owned(),
        };
        let pct = match (sum.median_gbps, ceiling) {
            (Some(m), Some(c)) if c > 0.0 => format!("{:.0} %", m / c * 100.0),
            _ => "—".to_owned(),
        };
        let name = match sum.implementation {
            Impl::AntQuic => "ant-quic",
            Impl::Quinn => "quinn 0.11",
        };
        let spread = match (sum.min_gbps, sum.max_gbps) {
            (Some(a), Some(b)) => format!("{a:.2}–{b:.2}"),
            _ => "—".to_owned(),
        };
        let median_cell = if sum.ok == 0 && sum.implementation == Impl::AntQuic {
            "pending".to_owned()
        } else {
            fmt_opt(sum.median_gbps, 2)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            sum.direction.name(),
            name,
            median_cell,
            spread,
            sum.ok,
            sum.runs,
            ratio_cell,
            pct,
            sum.cipher.as_deref().unwrap_or("—"),
            sum.backend.as_deref().unwrap_or("—"),
            sum.mtu.map_or_else(|| "—".to_owned(), |m| m.to_string()),
        );
    }
    let ceiling_cell =
        |c: &Option<CeilingResult>| c.as_ref().map_or_else(|| "failed".to_owned(), |c| format!("{:.2}", c.gbps));
    let shape = r.ceiling_start.as_ref().or(r.ceiling_end.as_ref()).map_or_else(String::new, |c| {
        format!(" ({} B datagrams, GSO {} per send, GRO {})", c.datagram, c.gso_segments, c.gro_segments)
    });
    let _ = writeln!(
        s,
        "| both | raw UDP ceiling{shape} | start {}, end {} | — | — | — | 100 % | none | sendmsg/recvmsg | — |",
        ceiling_cell(&r.ceiling_start),
        ceiling_cell(&r.ceiling_end),
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Runs in order (Gbit/s):");
    let _ = writeln!(s);
    for run in &r.runs {
        let figure = match (&run.result, &run.error) {
            (Some(res), _) => format!("{:.3}", res.gbps),
            (None, Some(e)) => format!("failed: {e}"),
            (None, None) => "failed".to_owned(),
        };
        let _ = writeln!(
            s,
            "{}. {} {} pair {}: {}",
            run.seq,
            run.direction.name(),
            impl_name(run.implementation),
            run.pair,
            figure
        );
    }
    for e in &r.ceiling_errors {
        let _ = writeln!(s, "- UDP ceiling {e}");
    }
    if let Some(suite) = &r.suite {
        s.push_str(&suite::markdown(suite, ceiling));
    }
    let ciphers: Vec<&str> = r.summaries.iter().filter_map(|x| x.cipher.as_deref()).collect();
    if ciphers.windows(2).any(|w| w[0] != w[1]) {
        let _ = writeln!(
            s,
            "\nWARNING: the implementations negotiated different cipher suites; the ratio is not like for like."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(implementation: &str, direction: &str, gbps: f64) -> BulkResult {
        BulkResult {
            implementation: implementation.into(),
            bytes: 1 << 20,
            seconds: 1.0,
            gbps,
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            direction: direction.into(),
            kx: None,
            mtu: Some(1452),
            backend: None,
            cpu_seconds: None,
        }
    }

    #[test]
    fn the_plot_shows_the_tables_medians_spreads_and_ceiling() {
        let mut runs = Vec::new();
        for (pair, (a, q)) in [(9.0, 6.0), (10.0, 7.0), (8.0, 6.5)].into_iter().enumerate() {
            for (implementation, gbps, name) in [(Impl::AntQuic, a, "ant-quic"), (Impl::Quinn, q, "quinn")] {
                let result = Some(bulk(name, "download", gbps));
                runs.push(Run {
                    seq: runs.len() + 1,
                    implementation,
                    direction: Direction::Download,
                    pair,
                    result,
                    error: None,
                });
            }
        }
        let ceiling: CeilingResult = serde_json::from_value(serde_json::json!({"impl": "udp", "gbps": 20.5,
            "bytes_received": 1, "bytes_sent": 1, "seconds": 1.0, "receives": 1, "datagram": 1200,
            "gso_segments": 64, "gro_segments": 64}))
        .unwrap();
        let report = Report {
            command: "ant-quic-perf compare --pairs 3".into(),
            machine: Machine { cpu: "Test CPU".into(), cores: 2, kernel: "6.18".into() },
            bytes: 1 << 20,
            pairs: 3,
            ceiling_start: Some(ceiling),
            ceiling_end: None,
            ceiling_errors: vec![],
            load_start: None,
            load_end: None,
            summaries: vec![
                summarize(&runs, Direction::Download, Impl::AntQuic),
                summarize(&runs, Direction::Download, Impl::Quinn),
            ],
            ratios: vec![],
            runs,
            suite: None,
        };
        let table = markdown(&report);
        assert!(table.contains("| download | ant-quic | 9.00 | 8.00–10.00 | 3/3 |"), "{table}");
        let plots = plot_tables(&report, Some("Short run".into()));
        assert_eq!(plots.len(), 1);
        let (name, plot) = &plots[0];
        assert_eq!(*name, "bulk");
        assert!(plot.header.iter().any(|l| l.contains("Test CPU")) && plot.header.contains(&"Short run".to_owned()));
        let row = &plot.rows[0];
        assert_eq!(row.ant_quic, Spread { median: Some(9.0), min: Some(8.0), max: Some(10.0) });
        assert_eq!(row.quinn, Spread { median: Some(6.5), min: Some(6.0), max: Some(7.0) });
        assert_eq!(row.ceiling, Some((20.5, "raw UDP ceiling".to_owned())));
    }

    #[test]
    fn the_marked_section_is_replaced_and_the_rest_kept() {
        let text = "head\n<!-- compare:begin -->\nold table\n<!-- compare:end -->\ntail\n";
        let new = replace_marked(text, "compare", "| new |\n").unwrap();
        assert_eq!(new, "head\n<!-- compare:begin -->\n| new |\n<!-- compare:end -->\ntail\n");
        assert_eq!(replace_marked(&new, "compare", "| again |").unwrap().matches("compare:begin").count(), 1);
        assert!(replace_marked("no marks here", "compare", "x").is_none());
        assert!(replace_marked("<!-- compare:end --> <!-- compare:begin -->", "compare", "x").is_none());
        // Another section in the same file is left alone.
        let two = format!("{text}<!-- short:begin -->\nold\n<!-- short:end -->\n");
        let new = replace_marked(&two, "short", "| short |").unwrap();
        assert!(new.contains("old table") && new.contains("| short |") && !new.contains("\nold\n"));
    }
}
