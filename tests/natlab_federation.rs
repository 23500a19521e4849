//! A relay across bootstraps behind real kernel NATs (`scripts/natlab/`), as a user runs it:
//! two bootstraps of one federation (b1 and b2 of the lab, linked by peer ID, on one etcd member
//! in b1's namespace), a target T behind the symmetric NAT sy1 registered only at b1, and a
//! requester R behind the symmetric NAT sy2 that knows only b2. No hole can be punched between
//! two symmetric NATs, so `ant-quic --bootstrap B2 --connect T --json --send-bytes N` must go
//! through a relay, and a relay needs both peers' addresses as the relaying bootstrap observed
//! them: b2 sends R to b1 (RELAY_AT), R registers there and b1 relays (docs/federation.md).
//!
//! Asserted: the bytes arrive with their SHA-256 verified, over the relay from the first byte
//! to the end, through b1; b2 counts the relay it handed across, b1 the allocation it granted.
//! Then a pair the NATs let punch (port-restricted pr2 → pr1, the target registered only at b1,
//! the requester knowing only b2) connects directly across the bootstraps, SHA-256 verified, and
//! through b1 alone for the connect time's baseline.
//! Two-sided guessing (`[nat] two_sided_rate`) is off for the peers, so that the connection stays
//! on the relay it starts on (the guessing is `tests/natlab.rs`'s).
//!
//! Needs root, `ip`, `nft`, `python3`, /dev/net/tun (tests/common/natlab.rs) and etcd; the lab
//! and every process in it are removed afterwards, also on failure. Built with `--features etcd`
//! (`scripts/test.sh`: `cargo test --profile ci -p ant-quic --features etcd --test natlab_federation`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::natlab::{can_run, parse_report, Lab, Report};
use common::prerequisite::require;
use common::{describe, run, sample, NodeProcess, Process, TempDir, NODE_BIN};

const B1: &str = "198.18.0.11:9000";
const B2: &str = "198.18.0.12:9000";
/// One etcd member on b1's address of the lab (b2 reaches it over the lab's segment).
const ETCD: &str = "http://198.18.0.11:2379";
const BYTES: u64 = 4_000_000;

fn etcd_here() -> bool {
    Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `GET path` on the admin HTTP port of the node listening on `port` in `node`'s namespace (on
/// that namespace's loopback): the status and the body.
fn admin_get(lab: &Lab, dir: &TempDir, node: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let script = format!(
        "import sys, urllib.request, urllib.error\n\
         try:\n    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n    \
         sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n\
         except urllib.error.HTTPError as e:\n    sys.stdout.write(str(e.code) + '\\n')\n"
    );
    let mut cmd = lab.exec(node, "python3");
    cmd.args(["-c", &script]);
    let out = run(&format!("get-{node}"), &mut cmd, dir.path(), Duration::from_secs(10))?;
    let (status, body) = out.stdout.split_once('\n').unwrap_or((out.stdout.trim(), ""));
    let status = status.trim().parse().with_context(|| format!("GET {path} in {node}: {}", describe(&out)))?;
    Ok((status, body.to_owned()))
}

/// Polls until `check` says yes about `GET path` in `node`, for at most `limit`.
fn until(
    lab: &Lab,
    dir: &TempDir,
    (node, port, path): (&str, u16, &str),
    limit: Duration,
    check: impl Fn(u16, &str) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = admin_get(lab, dir, node, port, path)?;
        if check(status, &body) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "GET {path} in {node} not as expected within {limit:?}: {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ant-quic peer-id`: the peer ID the node with data directory `name` will have.
fn peer_id(dir: &TempDir, name: &str) -> Result<String> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["peer-id", "--data-dir"]).arg(dir.path().join(name));
    let id = run(&format!("{name}-id"), &mut cmd, dir.path(), Duration::from_secs(10))?;
    ensure!(id.status.success() && id.stdout.trim().len() == 64, "peer-id: {}", describe(&id));
    Ok(id.stdout.trim().to_owned())
}

/// A bootstrap of the federation in `node`'s namespace, listening on `listen`, linked to `other`.
fn bootstrap(lab: &Lab, dir: &TempDir, node: &str, listen: &str, other: &str) -> Result<NodeProcess> {
    let mut cmd = lab.exec(node, NODE_BIN);
    cmd.args(["--listen", listen, "--cores", "1", "--registry-backend", "etcd", "--registry-endpoint", ETCD])
        .args(["--registry-bootstrap", other, "--data-dir"])
        .arg(dir.path().join(node));
    NodeProcess::start(&mut cmd, &dir.subdir(&format!("{node}-logs"))?)
}

