//! QUIC interop-runner feature cases against aioquic, in both roles, on loopback: key updates,
//! session resumption, 0-RTT and connection migration. The node serves `--www` to
//! `tests/interop/hq_client.py`, and `ant-quic get` fetches from `tests/interop/hq_server.py`
//! (the feature flags of both scripts are in `tests/interop/features.py`). Every file fetched is
//! checked by SHA-256; every test is bounded by [`BUDGET`] and kills and reaps its children.
//!
//! * keyupdate: the aioquic side initiates a 1-RTT key update every [`KEY_UPDATE_EVERY`] packets
//!   of a [`BIG`]-byte transfer and counts those our side followed (a packet from us decrypted
//!   with the new keys): at least two, with the file intact.
//! * resumption: a second connection resumes the TLS session of the first with its ticket.
//! * zerortt: the resumed connection's requests go as 0-RTT data; the node takes them only with
//!   `[security] zero_rtt = true` (refused, and answered after the handshake, by default).
//! * connectionmigration: aioquic's client moves mid-transfer to a new socket on 127.0.0.2 with
//!   a new connection ID; the node must send the rest of the file to the new address, and count
//!   the change in `quic_peer_address_changes_total`.
//! * connectionmigration, the runner's form: the server offers 127.0.0.2 on its port as its
//!   preferred address and the client moves there once the handshake is confirmed. The node must
//!   then send from it (counted in `quic_preferred_address_migrations_total`); `get` must move to
//!   the one `hq_server.py --preferred-host` offers, and to the node's (both sides ours).
//!
//! What `get` does not do (active migration) and why is in docs/reliability.md, "Interop feature
//! cases". `ANT_QUIC_INTEROP_BIN` tests another build of the node.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{
    aioquic_python, http_get, interop_script, random_bytes, run, sample, sha256_hex, Finished, NodeProcess, Process,
    TempDir,
};
use common::{describe, left, tail};

/// Bound on each test, once the Python environment exists.
const BUDGET: Duration = Duration::from_secs(60);
/// The transfer that carries the key updates and the migration.
const BIG: usize = 4 * 1024 * 1024;
/// Packets (sent plus received, by the aioquic side) between two key updates: a [`BIG`]
/// transfer is about 3000 data packets and half as many ACKs, so this makes about four.
const KEY_UPDATE_EVERY: u32 = 1000;
/// Bytes received before aioquic's client migrates: a quarter of [`BIG`].
const MIGRATE_AFTER: usize = BIG / 4;

fn node_bin() -> PathBuf {
    std::env::var_os("ANT_QUIC_INTEROP_BIN").map_or_else(|| PathBuf::from(common::NODE_BIN), PathBuf::from)
}

/// A test's directories and the files it serves.
struct Scene {
    scratch: TempDir,
    www: PathBuf,
    logs: PathBuf,
    /// URL path → SHA-256 of the file.
    files: Vec<(String, String)>,
    deadline: Instant,
}

impl Scene {
    fn new(test: &str) -> Result<Self> {
        Self::with_big_file(test, BIG)
    }

    /// A scene whose `/big.bin` has `big` bytes.
    fn with_big_file(test: &str, big: usize) -> Result<Self> {
        let scratch = TempDir::new(&format!("feature-{test}"))?.keep_unless_passed();
        let www = scratch.subdir("www")?;
        let logs = scratch.subdir("logs")?;
        let mut files = Vec::new();
        for (name, len) in [("big.bin", big), ("small.bin", 1500), ("sub/nested.bin", 70_001)] {
            let data = random_bytes(len)?;
            let path = www.join(name);
            std::fs::create_dir_all(path.parent().context("a parent")?)?;
            std::fs::write(&path, &data)?;
            files.push((format!("/{name}"), sha256_hex(&data)));
        }
        Ok(Self { scratch, www, logs, files, deadline: Instant::now() + BUDGET })
    }

