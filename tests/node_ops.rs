//! Running the `ant-quic` binary as an operator does: the admin HTTP listener it serves (at the
//! UDP port's number unless told otherwise), the systemd notifications it sends (READY, WATCHDOG,
//! STOPPING), and SIGHUP reloads (a broken file changes nothing; a valid one sets the log level
//! and the certificate presented in the handshakes that follow). `ant-quic top` watching a node:
//! `node_ops/top.rs`.

mod common;
#[path = "node_ops/top.rs"]
mod top;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::send_signal;
use ant_quic::dataplane::ReadOutcome;
use ant_quic::dataplane::{Application, ConnId, ConnRef, ConnectRequest, Connections};
use ant_quic::quinn_proto;
use ant_quic::tls::{self, ServerAuth, ALPN_ANT_QUIC};
use common::{random_bytes, run, sample, NodeProcess, TempDir, NODE_BIN};

/// Longest wait for anything the node should do promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// The binary with no configuration, log or systemd variables inherited from the test's environment.
fn ant_quic() -> Command {
    let mut command = Command::new(NODE_BIN);
    for (name, _) in std::env::vars() {
        let section = ["NODE_", "METRICS_", "LOGGING_", "SECURITY_", "COMPATIBILITY_"];
        if name.strip_prefix("ANT_QUIC_").is_some_and(|rest| section.iter().any(|s| rest.starts_with(s))) {
            command.env_remove(name);
        }
    }
    for name in ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        command.env_remove(name);
    }
    command
}

