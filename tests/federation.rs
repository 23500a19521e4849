//! Bootstraps sharing one peer registry on etcd (`[registry] backend = "etcd"`,
//! docs/federation.md), with a 3-member etcd cluster and three `ant-quic` bootstraps on loopback;
//! peers are `ant-quic` nodes started with `--bootstrap`:
//!
//! - a peer registered at B1 appears at B2's and B3's `/registry/peers/ID` with B1's identity and
//!   address within 1 s, and disappears when the peer leaves;
//! - `kill -9` of B1: its peers' entries vanish at B2 within the lease TTL (3 s here) and a
//!   margin; B2's own peers stay;
//! - `kill -9` of one etcd member: registrations still reach the other bootstraps; of a second:
//!   `/health` says degraded, `ant_quic_registry_degraded` is 1, B1 still registers and serves its
//!   own peers; the members back: status ok, and the registration made meanwhile reaches B2;
//! - a malformed endpoint URL or an unreadable CA file: exit 2 with one line;
//! - with the bootstraps linked (`--registry-bootstrap PEER_ID@HOST:PORT`, each naming the others
//!   by the peer ID `ant-quic peer-id` printed before it started, which is the one it runs as;
//!   a peer that knows only B2 reaches by `--connect PEER_ID` a peer registered only at
//!   B1, directly, 8 MB SHA-256 checked; B2 forwarded the request and B1 coordinated it (their
//!   metrics); a rogue bootstrap on the same etcd but on nobody's allow-list cannot coordinate
//!   through B1 (refused, counted, the target is told nothing) and its entries are not used by B2;
//!   `[registry] bootstraps` without a peer ID exits 2 with one line;
//! - a peer registered with B1 and B2: `kill -9` of the one holding its entry, and the other
//!   writes it again within the lease TTL; a peer that knows only B3 reaches it through the
//!   survivor, 4 MB SHA-256 checked.
//!
//! Needs `etcd` (Debian's etcd-server) and a build with `--features etcd`.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::prerequisite::require;
use common::{describe, http_get, run, sample, Finished, NodeProcess, Process, TempDir, NODE_BIN};

/// Lease TTL of the bootstraps here: entries of a dead bootstrap go within it.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// One cluster at a time: the timings measured must not share two CPUs with another cluster.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn etcd_here() -> bool {
    Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `count` distinct free TCP ports on 127.0.0.1: every listener is held until all are chosen,
/// so the kernel cannot hand out one port twice (it did: two etcd members got the same peer URL).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A 3-member etcd cluster on loopback; members are killed (SIGKILL) when dropped.
struct Etcd {
    dir: PathBuf,
    logs: PathBuf,
    clients: Vec<u16>,
    peers: Vec<u16>,
    members: Vec<Option<Process>>,
}

impl Etcd {
    fn start(dir: &TempDir) -> Result<Self> {
        let ports = free_ports(6)?;
        let (clients, peers) = (ports[..3].to_vec(), ports[3..].to_vec());
        let mut etcd =
            Self { dir: dir.path().to_owned(), logs: dir.subdir("etcd-logs")?, clients, peers, members: Vec::new() };
        for member in 0..3 {
            let process = etcd.spawn(member)?;
            etcd.members.push(Some(process));
        }
        for member in 0..3 {
            etcd.wait_healthy(member, Duration::from_secs(15))?;
        }
        Ok(etcd)
    }

