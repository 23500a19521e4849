//! `ant-quic get` ends cleanly and promptly:
//! - its CONNECTION_CLOSE reaches the server (counted there as the peer's application close, not as
//!   an idle timeout), and the process exits without waiting out the connection's closing period
//!   (three PTOs, RFC 9000 §10.2), which a program that exits next does not need;
//! - a core's slow loop turn (the process's first key generation seeds the crypto library's random
//!   generator for tens of milliseconds) does not enter the RTT estimate, and so the PTO: the
//!   packets a turn sends carry the time they leave, not the time the turn began.
//!
//! To tell "exits at once" from "waits out the closing period" without a tight clock, the test
//! makes that period long: the server's core is held for [`SERVER_STALL`] while the client's
//! first Initial waits in its socket, so the client's first RTT sample, and with it every PTO of
//! the connection, is at least about that long. A client that waited out the closing period would
//! exit at least 2 s (the core's drain limit) after its close; the test allows 1 s.
//!
//! On a terminal (a tmux pane), `get` and `--connect PEER --send-bytes N` show progress while they
//! run and clear it at the end.
//!
//! All traffic stays on 127.0.0.1; every wait has a deadline; the child is killed on every path.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::stats::{read, CloseClass};
use ant_quic::dataplane::{Application, BackendKind, ConnRef};
use ant_quic::nat::NatOptions;
use ant_quic::node::{connect_request, start_client, start_server, NodeOptions, Server};
use ant_quic::quinn_proto::VarInt;
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use ant_quic_control::nat::agent::BootstrapSpec;
use common::{random_bytes, sha256_hex, Process, TempDir, TmuxServer, NODE_BIN};

/// How long the server's core is held while the client's first Initial waits: under the client's
/// first PTO (about 1 s with quinn-proto's initial RTT of 333 ms), so the Initial is not resent.
const SERVER_STALL: Duration = Duration::from_millis(600);
/// What the client may take from its close reaching the server to its exit. Its closing period is
/// three PTOs of at least SERVER_STALL less its start-up each; waiting it out takes 2 s or more.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(1);
/// Bound on the whole download.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Sum of one counter over the server's cores.
fn total(server: &Server, counter: impl Fn(&ant_quic::dataplane::stats::CoreStats) -> u64) -> u64 {
    server.node.handle().all_stats().map(counter).sum()
}

/// A one-core server on a loopback port, serving `www` if given.
fn server(backend: BackendKind, www: Option<std::path::PathBuf>) -> Server {
    start_server(&NodeOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        cores: Some(1),
        backend: Some(backend),
        www,
        ..NodeOptions::default()
    })
    .unwrap()
}

fn stop(mut server: Server) {
    server.nat.stop();
    server.node.shutdown();
    server.node.join().unwrap();
}

