//! Metrics move by the right amounts after a known transfer, `/metrics` passes
//! `promtool check metrics`, the alert rules pass `promtool check rules`, and a real Prometheus
//! server scrapes a node and answers the runbook's queries.
//!
//! promtool and prometheus come from Debian's `prometheus` package (scripts/test.sh installs it);
//! without them the tests that need them fail under `CI=true` and are skipped elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common;

use ant_quic::client::{BulkApp, BulkPayload};
use ant_quic::node::{connect_request, start_client_app, start_server, NodeOptions, Server};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use ant_quic_control::{AdminServer, AdminView};
use common::{http_get, promtool_check_metrics, require_prometheus, sample};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn server_with_admin() -> (Server, AdminServer) {
    let server = start_server(&NodeOptions {
        listen: SocketAddr::new(LOCALHOST, 0),
        cores: Some(1),
        cpus: None,
        ..NodeOptions::default()
    })
    .unwrap();
    let view = AdminView {
        node: server.node.handle(),
        version: env!("CARGO_PKG_VERSION").into(),
        build: ant_quic::build_info::build_line().into(),
        peer_id: server.identity.peer_id().to_string(),
        started: Instant::now(),
        log_lines_dropped: Some(Arc::new(|| 0)),
        bootstraps: None,
        nat: Some(Arc::clone(&server.nat.metrics())),
        registry: Some(server.nat.registry()),
        generation: 2,
        previous: Default::default(),
    };
    let admin = AdminServer::start(SocketAddr::new(LOCALHOST, 0), view).unwrap();
    (server, admin)
}

/// Upload about `bytes` to `server` from a fresh client node; returns the payload bytes moved.
fn upload(server: &Server, bytes: u64) -> u64 {
    let (tx, rx) = mpsc::channel();
    let data = ant_quic::protocol::filler();
    let repeat = bytes.div_ceil(data.len() as u64);
    let client = start_client_app(
        SocketAddr::new(LOCALHOST, 0),
        None,
        None,
        BulkApp::new(BulkPayload::Upload { data, repeat, hash: false }, false, tx),
    )
    .unwrap();
    let request =
        connect_request(server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()), &[ALPN_ANT_QUIC], 1)
            .unwrap();
    client.connect(request, Some(0)).unwrap();
    let outcome = rx.recv_timeout(Duration::from_secs(60)).expect("transfer did not finish");
    client.shutdown();
    client.join().unwrap();
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.remote_count, Some(outcome.bytes));
    outcome.bytes
}

/// Scrape until `done` holds (the cores hand their histograms over within about a second).
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} never showed in /metrics:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `series` in `metrics`; a series missing from /metrics fails the test.
fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("{series} is not in /metrics:\n{metrics}"))
}