    fn paths(&self) -> Vec<&str> {
        self.files.iter().map(|(p, _)| p.as_str()).collect()
    }

    /// Every file is in `out` (under `prefix`, e.g. `conn-1/`) with the right contents.
    fn check_files(&self, out: &Path) -> Result<()> {
        for (path, want) in &self.files {
            let file = out.join(path.trim_start_matches('/'));
            let data = std::fs::read(&file).with_context(|| format!("{path}: {} missing", file.display()))?;
            ensure!(sha256_hex(&data) == *want, "{path}: {} bytes with the wrong SHA-256", data.len());
        }
        Ok(())
    }

    fn passed(mut self) {
        self.scratch.passed();
    }

    // ------------------------------------------------------------ node serving, aioquic client

    /// The node serving `www`, with extra environment (config keys as `ANT_QUIC_<SECTION>_<KEY>`).
    fn start_node(&self, env: &[(&str, &str)]) -> Result<NodeProcess> {
        self.start_node_on("127.0.0.1:0", env)
    }

    /// [`Self::start_node`] listening on `listen`.
    fn start_node_on(&self, listen: &str, env: &[(&str, &str)]) -> Result<NodeProcess> {
        let data = self.scratch.subdir("data")?;
        let mut cmd = Command::new(node_bin());
        cmd.args(["--listen", listen, "--www"]).arg(&self.www).arg("--data-dir").arg(data);
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).envs(env.iter().copied());
        NodeProcess::start(&mut cmd, &self.logs)
    }

    /// hq_client.py fetching every file from the node (127.0.0.1 when it listens on a wildcard
    /// address) into `out` with `flags`; it must exit 0.
    fn hq_client(&self, node: &NodeProcess, out: &Path, flags: &[&str]) -> Result<Finished> {
        let host = if node.addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { node.addr.ip().to_string() };
        let mut cmd = Command::new(aioquic_python()?);
        cmd.arg(interop_script("hq_client.py"))
            .args(["--host", &host, "--port", &node.addr.port().to_string()])
            .arg("--output")
            .arg(out)
            .args(["--insecure", "--timeout", "40"])
            .args(flags)
            .args(self.paths());
        let started = Instant::now();
        let done = run("hq_client", &mut cmd, &self.logs, left(self.deadline))?;
        eprintln!("feature: hq_client {flags:?} took {:?}", started.elapsed());
        ensure!(
            done.status.success(),
            "hq_client {}\n--- node stderr ---\n{}",
            describe(&done),
            tail(&node.stderr(), 40)
        );
        Ok(done)
    }

    // ------------------------------------------------------------ aioquic serving, get client

    /// hq_server.py serving `www` with `flags`, and its port.
    fn start_hq_server(&self, flags: &[&str]) -> Result<(Process, u16)> {
        let mut cmd = Command::new(aioquic_python()?);
        cmd.arg(interop_script("hq_server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--root"])
            .arg(&self.www)
            .args(["--max-seconds", &BUDGET.as_secs().to_string()])
            .args(flags);
        let mut server = Process::spawn("hq_server", &mut cmd, &self.logs)?;
        let port = server.stdout_line(left(self.deadline).min(Duration::from_secs(30)), |l| {
            l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok())
        })?;
        Ok((server, port))
    }

    /// `ant-quic get` of every file from 127.0.0.1:`port` into `out` with `flags`; it must exit 0.
    fn get(&self, port: u16, out: &Path, flags: &[&str], server: &Process) -> Result<Finished> {
        let urls: Vec<String> = self.paths().iter().map(|p| format!("https://127.0.0.1:{port}{p}")).collect();
        let mut cmd = Command::new(node_bin());
        cmd.arg("get").args(&urls).arg("--output").arg(out).args(["--insecure", "--timeout", "40"]).args(flags);
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let started = Instant::now();
        let done = run("get", &mut cmd, &self.logs, left(self.deadline))?;
        eprintln!("feature: get {flags:?} took {:?}", started.elapsed());
        ensure!(
            done.status.success(),
            "get {}\n--- hq_server stderr ---\n{}",
            describe(&done),
            tail(&server.stderr(), 40)
        );
        Ok(done)
    }
}

