//! Zero-downtime takeover (issue 11): `ant-quic --takeover`, started with the flags of a running
//! node (same UDP port, same data dir, so the same peer ID), takes every new connection while the
//! old process drains its own and exits. What a user of the two commands sees:
//!
//! - `takeover_keeps_every_connection_{portable,io_uring}`: against the old process, an aioquic
//!   hq-interop download of a 300 MB file (paced so that it is still running at the switch) and
//!   50 `ant-quic/1` connections echoing in a loop; `--takeover` with the same flags; then 100 new
//!   connections (50 aioquic hq GETs, 50 `ant-quic get --peer-id`, one every 20 ms on average).
//!   The download ends with its SHA-256 intact, every echo comes back intact before, during and
//!   after the switch, every new connection succeeds and is counted by the new process and none
//!   by the old one, neither process sees a datagram of the other's generation, and the old
//!   process exits 0 once its last connection is gone.
//! - `relayed_flow_keeps_forwarding_across_a_takeover`: two peers registered with the old node
//!   reach each other through its relay; data keeps crossing the relay after the switch and
//!   through the re-registration window; both peers end up registered with the new process.
//! - `takeover_with_an_invalid_config_leaves_the_old_node_serving`: exit 2, one `error:` line,
//!   and the old process never starts draining.
//! - `taking_over_twice_keeps_live_transfers` (rollback is the same operation): a transfer on
//!   generation 1 and one on generation 2 both survive generation 3 taking over.
//! - `two_concurrent_takeovers_one_wins`: the loser exits 2 with the contract's one line.
//! - `drain_timeout_closes_what_is_left`: a connection still open at the drain timeout is closed
//!   by the old process (the client hears CONNECTION_CLOSE), which exits 0.
//! - `takeover_without_a_running_node_just_starts`.
//! - `takeover_from_another_user_is_refused` (root only, with user `nobody`).
//!
//! `bench_takeover` (ignored; run by `scripts/bench-takeover.sh`) measures the switch: time to
//! ready, failed connections and the longest gap seen by a client connecting every 5 ms, and the
//! throughput of a live bulk download around the switch, against the same clients with no switch
//! and with a plain restart.
//!
//! All traffic stays on 127.0.0.1. Ports are picked free (UDP and the admin TCP port of the same
//! number). The tests run one at a time (each loads both cores). Every wait has a deadline; every
//! child process is killed and reaped on every path; scratch directories go unless a test fails.
//! The aioquic virtualenv is a prerequisite: without it the tests that need it fail, never skip.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::{current_uid, send_signal};
use ant_quic::dataplane::{Application, ConnId, ConnRef, ConnectRequest, Connections, Messenger, Node, ReadOutcome};
use ant_quic::nat::link::{CoreRequest, UploadReport};
use ant_quic::nat::NatOptions;
use ant_quic::node::{start_client, start_server_with, NodeOptions, Server};
use ant_quic::quinn_proto::{ConnectError, ConnectionError, StreamId, VarInt};
use ant_quic::tls::{self, ServerAuth, ServerSecurity, ALPN_ANT_QUIC};
use ant_quic_control::nat::agent::{BootstrapSpec, PathKind};
use ant_quic_control::nat::traversal::TraversalConfig;
use anyhow::{bail, ensure, Context, Result};
use common::tail;
use common::{
    aioquic_python, interop_script, parse_listening, random_bytes, require, sha256_hex, Process, TempDir, NODE_BIN,
};

/// How long a node may take to say `listening on`.
const STARTUP: Duration = Duration::from_secs(20);
/// Longest wait for anything that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- one test at a time

/// Each test runs two nodes of two cores each and their clients: running them side by side
/// would measure the machine, not the takeover.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------- nodes

/// A port whose number is free on 127.0.0.1 for UDP (the node) and TCP (its admin listener).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1 in 50 tries")
}

/// The command line a node and every node taking it over share.
#[derive(Debug, Clone)]
struct Flags {
    port: u16,
    data: PathBuf,
    backend: Option<&'static str>,
    www: Option<PathBuf>,
    drain_timeout: u64,
}

impl Flags {
    fn command(&self) -> Command {
        let mut command = Command::new(NODE_BIN);
        // Nothing from the test's environment: no config, log or systemd variables.
        for (name, _) in std::env::vars() {
            if name.starts_with("ANT_QUIC_") {
                command.env_remove(name);
            }
        }
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            command.env_remove(name);
        }
        command.env("RUST_LOG", "info");
        command.args(["--listen", &format!("127.0.0.1:{}", self.port), "--cores", "2", "--data-dir"]).arg(&self.data);
        if let Some(backend) = self.backend {
            command.args(["--backend", backend]);
        }
        if let Some(www) = &self.www {
            command.arg("--www").arg(www);
        }
        command.args(["--drain-timeout", &self.drain_timeout.to_string()]);
        command
    }

    fn takeover(&self) -> Command {
        let mut command = self.command();
        command.arg("--takeover");
        command
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// `took over UDP ADDR from pid P (generation G); it drains N connections for at most D s`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TookOver {
    addr: SocketAddr,
    pid: i32,
    generation: u16,
    connections: u64,
    drain_seconds: u64,
}

/// The facts of the switch line. The contract words it
/// `took over UDP ADDR from pid P (generation G); it drains N connections for at most D s`; the
/// node prints `took over UDP ADDR from pid P: generation G serves new connections; generation G0
/// drains N connections for at most D s`. Both are read (G is the new process's generation).
fn parse_took_over(line: &str) -> Option<TookOver> {
    let rest = line.strip_prefix("took over UDP ")?;
    let (addr, rest) = rest.split_once(" from pid ")?;
    let (pid, rest) = rest.split_once([' ', ':'])?;
    let generation = match rest.strip_prefix("(generation ") {
        Some(contract) => contract.split_once(')')?.0,
        None => rest.strip_prefix(" generation ")?.split_once(" serves new connections")?.0,
    };
    let (head, drain) = rest.split_once(" connections for at most ")?;
    let connections = head.rsplit(' ').next()?;
    Some(TookOver {
        addr: addr.parse().ok()?,
        pid: pid.parse().ok()?,
        generation: generation.parse().ok()?,
        connections: connections.parse().ok()?,
        drain_seconds: drain.strip_suffix(" s")?.parse().ok()?,
    })
}

/// One node process, started plainly or with `--takeover`, once it said it is ready.
struct Generation {
    process: Process,
    addr: SocketAddr,
    peer_id: String,
    /// What it printed before `listening on` about the process it took over.
    took_over: Option<TookOver>,
    /// Every stdout line up to `listening on`.
    banner: Vec<String>,
    spawned: Instant,
    ready: Instant,
}

impl Generation {
    /// Start `command` (stderr in `LOGS/NAME.stderr`); wait for `listening on` and the admin line.
    fn start(name: &str, command: &mut Command, logs: &Path) -> Result<Self> {
        let spawned = Instant::now();
        let mut process = Process::spawn(name, command, logs)?;
        let mut banner = Vec::new();
        let addr = process.stdout_line(STARTUP, |line| {
            banner.push(line.to_owned());
            parse_listening(line)
        })?;
        let ready = Instant::now();
        process.stdout_line(PATIENCE, |line| line.starts_with("admin http on ").then_some(()))?;
        let peer_id = banner.iter().find_map(|l| l.split("peer id ").nth(1)).unwrap_or_default().trim().to_owned();
        let took_over = banner.iter().find_map(|l| parse_took_over(l));
        Ok(Self { process, addr, peer_id, took_over, banner, spawned, ready })
    }

