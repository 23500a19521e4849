//! Configuration: every bad file is refused with exit status 2 and one line naming the problem,
//! renamed keys follow `[compatibility]`, the layers override in order (file < environment <
//! flags), `config default` is a valid file, and `[security]` turns mutual TLS on.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use ant_quic::config::{load, Overrides};
use ant_quic::dataplane::{Application, ConnRef, ConnectRequest, ReadOutcome};
use ant_quic::node::{start_server_with, NodeOptions};
use ant_quic::quinn_proto;
use ant_quic::tls::{self, CertifiedKey, ServerAuth, ALPN_ANT_QUIC};
use common::{NodeProcess, TempDir, NODE_BIN};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The binary with no config-section variables inherited from the test's environment.
fn ant_quic() -> Command {
    let mut command = Command::new(NODE_BIN);
    for (name, _) in std::env::vars() {
        let section = ["NODE_", "METRICS_", "LOGGING_", "SECURITY_", "NAT_", "COMPATIBILITY_"];
        if name.strip_prefix("ANT_QUIC_").is_some_and(|rest| section.iter().any(|s| rest.starts_with(s))) {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = ant_quic();
    command.args(["config", "check"]).arg(file);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status 2, and stderr is one `error:` line containing every one of `needles`.
fn assert_refused(output: &Output, needles: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "status {:?}, stderr: {stderr}", output.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn bad_values_exit_2_with_one_line() {
    let dir = TempDir::new("config-bad").unwrap();
    let d = dir.path();
    let ca = rcgen_ca("bad-values CA");
    let cert = write(d, "cert.pem", &ca.certificate.pem());
    let key = write(d, "key.pem", &ca.key.serialize_pem());
    let not_pem = write(d, "ca.txt", "this is not a certificate\n");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("port", "[metrics]\nport = 70000\n".into(), vec!["port.toml:2", "port", "70000"]),
        ("backend", "[node]\nbackend = \"dpdk\"\n".into(), vec!["backend.toml:2", "backend", "dpdk"]),
        (
            "missing-cert",
            format!("[security]\ntls_cert = \"{0}/nope.pem\"\ntls_key = \"{1}\"\n", d.display(), key.display()),
            vec!["missing-cert.toml:2", "tls_cert", "nope.pem"],
        ),
        (
            // A directory cannot be read as a file.
            "unreadable-key",
            format!("[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), d.display()),
            vec!["unreadable-key.toml:3", "tls_key", "cannot read"],
        ),
        (
            "key-not-pem",
            format!("[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), not_pem.display()),
            vec!["key-not-pem.toml:3", "tls_key", "no PEM private key"],
        ),
        (
            "ca-not-pem",
            format!("[security]\nrequire_client_certs = true\nclient_ca = \"{}\"\n", not_pem.display()),
            vec!["ca-not-pem.toml:3", "client_ca", "no PEM certificate"],
        ),
        ("retention", "[logging]\nretention_days = -1\n".into(), vec!["retention.toml:2", "retention_days", "-1"]),
        (
            "file-output",
            "[logging]\noutputs = [\"stdout\", \"file\"]\n".into(),
            vec!["file-output.toml:2", "file_path"],
        ),
        ("malformed", "[node]\nlisten = \"0.0.0.0:9000\n".into(), vec!["malformed.toml:2"]),
        ("listen", "[node]\nlisten = \"nowhere\"\n".into(), vec!["listen.toml:2", "listen"]),
        (
            "mtls-without-ca",
            "[security]\nrequire_client_certs = true\n".into(),
            vec!["mtls-without-ca.toml:2", "client_ca"],
        ),
        ("level", "[logging]\nlevel = \"verbose\"\n".into(), vec!["level.toml:2", "level", "verbose"]),
        ("retry", "[security]\nretry = \"sometimes\"\n".into(), vec!["retry.toml:2", "retry", "sometimes"]),
        ("half-open", "[security]\nmax_half_open = 0\n".into(), vec!["half-open.toml:2", "max_half_open"]),
        (
            "handshake-timeout",
            "[security]\nhandshake_timeout = 31\n".into(),
            vec!["handshake-timeout.toml:2", "handshake_timeout", "30"],
        ),
        ("zero-rtt", "[security]\nzero_rtt = \"yes\"\n".into(), vec!["zero-rtt.toml:2", "zero_rtt"]),
        (
            "bootstrap-peer",
            "[node]\nbootstrap = [\"127.0.0.1:9000\", \"xyz@127.0.0.1:9001\"]\n".into(),
            vec!["bootstrap-peer.toml:2", "bootstrap", "the peer ID 'xyz' is not 64 hex digits"],
        ),
        ("relay-zero", "[nat]\nrelay_lifetime = 0\n".into(), vec!["relay-zero.toml:2", "relay_lifetime", "86400"]),
        ("relay-huge", "[nat]\nrelay_lifetime = 864000\n".into(), vec!["relay-huge.toml:2", "relay_lifetime"]),
        (
            "guess-rate",
            "[nat]\ntwo_sided_rate = 200000\n".into(),
            vec!["guess-rate.toml:2", "two_sided_rate", "100000"],
        ),
        (
            "alternate-is-listen",
            "[node]\nlisten = \"0.0.0.0:9000\"\n[nat]\nalternate_port = 9000\n".into(),
            vec!["alternate-is-listen.toml:4", "alternate_port 9000 is the listen port"],
        ),
    ];
    for (name, body, needles) in cases {
        let file = write(d, &format!("{name}.toml"), &body);
        assert_refused(&check(&file, &[]), &needles);
    }
    // The node itself refuses to start on a bad file, the same way.
    let file = write(d, "run.toml", "[metrics]\nport = 70000\n");
    let output = ant_quic().arg("--config").arg(&file).args(["--listen", "127.0.0.1:0"]).output().unwrap();
    assert_refused(&output, &["run.toml:2", "70000"]);
    // A bad environment value names the variable.
    let ok = write(d, "ok.toml", "");
    assert_refused(&check(&ok, &[("ANT_QUIC_METRICS_PORT", "70000")]), &["ANT_QUIC_METRICS_PORT", "port"]);
    // A malformed pin on the command line, and a relay lifetime from the environment or a flag.
    let output = ant_quic().args(["--listen", "127.0.0.1:0", "--bootstrap", "12ab@127.0.0.1:9000"]).output().unwrap();
    assert_refused(&output, &["--bootstrap", "the peer ID '12ab'"]);
    assert_refused(
        &check(&ok, &[("ANT_QUIC_NAT_RELAY_LIFETIME", "0")]),
        &["ANT_QUIC_NAT_RELAY_LIFETIME", "relay_lifetime"],
    );
    let output = ant_quic().args(["--listen", "127.0.0.1:0", "--relay-lifetime", "5"]).output().unwrap();
    assert_refused(&output, &["--relay-lifetime", "relay_lifetime must be between 10 and 86400"]);
    // A missing --config file.
    let output = ant_quic().args(["--config", "/nonexistent/ant-quic.toml"]).output().unwrap();
    assert_refused(&output, &["/nonexistent/ant-quic.toml", "cannot read"]);
}

#[test]
fn unknown_key_names_key_file_and_line() {
    let dir = TempDir::new("config-unknown").unwrap();
    let file = write(dir.path(), "typo.toml", "[node]\nlisten = \"127.0.0.1:9000\"\n\n[logging]\nlevle = \"debug\"\n");
    assert_refused(&check(&file, &[]), &["typo.toml:5", "levle", "[logging]"]);
    let file = write(dir.path(), "section.toml", "[nodes]\nlisten = \"127.0.0.1:9000\"\n");
    assert_refused(&check(&file, &[]), &["section.toml:1", "nodes"]);
}

#[test]
fn renamed_keys_follow_compatibility_settings() {
    let dir = TempDir::new("config-renamed").unwrap();
    let old = "[logging]\nlog_level = \"debug\"\n[metrics]\nmetrics_port = 9100\n";

    let accepted = check(&write(dir.path(), "warn.toml", old), &[]);
    assert_eq!(accepted.status.code(), Some(0), "{}", text(&accepted.stderr));
    let (stdout, stderr) = (text(&accepted.stdout), text(&accepted.stderr));
    assert!(stdout.contains("level = \"debug\"") && stdout.contains("port = 9100"), "{stdout}");
    assert!(
        stderr.contains("warn.toml:2") && stderr.contains("log_level is deprecated; rename it to level"),
        "{stderr}"
    );
    assert!(stderr.contains("warn.toml:4") && stderr.contains("metrics_port"), "{stderr}");

    let quiet = format!("[compatibility]\nmigration_warnings = false\n{old}");
    let accepted = check(&write(dir.path(), "quiet.toml", &quiet), &[]);
    assert_eq!(accepted.status.code(), Some(0));
    assert!(text(&accepted.stdout).contains("level = \"debug\""));
    assert_eq!(text(&accepted.stderr), "", "a warning although migration_warnings = false");

    let strict = format!("[compatibility]\nsupport_deprecated_keys = false\n{old}");
    let refused = check(&write(dir.path(), "strict.toml", &strict), &[]);
    assert_refused(&refused, &["strict.toml:4", "log_level", "renamed to level"]);
}

#[test]
fn environment_overrides_file() {
    let dir = TempDir::new("config-env").unwrap();
    let file = write(
        dir.path(),
        "layers.toml",
        "[node]\nlisten = \"127.0.0.1:7001\"\n[logging]\nlevel = \"warn\"\nformat = \"text\"\n[nat]\nrelay_lifetime = 120\n",
    );
    let only_file = text(&check(&file, &[]).stdout);
    assert!(only_file.contains("listen = \"127.0.0.1:7001\"") && only_file.contains("level = \"warn\""));
    assert!(only_file.contains("port = 7001"), "metrics port defaults to the listen port: {only_file}");
    assert!(only_file.contains("relay_lifetime = 120"), "{only_file}");
    let output = check(
        &file,
        &[
            ("ANT_QUIC_NODE_LISTEN", "127.0.0.1:7002"),
            ("ANT_QUIC_LOGGING_LEVEL", "debug"),
            ("ANT_QUIC_LOGGING_OUTPUTS", "stdout,stderr"),
            ("ANT_QUIC_METRICS_PORT", "8080"),
            ("ANT_QUIC_NAT_RELAY_LIFETIME", "300"),
        ],
    );
    let layered = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(layered.contains("listen = \"127.0.0.1:7002\""), "{layered}");
    assert!(layered.contains("level = \"debug\""), "{layered}");
    assert!(layered.contains("outputs = [\"stdout\", \"stderr\"]"), "{layered}");
    assert!(layered.contains("port = 8080"), "{layered}");
    assert!(layered.contains("relay_lifetime = 300"), "{layered}");
}

/// The address the node really listens on comes from the file, then the environment, then the flag.
#[test]
fn node_listens_where_the_strongest_layer_says() {
    let mut dir = TempDir::new("config-listen").unwrap().keep_unless_passed();
    let file = write(dir.path(), "node.toml", "[node]\nlisten = \"127.0.0.3:0\"\ncores = 1\nbackend = \"portable\"\n");
    let data = dir.subdir("data").unwrap();
    let listen = |env: Option<&str>, flag: Option<&str>| -> IpAddr {
        let mut command = ant_quic();
        command.arg("--config").arg(&file).arg("--data-dir").arg(&data);
        if let Some(addr) = env {
            command.env("ANT_QUIC_NODE_LISTEN", addr);
        }
        if let Some(addr) = flag {
            command.args(["--listen", addr]);
        }
        let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
        let ip = node.addr.ip();
        node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
        ip
    };
    assert_eq!(listen(None, None), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    assert_eq!(listen(Some("127.0.0.2:0"), None), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(listen(Some("127.0.0.2:0"), Some("127.0.0.1:0")), IpAddr::V4(Ipv4Addr::LOCALHOST));
    dir.passed();
}

/// `./ant-quic.toml` is found without `--config`.
#[test]
fn config_in_working_directory_is_used() {
    let dir = TempDir::new("config-cwd").unwrap();
    write(dir.path(), "ant-quic.toml", "[node]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n");
    let output = ant_quic().current_dir(dir.path()).output().unwrap();
    assert_refused(&output, &["ant-quic.toml:3", "bogus"]);
}

#[test]
fn default_config_passes_check_and_round_trips() {
    let dir = TempDir::new("config-default").unwrap();
    let output = ant_quic().args(["config", "default"]).output().unwrap();
    assert!(output.status.success());
    let default = text(&output.stdout);
    assert!(default.contains("# ") && default.contains("[security]") && default.contains("[compatibility]"));
    let checked = check(&write(dir.path(), "default.toml", &default), &[]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    // The effective config printed by `check` is itself a valid file that prints the same.
    let effective = text(&checked.stdout);
    let again = check(&write(dir.path(), "effective.toml", &effective), &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), effective);
}

// ---- [security]: the certificate presented and client certificates ----

struct Ca {
    certificate: rcgen::Certificate,
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
}

fn rcgen_ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let certificate = params.self_signed(&key).unwrap();
    Ca { certificate, key, params }
}

/// A client certificate signed by `ca`.
fn client_identity(ca: &Ca) -> CertifiedKey {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let certificate = params.signed_by(&key, &issuer).unwrap();
    CertifiedKey {
        chain: vec![certificate.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Sends an echo request once connected; reports the answer, or why the connection ended.
struct EchoProbe {
    tx: mpsc::Sender<Result<Vec<u8>, String>>,
    received: Vec<u8>,
}

impl Application for EchoProbe {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if let Some(stream) = conn.open_bi() {
            let _ = conn.write(stream, b"Ehello mutual tls");
            let _ = conn.finish(stream);
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: quinn_proto::StreamId) {
        let received = &mut self.received;
        if let Ok(ReadOutcome::Finished) = conn.read(stream, &mut |bytes| received.extend_from_slice(&bytes)) {
            let _ = self.tx.send(Ok(std::mem::take(&mut self.received)));
        }
    }

    fn on_closed(&mut self, _id: ant_quic::dataplane::ConnId, _tag: u64, reason: &quinn_proto::ConnectionError) {
        let _ = self.tx.send(Err(reason.to_string()));
    }

    fn on_connect_failed(&mut self, _tag: u64, error: &quinn_proto::ConnectError) {
        let _ = self.tx.send(Err(error.to_string()));
    }
}

/// Connect to `server` presenting `identity`; the echo answer, or why it failed.
fn echo(server: SocketAddr, auth: ServerAuth, identity: Option<&CertifiedKey>) -> Result<Vec<u8>, String> {
    let (tx, rx) = mpsc::channel();
    let client = ant_quic::node::start_client_app(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        Some(ant_quic::dataplane::BackendKind::Portable),
        None,
        EchoProbe { tx, received: Vec::new() },
    )
    .unwrap();
    let request = ConnectRequest {
        remote: server,
        server_name: tls::default_server_name().to_owned(),
        config: tls::client_config_with(auth, &[ALPN_ANT_QUIC], identity).unwrap(),
        tag: 1,
    };
    client.connect(request, Some(0)).unwrap();
    let result = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| Err("no answer in 20 s".into()));
    client.shutdown();
    let _ = client.join();
    result
}

/// A server started from a `[security]` section, through the config loader.
fn server_from_config(dir: &Path, security: &str) -> ant_quic::node::Server {
    let file = write(dir, "security.toml", &format!("[security]\n{security}"));
    let loaded = load(Some(&file), Vec::new(), &Overrides::default()).unwrap();
    let security = loaded.config.server_security().unwrap();
    let options = NodeOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        cores: Some(1),
        backend: Some(ant_quic::dataplane::BackendKind::Portable),
        ..NodeOptions::default()
    };
    start_server_with(&options, &security).unwrap()
}

fn stop(server: ant_quic::node::Server) {
    server.node.shutdown();
    let _ = server.node.join();
}

#[test]
fn required_client_certificates() {
    let dir = TempDir::new("config-mtls").unwrap();
    let ca = rcgen_ca("client CA");
    let other_ca = rcgen_ca("another CA");
    let ca_file = write(dir.path(), "client-ca.pem", &ca.certificate.pem());
    let server = server_from_config(
        dir.path(),
        &format!("require_client_certs = true\nclient_ca = \"{}\"\n", ca_file.display()),
    );
    let (addr, peer) = (server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()));

    let answer = echo(addr, peer, Some(&client_identity(&ca)));
    assert_eq!(answer.as_deref(), Ok(&b"hello mutual tls"[..]), "a client with a certificate from the CA was refused");
    let refused = echo(addr, peer, None);
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");
    let refused = echo(addr, peer, Some(&client_identity(&other_ca)));
    assert!(refused.is_err(), "a client with a certificate from another CA was served: {refused:?}");
    stop(server);
}

#[test]
fn optional_client_certificates_are_verified_when_presented() {
    let dir = TempDir::new("config-mtls-optional").unwrap();
    let ca = rcgen_ca("client CA");
    let other_ca = rcgen_ca("another CA");
    let ca_file = write(dir.path(), "client-ca.pem", &ca.certificate.pem());
    let server = server_from_config(dir.path(), &format!("client_ca = \"{}\"\n", ca_file.display()));
    let (addr, peer) = (server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()));

    assert!(echo(addr, peer, None).is_ok(), "a client without a certificate was refused");
    assert!(echo(addr, peer, Some(&client_identity(&ca))).is_ok());
    assert!(echo(addr, peer, Some(&client_identity(&other_ca))).is_err(), "a bad client certificate was accepted");
    stop(server);
}

/// A configured certificate replaces the self-signed one; a client pinning the peer ID refuses it
/// unless it carries the identity key.
#[test]
fn configured_certificate_is_presented() {
    let dir = TempDir::new("config-tls-cert").unwrap();
    let ca = rcgen_ca("server CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["node.test".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let cert_file = write(dir.path(), "cert.pem", &cert.pem());
    let key_file = write(dir.path(), "key.pem", &key.serialize_pem());
    let server = server_from_config(
        dir.path(),
        &format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert_file.display(), key_file.display()),
    );
    let addr = server.node.local_addr();
    assert!(echo(addr, ServerAuth::Insecure, None).is_ok());
    assert!(
        echo(addr, ServerAuth::PeerId(server.identity.peer_id()), None).is_err(),
        "a certificate without the identity key passed peer-ID verification"
    );
    stop(server);
}

/// The node warns at start when its configured certificate will fail peer-ID pinning.
#[test]
fn foreign_certificate_key_is_warned_about_at_start() {
    let mut dir = TempDir::new("config-cert-warning").unwrap().keep_unless_passed();
    let ca = rcgen_ca("server CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["node.test".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key)).unwrap();
    let cert_file = write(dir.path(), "cert.pem", &cert.pem());
    let key_file = write(dir.path(), "key.pem", &key.serialize_pem());
    let file = write(
        dir.path(),
        "node.toml",
        &format!("[security]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert_file.display(), key_file.display()),
    );
    let mut command = ant_quic();
    command.arg("--config").arg(&file).args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]);
    command.arg(dir.subdir("data").unwrap());
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let stderr = node.stderr();
    assert!(stderr.contains("WARN") && stderr.contains("does not carry this node's identity key"), "{stderr}");
    dir.passed();
}

/// The reload hook: loading again picks up a changed file, a broken file is an error naming its
/// line, and once the file is fixed it loads again. (That a running node keeps its level and TLS
/// settings when a reload is refused is checked on the binary, in `tests/node_ops.rs`.)
#[test]
fn loader_reloads_and_rejects_a_broken_file() {
    let dir = TempDir::new("config-reload").unwrap();
    let file = write(dir.path(), "reload.toml", "[logging]\nlevel = \"info\"\n");
    let loader = ant_quic::config::Loader { path: Some(file.clone()), overrides: Overrides::default() };
    assert_eq!(loader.load().unwrap().config.logging.level, "info");
    write(dir.path(), "reload.toml", "[logging]\nlevel = \"debug\"\n");
    assert_eq!(loader.load().unwrap().config.logging.level, "debug");
    write(dir.path(), "reload.toml", "[logging]\nlevel = \"trace\"\nretention_days = -1\n");
    let error = loader.load().unwrap_err();
    assert!(error.to_string().contains("reload.toml:3"), "{error}");
    write(dir.path(), "reload.toml", "[logging]\nlevel = \"warn\"\n");
    assert_eq!(loader.load().unwrap().config.logging.level, "warn", "the loader stuck to the broken file");
}
