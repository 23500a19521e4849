//! The async API between peers behind real kernel NATs (`scripts/natlab/`), as a user runs it:
//! the `p2p_file` example (examples/p2p_file.rs) receiving in one NAT'd namespace and sending in
//! another, both registered with an `ant-quic` bootstrap in b1 and finding each other by peer ID.
//!
//! Asserted: port-restricted ↔ port-restricted connects through a punched hole (path `Direct`);
//! symmetric ↔ symmetric connects through b1's relay (path `Relayed`, the relay b1); each time
//! 8 MB arrive with the sender's SHA-256 (checked by the sender against the receiver's answer,
//! and here on the files) and the receiver names the sender's peer ID.
//!
//! Needs root, `ip`, `nft`, `python3` and /dev/net/tun (tests/common/natlab.rs); the lab and every
//! process in it are removed afterwards, also on failure. The example is the one cargo built
//! beside the node binary (`cargo test --workspace` builds it; alone, run
//! `cargo test --release --test natlab_async --example p2p_file`), built here when missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::natlab::{can_run, Lab};
use common::{file_sha, random_bytes, run, NodeProcess, Process, TempDir, NODE_BIN};

const BOOTSTRAP: &str = "198.18.0.11:9000";
const FILE_BYTES: usize = 8 << 20;

/// `p2p_file`, next to the node binary under test; built (same target directory and profile)
/// when it is not there yet.
fn example_bin() -> Result<PathBuf> {
    common::workspace_bin("examples/p2p_file", &["-p", "ant-quic", "--example", "p2p_file"])
}

/// What the sender reported of one transfer.
struct Sent {
    first_path: String,
    final_path: String,
}

/// `receiver` takes `file` from `sender` through the bootstrap `pinned`; both files compared.
fn transfer(lab: &Lab, dir: &TempDir, pinned: &str, receiver: &str, sender: &str, file: &Path) -> Result<Sent> {
    let bin = example_bin()?;
    let out = dir.path().join(format!("{receiver}.received"));
    let mut cmd = lab.exec(receiver, &bin.to_string_lossy());
    cmd.args(["--bootstrap", pinned, "receive"]).arg(&out);
    let mut receiving = Process::spawn(&format!("receive-{receiver}"), &mut cmd, dir.path())?;
    let target = receiving.stdout_line(Duration::from_secs(20), |l| l.strip_prefix("peer id ").map(str::to_owned))?;
    receiving.stdout_line(Duration::from_secs(30), |l| l.starts_with("registered").then_some(()))?;

    let mut cmd = lab.exec(sender, &bin.to_string_lossy());
    cmd.args(["--bootstrap", pinned, "send", &target]).arg(file);
    let sent = run(&format!("send-{sender}"), &mut cmd, dir.path(), Duration::from_secs(60))?;
    ensure!(sent.status.success(), "{sender} → {receiver} failed:\n{}\n{}", sent.stdout, sent.stderr);
    let line = |prefix: &str| sent.stdout.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned);
    let sender_id = line("peer id ").context("the sender printed no peer ID")?;
    let first_path = line("connected, path ").with_context(|| format!("no path printed: {}", sent.stdout))?;
    let end = sent.stdout.lines().find_map(|l| l.split_once("verified, path at the end ")).map(|(_, p)| p.to_owned());
    let final_path = end.with_context(|| format!("not verified: {}", sent.stdout))?;

    let received =
        receiving.stdout_line(Duration::from_secs(20), |l| l.strip_prefix("received ").map(str::to_owned))?;
    let sha = file_sha(file)?;
    ensure!(file_sha(&out)? == sha, "{receiver} wrote another file than {sender} sent");
    ensure!(received.contains(&sha) && received.contains(&sender_id), "{receiver}: {received}");
    Ok(Sent { first_path, final_path })
}

#[test]
fn async_peers_punch_through_port_restricted_nats_and_relay_between_symmetric_ones() -> Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let mut dir = TempDir::new("natlab-async")?.keep_unless_passed();
    let file = dir.path().join("file.bin");
    std::fs::write(&file, random_bytes(FILE_BYTES)?)?;
    let lab = Lab::up("aqa", dir.path(), &[])?;
    let mut cmd = lab.exec("b1", NODE_BIN);
    cmd.args(["--listen", BOOTSTRAP, "--cores", "1", "--data-dir"]).arg(dir.path().join("b1"));
    let bootstrap = NodeProcess::start(&mut cmd, dir.path())?;
    let pinned = format!("{}@{BOOTSTRAP}", bootstrap.peer_id);

    let punched = transfer(&lab, &dir, &pinned, "pr1", "pr2", &file)?;
    ensure!(punched.first_path == "Direct", "pr2 → pr1 went {}", punched.first_path);
    let relayed = transfer(&lab, &dir, &pinned, "sy1", "sy2", &file)?;
    let relay = format!("Relayed {{ relay: {BOOTSTRAP} }}");
    ensure!(relayed.first_path == relay, "sy2 → sy1 went {}", relayed.first_path);
    let (first, last) = (&relayed.first_path, &relayed.final_path);
    eprintln!("punched: {} → {}; relayed: {first} → {last}", punched.first_path, punched.final_path);
    drop(bootstrap);
    drop(lab);
    dir.passed();
    Ok(())
}
