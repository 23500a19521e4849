//! `ant-quic top` against a running node, as an operator uses it: the full-screen view in a tmux
//! pane (its figures move with the traffic, its connection count is what `/metrics` says, `q`
//! gives the shell back), `--once` as JSON, one plain line per refresh when piped, and one error
//! line against a port where no node answers.
//!
//! The node runs on loopback with two cores; traffic is a few client connections held open and a
//! bounded loop of `ant-quic get`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic::dataplane::{Application, BackendKind, ConnRef, ConnectRequest, Node};
use ant_quic::tls::{self, ServerAuth, ALPN_ANT_QUIC};

use super::common::{random_bytes, run, sample, NodeProcess, TempDir, TmuxServer};
use super::{ant_quic, http_get, write, PATIENCE};

/// Client connections the test holds open on the node.
const HELD: usize = 4;
/// The `get` loop's bound: at most this many downloads, and none started after this long.
const GET_LOOP_MAX: usize = 200;
const GET_LOOP_LIMIT: Duration = Duration::from_secs(60);

/// Tells the test each time a connection is up; does nothing else, so connections stay open.
struct Hold(mpsc::Sender<()>);

impl Application for Hold {
    fn on_connected(&mut self, _conn: &mut ConnRef<'_>) {
        let _ = self.0.send(());
    }
}

/// A node on loopback with two cores and a 1 MB file to serve, its admin address, and a client
/// holding [`HELD`] connections to it.
struct Lab {
    dir: TempDir,
    node: NodeProcess,
    admin: SocketAddr,
    client: Node<()>,
}

impl Lab {
    /// Started with `--config` (the node's listen address, and its admin port taken from the
    /// file), so that `top --config` can find the admin port there.
    fn start(name: &str) -> (Self, std::path::PathBuf) {
        let dir = TempDir::new(name).unwrap().keep_unless_passed();
        let www = dir.subdir("www").unwrap();
        std::fs::write(www.join("1m.bin"), random_bytes(1 << 20).unwrap()).unwrap();
        let admin_port = free_tcp_port();
        let config = format!("[node]\nlisten = \"127.0.0.1:0\"\n[metrics]\nport = {admin_port}\n");
        let file = write(dir.path(), "node.toml", &config);
        let mut command = ant_quic();
        command.args(["--cores", "2", "--backend", "portable", "--data-dir"]).arg(dir.subdir("data").unwrap());
        command.arg("--www").arg(&www).arg("--config").arg(&file);
        let node = NodeProcess::start(&mut command, dir.path()).unwrap();
        let admin = node.admin().unwrap();
        assert_eq!(admin.port(), admin_port, "the node did not take the admin port of its config");

        let (tx, connected) = mpsc::channel();
        let client = ant_quic::node::start_client_app(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            Some(BackendKind::Portable),
            None,
            Hold(tx),
        )
        .unwrap();
        for tag in 0..HELD as u64 {
            let request = ConnectRequest {
                remote: node.addr,
                server_name: tls::default_server_name().to_owned(),
                config: tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap(),
                tag,
            };
            client.connect(request, Some(0)).unwrap();
        }
        for _ in 0..HELD {
            connected.recv_timeout(PATIENCE).expect("a held connection did not come up");
        }
        (Self { dir, node, admin, client }, file)
    }

    fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `ant-quic get` of the file in a loop, on a thread, until `stop` or the loop's bounds.
    fn get_loop(&self, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
        let url = format!("https://{}/1m.bin", self.node.addr);
        let out = self.dir.path().join("get-out");
        let logs = self.dir.path().to_owned();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) && done < GET_LOOP_MAX && started.elapsed() < GET_LOOP_LIMIT {
                let mut get = ant_quic();
                get.args(["get", &url, "--insecure", "--timeout", "20", "--output"]).arg(&out);
                if run("get", &mut get, &logs, Duration::from_secs(30)).is_ok_and(|f| f.status.success()) {
                    done += 1;
                }
            }
            done
        })
    }

    fn stop(mut self) {
        self.client.shutdown();
        let _ = self.client.join();
        self.node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
        self.dir.passed();
    }
}

/// A TCP port nothing listens on now (the kernel's pick, released).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `connections N` of the view's node-wide line.
fn shown_connections(pane: &str) -> Option<f64> {
    pane.lines().find_map(|l| l.strip_prefix("connections ")?.split_whitespace().next()?.parse().ok())
}

