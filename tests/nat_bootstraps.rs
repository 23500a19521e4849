//! Bootstraps named by peer ID, and failover between bootstraps, with the node binary on loopback:
//!
//! - a bootstrap given as `PEER_ID@HOST:PORT` whose certificate proves another peer ID: `--connect`
//!   and `--test` end at once with one error line saying the bootstrap at that address is not
//!   that peer; with its real peer ID the same bootstrap registers the node, and `/health` shows
//!   the pin;
//! - two bootstraps, a target and a `--connect` client registered with both; the first bootstrap
//!   is frozen (SIGSTOP) after the client registered there, before its CONNECT_REQUEST: the
//!   request moves to the second bootstrap, which coordinates the punch, and the connect succeeds.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::send_signal;
use ant_quic_control::PeerId;
use anyhow::{ensure, Context, Result};
use common::{describe, http_get, run, sample, NodeProcess, Process, TempDir, NODE_BIN};

fn node(dir: &TempDir, name: &str, extra: &[&str]) -> Result<NodeProcess> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.path().join(name)).args(extra);
    NodeProcess::start(&mut cmd, &dir.subdir(&format!("{name}-logs"))?)
}

/// A one-shot `ant-quic` (`--connect`, `--test`) at log level info, whatever `RUST_LOG` says.
fn one_shot_command(dir: &TempDir, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--cores", "1", "--log-level", "info", "--data-dir"]).arg(dir.path().join(name)).args(args);
    cmd.env_remove("RUST_LOG");
    cmd
}

/// `PEER_ID@ADDRESS` of a running node.
fn pinned(node: &NodeProcess) -> String {
    format!("{}@{}", node.peer_id, node.addr)
}

