//! The deployment procedure against the tools that run it in production: the systemd unit and
//! firewall rules checked statically (`scripts/check-unit.sh`: `systemd-analyze verify`,
//! `systemd-analyze security` at 2.0 or lower, `nft -c`), then package, setup, blue-green
//! switch, automatic rollback, rollback and restart under a real systemd booted in a Debian
//! container, over a real SSH (`scripts/systemd-lab/deploy-test.sh`, which says what it checks).
//!
//! Needs root (debootstrap, systemd-nspawn, nft); the Debian packages it needs are installed when
//! missing. Under `CI=true` a missing prerequisite fails the test; elsewhere the test is skipped
//! (tests/common/prerequisite.rs).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use common::{aioquic_python, is_root, require, run, NODE_BIN};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script of the repository to completion, printing what it printed (the test log).
fn script(name: &str, args: &[&str], limit: Duration) -> Result<String> {
    let logs = repo().join("target");
    std::fs::create_dir_all(&logs)?;
    let mut command = Command::new("bash");
    command.arg(repo().join(name)).args(args).current_dir(repo()).env("ANT_QUIC_BIN", NODE_BIN);
    // The log files under target/ are named after the script.
    let log_name = Path::new(name).file_stem().map_or_else(|| name.into(), |s| s.to_string_lossy());
    let done = run(&log_name, &mut command, &logs, limit)?;
    println!("{}", done.stdout);
    eprintln!("{}", done.stderr);
    if !done.status.success() {
        bail!("{name} failed ({}): {}", done.status, done.stderr.lines().rev().find(|l| !l.is_empty()).unwrap_or(""));
    }
    Ok(done.stdout)
}

#[test]
fn unit_verifies_and_rates_2_or_lower_and_firewall_rules_parse() -> Result<()> {
    if !require(is_root(), "root (scripts/check-unit.sh runs nft -c against the kernel, and apt-get)")? {
        return Ok(());
    }
    let out = script("scripts/check-unit.sh", &[], Duration::from_secs(600))?;
    let score = out
        .lines()
        .find_map(|l| l.strip_prefix("check-unit: security exposure "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok());
    match score {
        Some(score) if score <= 2.0 => Ok(()),
        other => bail!("systemd-analyze security exposure {other:?}, want 2.0 or lower"),
    }
}

#[test]
fn blue_green_switch_rollback_and_restart_under_real_systemd_over_ssh() -> Result<()> {
    if !require(cfg!(target_os = "linux"), "Linux (systemd-nspawn runs on Linux only)")? {
        return Ok(());
    }
    if !require(is_root(), "root (the systemd lab runs debootstrap, systemd-nspawn, nsenter)")? {
        return Ok(());
    }
    let python = aioquic_python()?;
    let python = python.to_string_lossy();
    // deploy-test.sh bounds each of its steps; this is the backstop (the first run also
    // debootstraps the cached tree).
    let out = script("scripts/systemd-lab/deploy-test.sh", &[NODE_BIN, &python], Duration::from_secs(1800))?;
    if !out.contains("deploy-test: ok") {
        bail!("deploy-test.sh exited 0 without its closing `deploy-test: ok` line");
    }
    Ok(())
}
