//! NAT traversal of the node on real kernel NATs (`scripts/natlab/`): bootstraps in b1 and b2, a
//! long-lived peer behind every NAT type, and every pair of peers reaching each other by peer ID
//! with `ant-quic --bootstrap ... --connect PEER_ID --json --send-bytes N`.
//!
//! Asserted, as a user would see it:
//! - direct for every pair where raw UDP simultaneous open works (any pair with a public,
//!   full-cone or address-restricted side, port-restricted pairs, the two peers behind one NAT);
//!   connected (direct, or through the relay) for port-restricted ↔ symmetric and symmetric ↔
//!   symmetric; 100 MB sent over each connection arrive with the same SHA-256;
//! - with 10 % loss and 100 ms added each way on the path to the coordinating bootstrap (b2),
//!   coordination still succeeds for a pair of each kind;
//! - with **one** bootstrap (the runbook's deployment: every peer registered with b1 only, which
//!   tells them their mapping from its alternate port), every pair is as direct as with two, and
//!   symmetric ↔ symmetric connects through the relay at once and, ten times over, moves to a
//!   direct path by two-sided guessing in at least 2 of 10 (about 6 expected);
//! - dual-stack peers on the lab's IPv6 segment (no NAT66) connect directly, symmetric ↔
//!   symmetric over IPv6;
//! - two symmetric-NAT peers that also share a private link meet directly over it (host
//!   candidates on every interface address);
//! - with the only bootstrap on `--backend af-xdp` (on its veth end), two peers on af-xdp behind
//!   port-restricted NATs punch through to each other, and the datagrams went through the AF_XDP
//!   rings (a peer's through its UDP socket only until it had heard from their destination);
//! - `--test` reports the NAT mapping behaviour, with two bootstraps and with one
//!   (endpoint-dependent behind a symmetric NAT, endpoint-independent behind a port-restricted
//!   one), and fails with one line when no bootstrap answers.
//!
//! Needs root, `ip`, `nft`, `python3` and /dev/net/tun (scripts/test.sh installs the tools);
//! without them it fails under `CI=true` and is skipped elsewhere (tests/common/prerequisite.rs).
//! The lab is always removed; every command has a deadline.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::natlab::{can_run, expected_direct, nat_of, parse_report, Lab, Report, PEERS, TRAVERSE};
use common::{run, Process, TempDir, NODE_BIN};

/// Bytes sent over every connection of the clean matrix.
const MATRIX_BYTES: &str = "100000000";

