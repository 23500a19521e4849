//! Logging never blocks the data plane: when the log sink stops taking lines (a stderr pipe
//! nobody reads) or refuses them (a full disk), transfers still complete and the lines dropped are
//! counted in a metric. Every wait is bounded: a node held up by its logger fails the test, it
//! does not hang it.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::client::{BulkApp, BulkPayload};
use ant_quic::node::{connect_request, start_client};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use common::{http_get, sample, NodeProcess, Process, TempDir, NODE_BIN};

#[test]
fn a_stalled_log_sink_drops_lines_and_never_blocks_transfers() {
    let mut dir = TempDir::new("log-pressure").unwrap().keep_unless_passed();
    // Trace logging of every packet, to a stderr pipe this test never reads: the pipe fills at
    // 64 KiB, the log writer blocks on it, and its buffer must overflow rather than hold up a core.
    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.subdir("data").unwrap());
    command.env("RUST_LOG", "trace");
    let node = NodeProcess::ready(Process::spawn_with_unread_stderr("node", &mut command).unwrap()).unwrap();
    // The admin listener is on the UDP port's number.
    let admin = node.addr;

    // Uploads from an in-process client to the node; each completes despite the stuck logger.
    let started = Instant::now();
    let mut dropped = 0.0;
    for _ in 0..20 {
        let (tx, rx) = mpsc::channel();
        let payload = BulkPayload::Upload { data: ant_quic::protocol::filler(), repeat: 128, hash: false };
        let client = start_client(None, BulkApp::new(payload, false, tx)).unwrap();
        client
            .connect(connect_request(node.addr, ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0).unwrap(), Some(0))
            .unwrap();
        let outcome = rx.recv_timeout(Duration::from_secs(30)).expect("a transfer did not finish: blocked by logging?");
        client.shutdown();
        client.join().unwrap();
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.remote_count, Some(outcome.bytes));
        let (status, metrics) = http_get(admin, "/metrics");
        assert_eq!(status, 200, "{metrics}");
        dropped = sample(&metrics, "ant_quic_log_lines_dropped_total").expect("no ant_quic_log_lines_dropped_total");
        if dropped > 0.0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(dropped > 0.0, "no log line was dropped although nobody read the log");
    drop(node);
    dir.passed();
}

/// A full disk (`/dev/full` refuses every write with ENOSPC, as a full file system does): the
/// node keeps serving, counts the lines it could not write, and says so once on stderr.
#[test]
fn a_full_disk_loses_log_lines_counts_them_and_says_so_once() {
    let mut dir = TempDir::new("log-full-disk").unwrap().keep_unless_passed();
    let config = dir.path().join("node.toml");
    let logging =
        "[logging]\nlevel = \"debug\"\noutputs = [\"file\"]\nfile_path = \"/dev/full\"\nrotation = \"never\"\n";
    std::fs::write(&config, logging).unwrap();
    let mut command = Command::new(NODE_BIN);
    command.env_remove("RUST_LOG").arg("--config").arg(&config);
    command.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.subdir("data").unwrap());
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let admin = node.addr;

    let dropped = |what: &str| {
        let (status, metrics) = http_get(admin, "/metrics");
        assert_eq!(status, 200, "{what}: {metrics}");
        sample(&metrics, "ant_quic_log_lines_dropped_total").expect("no ant_quic_log_lines_dropped_total")
    };
    // The start-up lines were lost already (the writer thread takes them within moments).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at_start = dropped("at start");
    while at_start == 0.0 {
        assert!(Instant::now() < deadline, "no lost line counted although every write fails");
        std::thread::sleep(Duration::from_millis(50));
        at_start = dropped("at start");
    }
    // Serving on: uploads complete, and their debug lines are lost and counted too.
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel();
        let payload = BulkPayload::Upload { data: ant_quic::protocol::filler(), repeat: 16, hash: false };
        let client = start_client(None, BulkApp::new(payload, false, tx)).unwrap();
        client
            .connect(connect_request(node.addr, ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0).unwrap(), Some(0))
            .unwrap();
        let outcome = rx.recv_timeout(Duration::from_secs(30)).expect("a transfer did not finish");
        client.shutdown();
        client.join().unwrap();
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.remote_count, Some(outcome.bytes));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped("after the uploads") <= at_start {
        assert!(Instant::now() < deadline, "the uploads' lost lines were not counted (still {at_start})");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(admin, "/health").0, 200);
    node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let stderr = node.stderr();
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains("cannot write the log")).collect();
    assert_eq!(said.len(), 1, "not said once:\n{stderr}");
    assert!(said[0].contains("/dev/full") && said[0].contains("ant_quic_log_lines_dropped_total"), "{}", said[0]);
    dir.passed();
}
