//! How the node binary stops, and that it sleeps when idle:
//! - SIGTERM with a client connected: the node closes the connection with an application close
//!   ("node shutting down", code 0) that the client sees, and exits 0 promptly;
//! - SIGINT on an idle node: exit 0;
//! - an idle node uses (almost) no CPU.
//!
//! All traffic stays on 127.0.0.1; every wait has a deadline; child processes are killed on
//! every path by their guards.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::clock_ticks_per_second;
use ant_quic::dataplane::{Application, BackendKind, ConnId, ConnRef, Node, ReadOutcome};
use ant_quic::node::{connect_request, start_client};
use ant_quic::quinn_proto::{ConnectionError, StreamId};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use anyhow::{bail, ensure, Context, Result};
use common::{NodeProcess, TempDir, NODE_BIN};

/// The node binary on a loopback port, with its data and stderr in `dir`.
fn start_node(dir: &TempDir, extra: &[&str]) -> Result<NodeProcess> {
    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data")).args(extra);
    NodeProcess::start(command.env("RUST_LOG", "info"), dir.path())
}

/// utime + stime of the whole process `pid`, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: libc::pid_t) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2 (comm) is parenthesised and may hold spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3).context("no utime")?.parse()?;
    let stime: u64 = fields.get(15 - 3).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// A client node in this process; shut down and joined when dropped.
struct ClientNode(Option<Node>);

impl Drop for ClientNode {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            node.shutdown();
            let _ = node.join();
        }
    }
}

/// What the client application saw.
#[derive(Debug)]
enum Seen {
    Connected,
    Echoed(Vec<u8>),
    Closed(ConnectionError),
    ConnectFailed(String),
}

/// Connects, echoes `ECHO` on one stream, then holds the connection open.
struct HoldOpen {
    events: mpsc::Sender<Seen>,
    stream: Option<StreamId>,
    echoed: Vec<u8>,
}

const ECHO: &[u8] = b"are you there?";

impl Application for HoldOpen {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let _ = self.events.send(Seen::Connected);
        if let Some(stream) = conn.open_bi() {
            let mut request = vec![b'E'];
            request.extend_from_slice(ECHO);
            let _ = conn.write(stream, &request);
            let _ = conn.finish(stream);
            self.stream = Some(stream);
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if Some(stream) != self.stream {
            return;
        }
        let echoed = &mut self.echoed;
        if let Ok(ReadOutcome::Finished) = conn.read(stream, &mut |bytes| echoed.extend_from_slice(&bytes)) {
            let _ = self.events.send(Seen::Echoed(std::mem::take(&mut self.echoed)));
        }
    }

    fn on_closed(&mut self, _id: ConnId, _tag: u64, reason: &ConnectionError) {
        let _ = self.events.send(Seen::Closed(reason.clone()));
    }

    fn on_connect_failed(&mut self, _tag: u64, error: &ant_quic::quinn_proto::ConnectError) {
        let _ = self.events.send(Seen::ConnectFailed(error.to_string()));
    }
}

fn next_event(events: &mpsc::Receiver<Seen>, deadline: Instant) -> Result<Seen> {
    events.recv_timeout(deadline.saturating_duration_since(Instant::now())).context("no client event in time")
}