/// The per-core rows of the view's table: `(core, cells)`.
fn core_rows(pane: &str) -> Vec<Vec<String>> {
    pane.lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|state| ["running", "stalled", "failed"].contains(&state)))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A figure as the view writes it (`3.675k`, `12`, `0.5`).
fn figure(cell: &str) -> f64 {
    let (number, scale) = match cell.chars().last() {
        Some('k') => (&cell[..cell.len() - 1], 1e3),
        Some('M') => (&cell[..cell.len() - 1], 1e6),
        _ => (cell, 1.0),
    };
    number.parse::<f64>().unwrap_or_else(|e| panic!("{cell}: {e}")) * scale
}

/// In a tmux pane the view shows both cores, its packet rates move with the `get` traffic, its
/// connection count is `/metrics`' `quic_connections_active` (within 2: a `get` connection may
/// open or close between the view's scrape and the test's) and the cores' sum (within 1), and `q` ends it with status 0 and
/// the terminal as it was (the pane shows only what the shell printed after).
#[test]
fn top_in_a_terminal_shows_the_node_and_quits_on_q() {
    if !super::common::require(
        super::common::installed("tmux").is_some(),
        "`tmux` (Debian package tmux; scripts/test.sh installs it)",
    )
    .unwrap()
    {
        return;
    }
    let (lab, _config) = Lab::start("top-tmux");
    let stop = Arc::new(AtomicBool::new(false));
    let gets = lab.get_loop(stop.clone());
    let tmux = TmuxServer(lab.dir.path().join("tmux.sock"));
    let shell = format!("'{}' top --admin {}; echo \"top exited $?\"; sleep 120", super::NODE_BIN, lab.admin);
    let started = tmux.command().args(["new-session", "-d", "-s", "top", "-x", "130", "-y", "24", &shell]).status();
    assert!(started.unwrap().success(), "tmux new-session failed");

    // Two looks at the pane, about 3 s apart, each beside a scrape of /metrics.
    let mut looks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while looks.len() < 2 {
        assert!(Instant::now() < deadline, "the view never showed two cores:\n{}", tmux.pane("top"));
        std::thread::sleep(Duration::from_millis(if looks.is_empty() { 200 } else { 3000 }));
        let pane = tmux.pane("top");
        let metrics = lab.metrics();
        if core_rows(&pane).len() == 2 && shown_connections(&pane).is_some() {
            looks.push((pane, metrics));
        }
    }
    for (pane, metrics) in &looks {
        let shown = shown_connections(pane).unwrap();
        let actual = sample(metrics, "quic_connections_active").unwrap();
        assert!((shown - actual).abs() <= 2.0, "view shows {shown} connections, /metrics {actual}:\n{pane}");
        assert!(shown >= HELD as f64, "view shows {shown} connections, {HELD} are held open:\n{pane}");
        let per_core: f64 = core_rows(pane).iter().map(|row| figure(&row[2])).sum();
        // One scrape, but the node reads each core's gauge twice (per core, then summed): a `get`
        // connection may come or go in between.
        assert!((per_core - shown).abs() <= 1.0, "the cores' connections do not add up to the node's:\n{pane}");
    }
    let tx_packets = |pane: &str| core_rows(pane).iter().map(|row| figure(&row[4])).sum::<f64>();
    let (first, second) = (&looks[0].0, &looks[1].0);
    assert!(tx_packets(first) + tx_packets(second) > 0.0, "no packets per second shown under traffic:\n{second}");
    assert_ne!(core_rows(first), core_rows(second), "the table did not change in 3 s of traffic:\n{second}");

    // Sorting: `c` marks the connections column.
    tmux.command().args(["send-keys", "-t", "top", "c"]).status().unwrap();
    let sorted = Instant::now() + PATIENCE;
    while !tmux.pane("top").contains("conns▼") {
        assert!(Instant::now() < sorted, "`c` did not sort by connections:\n{}", tmux.pane("top"));
        std::thread::sleep(Duration::from_millis(100));
    }

    tmux.command().args(["send-keys", "-t", "top", "q"]).status().unwrap();
    let quit = Instant::now() + PATIENCE;
    let pane = loop {
        let pane = tmux.pane("top");
        if pane.contains("top exited") {
            break pane;
        }
        assert!(Instant::now() < quit, "top still running {PATIENCE:?} after q:\n{pane}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines, ["top exited 0"], "the terminal was not given back as it was:\n{pane}");

    stop.store(true, Ordering::Relaxed);
    assert!(gets.join().unwrap() > 0, "no `get` succeeded");
    drop(tmux);
    lab.stop();
}

/// `--once` (the admin port found through `--config`) prints one JSON snapshot whose figures
/// are the node's; piped, `top --count 3` prints three plain lines and exits 0.
#[test]
fn top_once_prints_json_and_piped_top_prints_plain_lines() {
    let (lab, config) = Lab::start("top-once");
    // One connection that came and went: counted in the totals, not among the open ones.
    let mut get = ant_quic();
    get.args(["get", &format!("https://{}/1m.bin", lab.node.addr), "--insecure", "--output"]);
    let done = run("get", get.arg(lab.dir.path().join("get-out")), lab.dir.path(), PATIENCE).unwrap();
    assert!(done.status.success(), "get: {}", done.stderr);
    // Cores hand their latency records over when a scrape asks, and the node keeps a closed
    // connection through its draining period: wait until all five handshakes are in the histogram
    // and the `get`'s connection is gone, so that nothing changes during top's interval.
    let settled = Instant::now() + PATIENCE;
    let settling = |metrics: &str| {
        sample(metrics, "quic_handshake_duration_count") != Some(HELD as f64 + 1.0)
            || sample(metrics, "quic_connections_active") != Some(HELD as f64)
    };
    while settling(&lab.metrics()) {
        assert!(Instant::now() < settled, "the handshakes never all reached the histogram:\n{}", lab.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut once = ant_quic();
    once.args(["top", "--once", "--interval", "0.5", "--config"]).arg(&config);
    let done = run("top-once", &mut once, lab.dir.path(), PATIENCE).unwrap();
    assert!(done.status.success(), "top --once: {}\n{}", done.status, done.stderr);
    let metrics = lab.metrics();
    assert_eq!(done.stdout.lines().count(), 1, "{}", done.stdout);
    let json: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    // Nothing opens or closes connections meanwhile: the count is exact.
    assert_eq!(json["connections"].as_f64(), sample(&metrics, "quic_connections_active"), "{json}");
    assert_eq!(json["connections"].as_f64(), Some(HELD as f64), "{json}");
    let cores = json["cores"].as_array().unwrap();
    assert_eq!(Some(cores.len() as f64), sample(&metrics, "ant_quic_cores"), "{json}");
    for core in cores {
        assert_eq!(core["state"], "running", "{json}");
        let id = core["core"].as_u64().unwrap();
        let series = format!("ant_quic_core_connections_active{{core=\"{id}\"}}");
        assert_eq!(core["connections"].as_f64(), sample(&metrics, &series), "{json}");
        let busy = core["busy_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&busy), "{json}");
    }
    assert_eq!(json["backend"], "portable", "{json}");
    // Every handshake is in the histogram, all since the start: none in the interval.
    let handshakes = &json["handshake_seconds"];
    assert_eq!(handshakes["observations"].as_f64(), Some(HELD as f64 + 1.0), "{json}");
    assert_eq!(handshakes["over"], "since_start", "{json}");
    assert!(handshakes["p50"].as_f64().is_some_and(|p| p > 0.0), "{json}");

    let mut piped = ant_quic();
    piped.args(["top", "--count", "3", "--interval", "0.3", "--admin", &lab.admin.to_string()]);
    let done = run("top-piped", &mut piped, lab.dir.path(), PATIENCE).unwrap();
    assert!(done.status.success(), "top --count 3: {}\n{}", done.status, done.stderr);
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", done.stdout);
    for line in lines {
        let (clock, rest) = line.split_once(' ').unwrap();
        assert!(clock.len() == 8 && clock.split(':').count() == 3, "{line}");
        assert!(rest.starts_with(&format!("conns {HELD} hs/s 0 ")), "{line}");
    }
    lab.stop();
}

/// Where no node answers, `--once` says so in one line and exits 1.
#[test]
fn top_once_against_a_dead_admin_port_exits_1_with_one_line() {
    let dir = TempDir::new("top-dead").unwrap();
    let admin = format!("127.0.0.1:{}", free_tcp_port());
    let done = run("top-dead", ant_quic().args(["top", "--once", "--admin", &admin]), dir.path(), PATIENCE).unwrap();
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert_eq!(done.stdout, "");
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", done.stderr);
    assert!(lines[0].starts_with(&format!("error: cannot reach the admin endpoint {admin} ")), "{}", lines[0]);
}