#[test]
fn across_bootstraps_behind_nats_a_symmetric_pair_is_relayed_and_a_punchable_pair_direct() -> Result<()> {
    if !can_run()? || !require(etcd_here(), "etcd (Debian: apt-get install etcd-server)")? {
        return Ok(());
    }
    let started = Instant::now();
    let mut dir = TempDir::new("natlab-federation")?.keep_unless_passed();
    let lab = Lab::up("aqf", dir.path(), &[])?;

    let mut cmd = lab.exec("b1", "etcd");
    cmd.args(["--name", "lab", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", ETCD, "--advertise-client-urls", ETCD])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "lab=http://127.0.0.1:2380"]);
    let etcd = Process::spawn("etcd", &mut cmd, dir.path())?;

    let (id1, id2) = (peer_id(&dir, "b1")?, peer_id(&dir, "b2")?);
    let b1 = bootstrap(&lab, &dir, "b1", B1, &format!("{id2}@{B2}"))?;
    let b2 = bootstrap(&lab, &dir, "b2", B2, &format!("{id1}@{B1}"))?;
    for node in ["b1", "b2"] {
        let registry_ok = |status, body: &str| {
            let health: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            status == 200 && health["registry"]["state"] == "ok"
        };
        until(&lab, &dir, (node, 9000, "/health"), Duration::from_secs(20), registry_ok)?;
    }
    // b2 linked to b1: registered there, as a peer is.
    let linked = |status, body: &str| {
        let health: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        status == 200 && health["bootstraps"].as_array().is_some_and(|b| b.len() == 1 && b[0]["observed"].is_string())
    };
    until(&lab, &dir, ("b2", 9000, "/health"), Duration::from_secs(20), linked)?;

    // Two-sided guessing off for the peers (see the module doc).
    let config = dir.path().join("peer.toml");
    std::fs::write(&config, "[nat]\ntwo_sided_rate = 0\n")?;
    let mut cmd = lab.exec("sy1", NODE_BIN);
    cmd.args(["--cores", "1", "--bootstrap", &format!("{id1}@{B1}"), "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("target"));
    let target = NodeProcess::start(&mut cmd, &dir.subdir("target-logs")?)?;
    let at_b1 = format!(r#""bootstrap":"{id1}""#);
    let record = format!("/registry/peers/{}", target.peer_id);
    let seen_from_b1 = |status, body: &str| status == 200 && body.replace(' ', "").contains(&at_b1);
    until(&lab, &dir, ("b2", 9000, &record), Duration::from_secs(20), seen_from_b1)?;

    let mut cmd = lab.exec("sy2", NODE_BIN);
    cmd.args(["--cores", "1", "--bootstrap", &format!("{id2}@{B2}"), "--config"])
        .arg(&config)
        .args(["--connect", &target.peer_id, "--json", "--send-bytes", &BYTES.to_string(), "--timeout", "20"])
        .arg("--data-dir")
        .arg(dir.path().join("requester"));
    let connected = Instant::now();
    let out = run("connect", &mut cmd, dir.path(), Duration::from_secs(40))?;
    let took = connected.elapsed();
    ensure!(out.status.success(), "sy2 → sy1 across bootstraps failed: {}", describe(&out));
    let report = parse_report("--connect", &out)?;
    ensure!(report.at("verified")?.flag()? && report.at("bytes")?.num()? == BYTES as f64, "{report}");
    ensure!(report.at("first_path")?.text()? == "relayed" && report.at("path")?.text()? == "relayed", "{report}");
    ensure!(report.at("remote")?.text()? == B1, "relayed through b1, the target's bootstrap: {report}");

    // The NAT driver's counters reach /metrics within a second: poll for them.
    let limit = Duration::from_secs(5);
    until(&lab, &dir, ("b2", 9000, "/metrics"), limit, |_, body| {
        sample(body, "nat_relays_across_total").is_some_and(|n| n >= 1.0)
    })
    .context("b2 counted no relay handed across")?;
    until(&lab, &dir, ("b1", 9000, "/metrics"), limit, |_, body| {
        sample(body, "nat_relay_grants_total").is_some_and(|n| n >= 1.0)
    })
    .context("b1 granted no relay")?;
    eprintln!(
        "relayed across bootstraps: first byte {} ms, {} bytes verified, {:.1} s for the connect command",
        report.at("first_byte_ms")?,
        BYTES,
        took.as_secs_f64(),
    );

    // Where the NATs allow a hole, across is direct: R' behind pr2 knowing only b2 reaches T'
    // behind pr1 registered only at b1 (b2 forwards the request, b1 has both punch). Through b1
    // alone, the same pair is the baseline of the connect time.
    let mut cmd = lab.exec("pr1", NODE_BIN);
    cmd.args(["--cores", "1", "--bootstrap", &format!("{id1}@{B1}"), "--data-dir"]).arg(dir.path().join("t-pr1"));
    let punched_target = NodeProcess::start(&mut cmd, &dir.subdir("t-pr1-logs")?)?;
    let record = format!("/registry/peers/{}", punched_target.peer_id);
    until(&lab, &dir, ("b2", 9000, &record), Duration::from_secs(20), seen_from_b1)?;
    let connect_from_pr2 = |name: &str, bootstrap: String| -> Result<serde_json::Value> {
        let mut cmd = lab.exec("pr2", NODE_BIN);
        cmd.args(["--cores", "1", "--bootstrap", &bootstrap, "--connect", &punched_target.peer_id, "--json"])
            .args(["--send-bytes", &BYTES.to_string(), "--timeout", "20", "--data-dir"])
            .arg(dir.path().join(name));
        let out = run(name, &mut cmd, dir.path(), Duration::from_secs(40))?;
        ensure!(out.status.success(), "pr2 → pr1 ({name}) failed: {}", describe(&out));
        let report = parse_report("--connect", &out)?;
        ensure!(report.at("verified")?.flag()? && report.at("bytes")?.num()? == BYTES as f64, "{report}");
        ensure!(report.at("path")?.text()? == "direct", "pr2 → pr1 ({name}) not direct: {report}");
        Ok(report)
    };
    let across = connect_from_pr2("across", format!("{id2}@{B2}"))?;
    let through_one = connect_from_pr2("through-b1", format!("{id1}@{B1}"))?;
    eprintln!(
        "punched across bootstraps: connect {} ms; the same pair through b1 alone: {} ms; {:.1} s in all",
        across.at("connect_ms")?,
        through_one.at("connect_ms")?,
        started.elapsed().as_secs_f64()
    );
    drop((punched_target, target, b2, b1, etcd));
    drop(lab);
    dir.passed();
    Ok(())
}