/// `KEY_UPDATES initiated=I completed=C` → (I, C).
fn key_updates(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("KEY_UPDATES ").nth(1)?;
    let field = |name: &str| rest.split_whitespace().find_map(|f| f.strip_prefix(name)?.parse().ok());
    Some((field("initiated=")?, field("completed=")?))
}

/// The `key=value` fields of the first line containing `tag` (e.g. `CONN 1 SESSION`).
fn fields<'a>(stdout: &'a str, tag: &str) -> Option<HashMap<&'a str, &'a str>> {
    let line = stdout.lines().find(|l| l.contains(tag))?;
    Some(line.split_whitespace().filter_map(|f| f.split_once('=')).collect())
}

fn require_key_updates(initiated: u32, completed: u32, who: &str) -> Result<()> {
    eprintln!("feature: {who} initiated {initiated} key updates, {completed} completed");
    ensure!(completed >= 2, "{who}: only {completed} of {initiated} key updates were followed (want at least 2)");
    // The last one may be asked for as the transfer ends, with nothing sent after it.
    ensure!(completed + 1 >= initiated, "{who}: only {completed} of {initiated} key updates were followed by the peer");
    Ok(())
}

// ------------------------------------------------------------------------------- keyupdate

/// aioquic's client updates the keys again and again while the node sends: the node follows
/// every update (its packets decrypt with the new keys) and the files arrive intact.
#[test]
fn feature_keyupdate_node_follows_aioquic_client() -> Result<()> {
    let scene = Scene::new("keyupdate-server")?;
    let node = scene.start_node(&[])?;
    let out = scene.scratch.subdir("out")?;
    let every = KEY_UPDATE_EVERY.to_string();
    let done = scene.hq_client(&node, &out, &["--key-update-every", &every])?;
    let (initiated, completed) = done
        .stdout
        .lines()
        .find_map(key_updates)
        .with_context(|| format!("no KEY_UPDATES line\n{}", describe(&done)))?;
    require_key_updates(initiated, completed, "hq_client")?;
    scene.check_files(&out)?;
    scene.passed();
    Ok(())
}

/// `ant-quic get` follows the key updates of aioquic's server while it downloads.
#[test]
fn feature_keyupdate_get_follows_aioquic_server() -> Result<()> {
    let scene = Scene::new("keyupdate-client")?;
    let every = KEY_UPDATE_EVERY.to_string();
    let (mut server, port) = scene.start_hq_server(&["--key-update-every", &every])?;
    let out = scene.scratch.subdir("out")?;
    scene.get(port, &out, &[], &server)?;
    scene.check_files(&out)?;
    // Printed when the connection has ended on the server's side (after its draining period).
    let (initiated, completed) = server.stdout_line(left(scene.deadline), key_updates)?;
    require_key_updates(initiated, completed, "hq_server")?;
    scene.passed();
    Ok(())
}

/// `get --key-update-every` (a hidden test knob: quinn-proto's `force_key_update`) initiates key
/// updates while it downloads; aioquic's server follows them (it counts updates it did not ask
/// for) and the files arrive intact.
#[test]
fn feature_keyupdate_get_initiates_and_aioquic_server_follows() -> Result<()> {
    // quinn-proto ignores an update asked for while the previous one is under way (until three
    // PTOs after the peer answered it, about 100 ms on loopback against aioquic's 25 ms ACK
    // delay): a longer transfer than the others, for room for several.
    let scene = Scene::with_big_file("keyupdate-client-initiates", 4 * BIG)?;
    let (mut server, port) = scene.start_hq_server(&["--key-update-every", "0"])?;
    let out = scene.scratch.subdir("out")?;
    let every = (BIG / 16).to_string();
    scene.get(port, &out, &["--key-update-every", &every], &server)?;
    scene.check_files(&out)?;
    let remote = server.stdout_line(left(scene.deadline), |l| {
        l.strip_prefix("KEY_UPDATES ")?.split_whitespace().find_map(|f| f.strip_prefix("remote=")?.parse::<u32>().ok())
    })?;
    // Of the 64 requests, most are ignored that way on a fast loopback; never all but one.
    eprintln!("feature: aioquic's server followed {remote} key updates initiated by get");
    ensure!(remote >= 2, "aioquic's server saw only {remote} key updates from get (want at least 2)");
    scene.passed();
    Ok(())
}