#[test]
fn a_transfer_moves_counters_and_histograms() {
    let (server, admin) = server_with_admin();
    let addr = admin.local_addr();
    let before = scrape_until(addr, "the first scrape", |_| true);
    let connections = value(&before, "quic_connections_total");
    let received = value(&before, "quic_bytes_transmitted{direction=\"received\"}");
    let handshakes = value(&before, "quic_handshake_duration_count");

    const PAYLOAD: u64 = 4 << 20;
    let moved = upload(&server, PAYLOAD);
    assert!(moved >= PAYLOAD);

    let after = scrape_until(addr, "the handshake", |m| value(m, "quic_handshake_duration_count") >= handshakes + 1.0);
    assert_eq!(value(&after, "quic_connections_total"), connections + 1.0, "one connection established");
    assert_eq!(value(&after, "quic_handshake_duration_count"), handshakes + 1.0, "one handshake recorded");
    let got = value(&after, "quic_bytes_transmitted{direction=\"received\"}") - received;
    assert!(got >= moved as f64, "received {got} bytes for a {moved}-byte upload");
    assert!(value(&after, "quic_bytes_transmitted{direction=\"sent\"}") > 0.0, "ACKs were sent");
    assert!(value(&after, "ant_quic_core_packets_total{core=\"0\",direction=\"received\"}") > 0.0);
    assert!(value(&after, "quic_handshake_duration_bucket{le=\"+Inf\"}") >= 1.0);
    let p99 = value(&after, "quic_handshake_duration_quantiles{quantile=\"0.99\"}");
    assert!(p99 > 0.0 && p99 < 5.0, "handshake p99 {p99} s");
    assert!(value(&after, "quic_rtt_seconds_count") >= 1.0, "an RTT sample was taken");
    assert!(value(&after, "ant_quic_core_loop_turn_seconds_count") > 0.0);
    assert!(after.contains("ant_quic_backend_info{backend=\""), "backend info missing");
    assert_eq!(value(&after, "ant_quic_core_alive{core=\"0\"}"), 1.0);
    assert_eq!(
        value(&after, "ant_quic_core_connections_active{core=\"0\"}"),
        value(&after, "quic_connections_active"),
        "one core: its open connections are the node's"
    );
    // No traversal attempt yet: the rate is undefined (NaN keeps `< 0.8` alerts quiet).
    assert!(value(&after, "nat_traversal_success_rate").is_nan(), "success rate before any attempt");
    assert_eq!(value(&after, "nat_traversal_attempts_total{outcome=\"failed\",path=\"none\"}"), 0.0);
    // A clean upload: no error of any kind.
    let errors: Vec<&str> = after.lines().filter(|l| l.starts_with("quic_errors_total{")).collect();
    assert!(errors.iter().any(|l| l.starts_with("quic_errors_total{kind=\"timed_out\"}")), "{after}");
    assert!(errors.iter().all(|l| l.ends_with(" 0")), "errors after a clean upload: {errors:?}");
    assert_eq!(value(&after, "ant_quic_log_lines_dropped_total"), 0.0);
    assert_eq!(value(&after, "ant_quic_generation"), 2.0, "the generation from AdminView");
    // One node alone on its port: nothing of another generation reaches it.
    assert!(after.contains("# TYPE ant_quic_foreign_generation_datagrams_total counter\n"));
    assert_eq!(value(&after, "ant_quic_foreign_generation_datagrams_total"), 0.0);

    if require_prometheus("promtool").unwrap() {
        promtool_check_metrics(&after);
    }
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

/// A core's busy time counts its loop's work, not its sleep: an idle core stays near zero, and a
/// turn held for 400 ms (the test's stall) adds at least that.
#[test]
fn a_core_s_busy_seconds_count_its_work_and_not_its_sleep() {
    const STALL: Duration = Duration::from_millis(400);
    let (server, admin) = server_with_admin();
    let addr = admin.local_addr();
    let busy = |metrics: &str| value(metrics, "ant_quic_core_busy_seconds_total{core=\"0\"}");
    let first = scrape_until(addr, "the first scrape", |_| true);
    std::thread::sleep(Duration::from_secs(1));
    let idle = scrape_until(addr, "a second scrape", |_| true);
    assert!(busy(&idle) - busy(&first) < 0.1, "an idle core was busy for {} s of 1 s", busy(&idle) - busy(&first));

    server.node.stall_core(0, STALL).unwrap();
    let stalled = scrape_until(addr, "the stalled turn", |m| busy(m) - busy(&idle) >= STALL.as_secs_f64());
    assert!(busy(&stalled) - busy(&idle) < 5.0, "{stalled}");
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

#[test]
fn alert_rules_pass_promtool() {
    if !require_prometheus("promtool").unwrap() {
        return;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let output = Command::new("promtool").args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(
        output.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Prometheus server, killed and reaped on drop, with its data in a scratch directory.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: ant-quic\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = {
            let probe = TcpListener::bind((LOCALHOST, 0)).unwrap();
            probe.local_addr().unwrap()
        };
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, dir, addr }
    }

    /// The result vector of an instant query, as JSON.
    fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        drop(stream);
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}"));
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(json["data"]["result"].clone())
    }

    /// Query until the first result's value satisfies `ok`, within `limit`.
    fn wait_for(&self, promql: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self
                .query(promql)
                .and_then(|r| r.get(0)?.get("value")?.get(1)?.as_str()?.parse::<f64>().ok())
                .filter(|v| ok(*v));
            if let Some(value) = value {
                return value;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!("Prometheus never answered `{promql}` as expected; last log lines (newest first):\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn a_real_prometheus_scrapes_the_node() {
    if !require_prometheus("prometheus").unwrap() {
        return;
    }
    let (server, admin) = server_with_admin();
    let prometheus = Prometheus::start(admin.local_addr());
    prometheus.wait_for("up{job=\"ant-quic\"}", Duration::from_secs(30), |v| v == 1.0);

    upload(&server, 2 << 20);
    let received = prometheus.wait_for(
        "quic_bytes_transmitted{job=\"ant-quic\",direction=\"received\"}",
        Duration::from_secs(20),
        |v| v >= (2 << 20) as f64,
    );
    assert!(received >= (2 << 20) as f64);
    prometheus.wait_for("quic_connections_total", Duration::from_secs(20), |v| v >= 1.0);
    // The runbook's expressions, as written in deploy/prometheus/alerts.yml, evaluate.
    prometheus.wait_for("sum(rate(quic_bytes_transmitted[5m]))", Duration::from_secs(20), |v| v > 0.0);
    prometheus.wait_for(
        "histogram_quantile(0.99, sum by (le) (rate(quic_handshake_duration_bucket[5m])))",
        Duration::from_secs(20),
        |v| v > 0.0 && v < 5.0,
    );
    // A clean upload: no errors (a result of 0, not an empty one: wait_for needs a sample).
    prometheus.wait_for("sum(rate(quic_errors_total[5m]))", Duration::from_secs(10), |v| v == 0.0);
    drop(prometheus);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}