/// A node command on loopback with one core and its identity under `DIR/data`.
fn node_command(dir: &TempDir, extra: &[&str]) -> Command {
    let mut command = ant_quic();
    command.args(["--cores", "1", "--data-dir"]).arg(dir.subdir("data").unwrap()).args(extra);
    command
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The address of the `admin http on ADDR (...)` line, which follows `listening on`.
fn admin_addr(node: &mut NodeProcess) -> SocketAddr {
    node.stdout_line(PATIENCE, |line| {
        line.strip_prefix("admin http on ")?.split_whitespace().next()?.parse::<SocketAddr>().ok()
    })
    .unwrap()
}

/// `GET path` on the admin listener: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Poll until `done` holds for the node's stderr; the stderr then.
fn wait_stderr(node: &NodeProcess, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stderr = node.stderr();
        if done(&stderr) {
            return stderr;
        }
        assert!(Instant::now() < deadline, "no {what} on stderr within {PATIENCE:?}:\n{stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(node: &NodeProcess, signal: libc::c_int) {
    // The pid of a child that has not been reaped (the Process owns it).
    let sent = send_signal(node.pid() as u32, signal);
    assert!(sent.is_ok(), "kill: {sent:?}");
}

/// `ant-quic get` of `path` from `node`; the bytes received.
fn fetch(dir: &TempDir, node: &NodeProcess, path: &str, auth: &[&str], name: &str) -> Vec<u8> {
    let output = dir.path().join(format!("{name}-out"));
    let mut command = ant_quic();
    command.arg("get").arg(format!("https://{}{path}", node.addr)).arg("--output").arg(&output);
    command.args(auth).args(["--timeout", "20"]);
    let finished = run(name, &mut command, dir.path(), Duration::from_secs(30)).unwrap();
    assert!(
        finished.status.success(),
        "{name}: {}\nstdout:\n{}\nstderr:\n{}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    std::fs::read(output.join(path.trim_start_matches('/'))).unwrap()
}

/// `ant-quic --version`: one line naming the version, the commit of this checkout, the cargo
/// features, the crypto provider and the default backend; a node's `/health` (`build`) and its
/// start log line carry the same text.
#[test]
fn the_version_line_names_the_build_and_the_node_repeats_it() {
    let output = ant_quic().arg("--version").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "--version printed more than one line:\n{text}");
    let build = text.trim_end().strip_prefix("ant-quic ").unwrap_or_else(|| panic!("{text}")).to_owned();
    assert!(build.starts_with(&format!("{} (commit ", env!("CARGO_PKG_VERSION"))), "{build}");
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    if checkout.join(".git").exists() {
        let git = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(checkout).output().unwrap();
        let commit = String::from_utf8(git.stdout).unwrap();
        assert!(build.contains(&format!("commit {};", commit.trim())), "{build} is not of commit {commit}");
    }
    let expected_features = [(cfg!(feature = "aws-lc-rs"), "aws-lc-rs"), (cfg!(feature = "pqc"), "pqc")];
    let features = build.split("features ").nth(1).and_then(|r| r.split(';').next()).unwrap_or_default();
    for (on, feature) in expected_features {
        assert_eq!(features.split(' ').any(|f| f == feature), on, "feature {feature} in {build}");
    }
    assert!(build.contains(&format!("; crypto {};", tls::provider_name())), "{build}");
    let backend = ant_quic::dataplane::backend::default_kind();
    assert!(build.ends_with(&format!("; default backend {backend})")), "{build}");

    let mut dir = TempDir::new("node-ops-version").unwrap().keep_unless_passed();
    let mut node = NodeProcess::start(&mut node_command(&dir, &["--listen", "127.0.0.1:0"]), dir.path()).unwrap();
    let admin = admin_addr(&mut node);
    let (status, body) = http_get(admin, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["build"], build.as_str(), "{body}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{body}");
    let start_line = format!("ant-quic {build} serving");
    wait_stderr(&node, "start log line", |stderr| stderr.contains(&start_line));
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    dir.passed();
}

#[test]
fn admin_http_is_served_by_the_binary() {
    let mut dir = TempDir::new("node-ops-admin").unwrap().keep_unless_passed();
    let www = dir.subdir("www").unwrap();
    let content = random_bytes(200_000).unwrap();
    std::fs::write(www.join("blob.bin"), &content).unwrap();
    let mut command = node_command(&dir, &["--listen", "127.0.0.1:0", "--www"]);
    command.arg(&www);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let admin = admin_addr(&mut node);
    assert_eq!(admin, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), node.addr.port()), "{}", node.banner);
    assert_eq!(node.peer_id.len(), 64, "peer id line: {:?}", node.peer_id);

    let (status, body) = http_get(admin, "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["peer_id"], node.peer_id.as_str(), "{body}");
    let backend = node.banner.split("backend ").nth(1).and_then(|r| r.split([',', ')', ' ']).next()).unwrap();
    assert_eq!(health["backend"], backend, "{body} vs {}", node.banner);

    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("quic_bytes_transmitted"), "{metrics}");
    let before = sample(&metrics, "quic_connections_total").unwrap_or_else(|| panic!("{metrics}"));

    let fetched = fetch(&dir, &node, "/blob.bin", &["--peer-id", &node.peer_id.clone()], "get");
    assert!(fetched == content, "the file fetched differs from the file served");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = http_get(admin, "/metrics");
        let now = sample(&metrics, "quic_connections_total").unwrap();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "quic_connections_total still {now} (was {before}):\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();

    // --metrics-port moves the listener off the UDP port's number.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = node_command(&dir, &["--listen", "127.0.0.1:0", "--metrics-port", &port.to_string()]);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let admin = admin_addr(&mut node);
    assert_eq!(admin, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    let (status, body) = http_get(admin, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&node.peer_id), "{body}");
    let (status, metrics) = http_get(admin, "/metrics");
    assert!(status == 200 && metrics.contains("quic_connections_total"), "{status} {metrics}");
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    dir.passed();
}

/// The next datagram on the notify socket (its lines), or `None` at `deadline`.
fn notification(socket: &UnixDatagram, deadline: Instant) -> Option<Vec<String>> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
}