#[test]
fn every_pair_of_peers_connects_as_the_nats_allow() -> Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let started = Instant::now();
    let mut dir = TempDir::new("natlab-traversal")?.keep_unless_passed();
    let lab = Lab::up("aqn", dir.path(), &["--impair-loss", "10", "--impair-delay-ms", "100", "--ipv6"])?;

    // Every pair, coordinated by the clean bootstrap, 100 MB each.
    let table = dir.path().join("matrix.md");
    let table_arg = table.to_string_lossy().into_owned();
    let grid = dir.path().join("matrix.svg");
    let grid_arg = grid.to_string_lossy().into_owned();
    let args =
        ["--binary", NODE_BIN, "--bytes", MATRIX_BYTES, "--via", "b1", "--table", &table_arg, "--grid", &grid_arg];
    let out = run("traverse-b1", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(1200))?;
    let report = parse_report("traverse b1", &out)?;
    let rows = report.at("rows")?.list()?;
    ensure!(rows.len() == PEERS.len() * (PEERS.len() - 1) / 2, "{} pairs reported\n{}", rows.len(), out.stderr);
    let mut paths = BTreeMap::new();
    let mut wrong = Vec::new();
    for row in rows {
        let pair = row.at("pair")?.text()?;
        let (a, b) = pair.split_once('-').context("pair a-b")?;
        let connected = row.at("result")?.text()? == "connected";
        let path = row.at("path")?.text()?;
        let intact = row.at("verified")?.flag()? && row.at("bytes")?.num()? == 100_000_000.0;
        let as_expected = connected && intact && (path == "direct" || (!expected_direct(a, b) && path == "relayed"));
        *paths.entry(path.to_owned()).or_insert(0) += 1;
        if !as_expected {
            wrong.push(format!("{pair}: {row}"));
        }
    }
    eprintln!("{}", std::fs::read_to_string(&table).unwrap_or_default());
    ensure!(wrong.is_empty(), "pairs not connected as their NATs allow:\n{}\n{}", wrong.join("\n"), out.stderr);
    eprintln!("clean matrix: {paths:?}");
    // The grid (scripts/natlab/grid.py) has a cell for every pair, relayed ones as such.
    let svg = std::fs::read_to_string(&grid).with_context(|| format!("traverse.py drew no {}", grid.display()))?;
    ensure!(svg.matches("class=\"cell ").count() == rows.len(), "the grid's cells are not the pairs:\n{svg}");
    let relayed = paths.get("relayed").copied().unwrap_or(0);
    ensure!(svg.matches("class=\"cell relayed\"").count() == relayed, "the grid's relayed cells:\n{svg}");
    let direct_with_two: Vec<String> = rows
        .iter()
        .filter(|row| row.at("path").and_then(|p| p.text()).is_ok_and(|p| p == "direct"))
        .map(|row| row.at("pair").and_then(|p| p.text()).map(str::to_owned))
        .collect::<Result<_>>()?;

    // One bootstrap, as the runbook deploys: the same pairs, as direct as with two. A many-probe
    // round misses with under 1 % (docs/nat-traversal.md); more than one miss is not chance.
    let single_table = dir.path().join("matrix-single.md");
    let single_arg = single_table.to_string_lossy().into_owned();
    let args = ["--binary", NODE_BIN, "--bytes", "65536", "--via", "b1", "--single", "--table", &single_arg];
    let out = run("traverse-single", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(600))?;
    let report = parse_report("traverse single", &out)?;
    ensure!(report.at("bootstraps")?.num()? == 1.0, "not run with one bootstrap: {report}");
    let mut wrong = Vec::new();
    let mut less_direct = Vec::new();
    let mut at_once = 0;
    for row in report.at("rows")?.list()? {
        let pair = row.at("pair")?.text()?;
        let (a, b) = pair.split_once('-').context("pair a-b")?;
        let path = row.at("path")?.text()?;
        let connected = row.at("result")?.text()? == "connected" && row.at("verified")?.flag()?;
        if !connected || (path != "direct" && expected_direct(a, b)) {
            wrong.push(format!("{pair}: {row}"));
        } else if path != "direct" && direct_with_two.iter().any(|p| p == pair) {
            less_direct.push(format!("{pair}: {row}"));
        }
        // Symmetric on both sides: no direct path from one punch, so the bootstrap grants the
        // relay with it and the first byte goes at once, not after the 3 s punch window (measured:
        // within 2 RTT + 50 ms in 39 of 40, docs/nat-matrix.md; one relayed handshake retransmits).
        if nat_of(a) == "symmetric" && nat_of(b) == "symmetric" {
            at_once += 1;
            let first_byte = row.at("first_byte_ms")?.num()?;
            if row.at("first_path")?.text()? != "relayed" || first_byte > 2000.0 {
                wrong.push(format!("{pair}: not connected through the relay at once: {row}"));
            }
        }
    }
    ensure!(at_once > 0, "no symmetric pair in the matrix");
    eprintln!("{}", std::fs::read_to_string(&single_table).unwrap_or_default());
    ensure!(
        wrong.is_empty(),
        "with one bootstrap, pairs not connected as their NATs allow:\n{}\n{}",
        wrong.join("\n"),
        out.stderr
    );
    ensure!(
        less_direct.len() <= 1,
        "with one bootstrap, pairs direct with two went through the relay:\n{}\n{}",
        less_direct.join("\n"),
        out.stderr
    );

    // Symmetric ↔ symmetric, ten times: connected through the relay at once, then two-sided
    // guessing moves the connection to a direct path in about 60 % of attempts within 5 s
    // (25 of 40 measured). Fewer than 2 of 10 has a chance under 0.2 %.
    let pairs = ["sy1-sy2"; 10].join(",");
    let args =
        ["--binary", NODE_BIN, "--bytes", "65536", "--via", "b1", "--single", "--wait-direct", "6", "--pairs", &pairs];
    let out = run("traverse-sym", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(300))?;
    let report = parse_report("traverse sym", &out)?;
    let mut moved = 0;
    for row in report.at("rows")?.list()? {
        ensure!(row.at("result")?.text()? == "connected" && row.at("verified")?.flag()?, "{row}\n{}", out.stderr);
        ensure!(row.at("first_path")?.text()? == "relayed", "not connected through the relay at once: {row}");
        if row.at("path")?.text()? == "direct" {
            moved += 1;
            ensure!(row.at("direct_ms")?.num()? <= 6000.0, "{row}");
        }
    }
    eprintln!("symmetric pairs moved to a direct path: {moved} of 10");
    ensure!(moved >= 2, "only {moved} of 10 symmetric pairs moved to a direct path\n{}", out.stderr);

    // Coordination through the impaired bootstrap: 10 % loss, 100 ms each way. Relayed pairs
    // carry their data over that path too (about 19 % loss per round trip through the relay), so
    // only 64 KiB cross each connection here.
    let pairs = "fc1-fc2,pr1-pr2,ar1-sy1,pr1-sy1,sy1-sy2,pr1-pr1b";
    let args = ["--binary", NODE_BIN, "--bytes", "65536", "--via", "b2", "--pairs", pairs];
    let out = run("traverse-b2", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(600))?;
    let report = parse_report("traverse b2", &out)?;
    let mut wrong = Vec::new();
    let mut relayed_instead_of_direct = Vec::new();
    for row in report.at("rows")?.list()? {
        let pair = row.at("pair")?.text()?;
        let (a, b) = pair.split_once('-').context("pair a-b")?;
        let path = row.at("path")?.text()?;
        let connected = row.at("result")?.text()? == "connected" && row.at("verified")?.flag()?;
        // The request and PUNCH_ME_NOW cross the impaired path: at least one 200 ms round trip.
        let connect_ms = row.at("connect_ms")?.num().unwrap_or(0.0);
        if !connected || connect_ms < 200.0 {
            wrong.push(format!("{pair}: {row}"));
        } else if path != "direct" && expected_direct(a, b) {
            relayed_instead_of_direct.push(format!("{pair}: {row}"));
        }
    }
    // A PUNCH_ME_NOW lost three times in a row on the 10 % path (about 0.1 % of messages) reaches
    // its peer after the 3 s punch window: that pair connects through the relay instead (and would
    // move to a direct path in the background). More than one such pair is not chance.
    ensure!(
        relayed_instead_of_direct.len() <= 1,
        "pairs that raw simultaneous open connects went through the relay:\n{}\n{}",
        relayed_instead_of_direct.join("\n"),
        out.stderr
    );
    ensure!(
        wrong.is_empty(),
        "coordination through the impaired bootstrap failed:\n{}\n{}",
        wrong.join("\n"),
        out.stderr
    );

    ipv6_pairs(&lab, &dir)?;
    side_link_pair(&lab, &dir)?;
    connectivity_checks(&lab, &dir)?;

    drop(lab);
    eprintln!("natlab: {:.1} s including up and down", started.elapsed().as_secs_f64());
    dir.passed();
    Ok(())
}