// ------------------------------------------------------------------------------ resumption

/// aioquic's second connection resumes the TLS session of its first with the node's ticket.
#[test]
fn feature_resumption_node_resumes_aioquic_client() -> Result<()> {
    let scene = Scene::new("resumption-server")?;
    let node = scene.start_node(&[])?;
    let out = scene.scratch.subdir("out")?;
    let done = scene.hq_client(&node, &out, &["--connections", "2", "--resume"])?;
    let first = fields(&done.stdout, "CONN 0 SESSION").context("no CONN 0 SESSION line")?;
    let second = fields(&done.stdout, "CONN 1 SESSION").context("no CONN 1 SESSION line")?;
    eprintln!("feature: first connection {first:?}, second {second:?}");
    ensure!(first.get("resumed") == Some(&"False"), "the first connection cannot resume: {first:?}");
    ensure!(first.get("tickets").is_some_and(|n| *n != "0"), "the node issued no session ticket: {first:?}");
    ensure!(second.get("resumed") == Some(&"True"), "the second connection was not resumed: {second:?}");
    for conn in ["conn-0", "conn-1"] {
        scene.check_files(&out.join(conn))?;
    }
    scene.passed();
    Ok(())
}

/// `get --connections 2` fetches over two connections in turn, the second resuming the session
/// of the first, as aioquic's server reports.
#[test]
fn feature_resumption_get_resumes_with_aioquic_server() -> Result<()> {
    let scene = Scene::new("resumption-client")?;
    let (mut server, port) = scene.start_hq_server(&["--session-tickets"])?;
    let out = scene.scratch.subdir("out")?;
    scene.get(port, &out, &["--connections", "2"], &server)?;
    scene.check_files(&out)?;
    let (first, second) = two_sessions(&mut server, scene.deadline)?;
    ensure!(first.contains("resumed=False"), "the first connection cannot resume: {first}");
    ensure!(second.contains("resumed=True"), "the second connection did not resume: {second}");
    scene.passed();
    Ok(())
}

// --------------------------------------------------------------------------------- zerortt

/// With `[security] zero_rtt = true`, the node takes the requests aioquic sends as 0-RTT data on
/// its resumed connection and answers them intact.
#[test]
fn feature_zerortt_node_accepts_early_data_when_enabled() -> Result<()> {
    let scene = Scene::new("zerortt-server")?;
    let node = scene.start_node(&[("ANT_QUIC_SECURITY_ZERO_RTT", "true")])?;
    let out = scene.scratch.subdir("out")?;
    let done = scene.hq_client(&node, &out, &["--connections", "2", "--resume", "--zero-rtt"])?;
    let second = fields(&done.stdout, "CONN 1 SESSION").context("no CONN 1 SESSION line")?;
    eprintln!("feature: resumed connection with zero_rtt = true: {second:?}");
    ensure!(second.get("resumed") == Some(&"True"), "not resumed: {second:?}");
    ensure!(second.get("early_data") == Some(&"True"), "the node refused the 0-RTT data: {second:?}");
    for conn in ["conn-0", "conn-1"] {
        scene.check_files(&out.join(conn))?;
    }
    scene.passed();
    Ok(())
}

