//! Logging never blocks the data plane: when the log sink stops taking lines (here: a stderr
//! pipe nobody reads), transfers still complete and the lines dropped are counted in a metric.
//! Every wait is bounded: a node held up by its logger fails the test, it does not hang it.

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
