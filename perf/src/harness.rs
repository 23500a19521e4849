//! What the commands share: the bulk result line, running a command as a child process and
//! reading its JSON, a `server` child with its memory and CPU time, medians, and printing a report (the machine/load/command header of the
//! markdown ones).

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::load::{Implementation, ServerInfo};

/// Bytes of one bulk transfer by default: 1 GiB, as quinn's own bulk benchmark.
pub const DEFAULT_BYTES: u64 = 1 << 30;

/// What one bulk run prints: one JSON line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkResult {
    /// "quinn" or "ant-quic".
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Payload bytes moved on the stream.
    pub bytes: u64,
    /// From the client opening the stream to the receiver reading the last byte.
    pub seconds: f64,
    /// `bytes * 8 / seconds / 1e9`.
    pub gbps: f64,
    /// The negotiated TLS 1.3 cipher suite.
    pub cipher: String,
    /// "download" (server sends) or "upload" (client sends).
    pub direction: String,
    /// The negotiated key exchange group, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kx: Option<String>,
    /// The path MTU (UDP payload bytes) at the end of the transfer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The I/O backend, when the implementation has a choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// CPU seconds (user + system, every thread) the whole process spent, setup included:
    /// the figure a busy host disturbs less than the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

impl BulkResult {
    /// Gbit/s (10^9 bits per second) for `bytes` moved in `seconds`.
    pub fn gbps(bytes: u64, seconds: f64) -> f64 {
        if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1e9
        } else {
            0.0
        }
    }
}

/// "download" or "upload".
pub fn direction_name(upload: bool) -> &'static str {
    if upload {
        "upload"
    } else {
        "download"
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// One progress line of `compare` on stderr.
pub fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("[compare] {msg}");
}

/// Runs this executable with `args`, kills it after `timeout`, parses the last JSON line of its
/// standard output.
pub fn child_json<T: serde::de::DeserializeOwned>(
    exe: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> Result<T> {
    child_json_watching(exe, args, timeout, &mut || {})
}

/// Like [`child_json`], calling `watch` every 20 ms while the child runs.
pub fn child_json_watching<T: serde::de::DeserializeOwned>(
    exe: &std::path::Path,
    args: &[String],
    timeout: Duration,
    watch: &mut dyn FnMut(),
) -> Result<T> {
    let mut command = Command::new(exe);
    command.args(args);
    command_json_watching(command, timeout, watch)
}

/// Like [`child_json_watching`], for any command (e.g. behind `ip netns exec`).
pub fn command_json_watching<T: serde::de::DeserializeOwned>(
    mut command: Command,
    timeout: Duration,
    watch: &mut dyn FnMut(),
) -> Result<T> {
    let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", args.join(" ")))?;
    let stdout = reader(&mut child, true)?;
    let stderr = reader(&mut child, false)?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            // Only this child, by its own handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        watch();
        thread::sleep(Duration::from_millis(20));
    };
    let out = stdout.join().map_err(|_| anyhow!("stdout reader panicked"))?;
    let err = stderr.join().map_err(|_| anyhow!("stderr reader panicked"))?;
    let tail = err
        .lines()
        .rev()
        .find(|l| l.starts_with("Error:"))
        .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    let status = match status {
        Some(s) => s,
        None => bail!("timed out after {timeout:?} and was killed ({tail})"),
    };
    if !status.success() {
        bail!("exited with {status}: {tail}");
    }
    last_json(&out)
}

/// What a child printed: the whole output when it is one JSON document (relay-rate prints it
/// pretty), else its last JSON line.
pub fn last_json<T: serde::de::DeserializeOwned>(out: &str) -> Result<T> {
    if let Ok(whole) = serde_json::from_str(out.trim()) {
        return Ok(whole);
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow!("no JSON line in the output"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

fn reader(child: &mut Child, stdout: bool) -> Result<thread::JoinHandle<String>> {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?)
    } else {
        Box::new(child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?)
    };
    Ok(thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    }))
}

// ---------------------------------------------------------------------------------------------
// Server children and what /proc says of them

/// A `server` child; dropping it closes its stdin (it exits) and reaps it.
pub struct ServerChild {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The server's ready line, as clients take it (`--server`).
    pub line: String,
    /// The same, parsed.
    pub info: ServerInfo,
}

impl ServerChild {
    /// Start `exe server --impl implementation --cores cores` and wait for its ready line.
    pub fn start(exe: &Path, implementation: Implementation, cores: usize) -> Result<Self> {
        let mut command = Command::new(exe);
        command.args(["server", "--impl", implementation.name(), "--cores", &cores.to_string()]);
        Self::start_command(command)
    }