#[test]
fn systemd_notifications() {
    let mut dir = TempDir::new("node-ops-sd").unwrap().keep_unless_passed();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut command = node_command(&dir, &["--listen", "127.0.0.1:0"]);
    // WATCHDOG_PID stays unset (ant_quic() removes it): sd-notify then takes the watchdog as ours.
    command.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen.iter().any(|l| l == "READY=1") {
        let message = notification(&socket, deadline);
        seen.extend(message.unwrap_or_else(|| panic!("no READY=1 within {PATIENCE:?}; got {seen:?}")));
    }
    let ready_at = seen.len();
    // Pets keep coming (every WATCHDOG_USEC / 2 while the node is healthy): count two.
    let deadline = Instant::now() + PATIENCE;
    while seen[ready_at..].iter().filter(|l| *l == "WATCHDOG=1").count() < 2 {
        let message = notification(&socket, deadline);
        seen.extend(
            message
                .unwrap_or_else(|| panic!("fewer than two WATCHDOG=1 within {PATIENCE:?} after READY; got {seen:?}")),
        );
    }

    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !seen.iter().any(|l| l == "STOPPING=1") {
        let message = notification(&socket, deadline);
        seen.extend(message.unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM; got {seen:?}")));
    }
    dir.passed();
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let mut dir = TempDir::new("node-ops-broken").unwrap().keep_unless_passed();
    let www = dir.subdir("www").unwrap();
    std::fs::write(www.join("hello.txt"), b"still serving\n").unwrap();
    let good = "[node]\nlisten = \"127.0.0.1:0\"\n[logging]\nlevel = \"info\"\n";
    let file = write(dir.path(), "node.toml", good);
    let mut command = node_command(&dir, &["--www"]);
    command.arg(&www).arg("--config").arg(&file);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let admin = admin_addr(&mut node);
    assert_eq!(fetch(&dir, &node, "/hello.txt", &["--insecure"], "get-before"), b"still serving\n");

    write(dir.path(), "node.toml", "[node\nlisten = \"127.0.0.1:0\n[logging]\nlevel = \"debug\"\n");
    signal(&node, libc::SIGHUP);
    let stderr = wait_stderr(&node, "reload refused", |s| s.contains("reload refused"));
    let refused: Vec<&str> = stderr.lines().filter(|l| l.contains("reload refused")).collect();
    assert_eq!(refused.len(), 1, "not one refusal line:\n{stderr}");
    assert!(refused[0].contains("ERROR") && refused[0].contains("node.toml"), "{}", refused[0]);
    assert!(!stderr.contains("configuration reloaded"), "{stderr}");

    assert!(node.exited().unwrap().is_none(), "the node exited after SIGHUP:\n{}", node.stderr());
    let (status, body) = http_get(admin, "/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(fetch(&dir, &node, "/hello.txt", &["--insecure"], "get-after"), b"still serving\n");
    // Still at info: the broken file's debug level was not applied.
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    let stderr = node.stderr();
    assert!(!stderr.contains("shutdown requested"), "the broken file's level was applied:\n{stderr}");
    dir.passed();
}

/// A self-signed certificate and its key, as PEM, and the certificate's DER.
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// What the probe client saw.
enum Seen {
    /// Connection `tag` is up; the server presented this end-entity certificate (DER).
    Connected(u64, Vec<u8>),
    /// An echo came back on connection `tag`.
    Echo(u64, Vec<u8>),
    Closed(u64, String),
    Failed(u64, String),
}

/// Ask the probe to send an echo request on every open connection.
struct EchoAll;

/// Reports each connection's server certificate and keeps the connections open.
struct CertProbe {
    tx: mpsc::Sender<Seen>,
    tags: Vec<(ConnId, u64)>,
    received: Vec<u8>,
}

impl Application<EchoAll> for CertProbe {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let cert = conn.peer_certificates().and_then(|chain| chain.first().map(|c| c.to_vec())).unwrap_or_default();
        self.tags.push((conn.id(), conn.tag()));
        let _ = self.tx.send(Seen::Connected(conn.tag(), cert));
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: quinn_proto::StreamId) {
        let received = &mut self.received;
        if let Ok(ReadOutcome::Finished) = conn.read(stream, &mut |bytes| received.extend_from_slice(&bytes)) {
            let _ = self.tx.send(Seen::Echo(conn.tag(), std::mem::take(&mut self.received)));
        }
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, _message: EchoAll) {
        for (id, _) in &self.tags {
            if let Some(mut conn) = conns.get(*id) {
                if let Some(stream) = conn.open_bi() {
                    let _ = conn.write(stream, b"Estill open");
                    let _ = conn.finish(stream);
                }
            }
        }
    }

    fn on_closed(&mut self, _id: ConnId, tag: u64, reason: &quinn_proto::ConnectionError) {
        let _ = self.tx.send(Seen::Closed(tag, reason.to_string()));
    }

    fn on_connect_failed(&mut self, tag: u64, error: &quinn_proto::ConnectError) {
        let _ = self.tx.send(Seen::Failed(tag, error.to_string()));
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Connected(tag, cert) => write!(f, "connection {tag} up ({}-byte certificate)", cert.len()),
            Seen::Echo(tag, bytes) => write!(f, "echo on connection {tag}: {:?}", String::from_utf8_lossy(bytes)),
            Seen::Closed(tag, why) => write!(f, "connection {tag} closed: {why}"),
            Seen::Failed(tag, why) => write!(f, "connection {tag} failed: {why}"),
        }
    }
}

fn next_seen(events: &mpsc::Receiver<Seen>) -> Seen {
    events.recv_timeout(Duration::from_secs(20)).expect("the probe client saw nothing within 20 s")
}

