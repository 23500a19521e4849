//! `ant-quic-perf quinn-get`, the baseline of `ant-quic get`, does the same job: against an
//! ant-quic node serving a directory it writes the file intact, prints its SHA-256 as `get` does,
//! and closes the connection cleanly (the node counts the client's application close).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use ant_quic::dataplane::stats::CloseClass;
use ant_quic::node::{start_server, NodeOptions};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_ant-quic-perf");

#[test]
fn quinn_get_fetches_and_closes_cleanly() {
    let dir = std::env::temp_dir().join(format!("ant-quic-perf-quinn-get-{}", std::process::id()));
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("sub/file.bin"), &payload).unwrap();
    let mut server = start_server(&NodeOptions {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        cores: Some(1),
        www: Some(www),
        ..NodeOptions::default()
    })
    .unwrap();

    let url = format!("https://{}/sub/file.bin", server.node.local_addr());
    let out = dir.join("out");
    let output = Command::new(BIN)
        .args(["quinn-get", &url, "--peer-id", &server.identity.peer_id().to_string(), "--timeout", "20"])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "quinn-get failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let hash = hex::encode(Sha256::digest(&payload));
    assert_eq!(std::fs::read(out.join("sub/file.bin")).unwrap(), payload);
    assert!(stdout.contains(&format!("/sub/file.bin: 5000 bytes, sha256 {hash}")), "{stdout}");
    assert!(!out.join("sub/file.bin.part").exists());

    // `wait_idle` after `close`: the close reached the node before the process exited.
    let closes = |class| server.node.handle().all_stats().map(|c| c.closes(class)).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while closes(CloseClass::PeerApplication) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(closes(CloseClass::PeerApplication), 1);
    assert_eq!(closes(CloseClass::TimedOut), 0);

    server.nat.stop();
    server.node.shutdown();
    server.node.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
