//! Bulk transfers between two nodes over loopback, on each backend, both directions, with the
//! SHA-256 of the payload compared at both ends.

mod common;

use std::process::Command;
use std::time::Duration;

use ant_quic::bulk::{bulk_transfer_checked, BulkOptions};
use ant_quic::dataplane::BackendKind;
use common::{random_bytes, sha256_hex, NodeProcess, TempDir, NODE_BIN};

fn size() -> u64 {
    std::env::var("ANT_QUIC_TEST_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(100 * 1024 * 1024)
}

fn upload(backend: BackendKind) {
    let bytes = size();
    let options = BulkOptions { bytes, upload: true, backend: Some(backend), cores: 1 };
    let run = bulk_transfer_checked(&options, true).unwrap();
    let outcome = run.outcome;
    assert_eq!(run.backend, backend.name());
    // Regression: GSO batches of 64 full-MTU segments exceed 64 KiB and the kernel refused them
    // (EMSGSIZE), silently dropping whole batches and collapsing throughput.
    assert_eq!(run.send_errors, 0, "UDP sends failed during the transfer");
    assert!(outcome.bytes >= bytes);
    assert_eq!(outcome.remote_count, Some(outcome.bytes), "server counted a different number of bytes");
    assert_eq!(outcome.remote_sha256, Some(outcome.local_sha256), "SHA-256 differs between the two ends");
}

#[test]
fn upload_portable() {
    upload(BackendKind::Portable);
}

/// Download: a random file served by one node process, fetched by `ant-quic get` (authenticating
/// the server by its peer ID), compared byte for byte through SHA-256.
fn download(backend: BackendKind) {
    let dir = TempDir::new(&format!("download-{backend}")).unwrap();
    let www = dir.subdir("www").unwrap();
    let payload = random_bytes(usize::try_from(size()).unwrap()).unwrap();
    std::fs::write(www.join("payload.bin"), &payload).unwrap();
    let mut server = NodeProcess::start(
        Command::new(NODE_BIN)
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--backend", backend.name(), "--www"])
            .arg(&www)
            .arg("--data-dir")
            .arg(dir.path().join("server")),
        dir.path(),
    )
    .unwrap();
    assert!(server.banner.contains(&format!("backend {backend}")), "{}", server.banner);
    let out = dir.path().join("out");
    let get = Command::new(NODE_BIN)
        .args(["get", &format!("https://{}/payload.bin", server.addr), "--output", out.to_str().unwrap()])
        .args(["--peer-id", &server.peer_id, "--backend", backend.name(), "--timeout", "120"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success(), "get failed: {stdout}{}", String::from_utf8_lossy(&get.stderr));
    let received = std::fs::read(out.join("payload.bin")).unwrap();
    assert_eq!(received.len(), payload.len());
    let sent_hash = sha256_hex(&payload);
    assert_eq!(sha256_hex(&received), sent_hash);
    assert!(stdout.contains(&sent_hash), "get printed another hash: {stdout}");
    server.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
}

#[test]
fn download_portable() {
    download(BackendKind::Portable);
}

#[test]
fn upload_io_uring() {
    upload(BackendKind::IoUring);
}

#[test]
fn download_io_uring() {
    download(BackendKind::IoUring);
}