    fn pid(&self) -> i32 {
        self.process.pid()
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Wait for the process to exit, at most `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.exited()? {
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "still running after {limit:?}\nstderr:\n{}", tail(&self.stderr(), 30));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The old process's last log line, `stopped; connections accepted N … ; K datagrams of another
/// generation`: (N, K).
fn stopped_totals(stderr: &str) -> Result<(u64, u64)> {
    let line = stderr.lines().rev().find(|l| l.contains("stopped; ")).context("no `stopped; …` line")?;
    let number_after = |key: &str| -> Option<u64> { line.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    let accepted = number_after("connections accepted ").with_context(|| format!("no accepted count in {line:?}"))?;
    let foreign = line
        .rsplit_once(" datagrams of another generation")
        .and_then(|(head, _)| head.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .with_context(|| format!("no `N datagrams of another generation` in {line:?}"))?;
    Ok((accepted, foreign))
}

/// Every process's stderr is free of panics.
fn no_panics(generations: &[&Generation]) -> Result<()> {
    for g in generations {
        let stderr = g.stderr();
        ensure!(!stderr.contains("panicked"), "pid {} panicked:\n{}", g.pid(), tail(&stderr, 40));
    }
    Ok(())
}

// ---------------------------------------------------------------- admin HTTP

/// `GET path` on the admin listener: (status, body).
fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&admin, Duration::from_secs(5)).with_context(|| format!("TCP {admin}"))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).with_context(|| format!("reading GET {path} from {admin}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// The sample `series` of `/metrics`; an error when the node does not expose it.
fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    let (status, body) = admin_get(admin, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no sample `{series}` in /metrics:\n{body}"))
}

fn health(admin: SocketAddr) -> Result<(u16, serde_json::Value)> {
    let (status, body) = admin_get(admin, "/health")?;
    let json = serde_json::from_str(&body).with_context(|| format!("/health {status}: {body}"))?;
    Ok((status, json))
}

/// Poll `probe` every 50 ms until it returns a value, at most `limit`.
fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last = format!("{error:#}"),
        }
        ensure!(Instant::now() < deadline, "{what}: not within {limit:?} (last error: {last})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- files

/// Write `len` random bytes to `path` (in 4 MiB pieces); their SHA-256.
fn random_file(path: &Path, len: usize) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::create(path)?;
    let mut hash = sha2::Sha256::new();
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut chunk = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        urandom.read_exact(&mut chunk[..n])?;
        hash.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(hex::encode(hash.finalize()))
}

// ---------------------------------------------------------------- clients: aioquic

/// `hq_client.py` fetching `paths` from 127.0.0.1:`port` into `out`, with extra arguments.
fn hq_client(python: &Path, port: u16, out: &Path, extra: &[&str], paths: &[&str]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(interop_script("hq_client.py"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--insecure", "--output"])
        .arg(out)
        .args(extra)
        .args(paths);
    command
}

/// A paced aioquic download of one file, running.
struct Download {
    process: Process,
    path: String,
    out: PathBuf,
    len: u64,
    sha: String,
}

/// A file served from `--www`: URL path, length, SHA-256.
struct Served<'a>(&'a str, u64, &'a str);

/// The client's own time limit; the tests bound their waits more tightly.
const DOWNLOAD_TIMEOUT: &str = "240";

impl Download {
    /// `hq_client.py` fetching `served` at `rate` bytes/s into `out`.
    fn start(name: &str, python: &Path, port: u16, served: Served, rate: u64, out: &Path, logs: &Path) -> Result<Self> {
        let Served(path, len, sha) = served;
        let extra = ["--max-rate", &rate.to_string(), "--timeout", DOWNLOAD_TIMEOUT];
        let process = Process::spawn(name, &mut hq_client(python, port, out, &extra, &[path]), logs)?;
        Ok(Self { process, path: path.to_owned(), out: out.to_owned(), len, sha: sha.to_owned() })
    }

    /// Bytes written so far (to `NAME.part`, or the finished file).
    fn received(&self) -> u64 {
        let file = self.out.join(self.path.trim_start_matches('/'));
        let part = PathBuf::from(format!("{}.part", file.display()));
        std::fs::metadata(&part).or_else(|_| std::fs::metadata(&file)).map_or(0, |m| m.len())
    }

    fn running(&mut self) -> Result<bool> {
        Ok(self.process.exited()?.is_none())
    }

    /// Wait until `bytes` have arrived (the transfer is under way), at most `limit`.
    fn wait_received(&mut self, bytes: u64, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.received() < bytes {
            ensure!(self.running()?, "the download of {} ended after {} bytes", self.path, self.received());
            ensure!(
                Instant::now() < deadline,
                "the download of {} has {} of {bytes} bytes after {limit:?}",
                self.path,
                self.received()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Wait for the client to finish (at most `limit`): the whole file arrived with its SHA-256.
    fn finish(&mut self, limit: Duration, context: impl Fn() -> String) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.process.exited()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "the download of {} is still running after {limit:?} ({} bytes)\n{}",
                self.path,
                self.received(),
                context()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let finished = Instant::now();
        let path = self.path.clone();
        let line = self
            .process
            .stdout_line(PATIENCE, |l| l.split_whitespace().nth(1).is_some_and(|p| p == path).then(|| l.to_owned()))
            .with_context(|| format!("no result line for {path}"))?;
        let want = format!("OK {} {} {}", self.path, self.len, self.sha);
        ensure!(
            line == want && status.success(),
            "download of {}: exit {status}, `{line}`, want `{want}`\nclient stderr:\n{}\n{}",
            self.path,
            tail(&self.process.stderr(), 20),
            context()
        );
        Ok(finished)
    }
}

/// `ant-quic get URL --peer-id ID --output DIR`, started.
fn ant_quic_get(name: &str, port: u16, path: &str, peer_id: &str, out: &Path, logs: &Path) -> Result<Process> {
    let mut command = Command::new(NODE_BIN);
    command
        .arg("get")
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .args(["--peer-id", peer_id, "--timeout", "30", "--output"])
        .arg(out)
        .env_remove("RUST_LOG");
    Process::spawn(name, &mut command, logs)
}

/// Wait (at most `limit`) for a finished client process; `Ok(status)`.
fn wait_process(process: &mut Process, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.exited()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "still running after {limit:?}\nstderr:\n{}", tail(&process.stderr(), 20));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fetch with `ant-quic get --peer-id` of `path` (whose content is `want`) succeeds.
fn get_succeeds(name: &str, port: u16, path: &str, want: &[u8], peer_id: &str, scratch: &Path) -> Result<()> {
    let out = scratch.join(format!("{name}-out"));
    let mut get = ant_quic_get(name, port, path, peer_id, &out, scratch)?;
    let status = wait_process(&mut get, Duration::from_secs(40))?;
    ensure!(status.success(), "{name}: ant-quic get exited {status}\n{}", tail(&get.stderr(), 20));
    let got = std::fs::read(out.join(path.trim_start_matches('/'))).with_context(|| format!("{name}: no file"))?;
    ensure!(got == want, "{name}: {} bytes fetched differ from the {} served", got.len(), want.len());
    Ok(())
}

// ---------------------------------------------------------------- clients: ant-quic/1 echo

/// A thread calling `tick` every `period` until stopped (or `limit` passed).
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(period: Duration, limit: Duration, mut tick: impl FnMut(u64) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0u64;
            while !flag.load(Ordering::Acquire) && started.elapsed() < limit {
                tick(n);
                n += 1;
                // An absolute schedule: a slow tick does not push the later ones back.
                let next = started + period * u32::try_from(n).unwrap_or(u32::MAX);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Self { stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client node in this process; shut down and joined when dropped.
struct ClientNode<M = ()>(Option<Node<M>>);

impl<M> ClientNode<M> {
    fn node(&self) -> &Node<M> {
        self.0.as_ref().expect("client node present until dropped")
    }

    fn stop(&mut self) {
        if let Some(node) = self.0.take() {
            node.shutdown();
            let _ = node.join();
        }
    }
}

impl<M> Drop for ClientNode<M> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bytes of echo round `round` on connection `tag` (after the op byte).
fn echo_payload(tag: u64, round: u64) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..1000)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// One echo connection: its rounds and what went wrong.
#[derive(Debug, Default)]
struct EchoConn {
    id: Option<ConnId>,
    stream: Option<StreamId>,
    round: u64,
    received: Vec<u8>,
    /// When each round's echo came back complete and intact.
    done: Vec<Instant>,
    failure: Option<String>,
}

#[derive(Debug, Default)]
struct Fleet {
    conns: Vec<EchoConn>,
    /// Set before the client shuts down: closes from then on are ours.
    closing: bool,
}

/// Connections that echo one round each tick (`E` + 1000 bytes, FIN; the same bytes back).
struct EchoFleet(Arc<Mutex<Fleet>>);

struct Tick;

fn start_round(conn: &mut ConnRef<'_>, entry: &mut EchoConn) {
    let Some(stream) = conn.open_bi() else { return };
    let mut request = vec![b'E'];
    request.extend_from_slice(&echo_payload(conn.tag(), entry.round));
    match conn.write(stream, &request) {
        Ok(n) if n == request.len() => {}
        other => entry.failure = Some(format!("round {}: write returned {other:?}", entry.round)),
    }
    let _ = conn.finish(stream);
    entry.stream = Some(stream);
    entry.received.clear();
}

impl Application<Tick> for EchoFleet {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let mut fleet = self.0.lock().unwrap();
        let Some(entry) = fleet.conns.get_mut(conn.tag() as usize) else { return };
        entry.id = Some(conn.id());
        start_round(conn, entry);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let mut fleet = self.0.lock().unwrap();
        let Some(entry) = fleet.conns.get_mut(conn.tag() as usize) else { return };
        if entry.stream != Some(stream) {
            return;
        }
        let received = &mut entry.received;
        match conn.read(stream, &mut |bytes| received.extend_from_slice(&bytes)) {
            Ok(ReadOutcome::Pending) => {}
            Ok(ReadOutcome::Finished) => {
                if entry.received == echo_payload(conn.tag(), entry.round) {
                    entry.done.push(Instant::now());
                } else if entry.failure.is_none() {
                    entry.failure = Some(format!(
                        "round {}: {} bytes echoed, not the 1000 sent",
                        entry.round,
                        entry.received.len()
                    ));
                }
                entry.round += 1;
                entry.stream = None;
            }
            Err(error) => entry.failure = Some(format!("round {}: {error}", entry.round)),
        }
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, _message: Tick) {
        let mut fleet = self.0.lock().unwrap();
        for entry in &mut fleet.conns {
            if let (Some(id), None, None) = (entry.id, entry.stream, &entry.failure) {
                if let Some(mut conn) = conns.get(id) {
                    start_round(&mut conn, entry);
                }
            }
        }
    }

    fn on_closed(&mut self, _id: ConnId, tag: u64, reason: &ConnectionError) {
        let mut fleet = self.0.lock().unwrap();
        let closing = fleet.closing;
        if let Some(entry) = fleet.conns.get_mut(tag as usize) {
            if !closing && entry.failure.is_none() {
                entry.failure = Some(format!("closed after {} rounds: {reason}", entry.done.len()));
            }
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ConnectError) {
        if let Some(entry) = self.0.lock().unwrap().conns.get_mut(tag as usize) {
            entry.failure = Some(format!("connect failed: {error}"));
        }
    }
}

/// `count` ant-quic/1 connections to `server`, each echoing a round every `period`.
struct Echoes {
    fleet: Arc<Mutex<Fleet>>,
    client: ClientNode<Tick>,
    ticker: Ticker,
}

impl Echoes {
    fn start(server: SocketAddr, count: usize, period: Duration) -> Result<Self> {
        let fleet =
            Arc::new(Mutex::new(Fleet { conns: (0..count).map(|_| EchoConn::default()).collect(), closing: false }));
        let client = ClientNode(Some(start_client(None, EchoFleet(Arc::clone(&fleet)))?));
        let config = tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC])?;
        for tag in 0..count as u64 {
            let request = ConnectRequest {
                remote: server,
                server_name: tls::default_server_name().to_owned(),
                config: config.clone(),
                tag,
            };
            client.node().connect(request, Some(0))?;
        }
        let handle = client.node().messenger();
        let ticker = Ticker::start(period, Duration::from_secs(600), move |_| {
            let _ = handle.send_message(0, Tick);
        });
        Ok(Self { fleet, client, ticker })
    }

    /// Wait until every connection has echoed at least once.
    fn wait_all_echoed(&self, limit: Duration) -> Result<()> {
        poll("every echo connection echoed once", limit, || {
            let fleet = self.fleet.lock().unwrap();
            if let Some((tag, failed)) =
                fleet.conns.iter().enumerate().find_map(|(t, c)| c.failure.as_ref().map(|f| (t, f)))
            {
                bail!("echo connection {tag}: {failed}");
            }
            Ok(fleet.conns.iter().all(|c| !c.done.is_empty()).then_some(()))
        })
    }

    /// Every connection: no failure, and an intact echo in each of `windows` (named ranges).
    fn check(&self, windows: &[(&str, Instant, Instant)]) -> Result<()> {
        let fleet = self.fleet.lock().unwrap();
        let mut wrong = Vec::new();
        for (tag, conn) in fleet.conns.iter().enumerate() {
            if let Some(failure) = &conn.failure {
                wrong.push(format!("connection {tag}: {failure}"));
                continue;
            }
            for (name, from, to) in windows {
                if !conn.done.iter().any(|t| t >= from && t < to) {
                    wrong.push(format!("connection {tag}: no echo {name} ({} rounds in all)", conn.done.len()));
                }
            }
        }
        ensure!(wrong.is_empty(), "echo connections:\n{}", wrong.join("\n"));
        Ok(())
    }

    fn rounds(&self) -> usize {
        self.fleet.lock().unwrap().conns.iter().map(|c| c.done.len()).sum()
    }

    /// Close every connection (the client node's shutdown closes them).
    fn close(mut self) {
        self.ticker.stop();
        self.fleet.lock().unwrap().closing = true;
        self.client.stop();
    }
}

// ---------------------------------------------------------------- the core scenario

/// `2 * NEW_EACH` new connections, one every 20 ms on average: `NEW_EACH` aioquic connections from
/// one client (40 ms apart) and `NEW_EACH` `ant-quic get --peer-id`s between them, each fetching
/// `/small.bin` (`small`). All must succeed.
fn new_connections(python: &Path, flags: &Flags, peer_id: &str, small: &[u8], out: &Path, logs: &Path) -> Result<()> {
    let small_sha = sha256_hex(small);
    let mut aioquic = Process::spawn(
        "aioquic-new",
        &mut hq_client(
            python,
            flags.port,
            &out.join("aioquic"),
            &["--connections", &NEW_EACH.to_string(), "--interval", "0.04", "--timeout", "60"],
            &["/small.bin"],
        ),
        logs,
    )?;
    let mut gets = Vec::new();
    let first = Instant::now();
    for i in 0..NEW_EACH {
        let at = first + Duration::from_millis(20 + 40 * i as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let dir = out.join(format!("get-{i}"));
        gets.push(ant_quic_get(&format!("get-{i}"), flags.port, "/small.bin", peer_id, &dir, logs)?);
    }
    let mut failed = Vec::new();
    for (i, get) in gets.iter_mut().enumerate() {
        let status = wait_process(get, Duration::from_secs(45))?;
        let fetched = std::fs::read(out.join(format!("get-{i}/small.bin"))).unwrap_or_default();
        if !status.success() || fetched != small {
            failed.push(format!("get-{i}: exit {status}, {} bytes\n{}", fetched.len(), tail(&get.stderr(), 5)));
        }
    }
    let status = wait_process(&mut aioquic, Duration::from_secs(70))?;
    for i in 0..NEW_EACH {
        let prefix = format!("CONN {i} ");
        let line = aioquic.stdout_line(PATIENCE, |l| l.strip_prefix(&prefix).map(str::to_owned))?;
        if line != format!("OK /small.bin {} {small_sha}", small.len()) {
            failed.push(format!("aioquic connection {i}: {line}"));
        }
    }
    ensure!(
        failed.is_empty() && status.success(),
        "{} of {} new connections failed (aioquic client exit {status}):\n{}\naioquic stderr:\n{}",
        failed.len(),
        2 * NEW_EACH,
        failed.join("\n"),
        tail(&aioquic.stderr(), 20)
    );
    Ok(())
}

/// Size of the file downloaded across the takeover.
const BIG: usize = 300_000_000;
/// Receive pace of that download: at least 20 s, so the takeover lands in its middle.
const BIG_RATE: u64 = 15_000_000;
/// Drain timeout of the core scenario: long enough for the rest of the download.
const CORE_DRAIN: u64 = 90;
const ECHO_CONNECTIONS: usize = 50;
/// New connections during the drain: this many aioquic ones and this many `ant-quic get`s.
const NEW_EACH: usize = 50;

fn takeover_keeps_every_connection(backend: &'static str) -> Result<()> {
    let _serial = serial();
    let python = aioquic_python()?;
    let started = Instant::now();
    let mut scratch = TempDir::new(&format!("takeover-core-{backend}"))?.keep_unless_passed();
    let www = scratch.subdir("www")?;
    let logs = scratch.subdir("logs")?;
    let big_sha = random_file(&www.join("big.bin"), BIG)?;
    let small = random_bytes(4096)?;
    std::fs::write(www.join("small.bin"), &small)?;

    let flags = Flags {
        port: free_port()?,
        data: scratch.subdir("data")?,
        backend: Some(backend),
        www: Some(www.clone()),
        drain_timeout: CORE_DRAIN,
    };
    let admin = flags.admin();
    let mut old = Generation::start("gen1", &mut flags.command(), &logs)?;
    eprintln!("core[{backend}]: generation 1 pid {} on {} ({:?} to set up)", old.pid(), old.addr, started.elapsed());

    // Against the old process: 50 echo connections and the download.
    let echoes = Echoes::start(old.addr, ECHO_CONNECTIONS, Duration::from_millis(50))?;
    echoes.wait_all_echoed(Duration::from_secs(20))?;
    let mut download = Download::start(
        "download",
        &python,
        flags.port,
        Served("/big.bin", BIG as u64, &big_sha),
        BIG_RATE,
        &scratch.subdir("download")?,
        &logs,
    )?;
    download.wait_received(16 << 20, Duration::from_secs(30))?;
    let accepted_before = metric(admin, "quic_connections_total")?;
    ensure!(
        accepted_before == (ECHO_CONNECTIONS + 1) as f64,
        "the old process counts {accepted_before} connections before the takeover, want {} (echoes and the download)",
        ECHO_CONNECTIONS + 1
    );

    // The takeover, with exactly the same flags.
    let mut new = Generation::start("gen2", &mut flags.takeover(), &logs)
        .with_context(|| format!("--takeover did not become ready\nold stderr:\n{}", tail(&old.stderr(), 30)))?;
    let switch = new.ready;
    eprintln!(
        "core[{backend}]: generation 2 pid {} ready {:?} after --takeover, download at {} MB",
        new.pid(),
        new.ready - new.spawned,
        download.received() / 1_000_000
    );
    ensure!(download.running()?, "the download ended before the switch: the takeover did not meet a live transfer");
    ensure!(new.addr == old.addr, "the new process listens on {}, the old one on {}", new.addr, old.addr);
    ensure!(new.peer_id == old.peer_id, "same data dir, different peer ID: {} vs {}", new.peer_id, old.peer_id);
    let want = TookOver {
        addr: old.addr,
        pid: old.pid(),
        generation: 2,
        connections: (ECHO_CONNECTIONS + 1) as u64,
        drain_seconds: CORE_DRAIN,
    };
    ensure!(
        new.took_over.as_ref() == Some(&want),
        "took-over line {:?}, want {want:?}\n{}",
        new.took_over,
        new.banner.join("\n")
    );

    // 100 new connections while the old process drains.
    new_connections(&python, &flags, &new.peer_id, &small, &scratch.subdir("new-connections")?, &logs)
        .with_context(|| format!("new process stderr:\n{}", tail(&new.stderr(), 30)))?;
    eprintln!("core[{backend}]: {} new connections succeeded", 2 * NEW_EACH);

    // The admin port now belongs to the new process, and it knows its predecessor.
    let counted = metric(admin, "quic_connections_total")?;
    ensure!(counted >= (2 * NEW_EACH) as f64, "the new process counts {counted} connections, want >= {}", 2 * NEW_EACH);
    let (status, health_now) = health(admin)?;
    ensure!(status == 200 && health_now["generation"] == 2, "/health after the switch: {status} {health_now}");
    ensure!(health_now["previous"]["pid"] == old.pid(), "/health does not name the draining predecessor: {health_now}");
    ensure!(health_now["previous"]["generation"] == 1, "/health previous generation: {health_now}");

    // The download ends intact; the echoes kept coming back to the end.
    let context = || format!("old stderr:\n{}\nnew stderr:\n{}", tail(&old.stderr(), 20), tail(&new.stderr(), 20));
    let download_done = download.finish(Duration::from_secs(CORE_DRAIN + 20), context)?;
    eprintln!("core[{backend}]: 300 MB download intact, {:?} after the switch", download_done - switch);
    std::thread::sleep(Duration::from_millis(500));
    let end = Instant::now();
    echoes.check(&[
        ("before the takeover", old.ready, new.spawned),
        ("during the switch", new.spawned, switch + Duration::from_secs(3)),
        ("at the end", end - Duration::from_millis(500), end),
    ])?;
    eprintln!("core[{backend}]: {} echo rounds intact on {ECHO_CONNECTIONS} connections", echoes.rounds());
    let closed = Instant::now();
    echoes.close();

    // The old process leaves once its last connection is gone, well before its drain timeout.
    let status = old
        .wait_exit(Duration::from_secs(15))
        .context("the old process did not exit once its connections were gone")?;
    ensure!(status.success(), "the old process exited {status}\n{}", tail(&old.stderr(), 30));
    eprintln!("core[{backend}]: old process exited 0, {:?} after its last connection closed", closed.elapsed());
    let old_stderr = old.stderr();
    let announce = format!("taken over by pid {} (generation 2)", new.pid());
    ensure!(old_stderr.contains(&announce), "no `{announce}` in the old process's log:\n{}", tail(&old_stderr, 30));
    let (accepted, foreign) = stopped_totals(&old_stderr)?;
    ensure!(
        accepted as f64 == accepted_before,
        "the old process accepted {accepted} connections in all, {accepted_before} before the switch: new connections reached it"
    );
    ensure!(foreign == 0, "the old process saw {foreign} datagrams of another generation");
    let foreign = metric(admin, "ant_quic_foreign_generation_datagrams_total")?;
    ensure!(foreign == 0.0, "the new process saw {foreign} datagrams of the old generation");

    // The new process serves on, and stops as a node does.
    get_succeeds("get-after", flags.port, "/small.bin", &small, &new.peer_id, scratch.path())?;
    no_panics(&[&old, &new])?;
    new.process.stop_with(libc::SIGTERM, PATIENCE)?;
    eprintln!("core[{backend}]: {:.1} s in all", started.elapsed().as_secs_f64());
    scratch.passed();
    Ok(())
}

#[test]
fn takeover_keeps_every_connection_portable() -> Result<()> {
    takeover_keeps_every_connection("portable")
}

#[test]
fn takeover_keeps_every_connection_io_uring() -> Result<()> {
    takeover_keeps_every_connection("io-uring")
}

// ---------------------------------------------------------------- relay

/// A peer node in this process registered with one bootstrap. Hole punching is switched off
/// (no probing time, no spraying, no upgrades), so that on loopback, where any punch works, its
/// connections to other peers go through the bootstrap's relay.
struct Peer(Option<Server>);

impl Peer {
    fn start(bootstrap: SocketAddr) -> Result<Self> {
        let traversal = TraversalConfig {
            punch_timeout: Duration::ZERO,
            spray_sockets: 0,
            upgrade_attempts: 0,
            ..Default::default()
        };
        let options = NodeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cores: Some(1),
            nat: NatOptions { bootstraps: vec![BootstrapSpec::unpinned(bootstrap)], traversal, ..Default::default() },
            ..Default::default()
        };
        Ok(Self(Some(start_server_with(&options, &ServerSecurity::default())?)))
    }

    fn server(&self) -> &Server {
        self.0.as_ref().expect("peer present until dropped")
    }

    fn registered(&self) -> bool {
        self.server().nat.status().bootstraps.iter().all(|b| b.registered && b.observed.is_some())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut server) = self.0.take() {
            server.nat.stop();
            server.node.shutdown();
            let _ = server.node.join();
        }
    }
}

/// Uploads (`H`: the receiver reports the count and SHA-256) one after another on a connection:
/// when each ended and how.
fn upload_loop(
    peer: &Messenger<CoreRequest>,
    conn: ConnId,
    stop: &AtomicBool,
    log: &Mutex<Vec<(Instant, UploadReport)>>,
) {
    while !stop.load(Ordering::Acquire) {
        let (report, reports) = crossbeam_channel::bounded(1);
        let request = CoreRequest::Upload { conn, bytes: 512 * 1024, report };
        if peer.send_message(conn.core, request).is_err() {
            return;
        }
        let outcome = reports.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| UploadReport {
            bytes: 0,
            elapsed: Duration::from_secs(20),
            sha256: String::new(),
            verified: false,
            error: Some("no report within 20 s".into()),
        });
        let failed = outcome.error.is_some();
        log.lock().unwrap().push((Instant::now(), outcome));
        if failed {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drain timeout of the relay test: peers are asked to re-register within its first half.
const RELAY_DRAIN: u64 = 20;

#[test]
fn relayed_flow_keeps_forwarding_across_a_takeover() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-relay")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let flags = Flags {
        port: free_port()?,
        data: scratch.subdir("data")?,
        backend: None,
        www: None,
        drain_timeout: RELAY_DRAIN,
    };
    let admin = flags.admin();
    let mut old = Generation::start("gen1", &mut flags.command(), &logs)?;

    let a = Peer::start(old.addr)?;
    let b = Peer::start(old.addr)?;
    poll("both peers registered with the old node", Duration::from_secs(20), || {
        Ok((a.registered() && b.registered()).then_some(()))
    })?;
    let target = b.server().identity.peer_id();
    let connection = a.server().nat.connect(target, Duration::from_secs(30)).map_err(anyhow::Error::msg)?;
    ensure!(
        connection.path == PathKind::Relayed,
        "the peers connected {:?} via {}, want through the relay",
        connection.path,
        connection.remote
    );
    ensure!(connection.remote == old.addr, "relayed via {}, not the bootstrap {}", connection.remote, old.addr);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let uploads = {
        let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
        let (handle, conn) = (a.server().node.messenger(), connection.conn);
        std::thread::spawn(move || upload_loop(&handle, conn, &stop, &log))
    };
    poll("uploads through the relay", Duration::from_secs(20), || Ok((log.lock().unwrap().len() >= 3).then_some(())))?;

    let mut new = Generation::start("gen2", &mut flags.takeover(), &logs)?;
    let switch = new.ready;
    // Through the re-registration window (half the drain timeout) and a little more.
    let watch_until = switch + Duration::from_secs(RELAY_DRAIN / 2 + 3);
    while Instant::now() < watch_until {
        if log.lock().unwrap().iter().any(|(_, r)| r.error.is_some()) || old.process.exited()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let old_exited_early = old.process.exited()?.is_some();
    stop.store(true, Ordering::Release);
    let _ = uploads.join();

    let log = log.lock().unwrap();
    let after: Vec<&(Instant, UploadReport)> = log.iter().filter(|(t, _)| *t > switch).collect();
    let broken: Vec<String> = log
        .iter()
        .filter(|(_, r)| r.error.is_some() || !r.verified)
        .map(|(t, r)| format!("{:?} after the switch: {r:?}", t.saturating_duration_since(switch)))
        .collect();
    let longest = log.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
    eprintln!(
        "relay: {} uploads of 512 KiB through the relay, {} after the switch, longest gap {longest:?}",
        log.len(),
        after.len()
    );
    ensure!(
        broken.is_empty(),
        "the relayed flow broke:\n{}\nold stderr:\n{}",
        broken.join("\n"),
        tail(&old.stderr(), 30)
    );
    ensure!(
        !old_exited_early,
        "the old process exited while it still relayed a live flow\n{}",
        tail(&old.stderr(), 30)
    );
    let last = log.last().map(|(t, _)| *t).context("no upload")?;
    ensure!(
        after.len() >= 5 && last + Duration::from_secs(2) >= watch_until,
        "data stopped crossing the relay after the switch: {} uploads after it, the last {:?} after it",
        after.len(),
        last.saturating_duration_since(switch)
    );
    ensure!(longest < Duration::from_secs(2), "the relayed flow stalled for {longest:?}");
    drop(log);

    // Both peers re-registered with the new process within the window.
    let registered = metric(admin, "nat_registered_peers")?;
    ensure!(registered == 2.0, "the new process has {registered} registered peers, want both");
    let foreign = metric(admin, "ant_quic_foreign_generation_datagrams_total")?;
    ensure!(foreign == 0.0, "the new process saw {foreign} datagrams of the old generation (relay frames misrouted?)");

    drop(a);
    drop(b);
    let status = old.wait_exit(Duration::from_secs(RELAY_DRAIN + 10))?;
    ensure!(status.success(), "the old process exited {status}\n{}", tail(&old.stderr(), 30));
    let (_, foreign) = stopped_totals(&old.stderr())?;
    ensure!(foreign == 0, "the old process saw {foreign} datagrams of another generation");
    no_panics(&[&old, &new])?;
    new.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

// ---------------------------------------------------------------- failures and other cases

/// A node serving `small.bin` (4 KiB) from its `--www`, on a free port, in `scratch`.
fn small_site(scratch: &TempDir, drain_timeout: u64) -> Result<(Flags, Vec<u8>)> {
    let www = scratch.subdir("www")?;
    let small = random_bytes(4096)?;
    std::fs::write(www.join("small.bin"), &small)?;
    let flags =
        Flags { port: free_port()?, data: scratch.subdir("data")?, backend: None, www: Some(www), drain_timeout };
    Ok((flags, small))
}

/// The process took no notice of a takeover: it serves, is ready, does not drain.
fn still_serving_alone(
    node: &mut Generation,
    flags: &Flags,
    small: &[u8],
    scratch: &TempDir,
    name: &str,
) -> Result<()> {
    ensure!(node.process.exited()?.is_none(), "the running node exited\n{}", tail(&node.stderr(), 30));
    let before = metric(flags.admin(), "quic_connections_total")?;
    get_succeeds(name, flags.port, "/small.bin", small, &node.peer_id, scratch.path())?;
    let (status, json) = health(flags.admin())?;
    ensure!(status == 200 && json["status"] == "ok", "/health of the running node: {status} {json}");
    ensure!(json["previous"].is_null(), "/health names a predecessor: {json}");
    let (status, body) = admin_get(flags.admin(), "/ready")?;
    ensure!(status == 200, "/ready of the running node: {status} {body}");
    let after = metric(flags.admin(), "quic_connections_total")?;
    ensure!(
        after > before,
        "the running node did not count the new connection ({before} -> {after}): someone else served it"
    );
    let stderr = node.stderr();
    ensure!(
        !stderr.contains("taken over") && !stderr.contains("draining"),
        "the running node started draining:\n{}",
        tail(&stderr, 20)
    );
    Ok(())
}

/// The one line a failed `--takeover` prints: exit status 2 and exactly one stderr line starting
/// `error: `. Informational log lines (the node logs at info to stderr) may come before it; a
/// warning, an error in another form or a panic may not: the failure is that one line.
fn refused(done: &common::Finished) -> Result<String> {
    let errors: Vec<&str> = done.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    let noise: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| {
            !l.starts_with("error: ") && (l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        })
        .collect();
    ensure!(
        done.status.code() == Some(2) && errors.len() == 1 && noise.is_empty(),
        "want exit 2 and one `error: ` line; got {}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    ensure!(!done.stdout.contains("listening on"), "a refused takeover said it listens:\n{}", done.stdout);
    Ok(errors[0].to_owned())
}

#[test]
fn takeover_with_an_invalid_config_leaves_the_old_node_serving() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-bad-config")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 20)?;
    let mut old = Generation::start("gen1", &mut flags.command(), &logs)?;

    let bad = scratch.path().join("bad.toml");
    std::fs::write(&bad, "[node\nlisten = \"127.0.0.1:1\"\n")?;
    let mut command = flags.takeover();
    command.arg("--config").arg(&bad);
    let done = common::run("taker-bad-config", &mut command, &logs, Duration::from_secs(30))?;
    let line = refused(&done)?;
    ensure!(line.contains("bad.toml:"), "the error does not say FILE:LINE: {line}");
    eprintln!("bad config: `{line}`");

    still_serving_alone(&mut old, &flags, &small, &scratch, "get-after-bad-config")?;
    no_panics(&[&old])?;
    old.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// Transfers of the rollback test: size and pace (each lasts ~8 s).
const ROLLBACK_FILE: usize = 40_000_000;
const ROLLBACK_RATE: u64 = 5_000_000;

#[test]
fn taking_over_twice_keeps_live_transfers() -> Result<()> {
    let _serial = serial();
    let python = aioquic_python()?;
    let mut scratch = TempDir::new("takeover-twice")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 40)?;
    let www = flags.www.clone().context("www")?;
    let sha_a = random_file(&www.join("a.bin"), ROLLBACK_FILE)?;
    let sha_b = random_file(&www.join("b.bin"), ROLLBACK_FILE)?;
    let timeout = Duration::from_secs(60);

    let mut gen1 = Generation::start("gen1", &mut flags.command(), &logs)?;
    let mut a = Download::start(
        "download-a",
        &python,
        flags.port,
        Served("/a.bin", ROLLBACK_FILE as u64, &sha_a),
        ROLLBACK_RATE,
        &scratch.subdir("a")?,
        &logs,
    )?;
    a.wait_received(4 << 20, Duration::from_secs(20))?;

    let mut gen2 = Generation::start("gen2", &mut flags.takeover(), &logs)?;
    ensure!(
        gen2.took_over.as_ref().is_some_and(|t| t.pid == gen1.pid() && t.generation == 2),
        "the first takeover's line: {:?}\n{}",
        gen2.took_over,
        gen2.banner.join("\n")
    );
    let mut b = Download::start(
        "download-b",
        &python,
        flags.port,
        Served("/b.bin", ROLLBACK_FILE as u64, &sha_b),
        ROLLBACK_RATE,
        &scratch.subdir("b")?,
        &logs,
    )?;
    b.wait_received(4 << 20, Duration::from_secs(20))?;

    // The takeover back (the same operation; here the same binary) while both transfers run:
    // one on generation 1, still draining, and one on generation 2.
    ensure!(a.running()? && b.running()?, "a transfer ended before the second takeover");
    let mut gen3 = Generation::start("gen3", &mut flags.takeover(), &logs)?;
    ensure!(
        gen3.took_over.as_ref().is_some_and(|t| t.pid == gen2.pid() && t.generation == 3),
        "the second takeover's line: {:?}\n{}",
        gen3.took_over,
        gen3.banner.join("\n")
    );
    ensure!(a.running()? && b.running()?, "a transfer ended before the third generation was ready");
    let context = || {
        format!(
            "gen1 stderr:\n{}\ngen2 stderr:\n{}\ngen3 stderr:\n{}",
            tail(&gen1.stderr(), 15),
            tail(&gen2.stderr(), 15),
            tail(&gen3.stderr(), 15)
        )
    };
    a.finish(timeout, context)?;
    b.finish(timeout, context)?;

    get_succeeds("get-gen3", flags.port, "/small.bin", &small, &gen3.peer_id, scratch.path())?;
    let (_, json) = health(flags.admin())?;
    ensure!(json["generation"] == 3, "/health after the second takeover: {json}");
    ensure!(metric(flags.admin(), "quic_connections_total")? >= 1.0, "generation 3 did not count the new connection");
    for (name, g) in [("generation 1", &mut gen1), ("generation 2", &mut gen2)] {
        let status =
            g.wait_exit(Duration::from_secs(15)).with_context(|| format!("{name} did not exit once drained"))?;
        ensure!(status.success(), "{name} exited {status}\n{}", tail(&g.stderr(), 20));
        let (_, foreign) = stopped_totals(&g.stderr())?;
        ensure!(foreign == 0, "{name} saw {foreign} datagrams of another generation");
    }
    ensure!(
        metric(flags.admin(), "ant_quic_foreign_generation_datagrams_total")? == 0.0,
        "generation 3 saw foreign datagrams"
    );
    no_panics(&[&gen1, &gen2, &gen3])?;
    gen3.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// What became of one of two `--takeover`s started together.
enum Race {
    Won(Box<Generation>),
    Lost(common::Finished),
}

#[test]
fn two_concurrent_takeovers_one_wins() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-race")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 20)?;
    let mut holder = Generation::start("gen1", &mut flags.command(), &logs)?;
    let mut retired = Vec::new();

    // Both are spawned within a millisecond; should one finish before the other even looks, the
    // second simply takes over from the first (sequential, as it must): try again, three times.
    for attempt in 0..3 {
        let (tx, rx) = mpsc::channel();
        for side in ["x", "y"] {
            let tx = tx.clone();
            let mut command = flags.takeover();
            let logs = logs.clone();
            let name = format!("taker-{attempt}-{side}");
            std::thread::spawn(move || {
                let outcome = match Process::spawn(&name, &mut command, &logs) {
                    Err(error) => Err(error),
                    Ok(process) => race_outcome(process),
                };
                let _ = tx.send(outcome);
            });
        }
        drop(tx);
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            outcomes.push(rx.recv_timeout(Duration::from_secs(60)).context("a racing --takeover never settled")??);
        }
        let (mut won, lost): (Vec<Race>, Vec<Race>) = outcomes.into_iter().partition(|o| matches!(o, Race::Won(_)));
        match (won.len(), lost.len()) {
            (1, 1) => {
                let (Some(Race::Won(mut winner)), Some(Race::Lost(loser))) = (won.pop(), lost.into_iter().next())
                else {
                    unreachable!()
                };
                let line = refused(&loser)?;
                let want = format!(
                    "error: another takeover of UDP {} is in progress (pid {}); try again when it is done",
                    holder.addr,
                    winner.pid()
                );
                ensure!(line == want, "the loser said\n  {line}\nwant\n  {want}");
                ensure!(
                    winner.took_over.as_ref().is_some_and(|t| t.pid == holder.pid()),
                    "the winner took over from {:?}, not pid {}",
                    winner.took_over,
                    holder.pid()
                );
                eprintln!("race: attempt {attempt}: pid {} won; the other said `{line}`", winner.pid());
                get_succeeds("get-winner", flags.port, "/small.bin", &small, &winner.peer_id, scratch.path())?;
                let status = holder.wait_exit(Duration::from_secs(10)).context("the idle old node did not exit")?;
                ensure!(status.success(), "the old node exited {status}");
                for mut g in retired {
                    let status = Generation::wait_exit(&mut g, Duration::from_secs(10))?;
                    ensure!(status.success(), "an earlier winner exited {status}");
                }
                no_panics(&[&holder, &winner])?;
                winner.process.stop_with(libc::SIGTERM, PATIENCE)?;
                scratch.passed();
                return Ok(());
            }
            (2, 0) => {
                // Sequential: the later one took over from the earlier one.
                let mut both: Vec<Generation> =
                    won.into_iter().filter_map(|o| if let Race::Won(g) = o { Some(*g) } else { None }).collect();
                both.sort_by_key(|g| g.ready);
                let later = both.pop().context("two winners")?;
                let earlier = both.pop().context("two winners")?;
                ensure!(
                    earlier.took_over.as_ref().is_some_and(|t| t.pid == holder.pid())
                        && later.took_over.as_ref().is_some_and(|t| t.pid == earlier.pid()),
                    "two takeovers both won, not one after the other: {:?} then {:?}",
                    earlier.took_over,
                    later.took_over
                );
                eprintln!("race: attempt {attempt}: the two ran one after the other; again");
                retired.push(std::mem::replace(&mut holder, later));
                retired.push(earlier);
            }
            _ => {
                let lines: Vec<String> = lost
                    .iter()
                    .filter_map(|o| {
                        if let Race::Lost(f) = o {
                            Some(format!("{}: {}", f.status, f.stderr.trim()))
                        } else {
                            None
                        }
                    })
                    .collect();
                bail!("neither of two concurrent --takeovers won:\n{}", lines.join("\n"));
            }
        }
    }
    bail!("three times the two --takeovers ran one after the other: the race was never exercised")
}

/// A racing `--takeover`: `Won` once it says `listening on`, `Lost` once it exits without.
fn race_outcome(mut process: Process) -> Result<Race> {
    let spawned = Instant::now();
    let mut banner = Vec::new();
    match process.stdout_line(STARTUP, |line| {
        banner.push(line.to_owned());
        parse_listening(line)
    }) {
        Ok(addr) => {
            let ready = Instant::now();
            process.stdout_line(PATIENCE, |line| line.starts_with("admin http on ").then_some(()))?;
            let peer_id = banner.iter().find_map(|l| l.split("peer id ").nth(1)).unwrap_or_default().trim().to_owned();
            let took_over = banner.iter().find_map(|l| parse_took_over(l));
            Ok(Race::Won(Box::new(Generation { process, addr, peer_id, took_over, banner, spawned, ready })))
        }
        Err(_) => {
            let status = wait_process(&mut process, PATIENCE)?;
            Ok(Race::Lost(common::Finished { status, stdout: banner.join("\n"), stderr: process.stderr() }))
        }
    }
}

#[test]
fn takeover_without_a_running_node_just_starts() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-alone")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 20)?;
    let mut node = Generation::start("alone", &mut flags.takeover(), &logs)?;
    ensure!(node.took_over.is_none(), "it says it took over from nobody: {:?}", node.took_over);
    ensure!(!node.banner.iter().any(|l| l.contains("took over")), "{}", node.banner.join("\n"));
    let (status, json) = health(flags.admin())?;
    ensure!(status == 200 && json["generation"] == 1 && json["previous"].is_null(), "/health: {status} {json}");
    ensure!(metric(flags.admin(), "ant_quic_generation")? == 1.0, "ant_quic_generation is not 1");
    still_serving_alone(&mut node, &flags, &small, &scratch, "get-alone")?;
    no_panics(&[&node])?;
    node.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// A connection still open at the drain timeout: the old process closes it and exits 0.
#[test]
fn drain_timeout_closes_what_is_left() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-drain-timeout")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 2)?;
    let mut old = Generation::start("gen1", &mut flags.command(), &logs)?;
    let echoes = Echoes::start(old.addr, 1, Duration::from_millis(50))?;
    echoes.wait_all_echoed(PATIENCE)?;

    let mut new = Generation::start("gen2", &mut flags.takeover(), &logs)?;
    let status = old.wait_exit(Duration::from_secs(2 + 8)).context("the old process outlived its drain timeout")?;
    let took = new.ready.elapsed();
    ensure!(status.success(), "the old process exited {status}\n{}", tail(&old.stderr(), 20));
    ensure!(
        took >= Duration::from_millis(1500),
        "the old process left {took:?} after the switch, before its 2 s drain timeout"
    );
    // The echo connection was closed by the old process, not left to time out.
    let failure =
        poll("the echo connection closed", PATIENCE, || Ok(echoes.fleet.lock().unwrap().conns[0].failure.clone()))?;
    ensure!(
        failure.contains(" by peer: "),
        "the connection left at the drain timeout ended with `{failure}`, want a CONNECTION_CLOSE from the node"
    );
    eprintln!("drain timeout: old exited 0 {took:?} after the switch; the client saw `{failure}`");
    echoes.close();
    get_succeeds("get-after-drain", flags.port, "/small.bin", &small, &new.peer_id, scratch.path())?;
    no_panics(&[&old, &new])?;
    new.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// Every notification line a process sent to `socket` within `limit`, until `until` holds.
fn notifications(
    socket: &std::os::unix::net::UnixDatagram,
    limit: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !until(&seen) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => seen.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned)),
            Err(_) => break,
        }
    }
    seen
}

/// What systemd hears (each process has its own NOTIFY_SOCKET here, as two units of a blue-green
/// pair would): the new process says READY=1 once it serves new connections; the old one then
/// says STOPPING=1 with a STATUS naming its successor.
#[test]
fn systemd_hears_ready_from_the_new_process_and_stopping_from_the_old() -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-systemd")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, _small) = small_site(&scratch, 2)?;
    let old_socket = UnixDatagram::bind(scratch.path().join("old.notify"))?;
    let new_socket = UnixDatagram::bind(scratch.path().join("new.notify"))?;
    let mut old =
        Generation::start("gen1", flags.command().env("NOTIFY_SOCKET", scratch.path().join("old.notify")), &logs)?;
    let seen = notifications(&old_socket, PATIENCE, |s| s.iter().any(|l| l == "READY=1"));
    ensure!(seen.iter().any(|l| l == "READY=1"), "the old process never said READY=1: {seen:?}");

    let new =
        Generation::start("gen2", flags.takeover().env("NOTIFY_SOCKET", scratch.path().join("new.notify")), &logs)?;
    let seen_new = notifications(&new_socket, PATIENCE, |s| s.iter().any(|l| l == "READY=1"));
    ensure!(seen_new.iter().any(|l| l == "READY=1"), "the new process never said READY=1: {seen_new:?}");
    let seen_old = notifications(&old_socket, PATIENCE, |s| s.iter().any(|l| l == "STOPPING=1"));
    ensure!(seen_old.iter().any(|l| l == "STOPPING=1"), "the old process never said STOPPING=1: {seen_old:?}");
    let status = format!("STATUS=taken over by pid {}: draining", new.pid());
    ensure!(seen_old.contains(&status), "no `{status}` from the old process: {seen_old:?}");
    let exited = old.wait_exit(PATIENCE)?;
    ensure!(exited.success(), "the old process exited {exited}");
    no_panics(&[&old, &new])?;
    let mut new = new;
    new.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// A successor killed after it said ready (a crash of the new version just after the switch): the
/// old process, still draining, notices within seconds and serves new connections again, with its
/// admin port and its live connections intact.
#[test]
fn a_successor_killed_after_the_switch_leaves_the_old_node_serving() -> Result<()> {
    let _serial = serial();
    let mut scratch = TempDir::new("takeover-successor-dies")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 60)?;
    let mut old = Generation::start("gen1", &mut flags.command(), &logs)?;
    let echoes = Echoes::start(old.addr, 1, Duration::from_millis(50))?;
    echoes.wait_all_echoed(PATIENCE)?;

    let mut new = Generation::start("gen2", &mut flags.takeover(), &logs)?;
    poll("the old process to start draining", PATIENCE, || Ok(old.stderr().contains("draining").then_some(())))?;
    // A pid this test spawned and still owns (not yet reaped).
    let killed = send_signal(new.pid() as u32, libc::SIGKILL);
    ensure!(killed.is_ok(), "cannot kill the successor: {killed:?}");
    let killed = Instant::now();
    poll("the old process to serve again", Duration::from_secs(10), || {
        Ok(old.stderr().contains("serving new connections again").then_some(()))
    })?;
    eprintln!("the old process served again {:?} after the successor was killed", killed.elapsed());
    ensure!(old.process.exited()?.is_none(), "the old process exited\n{}", tail(&old.stderr(), 30));
    let before = metric(flags.admin(), "quic_connections_total")?;
    get_succeeds("get-after-successor-died", flags.port, "/small.bin", &small, &old.peer_id, scratch.path())?;
    let after = metric(flags.admin(), "quic_connections_total")?;
    ensure!(after > before, "the old process did not count the new connection ({before} -> {after})");
    let (status, json) = health(flags.admin())?;
    ensure!(status == 200 && json["status"] == "ok" && json["generation"] == 1, "/health: {status} {json}");
    // The connection it held all along still echoes.
    let echoed = echoes.fleet.lock().unwrap().conns[0].done.len();
    poll("the held connection to echo again", PATIENCE, || {
        Ok((echoes.fleet.lock().unwrap().conns[0].done.len() > echoed).then_some(()))
    })?;
    echoes.close();
    let _ = new.process.exited();
    old.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("nobody:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

#[test]
fn takeover_from_another_user_is_refused() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let euid = current_uid();
    let nobody = nobody();
    if !require(nobody.is_some(), "a user `nobody` to run the old node as (adduser --system nobody)")? {
        return Ok(());
    }
    if !require(euid == 0, "root (to start the old node as another user)")? {
        return Ok(());
    }
    let (uid, gid) = nobody.context("checked above")?;
    let mut scratch = TempDir::new("takeover-uid")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let (flags, small) = small_site(&scratch, 20)?;
    std::os::unix::fs::chown(&flags.data, Some(uid), Some(gid))?;
    let mut command = flags.command();
    command.uid(uid).gid(gid).env("HOME", "/nonexistent").args(["--backend", "portable"]);
    let mut old = Generation::start("gen1-nobody", &mut command, &logs)?;

    let mut taker = flags.takeover();
    taker.args(["--backend", "portable"]);
    let done = common::run("taker-root", &mut taker, &logs, Duration::from_secs(30))?;
    let line = refused(&done)?;
    let want = format!(
        "error: cannot take over UDP {}: it is held by uid {uid} and this process runs as uid {euid}; \
         the kernel shares a port only between processes of the same user",
        old.addr
    );
    ensure!(line == want, "the refusal said\n  {line}\nwant\n  {want}");
    still_serving_alone(&mut old, &flags, &small, &scratch, "get-after-uid")?;
    no_panics(&[&old])?;
    old.process.stop_with(libc::SIGTERM, PATIENCE)?;
    scratch.passed();
    Ok(())
}

#[test]
fn took_over_line_parses() {
    let line = "took over UDP 127.0.0.1:9000 from pid 4242 (generation 3); it drains 51 connections for at most 90 s";
    assert_eq!(
        parse_took_over(line),
        Some(TookOver {
            addr: "127.0.0.1:9000".parse().unwrap(),
            pid: 4242,
            generation: 3,
            connections: 51,
            drain_seconds: 90
        })
    );
    let printed = "took over UDP 127.0.0.1:9000 from pid 4242: generation 3 serves new connections; generation 2 \
                   drains 51 connections for at most 90 s";
    assert_eq!(parse_took_over(printed), parse_took_over(line));
    assert_eq!(parse_took_over("listening on 127.0.0.1:9000 (udp, 2 cores)"), None);
    let stopped = "2025-01-01T00:00:00Z INFO ant_quic: stopped; connections accepted 51 opened 0 handshakes 51; \
                   received 10 datagrams (1 bytes, 0 GRO batches); sent 1 datagrams (1 bytes, 0 GSO batches, 0 GSO \
                   fallbacks, 0 failed); 0 handed between cores; 0 dropped; 7 datagrams of another generation";
    assert_eq!(stopped_totals(stopped).unwrap(), (51, 7));
    assert!(stopped_totals("stopped; connections accepted 3 opened 0").is_err());
}

// ---------------------------------------------------------------- benchmark

/// What happens to the node in the middle of a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// `--takeover` with the same flags.
    Takeover,
    /// Nothing: the same clients, the noise floor.
    Nothing,
    /// SIGTERM, then the node started again: what an upgrade meant before `--takeover`.
    Restart,
}

impl Switch {
    fn name(self) -> &'static str {
        match self {
            Switch::Takeover => "takeover",
            Switch::Nothing => "no switch",
            Switch::Restart => "restart",
        }
    }
}

/// What the probe client saw of each connection, by tag.
#[derive(Debug, Default)]
struct Probes {
    started: Vec<Instant>,
    completed: BTreeMap<u64, Instant>,
    failed: BTreeMap<u64, String>,
}

/// Opens a connection per tick (from outside, with `Node::connect`); each does one echo and closes.
struct Prober(Arc<Mutex<Probes>>);

impl Application for Prober {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if let Some(stream) = conn.open_bi() {
            let _ = conn.write(stream, b"Eping1234");
            let _ = conn.finish(stream);
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let mut echoed = Vec::new();
        if let Ok(ReadOutcome::Finished) = conn.read(stream, &mut |bytes| echoed.extend_from_slice(&bytes)) {
            let mut probes = self.0.lock().unwrap();
            probes.completed.entry(conn.tag()).or_insert_with(Instant::now);
            drop(probes);
            conn.close(VarInt::from_u32(0), b"done");
        }
    }