/// Poll `/health` of `node` until `done` holds on its JSON.
fn health_until(node: &NodeProcess, done: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(node.admin()?, "/health");
        let json: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{status} {body}"))?;
        if done(&json) {
            return Ok(json);
        }
        ensure!(Instant::now() < deadline, "/health never showed what was expected: {json}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `error:` lines of a one-shot's stderr.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

#[test]
fn a_bootstrap_pinned_to_another_peer_id_is_refused_with_one_line() -> Result<()> {
    let mut dir = TempDir::new("nat-pinned")?.keep_unless_passed();
    let bootstrap = node(&dir, "bootstrap", &[])?;
    let wrong = PeerId([0x77; 32]).to_string();
    let wrong_pin = format!("{wrong}@{}", bootstrap.addr);
    let expected = format!("the bootstrap at {} is not peer {wrong}", bootstrap.addr);
    let target = PeerId([0x55; 32]).to_string();

    for (name, args) in [
        ("connect", vec!["--bootstrap", &wrong_pin, "--connect", &target, "--timeout", "20"]),
        ("test", vec!["--bootstrap", &wrong_pin, "--test", "--timeout", "20"]),
    ] {
        let started = Instant::now();
        let done = run(name, &mut one_shot_command(&dir, name, &args), dir.path(), Duration::from_secs(40))?;
        ensure!(!done.status.success(), "{name} accepted a bootstrap that proves another peer ID: {}", describe(&done));
        let errors = error_lines(&done.stderr);
        ensure!(errors.len() == 1 && errors[0].contains(&expected), "{name}: {}", describe(&done));
        // It gives up on the refusal, not at its timeout.
        ensure!(started.elapsed() < Duration::from_secs(15), "{name} took {:?}", started.elapsed());
    }

    // Pinned to its real peer ID, the same bootstrap registers the node; /health shows the pin.
    let peer = node(&dir, "peer", &["--bootstrap", &pinned(&bootstrap)])?;
    let health = health_until(&peer, |h| h["bootstraps"][0]["observed"].is_string())?;
    assert_eq!(health["bootstraps"][0]["peer_id"], bootstrap.peer_id.as_str(), "{health}");
    assert_eq!(health["bootstraps"][0]["error"], serde_json::Value::Null, "{health}");
    let plain = node(&dir, "plain", &["--bootstrap", &bootstrap.addr.to_string()])?;
    let health = health_until(&plain, |h| h["bootstraps"][0]["observed"].is_string())?;
    assert_eq!(health["bootstraps"][0]["peer_id"], serde_json::Value::Null, "{health}");

    dir.passed();
    Ok(())
}

/// Resumes a process stopped with SIGSTOP when dropped (also when the test fails), so that it
/// can be killed and reaped like the others.
struct Frozen(u32);

impl Frozen {
    fn stop(process: &Process) -> Result<Self> {
        let pid = u32::try_from(process.pid())?;
        send_signal(pid, libc::SIGSTOP).context("SIGSTOP")?;
        Ok(Self(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = send_signal(self.0, libc::SIGCONT);
    }
}

/// Wait until `process` logged that `bootstrap` observed it.
fn wait_observed_by(process: &mut Process, bootstrap: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let needle = format!("bootstrap={bootstrap}");
    loop {
        let log = process.stderr();
        if log.lines().any(|l| l.contains("observed address") && l.contains(&needle)) {
            return Ok(());
        }
        if let Some(status) = process.exited()? {
            anyhow::bail!("exited ({status}) before {bootstrap} observed it:\n{log}");
        }
        ensure!(Instant::now() < deadline, "{bootstrap} did not observe it within {limit:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_connect_moves_to_the_second_bootstrap_when_the_first_stops_answering() -> Result<()> {
    let mut dir = TempDir::new("nat-failover")?.keep_unless_passed();
    let first = node(&dir, "first", &[])?;
    let second = node(&dir, "second", &[])?;
    let (first_pin, second_pin) = (pinned(&first), pinned(&second));
    let target = node(&dir, "target", &["--bootstrap", &first_pin, "--bootstrap", &second_pin])?;
    let health = health_until(&target, |h| {
        h["bootstraps"].as_array().is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["observed"].is_string()))
    })?;
    assert_eq!(health["bootstraps"][0]["peer_id"], first.peer_id.as_str(), "{health}");
    assert_eq!(health["bootstraps"][1]["peer_id"], second.peer_id.as_str(), "{health}");

    // The second bootstrap is held while the client registers with the first: the client's
    // CONNECT_REQUEST waits (up to 3 s) for every bootstrap to observe it, so the first one can be
    // frozen after the registration and before the request.
    let held = Frozen::stop(&second)?;
    let args = [
        "--bootstrap",
        &first_pin,
        "--bootstrap",
        &second_pin,
        "--connect",
        &target.peer_id,
        "--json",
        "--timeout",
        "40",
    ];
    let mut cmd = one_shot_command(&dir, "client", &args);
    let mut client = Process::spawn("client", &mut cmd, &dir.subdir("client-logs")?)?;
    wait_observed_by(&mut client, first.addr, Duration::from_secs(20))?;
    let frozen = Frozen::stop(&first)?;
    drop(held);

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = client.exited()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "--connect still running after 60 s:\n{}", client.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = client.stdout_line(Duration::from_secs(5), |l| Some(l.to_owned())).unwrap_or_default();
    let log = client.stderr();
    ensure!(status.success(), "--connect failed ({status}):\n{stdout}\n{log}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).context("one JSON line")?;
    assert_eq!(line["path"], "direct", "{line}");
    assert_eq!(line["remote"], target.addr.to_string().as_str(), "{line}");
    let moved = format!("retried through {}", second.addr);
    ensure!(log.lines().any(|l| l.contains(&moved)), "the request never moved to the second bootstrap:\n{log}");

    // The second bootstrap coordinated the punch (its counters are published once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(second.admin()?, "/metrics");
        if sample(&metrics, "nat_punches_coordinated_total").is_some_and(|v| v >= 1.0) {
            break;
        }
        ensure!(Instant::now() < deadline, "the second bootstrap coordinated no punch:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }

    drop(frozen);
    dir.passed();
    Ok(())
}