    /// Start `command` (a `server` invocation, perhaps behind `ip netns exec` or `taskset`) and
    /// wait for its ready line.
    pub fn start_command(mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the server")?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no server stderr"))?;
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no server stdout"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ServerChild { child, stdin, line: String::new(), info: placeholder_info() };
        server.line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let said: Vec<String> = err_rx.try_iter().collect();
                let last = said.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
                anyhow::bail!("the server printed no ready line ({last})");
            }
        };
        server.info = serde_json::from_str(&server.line).with_context(|| format!("server line {}", server.line))?;
        Ok(server)
    }
}

fn placeholder_info() -> ServerInfo {
    ServerInfo {
        implementation: String::new(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        pid: 0,
        peer_id: None,
        cert_der_hex: None,
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Only this child, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of every thread of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = ant_quic_dataplane::sys::process::clock_ticks_per_second()?;
    Some(ticks as f64 / per_second as f64)
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Figures

/// The values, sorted (NaN last).
pub fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median of sorted values; `None` when there are none.
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// `v` with `digits` decimals, or a dash when there is none.
pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

// ---------------------------------------------------------------------------------------------
// The report header

/// The machine a report was measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

/// The CPU model, core count and kernel, for a result's machine line.
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    Machine { cpu, cores, kernel }
}

/// /proc/loadavg's 1-minute figure: how busy the (shared) machine was.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The command line of this process, as a report quotes it.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Print a report to stdout: pretty JSON with `json`, else as `markdown` renders it.
pub fn print_report<R: Serialize>(report: &R, json: bool, markdown: impl FnOnce(&R) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", markdown(report));
    }
    Ok(())
}

/// The first lines of a markdown report: machine, load before and after, the command (and the
/// wrapper that ran it, `ANT_QUIC_PERF_VIA`), the source (`ANT_QUIC_PERF_SOURCE`).
pub fn write_header(s: &mut String, machine: &Machine, load: (Option<f64>, Option<f64>), command: &str) {
    use std::fmt::Write;
    let _ = writeln!(s, "- Machine: {}, {} cores, Linux {}", machine.cpu, machine.cores, machine.kernel);
    let _ = writeln!(
        s,
        "- Load average (1 min) before / after: {} / {} (the machine is shared)",
        fmt_opt(load.0, 2),
        fmt_opt(load.1, 2)
    );
    match std::env::var("ANT_QUIC_PERF_VIA") {
        Ok(via) => {
            let _ = writeln!(s, "- Command: `{}` (which runs `{command}`)", via.trim());
        }
        Err(_) => {
            let _ = writeln!(s, "- Command: `{command}`");
        }
    }
    if let Ok(source) = std::env::var("ANT_QUIC_PERF_SOURCE") {
        let _ = writeln!(s, "- Source: {source}");
    }
}

/// What a bulk sender writes for `bytes` bytes: 1 MiB per `write_all_chunks` call, as 16
/// references to the callback API's 64 KiB filler (`ant_quic::protocol::filler`), so the three
/// APIs send the same bytes from the same memory; the last call holds what is left.
pub fn filler_calls(bytes: u64) -> impl Iterator<Item = [bytes::Bytes; 16]> {
    let block = ant_quic::protocol::filler();
    let mut left = bytes;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let mut chunks: [bytes::Bytes; 16] = Default::default();
        left -= fill(&mut chunks, &block, left);
        Some(chunks)
    })
}

/// Point `chunks` at `block`, at most `left` bytes in all; returns how many bytes they hold.
fn fill(chunks: &mut [bytes::Bytes], block: &bytes::Bytes, left: u64) -> u64 {
    let mut total = 0u64;
    for chunk in chunks.iter_mut() {
        let n = (left - total).min(block.len() as u64) as usize;
        *chunk = block.slice(..n);
        total += n as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
        assert_eq!(median(&sorted([4.0, 1.0, 2.0, 3.0].into_iter())), Some(2.5));
    }

    #[test]
    fn fill_points_at_the_block_up_to_what_is_left() {
        let block = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let mut chunks: [bytes::Bytes; 16] = Default::default();
        assert_eq!(fill(&mut chunks, &block, 10 << 20), 1 << 20);
        assert!(chunks.iter().all(|c| c.len() == block.len() && c.as_ptr() == block.as_ptr()));
        assert_eq!(fill(&mut chunks, &block, 100_000), 100_000);
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(lens[..3], [65_536, 34_464, 0]);
        assert!(lens[2..].iter().all(|&l| l == 0));
    }

    #[test]
    fn filler_calls_hold_exactly_the_bytes_asked_for() {
        let total = |bytes| filler_calls(bytes).flatten().map(|c| c.len() as u64).sum::<u64>();
        assert_eq!(filler_calls(0).count(), 0);
        assert_eq!(filler_calls((3 << 20) + 5).count(), 4);
        assert_eq!(total((3 << 20) + 5), (3 << 20) + 5);
    }
}