fn sigterm_with_open_connection(backend: BackendKind) -> Result<()> {
    let dir = TempDir::new(&format!("sigterm-{backend}"))?;
    let mut node = start_node(&dir, &["--cores", "2", "--backend", backend.name()])?;

    let (tx, events) = mpsc::channel();
    let client = start_client(Some(backend), HoldOpen { events: tx, stream: None, echoed: Vec::new() })?;
    let client = ClientNode(Some(client));
    let request = connect_request(node.addr, ServerAuth::Insecure, &[ALPN_ANT_QUIC], 7)?;
    client.0.as_ref().context("client node")?.connect(request, None)?;

    // The connection is live: the echo came back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match next_event(&events, deadline)? {
            Seen::Connected => {}
            Seen::Echoed(bytes) => {
                ensure!(bytes == ECHO, "echo returned {bytes:?}");
                break;
            }
            Seen::ConnectFailed(error) => bail!("connect failed: {error}"),
            other => bail!("before the echo: {other:?}\nnode stderr:\n{}", node.stderr()),
        }
    }
    // Hold it open a moment, then stop the node.
    std::thread::sleep(Duration::from_millis(200));
    ensure!(events.try_recv().is_err(), "unexpected client event while idle");

    let took = node.stop_with(libc::SIGTERM, Duration::from_secs(5))?;
    eprintln!("sigterm[{backend}]: node exited 0 in {took:?}");

    // The client heard the close from the node (not an idle timeout, not a reset).
    let closed = next_event(&events, Instant::now() + Duration::from_secs(5))?;
    match closed {
        Seen::Closed(ConnectionError::ApplicationClosed(close)) => {
            ensure!(close.error_code.into_inner() == 0, "application close code {}, want 0", close.error_code);
            ensure!(
                close.reason.as_ref() == b"node shutting down",
                "close reason {:?}, want \"node shutting down\"",
                String::from_utf8_lossy(&close.reason)
            );
        }
        other => bail!("client saw {other:?}, want ApplicationClosed(0, \"node shutting down\") from the peer"),
    }
    drop(client);
    let stderr = node.stderr();
    ensure!(!stderr.contains("panicked"), "node stderr has a panic:\n{stderr}");
    Ok(())
}

#[test]
fn sigterm_with_open_connection_io_uring() -> Result<()> {
    sigterm_with_open_connection(BackendKind::IoUring)
}

#[test]
fn sigterm_with_open_connection_portable() -> Result<()> {
    sigterm_with_open_connection(BackendKind::Portable)
}

fn sigint_idle(backend: BackendKind) -> Result<()> {
    let dir = TempDir::new(&format!("sigint-{backend}"))?;
    let mut node = start_node(&dir, &["--backend", backend.name()])?;
    std::thread::sleep(Duration::from_millis(200));
    let took = node.stop_with(libc::SIGINT, Duration::from_secs(5))?;
    eprintln!("sigint[{backend}]: node exited 0 in {took:?}");
    Ok(())
}

#[test]
fn sigint_idle_io_uring() -> Result<()> {
    sigint_idle(BackendKind::IoUring)
}

#[test]
fn sigint_idle_portable() -> Result<()> {
    sigint_idle(BackendKind::Portable)
}

/// An idle node must sleep in the kernel: under 3% of one CPU over 3 s (all threads together).
fn idle_cpu(backend: BackendKind) -> Result<()> {
    let dir = TempDir::new(&format!("idle-{backend}"))?;
    let mut node = start_node(&dir, &["--cores", "2", "--backend", backend.name()])?;
    let Some(ticks_per_sec) = clock_ticks_per_second() else { bail!("sysconf(_SC_CLK_TCK) gave no tick rate") };
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(node.pid())?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let after = cpu_ticks(node.pid())?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = after.saturating_sub(before) as f64 / ticks_per_sec as f64;
    let share = cpu / wall;
    eprintln!(
        "idle[{backend}]: {} ticks ({cpu:.3} s CPU) over {wall:.2} s = {:.2}% of one CPU",
        after - before,
        share * 100.0
    );
    ensure!(
        share < 0.03,
        "idle node used {:.1}% of one CPU ({cpu:.3} s over {wall:.2} s): it does not sleep\nstderr:\n{}",
        share * 100.0,
        node.stderr()
    );
    node.stop_with(libc::SIGTERM, Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn idle_cpu_io_uring() -> Result<()> {
    idle_cpu(BackendKind::IoUring)
}

#[test]
fn idle_cpu_portable() -> Result<()> {
    idle_cpu(BackendKind::Portable)
}
