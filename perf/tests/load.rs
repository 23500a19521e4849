//! `ant-quic-perf server` and `client` as a user runs them: the real binary, both processes,
//! each workload with small sizes, and the JSON result checked for what it must say.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ant-quic-perf");

/// A load server; it stops when its standard input closes, that is when this is dropped.
struct Server {
    child: Child,
    line: String,
}

impl Server {
    fn start(implementation: &str, cores: usize) -> Self {
        let mut child = Command::new(BIN)
            .args(["server", "--impl", implementation, "--cores", &cores.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("server line {line:?}: {e}"));
        assert_eq!(info["impl"], implementation);
        assert_eq!(info["pid"].as_u64(), Some(u64::from(child.id())));
        Self { child, line: line.trim().to_owned() }
    }

    /// Run a client against this server; its JSON result.
    fn client(&self, implementation: &str, args: &[&str]) -> Value {
        let output = Command::new(BIN)
            .args(["client", "--impl", implementation, "--json", "--timeout", "20", "--server", &self.line])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "client {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("result {stdout:?}: {e}"));
        assert_eq!(result["impl"], implementation, "{result}");
        assert_eq!(result["errors"], 0, "{result}");
        assert!(result["first_error"].is_null(), "{result}");
        assert!(result["cipher"].as_str().is_some_and(|c| c.starts_with("TLS13_")), "{result}");
        result
    }

    /// Stop it by closing its standard input, as the spec says; it must exit cleanly.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }
}

fn u(result: &Value, key: &str) -> u64 {
    result[key].as_u64().unwrap_or_else(|| panic!("{key} in {result}"))
}

fn latency_count(result: &Value) -> u64 {
    result["latency_us"]["count"].as_u64().unwrap_or_else(|| panic!("latency in {result}"))
}

#[test]
fn ant_quic_workloads_report_what_they_did() {
    let server = Server::start("ant-quic", 1);

    for direction in [&[][..], &["--upload"][..]] {
        let mut args = vec!["--workload", "bulk", "--connections", "4", "--bytes", "3000000"];
        args.extend_from_slice(direction);
        let bulk = server.client("ant-quic", &args);
        assert_eq!(u(&bulk, "completed"), 4, "{bulk}");
        assert_eq!(u(&bulk, "bytes"), 4 * 3_000_000, "{bulk}");
        assert_eq!(latency_count(&bulk), 4, "{bulk}");
        assert!(bulk["gbps"].as_f64().is_some_and(|g| g > 0.0), "{bulk}");
    }

    let rr = server.client(
        "ant-quic",
        &["--workload", "rr", "--connections", "3", "--rate", "500", "--seconds", "1", "--response-bytes", "3000"],
    );
    // Open loop at 500/s for 1 s: every request issued is answered (`client` checks that no error,
    // which an unanswered request counts as, was seen), and no more are issued than the rate
    // allows. How many were issued depends on how punctually the issuing thread ran, which a
    // loaded machine decides.
    let answered = u(&rr, "completed");
    assert!((1..=500).contains(&answered), "{rr}");
    assert_eq!(u(&rr, "bytes"), answered * 3000, "{rr}");
    assert_eq!(latency_count(&rr), answered, "{rr}");

    let handshakes = server.client("ant-quic", &["--workload", "handshakes", "--concurrency", "4", "--seconds", "1"]);
    assert!(u(&handshakes, "completed") > 10, "{handshakes}");
    assert_eq!(latency_count(&handshakes), u(&handshakes, "completed"), "{handshakes}");

    let ready = std::env::temp_dir().join(format!("ant-quic-perf-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let idle = server.client(
        "ant-quic",
        &[
            "--workload",
            "idle",
            "--connections",
            "200",
            "--concurrency",
            "32",
            "--hold",
            "0.5",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    assert_eq!(u(&idle, "completed"), 200, "{idle}");
    assert_eq!(latency_count(&idle), 200, "{idle}");
    assert!(ready.exists(), "the ready file was not created");
    let _ = std::fs::remove_file(&ready);

    server.stop();
}

#[test]
fn ant_quic_two_cores_on_both_sides() {
    let server = Server::start("ant-quic", 2);
    let rr = server.client(
        "ant-quic",
        &["--workload", "rr", "--cores", "2", "--connections", "5", "--rate", "400", "--seconds", "1"],
    );
    assert!(u(&rr, "completed") >= 360, "{rr}");
    assert_eq!(u(&rr, "cores"), 2, "{rr}");
    let bulk =
        server.client("ant-quic", &["--workload", "bulk", "--cores", "2", "--connections", "3", "--bytes", "2000000"]);
    assert_eq!(u(&bulk, "bytes"), 3 * 2_000_000, "{bulk}");
    server.stop();
}

/// Each client against the other implementation's server: both speak the same `ant-quic/1`
/// operations on the same ALPN, and each pins the other's identity.
#[test]
fn each_client_works_against_the_other_server() {
    for (server_impl, client_impl) in [("quinn", "ant-quic"), ("ant-quic", "quinn")] {
        let server = Server::start(server_impl, 1);
        let bulk = server.client(client_impl, &["--workload", "bulk", "--connections", "2", "--bytes", "3000000"]);
        assert_eq!(u(&bulk, "bytes"), 2 * 3_000_000, "{client_impl} → {server_impl}: {bulk}");
        let upload =
            server.client(client_impl, &["--workload", "bulk", "--upload", "--connections", "1", "--bytes", "3000000"]);
        assert_eq!(u(&upload, "bytes"), 3_000_000, "{client_impl} → {server_impl}: {upload}");
        let rr = server.client(
            client_impl,
            &["--workload", "rr", "--connections", "2", "--rate", "200", "--seconds", "1", "--response-bytes", "5000"],
        );
        assert!(u(&rr, "completed") >= 180, "{client_impl} → {server_impl}: {rr}");
        assert_eq!(u(&rr, "bytes"), u(&rr, "completed") * 5000, "{client_impl} → {server_impl}: {rr}");
        server.stop();
    }
}
