//! The quinn load server and client, as separate processes over loopback: every workload with
//! small sizes, and the JSON it prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ant-quic-perf");

/// A running `server --impl quinn`; its standard input closes (and so it exits) when dropped.
struct Server {
    child: Child,
    line: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .args(["server", "--impl", "quinn"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(info["impl"], "quinn", "{line}");
        assert!(info["cert_der_hex"].as_str().is_some_and(|h| h.len() > 100), "{line}");
        // Ed25519, so an ant-quic client can pin it by peer ID.
        assert!(info["peer_id"].as_str().is_some_and(|id| id.len() == 64), "{line}");
        assert_eq!(info["pid"].as_u64(), Some(u64::from(child.id())), "{line}");
        Server { child, line: line.trim().to_owned() }
    }

    fn client(&self, args: &[&str]) -> Value {
        let out = Command::new(BIN)
            .args(["client", "--impl", "quinn", "--json", "--timeout", "15", "--server", &self.line])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        let result: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(result["impl"], "quinn", "{result}");
        assert_eq!(result["errors"], 0, "{result}");
        assert!(result["completed"].as_u64().unwrap() > 0, "{result}");
        assert_eq!(result["cipher"], "TLS13_AES_256_GCM_SHA384", "{result}");
        assert!(result["latency_us"]["p50"].as_u64().unwrap() > 0, "{result}");
        result
    }

    /// Closes the server's standard input and waits for it to exit on its own.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("the server did not exit within 5 s of its standard input closing");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_workload_against_a_quinn_server() {
    let server = Server::start();

    for upload in [false, true] {
        let mut args = vec!["--workload", "bulk", "--connections", "4", "--bytes", "3000000"];
        if upload {
            args.push("--upload");
        }
        let r = server.client(&args);
        assert_eq!(r["completed"], 4, "{r}");
        assert_eq!(r["bytes"], 4 * 3_000_000, "{r}");
        assert!(r["gbps"].as_f64().unwrap() > 0.0, "{r}");
    }

    let r = server.client(&[
        "--workload",
        "rr",
        "--connections",
        "2",
        "--rate",
        "500",
        "--seconds",
        "1",
        "--response-bytes",
        "2000",
    ]);
    assert_eq!(r["completed"], 500, "{r}");
    assert_eq!(r["bytes"], 500 * 2000, "{r}");

    let r = server.client(&["--workload", "handshakes", "--concurrency", "4", "--seconds", "1"]);
    assert_eq!(r["connections"], 4, "{r}");
    assert!(r["per_second"].as_f64().unwrap() > 0.0, "{r}");

    let ready = std::env::temp_dir().join(format!("quinn-load-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let r = server.client(&[
        "--workload",
        "idle",
        "--connections",
        "50",
        "--concurrency",
        "8",
        "--hold",
        "0.5",
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    assert_eq!(r["completed"], 50, "{r}");
    assert!(ready.exists());
    let _ = std::fs::remove_file(&ready);

    // Two worker threads on each side.
    let r = server.client(&["--workload", "bulk", "--connections", "2", "--bytes", "1000000", "--cores", "2"]);
    assert_eq!(r["bytes"], 2 * 1_000_000, "{r}");

    server.stop();
}

#[test]
fn unknown_operation_is_refused_and_echo_echoes() {
    // The server speaks the operations of `src/protocol.rs`; the quinn client only issues `D` and
    // `U`, so `E` and an unknown byte are checked here with a minimal quinn client.
    let server = Server::start();
    let info: Value = serde_json::from_str(&server.line).unwrap();
    let addr: std::net::SocketAddr = info["addr"].as_str().unwrap().parse().unwrap();
    let cert = hex::decode(info["cert_der_hex"].as_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(cert)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"ant-quic/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"Ehello, echo").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(1024).await.unwrap(), b"hello, echo");

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"Zzz").await.unwrap();
        match recv.read_to_end(1024).await {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => assert_eq!(code.into_inner(), 3),
            other => panic!("expected a reset with code 3, got {other:?}"),
        }
        conn.close(0u32.into(), b"");
        endpoint.wait_idle().await;
    });
    server.stop();
}