#[test]
fn sighup_with_a_new_certificate_is_used_by_the_next_handshake() {
    let mut dir = TempDir::new("node-ops-cert").unwrap().keep_unless_passed();
    let (cert_a, key_a, der_a) = self_signed("a.node.test");
    let (cert_b, key_b, der_b) = self_signed("b.node.test");
    let cert_file = write(dir.path(), "cert.pem", &cert_a);
    let key_file = write(dir.path(), "key.pem", &key_a);
    let config = format!(
        "[node]\nlisten = \"127.0.0.1:0\"\n[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let file = write(dir.path(), "node.toml", &config);
    let mut command = node_command(&dir, &["--config"]);
    command.arg(&file);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let _admin = admin_addr(&mut node);

    let (tx, events) = mpsc::channel();
    let client = ant_quic::node::start_client_app(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        Some(ant_quic::dataplane::BackendKind::Portable),
        None,
        CertProbe { tx, tags: Vec::new(), received: Vec::new() },
    )
    .unwrap();
    let connect = |tag: u64| {
        let request = ConnectRequest {
            remote: node.addr,
            server_name: tls::default_server_name().to_owned(),
            // Insecure: any certificate is accepted (signature still checked); the probe records it.
            config: tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap(),
            tag,
        };
        client.connect(request, Some(0)).unwrap();
    };

    connect(1);
    match next_seen(&events) {
        Seen::Connected(1, cert) => assert!(cert == der_a, "before the reload the node did not present cert A"),
        other => panic!("first connection: {other}\n{}", node.stderr()),
    }

    write(dir.path(), "cert.pem", &cert_b);
    write(dir.path(), "key.pem", &key_b);
    signal(&node, libc::SIGHUP);
    let stderr = wait_stderr(&node, "configuration reloaded", |s| {
        s.contains("configuration reloaded") || s.contains("reload refused")
    });
    assert!(!stderr.contains("reload refused"), "{stderr}");

    connect(2);
    match next_seen(&events) {
        Seen::Connected(2, cert) => {
            assert!(cert != der_a, "after the reload the node still presented cert A");
            assert!(cert == der_b, "after the reload the node did not present cert B");
        }
        other => panic!("second connection: {other}\n{}", node.stderr()),
    }

    // The connection opened before the reload is untouched: it still answers.
    client.send_message(0, EchoAll).unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 2 {
        match next_seen(&events) {
            Seen::Echo(tag, bytes) => {
                assert_eq!(bytes, b"still open", "echo on connection {tag}");
                echoed.push(tag);
            }
            other => panic!("while echoing on both connections: {other}\n{}", node.stderr()),
        }
    }
    echoed.sort_unstable();
    assert_eq!(echoed, [1, 2]);

    client.shutdown();
    let _ = client.join();
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    dir.passed();
}

/// A reload whose TLS setting is invalid (a key that does not belong to the certificate) is
/// refused as a whole: the next handshake still presents the running certificate, and the debug
/// level the same file asks for is not applied either.
#[test]
fn sighup_with_an_invalid_tls_setting_keeps_the_certificate_and_the_level() {
    let mut dir = TempDir::new("node-ops-bad-tls").unwrap().keep_unless_passed();
    let (cert_a, key_a, der_a) = self_signed("a.node.test");
    let (cert_b, _key_b, _) = self_signed("b.node.test");
    let cert_file = write(dir.path(), "cert.pem", &cert_a);
    let key_file = write(dir.path(), "key.pem", &key_a);
    let config = |level: &str| {
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\n[logging]\nlevel = \"{level}\"\n[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert_file.display(),
            key_file.display()
        )
    };
    let file = write(dir.path(), "node.toml", &config("info"));
    let mut command = node_command(&dir, &["--config"]);
    command.arg(&file);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();

    let (tx, events) = mpsc::channel();
    let client = ant_quic::node::start_client_app(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        Some(ant_quic::dataplane::BackendKind::Portable),
        None,
        CertProbe { tx, tags: Vec::new(), received: Vec::new() },
    )
    .unwrap();
    let addr = node.addr;
    let connect = |tag: u64| {
        let request = ConnectRequest {
            remote: addr,
            server_name: tls::default_server_name().to_owned(),
            config: tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap(),
            tag,
        };
        client.connect(request, Some(0)).unwrap();
    };
    connect(1);
    match next_seen(&events) {
        Seen::Connected(1, cert) => assert!(cert == der_a, "before the reload the node did not present cert A"),
        other => panic!("first connection: {other}\n{}", node.stderr()),
    }

    // Certificate B with key A, and the debug level.
    write(dir.path(), "cert.pem", &cert_b);
    write(dir.path(), "node.toml", &config("debug"));
    signal(&node, libc::SIGHUP);
    let stderr =
        wait_stderr(&node, "reload refused", |s| s.contains("configuration reloaded") || s.contains("reload refused"));
    let refused: Vec<&str> = stderr.lines().filter(|l| l.contains("reload refused")).collect();
    assert_eq!(refused.len(), 1, "not one refusal line:\n{stderr}");
    let tls = refused[0].contains("tls_key") || refused[0].contains("TLS");
    assert!(refused[0].contains("ERROR") && tls, "{}", refused[0]);

    connect(2);
    match next_seen(&events) {
        Seen::Connected(2, cert) => assert!(cert == der_a, "after the refused reload the node changed its certificate"),
        other => panic!("second connection: {other}\n{}", node.stderr()),
    }
    client.shutdown();
    let _ = client.join();
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    let stderr = node.stderr();
    assert!(stderr.contains("shutting down"), "{stderr}");
    // A debug line (`sighup_changes_the_log_level` shows it appears at debug).
    assert!(!stderr.contains("shutdown requested"), "the refused file's debug level was applied:\n{stderr}");
    dir.passed();
}

