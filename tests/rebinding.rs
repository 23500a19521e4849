//! NAT rebinding under loss: a bulk download survives a client whose NAT moves it to a new source
//! port every second on a path that drops 5 % of datagrams each way, with the bytes intact.
//!
//! Between client and server runs a "lossy rebinding NAT" (`tests/common/fault_proxy.rs`, a UDP
//! proxy on loopback, in this test process): it drops datagrams with a seeded generator (a failure
//! reproduces with the same `ANT_QUIC_REBIND_SEED`) and, every [`REBIND_EVERY`], sends the client's datagrams from a fresh
//! socket. Datagrams the server still sends to an earlier port are lost, as behind a NAT that
//! forgot the old mapping.
//!
//! * `aioquic_client_downloads_from_node_across_rebinding`: the node (`--www`) serves, aioquic's
//!   `tests/interop/hq_client.py --keep-alive 1` fetches through the proxy (a client that never
//!   speaks after its NAT moved cannot be found by any server; docs/reliability.md).
//! * `get_downloads_from_aioquic_across_rebinding`: `tests/interop/hq_server.py` serves,
//!   `ant-quic get` fetches through the proxy.
//!
//! Each asserts the SHA-256 of the file and that the proxy rebound at least [`MIN_REBINDS`] times
//! during the transfer (so it cannot pass without rebinding). RFC 9000 §9 (connection migration).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::fault_proxy::{DirectionPlan, Every, FaultPlan, FaultProxy, Rebind};
use common::{aioquic_python, interop_script, random_bytes, run, sha256_hex, NodeProcess, Process, TempDir, NODE_BIN};
use common::{describe, file_sha, node_log_level, tail};

/// How often the NAT moves the client to a new source port.
const REBIND_EVERY: Duration = Duration::from_secs(1);
/// Share of datagrams dropped in each direction, in per mille.
const LOSS_PER_MILLE: u64 = 50;
/// Rebinds the transfer must live through for the test to count.
const MIN_REBINDS: u64 = 5;
/// The file the node serves: the node sends fast enough on loopback that a smaller one would be
/// done before [`MIN_REBINDS`].
const NODE_FILE_LEN: usize = 64 * 1024 * 1024;
/// The file aioquic's server serves (slower than the node).
const AIOQUIC_FILE_LEN: usize = 20 * 1024 * 1024;
/// Bound on one transfer (the whole test stays under about 90 s once the Python env exists).
const TRANSFER_BUDGET: Duration = Duration::from_secs(80);