    fn on_closed(&mut self, _id: ConnId, tag: u64, reason: &ConnectionError) {
        let mut probes = self.0.lock().unwrap();
        if !probes.completed.contains_key(&tag) {
            probes.failed.entry(tag).or_insert_with(|| reason.to_string());
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ConnectError) {
        self.0.lock().unwrap().failed.insert(tag, error.to_string());
    }
}

/// Downloads one endless `D` stream and counts the bytes.
struct Bulk(Arc<AtomicU64>);

impl Application for Bulk {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if let Some(stream) = conn.open_bi() {
            let _ = conn.write(stream, &ant_quic::protocol::encode_op(ant_quic::protocol::Op::Download(1 << 50)));
            let _ = conn.finish(stream);
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let mut n = 0u64;
        let _ = conn.read(stream, &mut |bytes| n += bytes.len() as u64);
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// One benchmark run's figures.
#[derive(Debug, Clone)]
struct RunFigures {
    /// From the switch's start to the new process's `listening on`.
    ready_ms: Option<f64>,
    /// From the switch's start to the first connection started after `ready` and served.
    first_served_ms: Option<f64>,
    /// Connections started around the switch (1 s before to 2 s after ready) that failed or did
    /// not complete within 3 s.
    failed: usize,
    probes: usize,
    /// Longest time between two completed connections in that window.
    longest_gap_ms: f64,
    /// Bulk throughput in the second around `ready`, over its rate in the 2 s before the switch.
    throughput_ratio: f64,
    before_gbps: f64,
}

/// Bytes counted at `t` (the last sample at or before it).
fn bytes_at(samples: &[(Instant, u64)], t: Instant) -> u64 {
    samples.iter().take_while(|(when, _)| *when <= t).last().map_or(0, |(_, bytes)| *bytes)
}

fn bench_run(switch: Switch, logs: &Path, run: usize) -> Result<RunFigures> {
    let data = logs.join(format!("data-{run}"));
    std::fs::create_dir_all(&data)?;
    let flags = Flags { port: free_port()?, data, backend: None, www: None, drain_timeout: 30 };
    let mut old = Generation::start(&format!("run{run}-old"), &mut flags.command(), logs)?;
    let config = tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC])?;
    let request = |tag| ConnectRequest {
        remote: old.addr,
        server_name: tls::default_server_name().to_owned(),
        config: config.clone(),
        tag,
    };

