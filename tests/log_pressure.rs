//! Logging never blocks the data plane: when the log sink stops taking lines (here: a stderr
//! pipe nobody reads), transfers still complete and the lines dropped are counted in a metric.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::client::{BulkApp, BulkPayload};
use ant_quic::node::{connect_request, start_client};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};

/// Kills the node on every path out of the test.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NODE_BIN: &str = env!("CARGO_BIN_EXE_ant-quic");

fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()?.parse().ok())
}

#[test]
fn a_stalled_log_sink_drops_lines_and_never_blocks_transfers() {
    let dir = std::env::temp_dir().join(format!("ant-quic-log-pressure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Trace logging of every packet, to a stderr pipe this test never reads: the pipe fills at
    // 64 KiB, the log writer blocks on it, and its buffer must overflow rather than hold up a core.
    let mut node = Command::new(NODE_BIN)
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir", dir.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let node = Killed(node);
    let (mut udp, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (udp.is_none() || admin.is_none()) && Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        let addr = |marker: &str| line.split(marker).nth(1)?.split_whitespace().next()?.parse::<SocketAddr>().ok();
        udp = udp.or_else(|| addr("listening on "));
        admin = admin.or_else(|| addr("admin http on "));
    }
    let (udp, admin) = (udp.unwrap(), admin.unwrap());

    // Uploads from an in-process client to the node; each completes despite the stuck logger.
    let started = Instant::now();
    let mut dropped = 0.0;
    for _ in 0..20 {
        let (tx, rx) = mpsc::channel();
        let payload = BulkPayload::Upload { data: ant_quic::protocol::filler(), repeat: 128, hash: false };
        let client = start_client(None, BulkApp::new(payload, false, tx)).unwrap();
        client.connect(connect_request(udp, ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0).unwrap(), Some(0)).unwrap();
        let outcome = rx.recv_timeout(Duration::from_secs(30)).expect("a transfer did not finish: blocked by logging?");
        client.shutdown();
        client.join().unwrap();
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.remote_count, Some(outcome.bytes));
        dropped = metric(admin, "ant_quic_log_lines_dropped_total").unwrap_or(0.0);
        if dropped > 0.0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(dropped > 0.0, "no log line was dropped although nobody read the log");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