    fn spawn(&self, member: usize) -> Result<Process> {
        let cluster: Vec<String> =
            self.peers.iter().enumerate().map(|(i, port)| format!("m{i}=http://127.0.0.1:{port}")).collect();
        let client = format!("http://127.0.0.1:{}", self.clients[member]);
        let peer = format!("http://127.0.0.1:{}", self.peers[member]);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("m{member}"), "--data-dir"])
            .arg(self.dir.join(format!("m{member}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "ant-quic-federation-test"])
            // A quick election after a member dies (defaults: 100 ms and 1 s).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        Process::spawn(&format!("etcd-m{member}"), &mut cmd, &self.logs)
    }

    fn wait_healthy(&self, member: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let address = SocketAddr::from(([127, 0, 0, 1], self.clients[member]));
        loop {
            let healthy = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
                && http_get(address, "/health").1.contains("\"health\":\"true\"");
            if healthy {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "etcd member m{member} not healthy within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` of one member.
    fn kill(&mut self, member: usize) {
        self.members[member] = None;
    }

    fn restart(&mut self, member: usize) -> Result<()> {
        self.members[member] = Some(self.spawn(member)?);
        Ok(())
    }

    fn endpoint_flags(&self) -> Vec<String> {
        self.clients
            .iter()
            .flat_map(|port| ["--registry-endpoint".to_owned(), format!("http://127.0.0.1:{port}")])
            .collect()
    }
}

fn bootstrap(dir: &TempDir, etcd: &Etcd, name: &str) -> Result<NodeProcess> {
    bootstrap_at(dir, etcd, name, "127.0.0.1:0", &[], name)
}

/// A bootstrap listening on `listen` with `links` (`PEER_ID@HOST:PORT` of the others); its log
/// goes to `{logs}-logs`.
fn bootstrap_at(
    dir: &TempDir,
    etcd: &Etcd,
    name: &str,
    listen: &str,
    links: &[String],
    logs: &str,
) -> Result<NodeProcess> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", listen, "--cores", "1", "--registry-backend", "etcd", "--data-dir"])
        .arg(dir.path().join(name))
        .args(etcd.endpoint_flags())
        .args(links.iter().flat_map(|link| ["--registry-bootstrap", link.as_str()]))
        .env("ANT_QUIC_REGISTRY_LEASE_TTL", LEASE_TTL.as_secs().to_string());
    NodeProcess::start(&mut cmd, &dir.subdir(&format!("{logs}-logs"))?)
}

fn peer(dir: &TempDir, name: &str, bootstrap: &NodeProcess) -> Result<NodeProcess> {
    peer_of(dir, name, &[bootstrap])
}

/// A peer registered with every one of `bootstraps`.
fn peer_of(dir: &TempDir, name: &str, bootstraps: &[&NodeProcess]) -> Result<NodeProcess> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.path().join(name));
    for bootstrap in bootstraps {
        cmd.args(["--bootstrap", &bootstrap.addr.to_string()]);
    }
    NodeProcess::start(&mut cmd, &dir.subdir(&format!("{name}-logs"))?)
}

/// `/registry/peers/ID` at `node`: the record, or `None` on 404.
fn record(node: &NodeProcess, peer: &str) -> Result<Option<serde_json::Value>> {
    let (status, body) = http_get(node.admin()?, &format!("/registry/peers/{peer}"));
    match status {
        200 => Ok(Some(serde_json::from_str(&body).with_context(|| body.clone())?)),
        404 => Ok(None),
        _ => bail!("/registry/peers/{peer}: {status} {body}"),
    }
}

/// Polls until `done` holds on `node`'s record of `peer`; returns how long that took.
fn until_record(
    node: &NodeProcess,
    peer: &str,
    limit: Duration,
    done: impl Fn(Option<&serde_json::Value>) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let found = record(node, peer)?;
        if done(found.as_ref()) {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < limit, "record of {peer} at {} after {limit:?}: {found:?}", node.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn registry_health(node: &NodeProcess) -> Result<serde_json::Value> {
    let (_, body) = http_get(node.admin()?, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    Ok(health["registry"].clone())
}

fn until_status(node: &NodeProcess, status: &str, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let registry = registry_health(node)?;
        if registry["state"] == status {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < limit, "registry of {} not {status} after {limit:?}: {registry}", node.addr);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn degraded_gauge(node: &NodeProcess) -> Result<Option<f64>> {
    Ok(sample(&http_get(node.admin()?, "/metrics").1, "ant_quic_registry_degraded"))
}

fn from_b1(b1: &NodeProcess) -> impl Fn(Option<&serde_json::Value>) -> bool + '_ {
    move |r| {
        r.is_some_and(|r| {
            r["bootstrap"] == b1.peer_id.as_str() && r["bootstrap_address"] == b1.addr.to_string().as_str()
        })
    }
}

struct Federation {
    dir: TempDir,
    etcd: Etcd,
    bootstraps: Vec<NodeProcess>,
}

fn federation(name: &str) -> Result<Option<Federation>> {
    if !require(etcd_here(), "etcd (Debian: apt-get install etcd-server)")? {
        return Ok(None);
    }
    let dir = TempDir::new(name)?.keep_unless_passed();
    let etcd = Etcd::start(&dir)?;
    let bootstraps = (1..=3).map(|i| bootstrap(&dir, &etcd, &format!("b{i}"))).collect::<Result<Vec<_>>>()?;
    for b in &bootstraps {
        until_status(b, "ok", Duration::from_secs(10))?;
    }
    Ok(Some(Federation { dir, etcd, bootstraps }))
}

#[test]
fn a_peer_registered_at_one_bootstrap_is_found_at_the_others_until_it_leaves() -> Result<()> {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut f) = federation("federation-found")? else { return Ok(()) };
    let [b1, b2, b3] = &f.bootstraps[..] else { bail!("three bootstraps") };
    let mut p = peer(&f.dir, "p1", b1)?;
    let id = p.peer_id.clone();
    until_record(b1, &id, Duration::from_secs(10), |r| r.is_some_and(|r| r["scope"] == "local"))?;
    let at_b2 = until_record(b2, &id, Duration::from_secs(5), from_b1(b1))?;
    let at_b3 = until_record(b3, &id, Duration::from_secs(5), from_b1(b1))?;
    println!("registered at B1, seen at B2 after {at_b2:?}, at B3 after {:?}", at_b2 + at_b3);
    ensure!(at_b2 + at_b3 < Duration::from_secs(1), "too slow: B2 {at_b2:?}, B3 {at_b3:?} later");
    ensure!(record(b2, &id)?.is_some_and(|r| r["scope"] == "global"), "B2 holds it as another bootstrap's peer");

    p.stop_with(libc::SIGTERM, Duration::from_secs(10))?;
    let gone = until_record(b2, &id, Duration::from_secs(5), |r| r.is_none())?;
    until_record(b3, &id, Duration::from_secs(5), |r| r.is_none())?;
    println!("the peer left: gone at B2 after {gone:?}");
    f.dir.passed();
    Ok(())
}

#[test]
fn a_killed_bootstraps_peers_vanish_within_the_lease_ttl() -> Result<()> {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut f) = federation("federation-killed")? else { return Ok(()) };
    let p1 = peer(&f.dir, "p1", &f.bootstraps[0])?;
    let p2 = peer(&f.dir, "p2", &f.bootstraps[1])?;
    let (b1, b2) = (&f.bootstraps[0], &f.bootstraps[1]);
    until_record(b2, &p1.peer_id, Duration::from_secs(10), from_b1(b1))?;
    until_record(&f.bootstraps[2], &p2.peer_id, Duration::from_secs(10), |r| r.is_some())?;

    f.bootstraps.remove(0); // kill -9
    let b2 = &f.bootstraps[0];
    let gone = until_record(b2, &p1.peer_id, LEASE_TTL + Duration::from_secs(3), |r| r.is_none())?;
    println!("B1 killed: its peer gone at B2 after {gone:?} (lease TTL {LEASE_TTL:?})");
    ensure!(record(b2, &p2.peer_id)?.is_some_and(|r| r["scope"] == "local"), "B2's own peer stays");
    ensure!(record(&f.bootstraps[1], &p2.peer_id)?.is_some(), "B2's peer stays at B3 too");
    f.dir.passed();
    Ok(())
}

#[test]
fn bootstraps_go_on_without_one_etcd_member_and_degrade_then_recover_without_two() -> Result<()> {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut f) = federation("federation-etcd-down")? else { return Ok(()) };
    f.etcd.kill(0);
    let [b1, b2, _] = &f.bootstraps[..] else { bail!("three bootstraps") };
    let p1 = peer(&f.dir, "p1", b1)?;
    let reached = until_record(b2, &p1.peer_id, Duration::from_secs(10), from_b1(b1))?;
    println!("one etcd member down: registration reached B2 in {reached:?}");
    ensure!(registry_health(b1)?["state"] == "ok" && degraded_gauge(b1)? == Some(0.0), "B1 still in step");

    f.etcd.kill(1);
    for b in [b1, b2] {
        let took = until_status(b, "degraded", Duration::from_secs(10))?;
        println!("two etcd members down: {} degraded after {took:?}", b.addr);
        ensure!(degraded_gauge(b)? == Some(1.0), "ant_quic_registry_degraded is 1");
    }
    let p2 = peer(&f.dir, "p2", b1)?;
    until_record(b1, &p2.peer_id, Duration::from_secs(10), |r| r.is_some_and(|r| r["scope"] == "local"))?;
    ensure!(record(b1, &p1.peer_id)?.is_some(), "B1 still serves the peer registered before the outage");

    f.etcd.restart(0)?;
    f.etcd.restart(1)?;
    for b in [b1, b2] {
        let took = until_status(b, "ok", Duration::from_secs(20))?;
        println!("etcd members back: {} ok after {took:?}", b.addr);
        ensure!(degraded_gauge(b)? == Some(0.0), "ant_quic_registry_degraded back to 0");
    }
    until_record(b2, &p2.peer_id, Duration::from_secs(5), from_b1(b1))?;
    f.dir.passed();
    Ok(())
}

/// Runs the node with `args` (and `env`), which must exit 2 with one line on stderr containing
/// `expected`.
fn refused_at_start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)], expected: &str) -> Result<()> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.join(name)).args(args);
    cmd.envs(env.iter().copied());
    let done = run(name, &mut cmd, dir, Duration::from_secs(20))?;
    let lines: Vec<&str> = done.stderr.lines().collect();
    ensure!(done.status.code() == Some(2), "{name}: {:?}, stderr: {}", done.status, done.stderr);
    ensure!(lines.len() == 1 && lines[0].contains(expected), "{name}: one line with '{expected}': {lines:?}");
    Ok(())
}