fn seed() -> u64 {
    std::env::var("ANT_QUIC_REBIND_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_4e41_5452_6562)
}

/// `ANT_QUIC_REBIND_VERBOSE=1`: aioquic DEBUG logs and qlog traces in the test's log directory.
fn verbose() -> bool {
    std::env::var("ANT_QUIC_REBIND_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The lossy rebinding NAT between client and server.
fn lossy_rebinding_nat(server: SocketAddr) -> Result<FaultProxy> {
    let loss = DirectionPlan { drop_per_mille: LOSS_PER_MILLE, ..DirectionPlan::default() };
    let plan = FaultPlan {
        seed: seed(),
        to_server: loss,
        to_client: loss,
        rebind: Some(Rebind { every: Every::Time(REBIND_EVERY), address: false }),
        ..FaultPlan::default()
    };
    FaultProxy::start(server, plan)
}

/// A file of `len` random bytes at `www/big.bin`; its SHA-256.
fn make_file(www: &Path, len: usize) -> Result<String> {
    let data = random_bytes(len)?;
    fs::write(www.join("big.bin"), &data)?;
    Ok(sha256_hex(&data))
}

#[test]
fn aioquic_client_downloads_from_node_across_rebinding() -> Result<()> {
    let py = aioquic_python()?;
    let mut scratch = TempDir::new("rebind-node")?.keep_unless_passed();
    let (www, data, out, logs) =
        (scratch.subdir("www")?, scratch.subdir("data")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let want = make_file(&www, NODE_FILE_LEN)?;

    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--www"]).arg(&www).arg("--data-dir").arg(&data);
    let mut node = NodeProcess::start(cmd.env("RUST_LOG", node_log_level()), &logs)?;
    let nat = lossy_rebinding_nat(node.addr)?;
    eprintln!("rebinding: node on {}, NAT front {} (seed {})", node.addr, nat.front, seed());

    let mut client = Command::new(&py);
    client
        .arg(interop_script("hq_client.py"))
        .args(["--host", "127.0.0.1", "--port", &nat.front.port().to_string(), "--output"])
        .arg(&out)
        .args(["--insecure", "--timeout", &TRANSFER_BUDGET.as_secs().to_string()])
        .args(["--keep-alive", "1", "/big.bin"]);
    if verbose() {
        client.arg("-v").arg("--qlog").arg(logs.join("hq_client-qlog"));
    }
    let started = Instant::now();
    let done = run("hq_client", &mut client, &logs, TRANSFER_BUDGET + Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    let report = nat.report();
    eprintln!("rebinding: hq_client finished in {elapsed:?}: {}; NAT: {report}", done.status);
    let context =
        || format!("NAT: {report}\nhq_client {}\n--- node stderr ---\n{}", describe(&done), tail(&node.stderr(), 40));
    ensure!(done.status.success(), "the download failed across rebinding\n{}", context());
    ensure!(file_sha(&out.join("big.bin"))? == want, "big.bin arrived with the wrong SHA-256\n{}", context());
    ensure!(
        nat.counters().rebinds >= MIN_REBINDS,
        "only {} rebinds during the transfer: the test proved nothing",
        nat.counters().rebinds
    );
    ensure!(node.exited()?.is_none(), "node exited: {}", tail(&node.stderr(), 40));
    drop(nat);
    scratch.passed();
    Ok(())
}

#[test]
fn get_downloads_from_aioquic_across_rebinding() -> Result<()> {
    let py = aioquic_python()?;
    let mut scratch = TempDir::new("rebind-get")?.keep_unless_passed();
    let (www, out, logs) = (scratch.subdir("www")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let want = make_file(&www, AIOQUIC_FILE_LEN)?;

    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("hq_server.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--root"])
        .arg(&www)
        .args(["--max-seconds", &(TRANSFER_BUDGET.as_secs() + 20).to_string()]);
    if verbose() {
        cmd.arg("-v").arg("--qlog").arg(logs.join("hq_server-qlog"));
    }
    let mut server = Process::spawn("hq_server", &mut cmd, &logs)?;
    let port = server
        .stdout_line(Duration::from_secs(30), |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()))
        .context("hq_server.py never printed READY")?;
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let nat = lossy_rebinding_nat(server_addr)?;
    eprintln!("rebinding: aioquic server on {server_addr}, NAT front {} (seed {})", nat.front, seed());

    let mut get = Command::new(NODE_BIN);
    get.arg("get")
        .arg(format!("https://{}/big.bin", nat.front))
        .arg("--output")
        .arg(&out)
        .args(["--insecure", "--timeout", &TRANSFER_BUDGET.as_secs().to_string()])
        .env("RUST_LOG", node_log_level());
    let started = Instant::now();
    let done = run("get", &mut get, &logs, TRANSFER_BUDGET + Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    let report = nat.report();
    eprintln!("rebinding: ant-quic get finished in {elapsed:?}: {}; NAT: {report}", done.status);
    let context =
        || format!("NAT: {report}\nget {}\n--- hq_server stderr ---\n{}", describe(&done), tail(&server.stderr(), 40));
    ensure!(done.status.success(), "the download failed across rebinding\n{}", context());
    let got = file_sha(&out.join("big.bin")).map_err(|e| anyhow!("{e:#}\n{}", context()))?;
    ensure!(got == want, "big.bin arrived with the wrong SHA-256\n{}", context());
    ensure!(
        nat.counters().rebinds >= MIN_REBINDS,
        "only {} rebinds during the transfer: the test proved nothing",
        nat.counters().rebinds
    );
    drop(nat);
    scratch.passed();
    Ok(())
}