    let bytes = Arc::new(AtomicU64::new(0));
    let mut bulk = ClientNode(Some(start_client(None, Bulk(Arc::clone(&bytes)))?));
    bulk.node().connect(request(0), Some(0))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut sampler = {
        let (bytes, samples) = (Arc::clone(&bytes), Arc::clone(&samples));
        Ticker::start(Duration::from_millis(10), Duration::from_secs(60), move |_| {
            samples.lock().unwrap().push((Instant::now(), bytes.load(Ordering::Relaxed)));
        })
    };
    poll("the bulk download started", PATIENCE, || Ok((bytes.load(Ordering::Relaxed) > 0).then_some(())))?;

    let probes = Arc::new(Mutex::new(Probes::default()));
    let mut prober = ClientNode(Some(start_client(None, Prober(Arc::clone(&probes)))?));
    let mut ticker = {
        let (probes, handle) = (Arc::clone(&probes), prober.node().handle());
        let requests: Vec<ConnectRequest> = (0..4000).map(request).collect();
        let mut requests = requests.into_iter();
        Ticker::start(Duration::from_millis(5), Duration::from_secs(20), move |_| {
            if let Some(request) = requests.next() {
                probes.lock().unwrap().started.push(Instant::now());
                let _ = handle.connect(request, Some(0));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    let t_switch = Instant::now();
    let mut new = None;
    let ready = match switch {
        Switch::Nothing => t_switch,
        Switch::Takeover => {
            let g = Generation::start(&format!("run{run}-new"), &mut flags.takeover(), logs)?;
            let ready = g.ready;
            new = Some(g);
            ready
        }
        Switch::Restart => {
            old.process.stop_with(libc::SIGTERM, PATIENCE)?;
            let g = Generation::start(&format!("run{run}-new"), &mut flags.command(), logs)?;
            let ready = g.ready;
            new = Some(g);
            ready
        }
    };
    std::thread::sleep((ready + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    ticker.stop();
    sampler.stop();
    // Let the last connections finish (or time out).
    std::thread::sleep(Duration::from_secs(3));
    prober.stop();
    bulk.stop();

    let probes = probes.lock().unwrap();
    let samples = samples.lock().unwrap();
    let (from, to) = (t_switch - Duration::from_secs(1), ready + Duration::from_secs(2));
    let mut failed = 0;
    let mut probed = 0;
    let mut completions = Vec::new();
    let mut first_served = None::<Instant>;
    for (tag, started) in probes.started.iter().enumerate() {
        let tag = tag as u64;
        let done = probes.completed.get(&tag).copied();
        if let Some(done) = done {
            if done >= from && done <= to {
                completions.push(done);
            }
            if *started >= ready && switch != Switch::Nothing {
                first_served = Some(first_served.map_or(done, |f: Instant| f.min(done)));
            }
        }
        if *started >= from && *started < to {
            probed += 1;
            if done.is_none_or(|d| d - *started > Duration::from_secs(3)) {
                failed += 1;
            }
        }
    }
    completions.sort();
    let longest_gap = completions.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let rate = |a: Instant, b: Instant| (bytes_at(&samples, b) - bytes_at(&samples, a)) as f64 / (b - a).as_secs_f64();
    let before = rate(t_switch - Duration::from_millis(2500), t_switch - Duration::from_millis(500));
    let around = rate(ready - Duration::from_millis(500), ready + Duration::from_millis(500));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    drop((probes, samples));
    // The old process drains (its clients are gone) or was stopped; the new one is stopped.
    match switch {
        Switch::Takeover => {
            let status = old.wait_exit(Duration::from_secs(15))?;
            ensure!(status.success(), "the old process exited {status}");
        }
        Switch::Nothing => {
            old.process.stop_with(libc::SIGTERM, PATIENCE)?;
        }
        Switch::Restart => {}
    }
    if let Some(mut new) = new {
        new.process.stop_with(libc::SIGTERM, PATIENCE)?;
    }
    Ok(RunFigures {
        ready_ms: (switch != Switch::Nothing).then(|| ms(ready - t_switch)),
        first_served_ms: first_served.map(|f| ms(f - t_switch)),
        failed,
        probes: probed,
        longest_gap_ms: ms(longest_gap),
        throughput_ratio: if before > 0.0 { around / before } else { 0.0 },
        before_gbps: before * 8.0 / 1e9,
    })
}

/// `median [min–max]` of `values`, formatted with `digits` decimals; `–` when empty.
fn spread(values: &[f64], digits: usize) -> String {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    format!("{median:.digits$} [{:.digits$}–{:.digits$}]", v[0], v[v.len() - 1])
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {}, kernel {}", model.unwrap_or("unknown CPU"), kernel.trim())
}

/// Run by `scripts/bench-takeover.sh`: takeover, no switch and restart alternating,
/// `ANT_QUIC_BENCH_REPS` times each (default 5); a markdown table on stdout and in
/// `ANT_QUIC_BENCH_OUT` when set.
#[test]
#[ignore = "a benchmark: scripts/bench-takeover.sh"]
fn bench_takeover() -> Result<()> {
    let _serial = serial();
    let reps: usize = std::env::var("ANT_QUIC_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).clamp(1, 20);
    let mut scratch = TempDir::new("takeover-bench")?.keep_unless_passed();
    let logs = scratch.subdir("logs")?;
    let modes = [Switch::Takeover, Switch::Nothing, Switch::Restart];
    let mut figures: Vec<(Switch, RunFigures)> = Vec::new();
    for rep in 0..reps {
        for (i, mode) in modes.iter().enumerate() {
            let run = rep * modes.len() + i;
            let f = bench_run(*mode, &logs, run).with_context(|| format!("run {run} ({})", mode.name()))?;
            eprintln!("bench: run {run} {}: {f:?}", mode.name());
            figures.push((*mode, f));
        }
    }
    let mut table = String::new();
    table.push_str(&format!(
        "Machine: {}. Command: `scripts/bench-takeover.sh {reps}` ({reps} runs of each mode, alternating; \
         nodes `--cores 2` on 127.0.0.1, clients in one process beside them). Median [min–max].\n\n",
        machine()
    ));
    table.push_str(
        "| mode | ready after (ms) | first new connection served by the new process (ms) | failed connections (of those started 1 s before the switch to 2 s after ready, one every 5 ms) | longest gap between completed connections (ms) | bulk throughput in the second around the switch / the 2 s before | bulk before (Gbit/s) |\n",
    );
    table.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for mode in modes {
        let runs: Vec<&RunFigures> = figures.iter().filter(|(m, _)| *m == mode).map(|(_, f)| f).collect();
        let pick = |f: &dyn Fn(&RunFigures) -> Option<f64>| runs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
        table.push_str(&format!(
            "| {} | {} | {} | {} (of {}) | {} | {} | {} |\n",
            mode.name(),
            spread(&pick(&|r| r.ready_ms), 0),
            spread(&pick(&|r| r.first_served_ms), 0),
            spread(&pick(&|r| Some(r.failed as f64)), 0),
            spread(&pick(&|r| Some(r.probes as f64)), 0),
            spread(&pick(&|r| Some(r.longest_gap_ms)), 1),
            spread(&pick(&|r| Some(r.throughput_ratio)), 2),
            spread(&pick(&|r| Some(r.before_gbps)), 2),
        ));
    }
    println!("{table}");
    if let Some(path) = std::env::var_os("ANT_QUIC_BENCH_OUT") {
        std::fs::write(path, &table)?;
    }
    scratch.passed();
    Ok(())
}