/// By default the node resumes the session but refuses 0-RTT data (it can be replayed); aioquic
/// sends the requests again after the handshake and every file still arrives intact.
#[test]
fn feature_zerortt_node_refuses_early_data_by_default() -> Result<()> {
    let scene = Scene::new("zerortt-default")?;
    let node = scene.start_node(&[])?;
    let out = scene.scratch.subdir("out")?;
    let done = scene.hq_client(&node, &out, &["--connections", "2", "--resume", "--zero-rtt"])?;
    let second = fields(&done.stdout, "CONN 1 SESSION").context("no CONN 1 SESSION line")?;
    eprintln!("feature: resumed connection with the default zero_rtt = false: {second:?}");
    ensure!(second.get("resumed") == Some(&"True"), "not resumed: {second:?}");
    ensure!(second.get("early_data") == Some(&"False"), "the node took 0-RTT data by default: {second:?}");
    for conn in ["conn-0", "conn-1"] {
        scene.check_files(&out.join(conn))?;
    }
    scene.passed();
    Ok(())
}

/// The `SESSION ...` lines hq_server.py prints for the first two handshakes.
fn two_sessions(server: &mut Process, deadline: Instant) -> Result<(String, String)> {
    let limit = left(deadline).min(Duration::from_secs(10));
    let first = server.stdout_line(limit, |l| l.strip_prefix("SESSION ").map(str::to_owned))?;
    let second = server.stdout_line(limit, |l| l.strip_prefix("SESSION ").map(str::to_owned))?;
    eprintln!("feature: hq_server saw `{first}` then `{second}`");
    Ok((first, second))
}

/// `get --connections 2 --zero-rtt` sends the second connection's requests as 0-RTT data, which
/// aioquic's server takes; every file intact.
#[test]
fn feature_zerortt_get_sends_early_data_to_aioquic_server() -> Result<()> {
    let scene = Scene::new("zerortt-client")?;
    let (mut server, port) = scene.start_hq_server(&["--session-tickets"])?;
    let out = scene.scratch.subdir("out")?;
    let done = scene.get(port, &out, &["--connections", "2", "--zero-rtt"], &server)?;
    scene.check_files(&out)?;
    let (_, second) = two_sessions(&mut server, scene.deadline)?;
    ensure!(second.contains("resumed=True early_data=True"), "no 0-RTT data taken on the second connection: {second}");
    ensure!(
        done.stderr.contains("accepted=true"),
        "get did not see its 0-RTT data accepted
{}",
        describe(&done)
    );
    scene.passed();
    Ok(())
}

/// A server that no longer knows the ticket (as after a restart) refuses the 0-RTT requests:
/// `get` sends them again after the handshake and every file still arrives intact.
#[test]
fn feature_zerortt_get_sends_refused_early_data_again() -> Result<()> {
    let scene = Scene::new("zerortt-client-refused")?;
    let (mut server, port) = scene.start_hq_server(&["--session-tickets", "--forget-tickets"])?;
    let out = scene.scratch.subdir("out")?;
    let done = scene.get(port, &out, &["--connections", "2", "--zero-rtt"], &server)?;
    scene.check_files(&out)?;
    let (_, second) = two_sessions(&mut server, scene.deadline)?;
    ensure!(second.contains("early_data=False"), "the server was to refuse 0-RTT: {second}");
    ensure!(
        done.stderr.contains("accepted=false"),
        "get did not try 0-RTT, or saw it accepted
{}",
        describe(&done)
    );
    scene.passed();
    Ok(())
}

// --------------------------------------------------------------------- connectionmigration

