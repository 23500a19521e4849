//! The scenarios of `nat_loopback.rs` with the bootstrap on `--backend af-xdp` (root): the
//! bootstrap on `v0` of a veth pair in a namespace of the test's own (native XDP), the peers and
//! clients at the other end, and the bootstrap's counters showing that its datagrams went through
//! the AF_XDP rings.
//!
//! Not on a namespace's loopback: `lo` keeps its transmit checksum offload
//! (`ethtool -K lo tx off` answers `tx-checksum-ip-generic: on [requested off]`), so a datagram
//! from a local socket reaches the program with the partial checksum the kernel leaves for
//! offload, which reads as a bad checksum in the RX ring (dropped, `not_ours`). On a veth the
//! peer's offload can be turned off (`Netns::for_af_xdp`).
//!
//! Each test creates the namespaces and runs its `#[ignore]`d half, this binary again, in the
//! peer's namespace (`ip netns exec`): the test's own nodes and clients and its HTTP requests are
//! then on that side, without entering a namespace from this crate (no unsafe code here).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};

use super::common::{self, sample, NodeProcess, TempDir, NODE_BIN};
use super::veth::{Netns, NODE_IP, PEER_IP};
use super::{admin, http_get, peers_reach_each_other_by_id, relay_forwards_between_its_two_ends};

/// Names the node's namespace to the `#[ignore]`d half; without it, that half does nothing.
const LAB_NETNS: &str = "ANT_QUIC_TEST_AF_XDP_NETNS";
/// What the `#[ignore]`d half prints when its scenario passed.
const PASSED: &str = "bootstrap on af-xdp:";

/// Run this binary's `#[ignore]`d test `half` in the peer's namespace of a fresh veth pair.
fn in_af_xdp_lab(tag: &str, half: &str) {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut dir = TempDir::new(tag).unwrap().keep_unless_passed();
    let ns = Netns::for_af_xdp(tag);
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.peer]).arg(std::env::current_exe().unwrap());
    command.args([half, "--exact", "--ignored", "--nocapture", "--test-threads", "1"]).env(LAB_NETNS, &ns.node);
    let done = common::run(half, &mut command, dir.path(), Duration::from_secs(120)).unwrap();
    println!("{}", done.stdout);
    assert!(done.status.success() && done.stdout.contains(PASSED), "{}", common::describe(&done));
    assert!(!ns.xdp_attached(), "the bootstrap's program is gone with it");
    dir.passed();
}

/// The bootstrap on af-xdp at NODE_IP in namespace `netns` (one core, native XDP on `v0`), its
/// admin HTTP on the veth too; `extra` arguments.
fn bootstrap(dir: &TempDir, netns: &str, extra: &[&str]) -> Result<NodeProcess> {
    let listen = SocketAddr::from((NODE_IP, 4433)).to_string();
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, NODE_BIN, "--listen", &listen, "--cores", "1", "--backend", "af-xdp"]);
    command.args(["--metrics-port", "9433", "--data-dir"]).arg(dir.path().join("bootstrap")).args(extra);
    command.env("ANT_QUIC_METRICS_BIND", NODE_IP.to_string());
    let logs = dir.subdir("bootstrap-logs")?;
    let node = NodeProcess::start(&mut command, &logs)?;
    ensure!(node.banner.contains("backend af-xdp"), "{}", node.banner);
    Ok(node)
}

/// One af-xdp counter of the bootstrap's core 0.
fn af_xdp_counter(metrics: &str, path: &str) -> u64 {
    let series = format!("ant_quic_core_af_xdp_datagrams_total{{core=\"0\",path=\"{path}\"}}");
    sample(metrics, &series).unwrap_or_else(|| panic!("no {series} in the metrics")) as u64
}

/// Every datagram to the bootstrap came through its RX ring, and it answered through its TX ring
/// (it never spoke first to a peer it had not heard from); prints the counts.
fn assert_through_the_rings(bootstrap: &NodeProcess) {
    let (_, metrics) = http_get(admin(bootstrap), "/metrics");
    let counts = ["received_af_xdp", "received_udp_socket", "sent_af_xdp", "sent_udp_socket", "not_ours"]
        .map(|path| (path, af_xdp_counter(&metrics, path)));
    let summary = format!("{counts:?}");
    let [(_, rx_xdp), (_, rx_socket), (_, tx_xdp), (_, tx_socket), (_, not_ours)] = counts;
    assert!(rx_xdp > 0 && rx_socket == 0 && not_ours == 0, "received through the RX ring: {summary}");
    assert!(tx_xdp > 0 && tx_socket == 0, "sent through the TX ring: {summary}");
    println!("{PASSED} {summary}");
}

/// The namespace of the node, when run by [`in_af_xdp_lab`].
fn lab() -> Option<String> {
    let netns = std::env::var(LAB_NETNS).ok();
    if netns.is_none() {
        println!("not run: this half runs inside the namespaces its test creates");
    }
    netns
}

#[test]
fn peers_reach_each_other_by_id_through_a_bootstrap_on_af_xdp() {
    in_af_xdp_lab("nat-xdp-id", "af_xdp::peers_reach_each_other_by_id_in_the_af_xdp_lab");
}

#[test]
#[ignore = "run by peers_reach_each_other_by_id_through_a_bootstrap_on_af_xdp, in its namespace"]
fn peers_reach_each_other_by_id_in_the_af_xdp_lab() -> Result<()> {
    let Some(netns) = lab() else { return Ok(()) };
    let mut dir = TempDir::new("nat-xdp-id-half")?.keep_unless_passed();
    let bootstrap = bootstrap(&dir, &netns, &[])?;
    peers_reach_each_other_by_id(&dir, &bootstrap, &PEER_IP.to_string())?;
    assert_through_the_rings(&bootstrap);
    dir.passed();
    Ok(())
}

#[test]
fn a_relay_allocation_on_af_xdp_forwards_between_its_two_ends() {
    in_af_xdp_lab("nat-xdp-relay", "af_xdp::a_relay_allocation_forwards_in_the_af_xdp_lab");
}

#[test]
#[ignore = "run by a_relay_allocation_on_af_xdp_forwards_between_its_two_ends, in its namespace"]
fn a_relay_allocation_forwards_in_the_af_xdp_lab() -> Result<()> {
    let Some(netns) = lab() else { return Ok(()) };
    let mut dir = TempDir::new("nat-xdp-relay-half")?.keep_unless_passed();
    let bootstrap = bootstrap(&dir, &netns, &["--relay-lifetime", "42"])?;
    assert_eq!(relay_forwards_between_its_two_ends(&bootstrap)?, 42);
    assert_through_the_rings(&bootstrap);
    dir.passed();
    Ok(())
}