#[test]
fn bad_etcd_settings_exit_2_with_one_line() -> Result<()> {
    let mut dir = TempDir::new("federation-refused")?.keep_unless_passed();
    let etcd = ["--registry-backend", "etcd"];
    let bad_url = [&etcd[..], &["--registry-endpoint", "127.0.0.1:2379"]].concat();
    refused_at_start(dir.path(), "url", &bad_url, &[], "is not http://HOST:PORT or https://HOST:PORT")?;
    let https = [&etcd[..], &["--registry-endpoint", "https://127.0.0.1:2379"]].concat();
    let missing = dir.path().join("no-such-ca.pem");
    let ca = missing.to_str().context("path")?;
    refused_at_start(dir.path(), "ca", &https, &[("ANT_QUIC_REGISTRY_CA_FILE", ca)], "[registry] ca_file")?;
    dir.passed();
    Ok(())
}

/// `PEER_ID@ADDRESS` of a running node.
fn pinned(node: &NodeProcess) -> String {
    format!("{}@{}", node.peer_id, node.addr)
}

/// Polls `/metrics` of `node` until the sample `series` is at least `at_least`.
fn until_sample(node: &NodeProcess, series: &str, at_least: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(node.admin()?, "/metrics").1;
        if let Some(value) = sample(&metrics, series).filter(|v| *v >= at_least) {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "{series} at {} stayed below {at_least}", node.addr);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `node` registered with every bootstrap it links to.
fn until_linked(node: &NodeProcess, links: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(node.admin()?, "/health");
        let health: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        let linked = health["bootstraps"]
            .as_array()
            .is_some_and(|b| b.len() == links && b.iter().all(|b| b["observed"].is_string() && b["error"].is_null()));
        if linked {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{} not linked to its {links} bootstraps: {health}", node.addr);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-shot `ant-quic --bootstrap BOOTSTRAP --connect PEER_ID ...`.
fn connect(dir: &TempDir, name: &str, bootstrap: &NodeProcess, target: &str, extra: &[&str]) -> Result<Finished> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--cores", "1", "--log-level", "info", "--data-dir"])
        .arg(dir.path().join(name))
        .args(["--bootstrap", &bootstrap.addr.to_string(), "--connect", target, "--timeout", "20"])
        .args(extra)
        .env_remove("RUST_LOG");
    run(name, &mut cmd, dir.path(), Duration::from_secs(40))
}

/// The JSON line of a `--connect --json --send-bytes N` that delivered N bytes, SHA-256 checked.
fn delivered(done: &Finished, bytes: u64) -> Result<serde_json::Value> {
    ensure!(done.status.success(), "--connect failed: {}", describe(done));
    let line: serde_json::Value = serde_json::from_str(done.stdout.trim()).context("one JSON line")?;
    ensure!(line["bytes"] == bytes && line["verified"] == true, "not delivered intact: {line}");
    Ok(line)
}

/// Three bootstraps on one etcd cluster, each linked to the other two by peer ID.
fn linked_federation(name: &str) -> Result<Option<Federation>> {
    if !require(etcd_here(), "etcd (Debian: apt-get install etcd-server)")? {
        return Ok(None);
    }
    let dir = TempDir::new(name)?.keep_unless_passed();
    let etcd = Etcd::start(&dir)?;
    // Each bootstrap's peer ID, known before it starts (`ant-quic peer-id`), and a free port.
    let mut known = Vec::new();
    for i in 1..=3 {
        let name = format!("b{i}");
        let mut cmd = Command::new(NODE_BIN);
        cmd.args(["peer-id", "--data-dir"]).arg(dir.path().join(&name));
        let id = run(&format!("{name}-id"), &mut cmd, dir.path(), Duration::from_secs(10))?;
        ensure!(id.status.success() && id.stdout.trim().len() == 64, "peer-id: {}", describe(&id));
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        known.push((name, format!("127.0.0.1:{port}"), format!("{}@127.0.0.1:{port}", id.stdout.trim())));
    }
    let mut bootstraps = Vec::new();
    for (name, listen, pin) in &known {
        let others: Vec<String> = known.iter().map(|(_, _, p)| p.clone()).filter(|p| p != pin).collect();
        let b = bootstrap_at(&dir, &etcd, name, listen, &others, name)?;
        ensure!(pin.starts_with(&b.peer_id), "{name} runs as {}, not as `peer-id` said ({pin})", b.peer_id);
        bootstraps.push(b);
    }
    let f = Federation { dir, etcd, bootstraps };
    for b in &f.bootstraps {
        until_status(b, "ok", Duration::from_secs(10))?;
        until_linked(b, 2)?;
    }
    Ok(Some(f))
}

#[test]
fn a_peer_registered_at_one_bootstrap_is_reached_through_another() -> Result<()> {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut f) = linked_federation("federation-connect")? else { return Ok(()) };
    let [b1, b2, _] = &f.bootstraps[..] else { bail!("three bootstraps") };
    let target = peer(&f.dir, "target", b1)?;
    until_record(b2, &target.peer_id, Duration::from_secs(10), from_b1(b1))?;

    // Through B2, which does not hold the target: forwarded to B1, punched, direct.
    let across = connect(&f.dir, "across", b2, &target.peer_id, &["--json", "--send-bytes", "8000000"])?;
    let line = delivered(&across, 8_000_000)?;
    ensure!(line["path"] == "direct" && line["remote"] == target.addr.to_string().as_str(), "{line}");
    // The same through B1, which holds it: the baseline of the connect time.
    let through_one = connect(&f.dir, "through-one", b1, &target.peer_id, &["--json", "--send-bytes", "8000000"])?;
    let baseline = delivered(&through_one, 8_000_000)?;
    println!(
        "connect across bootstraps {} ms, through one {} ms (loopback)",
        line["connect_ms"], baseline["connect_ms"]
    );
    until_sample(b2, "nat_forwards_total{result=\"punched\"}", 1.0)?;
    until_sample(b2, "nat_forward_seconds_count", 1.0)?;
    until_sample(b1, "nat_forwards_received_total{result=\"coordinated\"}", 1.0)?;

    // A rogue bootstrap on the same etcd, linked to B1 but on nobody's allow-list.
    let rogue = bootstrap_at(&f.dir, &f.etcd, "rogue", "127.0.0.1:0", &[pinned(b1)], "rogue")?;
    until_linked(&rogue, 1)?;
    // The target's counters are published once a second: read them settled, before and after.
    let probes_sent = || -> Result<Option<f64>> {
        std::thread::sleep(Duration::from_millis(1500));
        Ok(sample(&http_get(target.admin()?, "/metrics").1, "nat_probes_total{kind=\"sent\"}"))
    };
    let punches_before = probes_sent()?;
    ensure!(punches_before.is_some_and(|n| n > 0.0), "the target punched for the connects above");
    let refused = connect(&f.dir, "via-rogue", &rogue, &target.peer_id, &[])?;
    ensure!(!refused.status.success(), "a rogue bootstrap coordinated through B1: {}", describe(&refused));
    ensure!(refused.stderr.contains("allow-list"), "the refusal says why: {}", describe(&refused));
    until_sample(b1, "nat_forwards_received_total{result=\"refused\"}", 1.0)?;
    let punches_after = probes_sent()?;
    ensure!(punches_before == punches_after, "the target was told to punch: {punches_before:?} -> {punches_after:?}");
    // Its peers are in etcd, but B2 does not act on its entries.
    let stray = peer(&f.dir, "stray", &rogue)?;
    until_record(b2, &stray.peer_id, Duration::from_secs(10), |r| r.is_some())?;
    let ignored = connect(&f.dir, "to-stray", b2, &stray.peer_id, &[])?;
    ensure!(!ignored.status.success(), "B2 forwarded to a rogue bootstrap: {}", describe(&ignored));
    ensure!(ignored.stderr.contains("allow-list"), "the refusal says why: {}", describe(&ignored));
    f.dir.passed();
    Ok(())
}

#[test]
fn a_peer_of_two_bootstraps_is_reached_again_after_the_one_holding_its_entry_is_killed() -> Result<()> {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut f) = linked_federation("federation-failover")? else { return Ok(()) };
    let target = peer_of(&f.dir, "target", &[&f.bootstraps[0], &f.bootstraps[1]])?;
    until_linked(&target, 2)?;
    // Both wrote its entry; the last writer holds it. Wait until it stops changing.
    let b3 = &f.bootstraps[2];
    let mut held = until_record(b3, &target.peer_id, Duration::from_secs(10), |r| r.is_some())
        .and_then(|_| record(b3, &target.peer_id))?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = record(b3, &target.peer_id)?;
        if now == held {
            break;
        }
        held = now;
    }
    let holder = held.as_ref().and_then(|r| r["bootstrap"].as_str()).context("the entry names a bootstrap")?;
    let index = f.bootstraps.iter().position(|b| b.peer_id == holder).context("held by one of the bootstraps")?;
    ensure!(index < 2, "the entry is held by B{}, where the target is not registered", index + 1);

    drop(f.bootstraps.remove(index)); // kill -9 of the holder
    let [survivor, b3] = &f.bootstraps[..] else { bail!("two bootstraps left") };
    let back = until_record(b3, &target.peer_id, LEASE_TTL + Duration::from_secs(3), |r| {
        r.is_some_and(|r| r["bootstrap"] == survivor.peer_id.as_str())
    })?;
    println!(
        "B{} (holding the entry) killed: held by the other at B3 after {back:?} (lease TTL {LEASE_TTL:?})",
        index + 1
    );

    // A peer that knows only B3 reaches it: B3 forwards to the survivor, which coordinates.
    let after = connect(&f.dir, "after-kill", b3, &target.peer_id, &["--json", "--send-bytes", "4000000"])?;
    let line = delivered(&after, 4_000_000)?;
    ensure!(line["path"] == "direct" && line["remote"] == target.addr.to_string().as_str(), "{line}");
    until_sample(b3, "nat_forwards_total{result=\"punched\"}", 1.0)?;
    until_sample(survivor, "nat_forwards_received_total{result=\"coordinated\"}", 1.0)?;
    f.dir.passed();
    Ok(())
}

#[test]
fn registry_bootstraps_need_a_peer_id_and_etcd() -> Result<()> {
    let mut dir = TempDir::new("federation-links-refused")?.keep_unless_passed();
    let etcd = ["--registry-backend", "etcd", "--registry-endpoint", "http://127.0.0.1:2379"];
    let unpinned = [&etcd[..], &["--registry-bootstrap", "127.0.0.1:9000"]].concat();
    refused_at_start(dir.path(), "unpinned", &unpinned, &[], "needs the bootstrap's peer ID")?;
    let pin = format!("{}@127.0.0.1:9000", "ab".repeat(32));
    refused_at_start(dir.path(), "memory", &["--registry-bootstrap", &pin], &[], "needs backend = \"etcd\"")?;
    dir.passed();
    Ok(())
}