/// aioquic's client moves to a new socket on 127.0.0.2, with a new connection ID, after a
/// quarter of the big file: the node validates the new path and sends the rest there.
#[test]
fn feature_connectionmigration_node_follows_aioquic_client() -> Result<()> {
    let scene = Scene::new("migration-server")?;
    let mut node = scene.start_node(&[])?;
    let admin = node.stdout_line(Duration::from_secs(20), |line| {
        line.strip_prefix("admin http on ")?.split_whitespace().next()?.parse::<SocketAddr>().ok()
    })?;
    let changes = || sample(&http_get(admin, "/metrics").1, "quic_peer_address_changes_total");
    ensure!(changes() == Some(0.0), "quic_peer_address_changes_total before any client: {:?}", changes());
    let out = scene.scratch.subdir("out")?;
    let after = MIGRATE_AFTER.to_string();
    let done = scene.hq_client(&node, &out, &["--migrate-after", &after, "--migrate-to", "127.0.0.2"])?;
    let moved = fields(&done.stdout, "MIGRATED").with_context(|| format!("no MIGRATED line\n{}", describe(&done)))?;
    eprintln!("feature: hq_client migrated: {moved:?}");
    let local: SocketAddr = moved
        .get("local")
        .and_then(|a| a.trim_start_matches("::ffff:").parse().ok())
        .with_context(|| format!("the client did not migrate: {moved:?}"))?;
    ensure!(local.ip().to_string() == "127.0.0.2", "migrated to {local}, want 127.0.0.2");
    let number = |key: &str| moved.get(key).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    // Everything the new socket received came from the node sending to the new address.
    let (before, after) = (number("bytes_before"), number("bytes_after"));
    ensure!(before < BIG, "the migration came after the transfer ({before} bytes before it)");
    ensure!(after >= BIG / 2, "only {after} bytes reached the new address after the migration");
    // The node's own account: the peer's address changed (once, unless a validation failed).
    let counted = changes().unwrap_or(0.0);
    eprintln!("feature: quic_peer_address_changes_total {counted}");
    ensure!(counted >= 1.0, "quic_peer_address_changes_total after the migration: {counted}");
    scene.check_files(&out)?;
    if node.exited().is_ok_and(|s| s.is_some()) {
        bail!("the node exited: {}", tail(&node.stderr(), 40));
    }
    scene.passed();
    Ok(())
}

/// The runner's connectionmigration case: the node, listening on 0.0.0.0 (traffic only on
/// loopback), offers 127.0.0.2 on its port as its preferred address (RFC 9000 §9.6). aioquic's
/// client connects to 127.0.0.1, validates the preferred address once the handshake is confirmed
/// and moves there; the node must then send from 127.0.0.2.
#[test]
fn feature_connectionmigration_preferred_address_node_serves() -> Result<()> {
    let scene = Scene::new("preferred-address-server")?;
    let (mut node, preferred) = start_node_with_preferred_address(&scene)?;
    let port = preferred.port();
    let preferred = preferred.to_string();
    let admin = node.admin()?;
    let moves = || sample(&http_get(admin, "/metrics").1, "quic_preferred_address_migrations_total");
    ensure!(moves() == Some(0.0), "quic_preferred_address_migrations_total before any client: {:?}", moves());
    let out = scene.scratch.subdir("out")?;
    let done = scene.hq_client(&node, &out, &["--report-paths"])?;
    let paths = fields(&done.stdout, "PATHS").with_context(|| format!("no PATHS line\n{}", describe(&done)))?;
    eprintln!("feature: hq_client paths: {paths:?}");
    // The client moved: it ended on the preferred address ...
    let peer = paths.get("peer").copied().unwrap_or("none");
    ensure!(peer == preferred, "the client ended on {peer}, not the preferred address {preferred}");
    // ... and the node followed: most of the file came from the preferred address.
    let from = |addr: &str| paths.get(format!("from_{addr}").as_str()).and_then(|n| n.parse::<usize>().ok());
    let from_preferred = from(&preferred).unwrap_or(0);
    ensure!(
        from_preferred >= BIG / 2,
        "only {from_preferred} bytes came from {preferred} (from 127.0.0.1:{port}: {:?})",
        from(&format!("127.0.0.1:{port}"))
    );
    // The answer to aioquic's PATH_CHALLENGE to the preferred address came from there (RFC 9000
    // §8.2.2), before the client moved: the only datagram from it while sending elsewhere.
    let early = paths.get(format!("offpath_from_{preferred}").as_str()).and_then(|n| n.parse::<usize>().ok());
    ensure!(early.unwrap_or(0) >= 1, "nothing came from {preferred} before the client moved there: {paths:?}");
    let counted = moves().unwrap_or(0.0);
    eprintln!("feature: quic_preferred_address_migrations_total {counted}");
    ensure!(counted == 1.0, "quic_preferred_address_migrations_total after one client moved: {counted}");
    scene.check_files(&out)?;
    if node.exited().is_ok_and(|s| s.is_some()) {
        bail!("the node exited: {}", tail(&node.stderr(), 40));
    }
    scene.passed();
    Ok(())
}