/// Dual-stack peers on the lab's IPv6 segment (no NAT66, the routers' stateful filters): every
/// pair is direct, and symmetric ↔ symmetric ends up on IPv6 host candidates.
fn ipv6_pairs(lab: &Lab, dir: &TempDir) -> Result<()> {
    let pairs = "sy1-sy2,pr1-sy1,pr2-sy2,sy1-pr1b,pub-sy2,fc1-pr2,ar1-pr1";
    let args = [
        "--binary",
        NODE_BIN,
        "--bytes",
        "65536",
        "--via",
        "b1",
        "--single",
        "--ipv6",
        "--wait-direct",
        "3",
        "--pairs",
        pairs,
    ];
    let out = run("traverse-ipv6", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(300))?;
    let report = parse_report("traverse ipv6", &out)?;
    let mut wrong = Vec::new();
    for row in report.at("rows")?.list()? {
        let pair = row.at("pair")?.text()?;
        let (a, b) = pair.split_once('-').context("pair a-b")?;
        let connected = row.at("result")?.text()? == "connected" && row.at("verified")?.flag()?;
        let at_end = row.at("remote_at_end")?.text()?;
        // Symmetric on both sides: IPv4 has only the two-sided guessing, which takes seconds;
        // IPv6 has no NAT, so the pair moves there within tens of milliseconds. Port-restricted ↔
        // symmetric may stay on IPv4, where a many-probe round is as quick.
        let needs_ipv6 = nat_of(a) == "symmetric" && nat_of(b) == "symmetric";
        if !connected || row.at("path")?.text()? != "direct" || (needs_ipv6 && !at_end.starts_with("[2001:db8:")) {
            wrong.push(format!("{pair}: {row}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "dual-stack pairs not direct (symmetric pairs over IPv6):\n{}\n{}",
        wrong.join("\n"),
        out.stderr
    );
    Ok(())
}

/// Two symmetric-NAT peers that also share a private link (10.200.0.0/24, which no default route
/// takes): each announces that interface's address as a host candidate, and the pair goes direct
/// over it at once instead of relayed-then-guessing through the NATs.
fn side_link_pair(lab: &Lab, dir: &TempDir) -> Result<()> {
    let up = lab.run("link-up", &["link", "sy1", "sy2"], Duration::from_secs(30))?;
    ensure!(up.status.success(), "natlab link failed: {}", up.stderr);
    let args = [
        "--binary",
        NODE_BIN,
        "--bytes",
        "65536",
        "--via",
        "b1",
        "--single",
        "--wait-direct",
        "3",
        "--pairs",
        "sy1-sy2",
    ];
    let out = run("traverse-side", &mut lab.command(TRAVERSE, &args), dir.path(), Duration::from_secs(120))?;
    let down = lab.run("link-down", &["link", "sy1", "sy2", "--down"], Duration::from_secs(30))?;
    ensure!(down.status.success(), "natlab link --down failed: {}", down.stderr);
    let report = parse_report("traverse side link", &out)?;
    let rows = report.at("rows")?.list()?;
    let row = rows.first().context("no row")?;
    let connected = row.at("result")?.text()? == "connected" && row.at("verified")?.flag()?;
    let at_end = row.at("remote_at_end")?.text()?;
    ensure!(
        connected && row.at("path")?.text()? == "direct" && at_end.starts_with("10.200.0.2:"),
        "symmetric peers sharing a private link did not meet over it: {row}\n{}",
        out.stderr
    );
    Ok(())
}

/// `--test` from behind a symmetric and a port-restricted NAT, with both bootstraps and with one;
/// and with none answering.
fn connectivity_checks(lab: &Lab, dir: &TempDir) -> Result<()> {
    let mut bootstraps = Vec::new();
    for (node, addr) in [("b1", "198.18.0.11:9000"), ("b2", "198.18.0.12:9000")] {
        let data = dir.path().join(format!("{node}.data"));
        let mut cmd = lab.exec(node, NODE_BIN);
        cmd.args(["--listen", addr, "--cores", "1", "--data-dir"]).arg(&data);
        let mut process = Process::spawn(node, &mut cmd, dir.path())?;
        process.stdout_line(Duration::from_secs(20), |l| l.contains("listening on").then_some(()))?;
        bootstraps.push(process);
    }
    let one = ["198.18.0.11:9000"].as_slice();
    let two = ["198.18.0.11:9000", "198.18.0.12:9000"].as_slice();
    for (peer, mapping, bootstraps) in [
        ("sy1", "endpoint-dependent", two),
        ("pr1", "endpoint-independent", two),
        ("sy1", "endpoint-dependent", one),
        ("pr1", "endpoint-independent", one),
    ] {
        let data = dir.path().join(format!("{peer}.test"));
        let mut cmd = lab.exec(peer, NODE_BIN);
        cmd.args(["--cores", "1"]);
        for bootstrap in bootstraps {
            cmd.args(["--bootstrap", bootstrap]);
        }
        cmd.args(["--test", "--json", "--timeout", "20", "--data-dir"]).arg(&data);
        let name = format!("test-{peer}-{}", bootstraps.len());
        let out = run(&name, &mut cmd, dir.path(), Duration::from_secs(40))?;
        ensure!(out.status.success(), "--test from {peer} failed: {}", out.stderr);
        let report = parse_report("--test", &out)?;
        ensure!(report.at("reachable")?.flag()?, "{peer}: {report}");
        ensure!(
            report.at("mapping")?.text()? == mapping,
            "{peer} with {} bootstrap(s): expected {mapping}: {report}",
            bootstraps.len()
        );
        let observed = report.at("observed")?.text()?;
        ensure!(observed.starts_with("198.18.0.10"), "{peer} observed at {observed}, not its router's address");
    }
    // Nothing listens on this port: one line saying so, non-zero exit.
    let mut cmd = lab.exec("pr1", NODE_BIN);
    cmd.args(["--cores", "1", "--bootstrap", "198.18.0.11:9999", "--test", "--timeout", "3", "--data-dir"]);
    cmd.arg(dir.path().join("pr1.unreachable"));
    let out = run("test-unreachable", &mut cmd, dir.path(), Duration::from_secs(30))?;
    ensure!(!out.status.success(), "--test succeeded with no bootstrap: {}", out.stdout);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("198.18.0.11:9999"),
        "expected one error line naming the bootstrap: {}",
        out.stderr
    );
    ensure!(!out.stderr.contains("panicked"), "{}", out.stderr);
    drop(bootstraps);
    Ok(())
}

/// Two peers behind port-restricted NATs (neither reachable until both have sent) punch through
/// to each other, coordinated by the only bootstrap, b1, on `--backend af-xdp` on its veth end
/// (native XDP), the peers on af-xdp too; 1 MB arrives intact, and the bootstrap took every
/// datagram through its RX ring and answered through its TX ring.
#[cfg(target_os = "linux")]
#[test]
fn two_peers_on_af_xdp_behind_nats_punch_through_a_bootstrap_on_af_xdp() -> Result<()> {
    if !can_run()? || !common::af_xdp_lab_here() {
        return Ok(());
    }
    let started = Instant::now();
    let mut dir = TempDir::new("natlab-af-xdp")?.keep_unless_passed();
    let lab = Lab::up("aqx", dir.path(), &[])?;
    let args = ["--binary", NODE_BIN, "--bytes", "1000000", "--via", "b1", "--single", "--pairs", "pr1-pr2"];
    let mut command = lab.command(TRAVERSE, &args);
    command.args(["--bootstrap-backend", "af-xdp", "--peer-backend", "af-xdp"]);
    let out = run("traverse-af-xdp", &mut command, dir.path(), Duration::from_secs(180))?;
    let report = parse_report("traverse af-xdp", &out)?;
    let row = report.at("rows")?.list()?.first().context("no pair reported")?;
    ensure!(
        row.at("result")?.text()? == "connected"
            && row.at("path")?.text()? == "direct"
            && row.at("verified")?.flag()?,
        "pr1-pr2 not direct and intact: {row}\n{}",
        out.stderr
    );
    let counters = report.at("bootstrap_af_xdp")?;
    let count = |path: &str| counters.at(path).and_then(|v| v.num());
    ensure!(
        count("received_af_xdp")? > 0.0 && count("received_udp_socket")? == 0.0 && count("not_ours")? == 0.0,
        "the bootstrap received through its RX ring: {counters}"
    );
    ensure!(
        count("sent_af_xdp")? > 0.0 && count("sent_udp_socket")? == 0.0,
        "the bootstrap sent through its TX ring: {counters}"
    );
    // The peers on af-xdp too (bound to 0.0.0.0, `[node] xdp_interface` = eth0): everything came
    // through their RX rings; what they sent before hearing from its destination (the first
    // flight to b1, pr2's first probes to pr1) went through the UDP socket, the rest through the
    // TX ring, from the address the destination had reached them at.
    let peers = report.at("peer_af_xdp")?;
    for peer in ["pr1", "pr2"] {
        let counters = peers.at(peer)?;
        let count = |path: &str| counters.at(path).and_then(|v| v.num());
        ensure!(
            count("received_af_xdp")? > 0.0 && count("received_udp_socket")? == 0.0 && count("not_ours")? == 0.0,
            "{peer} received through its RX ring: {counters}"
        );
        let (ring, socket) = (count("sent_af_xdp")?, count("sent_udp_socket")?);
        ensure!(socket >= 1.0 && ring > socket, "{peer} spoke first through its socket, then its TX ring: {counters}");
    }
    println!(
        "pr1-pr2 through a bootstrap on af-xdp: {row}; bootstrap {counters}; peers {peers}; {:.1?}",
        started.elapsed()
    );
    drop(lab);
    dir.passed();
    Ok(())
}
