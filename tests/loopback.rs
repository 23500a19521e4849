//! Bulk transfers between two nodes over loopback, on each backend, both directions, with the
//! SHA-256 of the payload compared at both ends.

use ant_quic::dataplane::BackendKind;
use ant_quic::perf::{bulk_transfer_checked, BulkOptions};

fn size() -> u64 {
    std::env::var("ANT_QUIC_TEST_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(100 * 1024 * 1024)
}

fn upload(backend: BackendKind) {
    let bytes = size();
    let options = BulkOptions { bytes, upload: true, backend: Some(backend), cores: 1 };
    let (outcome, used) = bulk_transfer_checked(&options, true).unwrap();
    assert_eq!(used, backend.name());
    assert!(outcome.bytes >= bytes);
    assert_eq!(outcome.remote_count, Some(outcome.bytes), "server counted a different number of bytes");
    assert_eq!(outcome.remote_sha256, Some(outcome.local_sha256), "SHA-256 differs between the two ends");
}

#[test]
fn upload_portable() {
    upload(BackendKind::Portable);
}

fn download(backend: BackendKind) {
    let bytes = size();
    let options = BulkOptions { bytes, upload: false, backend: Some(backend), cores: 1 };
    let (outcome, used) = bulk_transfer_checked(&options, true).unwrap();
    assert_eq!(used, backend.name());
    assert_eq!(outcome.bytes, bytes);
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