/// The runner's connectionmigration case, `get` as the client: aioquic's server (hq_server.py,
/// which adds the transport parameter aioquic cannot set) offers 127.0.0.2 on its port as its
/// preferred address; `get` moves there once the handshake is confirmed and the rest of the
/// transfer runs over the new path (the server sends from 127.0.0.2, or `get` drops it).
#[test]
fn feature_connectionmigration_get_moves_to_aioquic_preferred_address() -> Result<()> {
    let scene = Scene::new("preferred-address-client")?;
    let (mut server, port) = scene.start_hq_server(&["--preferred-host", "127.0.0.2"])?;
    let out = scene.scratch.subdir("out")?;
    scene.get(port, &out, &[], &server)?;
    scene.check_files(&out)?;
    // Printed when the connection has ended on the server's side.
    let line = server.stdout_line(left(scene.deadline), |l| l.strip_prefix("PREFERRED ").map(str::to_owned))?;
    let count =
        |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)?.parse::<usize>().ok()).unwrap_or(0);
    let (preferred, all) = (count("datagrams="), count("of="));
    eprintln!("feature: {preferred} of {all} datagrams from get came to the preferred address");
    ensure!(
        preferred * 2 >= all && preferred > 0,
        "only {preferred} of {all} datagrams from get came to the preferred address"
    );
    scene.passed();
    Ok(())
}

/// The node listening on 0.0.0.0 (traffic only on loopback) with 127.0.0.2 on its port as its
/// preferred address, and that address.
fn start_node_with_preferred_address(scene: &Scene) -> Result<(NodeProcess, SocketAddr)> {
    // A port free now, for the node to listen on with the preferred address on the same port.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let preferred = SocketAddr::from(([127, 0, 0, 2], port));
    let text = preferred.to_string();
    let env = [
        ("ANT_QUIC_NODE_PREFERRED_ADDRESS", text.as_str()),
        ("ANT_QUIC_METRICS_PORT", "0"),
        ("ANT_QUIC_NAT_ALTERNATE_PORT", "0"),
    ];
    Ok((scene.start_node_on(&format!("0.0.0.0:{port}"), &env)?, preferred))
}

/// Both sides ours: `get` moves to the node's preferred address as it does to aioquic's, and the
/// node follows it there (the two halves of the patched quinn-proto together).
#[test]
fn feature_connectionmigration_get_moves_to_node_preferred_address() -> Result<()> {
    let scene = Scene::new("preferred-address-both")?;
    let (mut node, preferred) = start_node_with_preferred_address(&scene)?;
    let admin = node.admin()?;
    let moves = || sample(&http_get(admin, "/metrics").1, "quic_preferred_address_migrations_total");
    let out = scene.scratch.subdir("out")?;
    scene.get(preferred.port(), &out, &[], &node)?;
    scene.check_files(&out)?;
    let counted = moves().unwrap_or(0.0);
    eprintln!("feature: quic_preferred_address_migrations_total {counted}");
    ensure!(counted == 1.0, "quic_preferred_address_migrations_total after get moved: {counted}");
    if node.exited().is_ok_and(|s| s.is_some()) {
        bail!("the node exited: {}", tail(&node.stderr(), 40));
    }
    scene.passed();
    Ok(())
}