fn get_closes_and_exits_at_once(backend: BackendKind) {
    let dir = TempDir::new(&format!("get-close-{backend}")).unwrap();
    let www = dir.subdir("www").unwrap();
    let payload = random_bytes(2048).unwrap();
    std::fs::write(www.join("small.bin"), &payload).unwrap();
    let server = server(backend, Some(www));
    let url = format!("https://{}/small.bin", server.node.local_addr());
    let out = dir.path().join("out");

    server.node.stall_core(0, SERVER_STALL).unwrap();
    let mut get = Process::spawn(
        "get",
        Command::new(NODE_BIN)
            .args(["get", &url, "--insecure", "--backend", backend.name(), "--timeout", "20", "--output"])
            .arg(&out),
        dir.path(),
    )
    .unwrap();

    // Watch both ends at once: when the server counts the client's close, and when the client exits.
    let started = Instant::now();
    let (mut close_seen, mut exit) = (None, None);
    while (close_seen.is_none() || exit.is_none()) && started.elapsed() < RUN_LIMIT {
        if close_seen.is_none() && total(&server, |c| c.closes(CloseClass::PeerApplication)) > 0 {
            close_seen = Some(Instant::now());
        }
        if exit.is_none() {
            exit = get.exited().unwrap().map(|status| (status, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let stderr = get.stderr();
    let (status, exited) = exit.unwrap_or_else(|| panic!("get still running after {RUN_LIMIT:?}\n{stderr}"));
    assert!(status.success(), "get failed ({status}):\n{stderr}");
    assert_eq!(sha256_hex(&std::fs::read(out.join("small.bin")).unwrap()), sha256_hex(&payload));

    // (a) The close reached the server as the client's application close: no idle timeout, no
    // reset, nothing else ended that connection.
    let close_seen = close_seen.unwrap_or_else(|| panic!("the server never saw the client's close\n{stderr}"));
    assert_eq!(total(&server, |c| c.closes(CloseClass::PeerApplication)), 1);
    for class in CloseClass::ALL.into_iter().filter(|&c| c != CloseClass::PeerApplication) {
        assert_eq!(total(&server, |c| c.closes(class)), 0, "server counted a close of class {}", class.name());
    }
    assert_eq!(total(&server, |c| read(&c.handshakes_completed)), 1);

    // (b) The client did not wait out its closing period after sending the close.
    let lingered = exited.saturating_duration_since(close_seen);
    assert!(
        lingered < EXIT_AFTER_CLOSE,
        "get exited {lingered:?} after its close reached the server: it waited out the closing period\n{stderr}"
    );

    stop(server);
}

#[test]
fn get_closes_and_exits_at_once_portable() {
    get_closes_and_exits_at_once(BackendKind::Portable);
}

#[test]
fn get_closes_and_exits_at_once_io_uring() {
    get_closes_and_exits_at_once(BackendKind::IoUring);
}

/// How long the client's core is held in the turn that opens the connection: under the first PTO
/// (about 1 s), so the Initial is not resent and the RTT sample comes from its acknowledgement.
const CLIENT_STALL: Duration = Duration::from_millis(500);

/// Reports the connection's smoothed RTT once the handshake is done, then closes.
struct RttProbe(mpsc::Sender<Duration>);

impl Application for RttProbe {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let _ = self.0.send(conn.quic().rtt());
        conn.close(VarInt::from_u32(0), b"done");
    }
}

fn slow_turn_leaves_rtt_alone(backend: BackendKind) {
    let server = server(backend, None);
    let (tx, rtts) = mpsc::channel();
    let client = start_client(Some(backend), RttProbe(tx)).unwrap();
    // The queue is in order: the stall runs first in the turn that then takes the connect request
    // (queued before or while it sleeps), so that turn began CLIENT_STALL before its Initial leaves.
    client.stall_core(0, CLIENT_STALL).unwrap();
    let request = connect_request(server.node.local_addr(), ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0).unwrap();
    client.connect(request, Some(0)).unwrap();
    let rtt = rtts.recv_timeout(Duration::from_secs(20)).expect("no handshake");
    client.shutdown_now();
    client.join().unwrap();
    stop(server);
    // On loopback the RTT is well under a millisecond; half the stall leaves room for a busy machine.
    assert!(rtt < CLIENT_STALL / 2, "RTT estimate {rtt:?} includes the {CLIENT_STALL:?} of the turn's other work");
}

#[test]
fn slow_turn_leaves_rtt_alone_portable() {
    slow_turn_leaves_rtt_alone(BackendKind::Portable);
}

#[test]
fn slow_turn_leaves_rtt_alone_io_uring() {
    slow_turn_leaves_rtt_alone(BackendKind::IoUring);
}

/// A server that never answers: `get` gives up at its timeout and says the connection never
/// started, which tells an operator to look at the address or the network rather than at files
/// on the server.
#[test]
fn get_from_a_silent_port_says_it_never_connected() {
    let dir = TempDir::new("get-silent").unwrap();
    // Bound and never read: datagrams to it vanish as they would behind a firewall.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut get = Process::spawn(
        "get",
        Command::new(NODE_BIN)
            .args(["get", &format!("https://{addr}/a.bin"), "--insecure", "--timeout", "2", "--output"])
            .arg(dir.path().join("out")),
        dir.path(),
    )
    .unwrap();
    let started = Instant::now();
    let mut status = None;
    while status.is_none() && started.elapsed() < RUN_LIMIT {
        status = get.exited().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let stderr = get.stderr();
    let status = status.unwrap_or_else(|| panic!("get still running after {RUN_LIMIT:?}\n{stderr}"));
    assert!(!status.success(), "get succeeded against a silent port:\n{stderr}");
    let expected =
        format!("error: no connection to {addr} within 2 s (the handshake never completed); 1 file(s) not fetched");
    assert!(stderr.contains(&expected), "get did not say it never connected; stderr:\n{stderr}");
    assert!(!dir.path().join("out").join("a.bin").exists());
}

/// A tmux server on a socket in `dir` running `shell` in a 400×20 pane of the session "get".
fn start_tmux(dir: &std::path::Path, shell: &str) -> TmuxServer {
    let tmux = TmuxServer(dir.join("tmux.sock"));
    let started = tmux.command().args(["new-session", "-d", "-s", "get", "-x", "400", "-y", "20", shell]).status();
    assert!(started.unwrap().success(), "tmux new-session failed");
    tmux
}

fn tmux_installed() -> bool {
    common::require(common::installed("tmux").is_some(), "`tmux` (Debian package tmux; scripts/test.sh installs it)")
        .unwrap()
}

/// A line of the progress display, `WHAT BYTES at RATE/s`, with a rate above zero (in B/s, KiB/s,
/// MiB/s...).
fn shows_rate(line: &str, what: &str) -> bool {
    let Some(rest) = line.split(what).nth(1) else { return false };
    let Some((_, rate)) = rest.split_once(" at ") else { return false };
    let mut words = rate.split_whitespace();
    let number = words.next().and_then(|n| n.parse::<f64>().ok()).is_some_and(|rate| rate > 0.0);
    number && words.next().is_some_and(|unit| unit.trim_end_matches(',').ends_with("B/s"))
}

/// On a terminal, `get` shows the file's progress (bytes and rate) and a total line while it
/// runs, and clears them: the pane ends with the usual result line and no bar. The server's core
/// is held in short stalls (300 ms of every 350) until a bar and the total have been seen, so that
/// a fast machine (250 MB/s here) does not finish the 64 MB between two looks at the pane; then it
/// runs free.
#[test]
fn get_on_a_terminal_shows_progress_and_clears_it() {
    const STALL: Duration = Duration::from_millis(300);
    if !tmux_installed() {
        return;
    }
    let mut dir = TempDir::new("get-progress").unwrap().keep_unless_passed();
    let www = dir.subdir("www").unwrap();
    let payload = random_bytes(64 << 20).unwrap();
    std::fs::write(www.join("big.bin"), &payload).unwrap();
    let server = server(BackendKind::Portable, Some(www));
    let out = dir.path().join("out");
    let shell = format!(
        "'{NODE_BIN}' get https://{}/big.bin --insecure --timeout 60 --output '{}'; echo \"get exited $?\"; sleep 120",
        server.node.local_addr(),
        out.display()
    );
    server.node.stall_core(0, STALL).unwrap();
    let tmux = start_tmux(dir.path(), &shell);

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut bar, mut total) = (None, None);
    // The server sends in the 50 ms between stalls; the bar drawn then stays on screen during the
    // next stall, where the pane (looked at every 100 ms) shows it.
    let mut last_stall = Instant::now();
    let pane = loop {
        let pane = tmux.pane("get");
        if pane.contains("get exited") {
            break pane;
        }
        bar = bar.or_else(|| pane.lines().find(|l| shows_rate(l, "/big.bin ")).map(str::to_owned));
        total = total.or_else(|| pane.lines().find(|l| shows_rate(l, "total ")).map(str::to_owned));
        if (bar.is_none() || total.is_none()) && last_stall.elapsed() >= STALL + Duration::from_millis(50) {
            server.node.stall_core(0, STALL).unwrap();
            last_stall = Instant::now();
        }
        assert!(Instant::now() < deadline, "get still running after 90 s:\n{pane}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let bar = bar.unwrap_or_else(|| panic!("no progress line for /big.bin was seen; at the end:\n{pane}"));
    let total = total.unwrap_or_else(|| panic!("no total line was seen; at the end:\n{pane}"));
    assert!(total.contains("0/1 files done") || total.contains("1/1 files done"), "{total}");

    // The pane at the end: the usual result line, the exit status, and nothing of the bars.
    let lines: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    let expected = format!("/big.bin: {} bytes, sha256 {}, ", payload.len(), sha256_hex(&payload));
    assert_eq!(lines.len(), 2, "expected the result line and the exit status only (bar was {bar:?}):\n{pane}");
    assert!(lines[0].starts_with(&expected), "{pane}");
    assert_eq!(lines[1], "get exited 0", "{pane}");
    assert_eq!(sha256_hex(&std::fs::read(out.join("big.bin")).unwrap()), sha256_hex(&payload));
    drop(tmux);
    stop(server);
    dir.passed();
}

/// On a terminal, `--connect PEER --send-bytes N` shows one bar while it sends (bytes, rate and an
/// ETA) and clears it: the pane ends with the usual `connected to …; sent N bytes …` line. The
/// receiving peer runs in this process; once the bar is up its core is held in short stalls (300
/// ms of every 350) until a bar with a rate has been seen, so that the 200 MB (about a second on
/// loopback unhindered) cannot end between two looks at the pane; then it runs free.
#[test]
fn connect_send_bytes_on_a_terminal_shows_a_bar_and_clears_it() {
    const STALL: Duration = Duration::from_millis(300);
    const BYTES: u64 = 200_000_000;
    if !tmux_installed() {
        return;
    }
    let mut dir = TempDir::new("send-progress").unwrap().keep_unless_passed();
    let bootstrap = server(BackendKind::Portable, None);
    let peer = start_server(&NodeOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        cores: Some(1),
        backend: Some(BackendKind::Portable),
        nat: NatOptions {
            bootstraps: vec![BootstrapSpec::unpinned(bootstrap.node.local_addr())],
            ..NatOptions::default()
        },
        ..NodeOptions::default()
    })
    .unwrap();
    let registered = Instant::now() + Duration::from_secs(20);
    while !peer.nat.status().bootstraps.iter().all(|b| b.registered && b.observed.is_some()) {
        assert!(Instant::now() < registered, "the peer did not register with the bootstrap in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peer_id = peer.identity.peer_id().to_string();
    let shell = format!(
        "'{NODE_BIN}' --cores 1 --data-dir '{}' --bootstrap {} --connect {peer_id} --send-bytes {BYTES} --timeout 60; \
         echo \"connect exited $?\"; sleep 120",
        dir.path().join("client").display(),
        bootstrap.node.local_addr(),
    );
    let tmux = start_tmux(dir.path(), &shell);

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bar = None;
    let mut last_stall: Option<Instant> = None;
    let pane = loop {
        let pane = tmux.pane("get");
        if pane.contains("connect exited") {
            break pane;
        }
        let sending = pane.lines().find(|l| l.contains("sending ["));
        bar = bar.or_else(|| sending.filter(|l| shows_rate(l, "sending ") && l.contains(", ETA ")).map(str::to_owned));
        // Hold the receiver once the bar is up, until one with a rate has been seen.
        let stalled_out = last_stall.is_none_or(|t| t.elapsed() >= STALL + Duration::from_millis(50));
        if bar.is_none() && sending.is_some() && stalled_out {
            peer.node.stall_core(0, STALL).unwrap();
            last_stall = Some(Instant::now());
        }
        assert!(Instant::now() < deadline, "--connect still running after 90 s:\n{pane}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let bar =
        bar.unwrap_or_else(|| panic!("no `sending [...] ... at RATE, ETA ...` bar was seen; at the end:\n{pane}"));
    assert!(bar.contains("/190.73 MiB at "), "the bar does not show the total: {bar}");

    // The pane at the end: the node's log lines (identity, bootstrap), the usual result line, the
    // exit status, and nothing of the bar.
    let lines: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    let (logs, end) = lines.split_at(lines.len().saturating_sub(2));
    let log_line = |l: &&str| l.starts_with("20") && (l.contains(" INFO ") || l.contains(" WARN "));
    assert!(
        logs.iter().all(log_line),
        "expected log lines, the result and the exit status only (bar was {bar:?}):\n{pane}"
    );
    assert!(end.len() == 2 && end[0].starts_with(&format!("connected to {peer_id} ")), "{pane}");
    assert!(end[0].contains(&format!("; sent {BYTES} bytes, sha256 ")) && end[0].contains("verified true"), "{pane}");
    assert_eq!(end[1], "connect exited 0", "{pane}");
    drop(tmux);
    stop(peer);
    stop(bootstrap);
    dir.passed();
}
