//! The NAT lab (`scripts/natlab/natlab.py`): real kernel NATs in network namespaces.
//!
//! Builds a lab under its own namespace prefix with a 10 % loss, 100 ms impairment on the path to
//! bootstrap b2, then checks, from the lab's own reports:
//! - every router's RFC 4787 behaviour (`nat-check`): full cone EIM/EIF, address-restricted
//!   EIM/ADF, port-restricted EIM/APDF, symmetric EDM/APDF;
//! - the raw UDP simultaneous-open matrix (`raw-check`) for all 45 peer pairs: direct for every
//!   pair with a public, full-cone or address-restricted side and for port-restricted pairs, no
//!   path for port-restricted ↔ symmetric and symmetric ↔ symmetric, and the two peers behind pr1
//!   through their LAN addresses;
//! - the impairment (`impair-check`, 200 datagrams): at least 90 ms added each way, loss
//!   between 2 % and 25 % in each direction, the clean path to b1 untouched, and a NATed peer's
//!   public address intact at b2.
//!
//! The lab is always removed (a drop guard runs `natlab.py down`). Needs root, `ip`, `nft`,
//! `python3` and /dev/net/tun (scripts/test.sh installs the tools); without them it fails under
//! `CI=true` and is skipped elsewhere (tests/common/prerequisite.rs). Every command has a
//! deadline; all traffic stays inside the lab's namespaces.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use common::natlab::{can_run, expected_direct, nat_of, Lab, Report, PEERS};
use common::TempDir;

#[test]
fn nat_lab_types_raw_matrix_and_impairment() -> Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let started = Instant::now();
    let mut dir = TempDir::new("natlab")?.keep_unless_passed();
    let lab = Lab::up("aqr", dir.path(), &["--impair-loss", "10", "--impair-delay-ms", "100"])?;

    // Each router behaves as its type.
    let nat = lab.json("nat-check", Duration::from_secs(60))?;
    let mut wrong = Vec::new();
    for row in nat.at("routers")?.list()? {
        let peer = row.at("peer")?.text()?;
        let (mapping, filtering) = (row.at("mapping")?.as_str().unwrap_or("none"), row.at("filtering")?.text()?);
        let want = match nat_of(peer) {
            "full-cone" => ("EIM", "EIF"),
            "address-restricted" => ("EIM", "ADF"),
            "port-restricted" => ("EIM", "APDF"),
            "symmetric" => ("EDM", "APDF"),
            other => bail!("nat-check reported unexpected peer {peer} ({other})"),
        };
        if (mapping, filtering) != want {
            wrong.push(format!("{peer}: {mapping}/{filtering}, expected {}/{}", want.0, want.1));
        }
    }
    ensure!(wrong.is_empty(), "routers not behaving as typed:\n{}", wrong.join("\n"));

    // The raw simultaneous-open matrix.
    let raw = lab.json("raw-check", Duration::from_secs(90))?;
    let pairs = raw.at("pairs")?.list()?;
    ensure!(pairs.len() == PEERS.len() * (PEERS.len() - 1) / 2, "raw-check reported {} pairs", pairs.len());
    let mut mismatches = Vec::new();
    let mut direct = 0;
    for pair in pairs {
        let (a, b) = (pair.at("a")?.text()?, pair.at("b")?.text()?);
        ensure!(PEERS.contains(&a) && PEERS.contains(&b), "raw-check reported unknown pair {a}-{b}");
        let got = pair.at("direct")?.flag()?;
        direct += usize::from(got);
        if got != expected_direct(a, b) {
            mismatches.push(format!("{a}-{b} ({} / {}): direct {got}", nat_of(a), nat_of(b)));
        }
        if (a, b) == ("pr1", "pr1b") {
            for side in ["a_side", "b_side"] {
                let via = pair.at(side)?.at("via")?.text()?;
                ensure!(via == "host", "pr1-pr1b ({side}) connected via {via}, expected their LAN addresses");
            }
        }
    }
    ensure!(mismatches.is_empty(), "raw matrix differs from the expected one:\n{}", mismatches.join("\n"));
    eprintln!("raw matrix: {direct} of {} pairs direct, as expected ({} s)", pairs.len(), raw.at("elapsed_s")?.num()?);

    // The impairment on the way to b2.
    let imp = lab.json("impair-check", Duration::from_secs(90))?;
    ensure!(imp.at("impair_running")?.flag()?, "impair.py is not running in the lab");
    let added = imp.at("added_one_way_delay_ms")?.num()?;
    let to_b2 = imp.at("loss_pct")?.at("to_b2")?.num()?;
    let from_b2 = imp.at("loss_pct")?.at("from_b2")?.num()?;
    eprintln!("impairment: +{added} ms one way, loss {to_b2} % to b2, {from_b2} % from b2");
    ensure!(added >= 90.0, "the impairment added only {added} ms one way (100 ms configured)");
    for (dir, loss) in [("to b2", to_b2), ("from b2", from_b2)] {
        ensure!((2.0..=25.0).contains(&loss), "loss {dir} {loss} %, expected about 10 % (2..25)");
    }
    let clean = imp.at("clean_b1")?;
    let (sent, replies) = (clean.at("sent")?.num()?, clean.at("replies")?.num()?);
    ensure!(replies >= 0.9 * sent, "the clean path to b1 lost {} of {sent} datagrams", sent - replies);
    let b1_median = clean.at("rtt_ms")?.at("median")?.num()?;
    ensure!(b1_median < 50.0, "the clean path to b1 has a median rtt of {b1_median} ms");
    let intact = imp.at("nat_peer_fc1")?;
    ensure!(
        intact.at("intact")?.flag()?,
        "b2 saw fc1 as {:?}, expected its router's address {:?}",
        intact.at("observed_at_b2")?,
        intact.at("expected_ip")?
    );

    drop(lab);
    eprintln!("natlab_raw: {:.1} s including up and down", started.elapsed().as_secs_f64());
    dir.passed();
    Ok(())
}