#[test]
fn sighup_changes_the_log_level() {
    let mut dir = TempDir::new("node-ops-level").unwrap().keep_unless_passed();
    let at = |level: &str| format!("[node]\nlisten = \"127.0.0.1:0\"\n[logging]\nlevel = \"{level}\"\n");
    let file = write(dir.path(), "node.toml", &at("info"));

    // At info, the dataplane's debug line at SIGTERM is not logged.
    let mut command = node_command(&dir, &["--config"]);
    command.arg(&file);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    let stderr = node.stderr();
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains("shutdown requested"), "a debug line at level info:\n{stderr}");
    drop(node);

    // Started at info, reloaded at debug: it is.
    let mut command = node_command(&dir, &["--config"]);
    command.arg(&file);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    write(dir.path(), "node.toml", &at("debug"));
    signal(&node, libc::SIGHUP);
    let stderr = wait_stderr(&node, "configuration reloaded", |s| {
        s.contains("configuration reloaded") || s.contains("reload refused")
    });
    assert!(!stderr.contains("reload refused") && !stderr.contains("shutdown requested"), "{stderr}");
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    let stderr = node.stderr();
    assert!(stderr.contains("shutdown requested"), "no debug line after reloading at level debug:\n{stderr}");
    dir.passed();
}

#[test]
fn retry_always_validates_every_client_and_is_counted() {
    let mut dir = TempDir::new("node-ops-retry").unwrap().keep_unless_passed();
    let www = dir.subdir("www").unwrap();
    let content = random_bytes(100_000).unwrap();
    std::fs::write(www.join("blob.bin"), &content).unwrap();
    let file = write(dir.path(), "node.toml", "[node]\nlisten = \"127.0.0.1:0\"\n[security]\nretry = \"always\"\n");
    let mut command = node_command(&dir, &["--config"]);
    command.arg(&file).arg("--www").arg(&www);
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    let admin = admin_addr(&mut node);

    // `ant-quic get` follows the Retry and gets the file intact.
    let fetched = fetch(&dir, &node, "/blob.bin", &["--peer-id", &node.peer_id.clone()], "get");
    assert!(fetched == content, "the file fetched differs from the file served");
    let (_, metrics) = http_get(admin, "/metrics");
    // A first flight that spans two Initial datagrams (a post-quantum key share can) gets a Retry
    // for each: the server keeps no state until a token comes back; the client follows the first.
    let retries = sample(&metrics, "quic_retry_sent_total").unwrap_or_else(|| panic!("{metrics}"));
    assert!(retries == 1.0 || retries == 2.0, "{retries} Retry packets for one client: {metrics}");
    assert_eq!(sample(&metrics, "quic_connections_total"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "quic_handshakes_in_flight"), Some(0.0), "{metrics}");
    for reason in ["draining", "handed_over", "half_open_limit", "rejected"] {
        let series = format!("quic_handshakes_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &series), Some(0.0), "{series}: {metrics}");
    }
    assert_eq!(sample(&metrics, "quic_handshakes_timed_out_total"), Some(0.0), "{metrics}");
    node.stop_with(libc::SIGTERM, PATIENCE).unwrap();
    dir.passed();
}
