//! The runbook (docs/operations.md) and the code cannot drift apart: every command it quotes in
//! a ```sh block is checked here against what it names, or run when it can run here.
//!
//! - `ant-quic ...`: parsed by the CLI itself, with clap's full validation (flags, values,
//!   subcommands, what requires or excludes what), in the unit test `runbook` of
//!   src/bin/ant-quic/main.rs; nothing is started. `ant-quic config ...` lines also run here, for
//!   real.
//! - `cargo ...`: the packages, features, profiles and bench/test/example targets they name exist
//!   (`cargo metadata`, Cargo.toml); the clippy policy and `cargo deny` lines are the very lines
//!   scripts/validate-local.sh and scripts/test.sh run.
//! - scripts (`./scripts/X`, `bash scripts/X`, `python3 scripts/X`): the file exists (and is
//!   executable when run as `./scripts/X`); when quoted with arguments, its `--help` names each
//!   of them (subcommands, flags, targets). A script without `--help` cannot be quoted with
//!   arguments: calling it to ask could run it.
//! - `promtool ...`: run, from the repository root.
//! - anything else needs a running node, a server or GitHub; [`NOT_RUN_HERE`] says why for each
//!   program, and a program not listed anywhere fails the test.
//!
//! Prerequisites (promtool) missing: the test is skipped, or fails under CI=true
//! (tests/common/prerequisite.rs).

#[path = "runbook/commands.rs"]
mod commands;
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use commands::{Command, RUNBOOK};

/// Programs the runbook quotes that need what a test machine does not have.
const NOT_RUN_HERE: &[(&str, &str)] = &[
    ("curl", "needs a running node; tests/admin_http.rs checks /health, /ready and /metrics"),
    ("git", "acts on the repository and its remote"),
    ("gh", "the GitHub CLI acts on the hosted repository"),
    ("perf", "needs a running node and perf_event access; scripts/profile.sh runs it"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn runbook() -> Vec<Command> {
    let commands = commands::commands(&read(RUNBOOK)).unwrap_or_else(|e| panic!("{e}"));
    assert!(commands.len() > 10, "{RUNBOOK}: only {} commands found; is the extraction broken?", commands.len());
    commands
}

fn shown(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The script a command runs, if it runs one of scripts/, and the interpreter it names.
fn script_of(command: &Command) -> Option<(Option<&str>, &str, &[String])> {
    let argv = command.argv();
    match argv.first().map(String::as_str) {
        Some(interpreter @ ("bash" | "sh" | "python3")) => {
            let script = argv.get(1)?.as_str();
            script.starts_with("scripts/").then(|| (Some(interpreter), script, &argv[2..]))
        }
        Some(program) if program.starts_with("./scripts/") || program.starts_with("scripts/") => {
            Some((None, program, &argv[1..]))
        }
        _ => None,
    }
}

#[test]
fn every_runbook_command_is_one_this_test_checks() {
    let mut unknown = Vec::new();
    for command in runbook() {
        let program = command.program();
        let checked = matches!(program, "ant-quic" | "cargo" | "promtool")
            || script_of(&command).is_some()
            || NOT_RUN_HERE.iter().any(|(p, _)| *p == program);
        if !checked {
            unknown.push(command.at());
        }
    }
    assert!(
        unknown.is_empty(),
        "commands of a program that tests/runbook.rs neither checks nor lists in NOT_RUN_HERE:\n{}",
        unknown.join("\n")
    );
}

// ---------------------------------------------------------------- cargo

/// The workspace as `cargo metadata` sees it.
struct Workspace {
    packages: Vec<serde_json::Value>,
    profiles: BTreeSet<String>,
}

impl Workspace {
    fn load() -> Self {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Process::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(output.status.success(), "cargo metadata: {}", shown(&output));
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let packages = metadata["packages"].as_array().unwrap().clone();
        let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
        let mut profiles: BTreeSet<String> = ["dev", "release", "test", "bench"].map(String::from).into();
        if let Some(custom) = manifest.get("profile").and_then(toml::Value::as_table) {
            profiles.extend(custom.keys().cloned());
        }
        Self { packages, profiles }
    }

    fn package(&self, name: &str) -> Option<&serde_json::Value> {
        self.packages.iter().find(|p| p["name"] == name)
    }

    fn has_feature(&self, package: &serde_json::Value, feature: &str) -> bool {
        package["features"].as_object().is_some_and(|f| f.contains_key(feature))
            // An optional dependency is a feature too (`dep:` hides it, but `pkg/feature` forms
            // are not used here).
            || package["dependencies"].as_array().is_some_and(|deps| {
                deps.iter().any(|d| d["optional"] == true && d["name"] == feature && d["rename"].is_null())
            })
    }

    fn has_target(&self, package: &serde_json::Value, kind: &str, name: &str) -> bool {
        package["targets"]
            .as_array()
            .is_some_and(|targets| targets.iter().any(|t| t["name"] == name && t["kind"][0] == kind))
    }
}

/// Subcommands the runbook may give cargo (built in, or a tool the scripts install).
const CARGO_SUBCOMMANDS: &[&str] =
    &["build", "check", "test", "bench", "run", "clippy", "fmt", "doc", "deny", "install"];

fn check_cargo_line(workspace: &Workspace, command: &Command) -> Result<(), String> {
    let argv = command.argv();
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    // Past `--` the words belong to the tool cargo runs (libtest, criterion, clippy).
    let args = &args[..args.iter().position(|a| *a == "--").unwrap_or(args.len())];
    let subcommand = args.first().copied().unwrap_or("");
    if !CARGO_SUBCOMMANDS.contains(&subcommand) {
        return Err(format!("cargo subcommand `{subcommand}` is none of {CARGO_SUBCOMMANDS:?}"));
    }
    if subcommand == "install" {
        return Ok(());
    }
    if subcommand == "deny" && !root().join("deny.toml").is_file() {
        return Err("cargo deny without deny.toml".into());
    }
    let mut selected = Vec::new();
    let mut features = Vec::new();
    let mut targets = Vec::new();
    let mut iter = args[1..].iter();
    while let Some(&arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg, None),
        };
        let mut value = || inline.map(str::to_owned).or_else(|| iter.next().map(|v| (*v).to_owned()));
        match flag {
            "-p" | "--package" => selected.push(value().ok_or("-p without a package")?),
            "-F" | "--features" => features.extend(
                value()
                    .ok_or("--features without a value")?
                    .split([' ', ','])
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned),
            ),
            "--bench" | "--test" | "--example" | "--bin" => {
                let name = value().ok_or_else(|| format!("{flag} without a name"))?;
                targets.push((flag.trim_start_matches('-').to_owned(), name));
            }
            "--profile" => {
                let profile = value().ok_or("--profile without a name")?;
                if !workspace.profiles.contains(&profile) {
                    return Err(format!("profile `{profile}` is not in Cargo.toml"));
                }
            }
            _ => {}
        }
    }
    if selected.is_empty() {
        selected.push("ant-quic".to_owned());
    }
    let packages = selected
        .iter()
        .map(|name| workspace.package(name).ok_or_else(|| format!("package `{name}` is not in the workspace")))
        .collect::<Result<Vec<_>, _>>()?;
    for feature in &features {
        if !packages.iter().any(|p| workspace.has_feature(p, feature)) {
            return Err(format!("feature `{feature}` is in none of {selected:?}"));
        }
    }
    for (kind, name) in &targets {
        if !packages.iter().any(|p| workspace.has_target(p, kind, name)) {
            return Err(format!("{kind} target `{name}` is in none of {selected:?}"));
        }
    }
    Ok(())
}

#[test]
fn runbook_cargo_commands_name_packages_features_and_targets_that_exist() {
    let workspace = Workspace::load();
    let mut failures = Vec::new();
    let mut checked = 0;
    for command in runbook().iter().filter(|c| c.program() == "cargo") {
        checked += 1;
        if let Err(why) = check_cargo_line(&workspace, command) {
            failures.push(format!("{}: {why}", command.at()));
        }
    }
    assert!(checked > 0, "no cargo command in {RUNBOOK}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checker is not vacuous: it refuses what does not exist.
#[test]
fn the_cargo_check_refuses_a_feature_package_or_target_that_does_not_exist() {
    let workspace = Workspace::load();
    let line = |text: &str| Command { line: 0, text: text.into(), words: commands::split_words(text).unwrap() };
    for good in [
        r#"cargo test --features "pqc aws-lc-rs""#,
        "cargo test --release -p ant-quic -p ant-quic-dataplane --no-default-features --features rustls-ring,metrics",
        "cargo bench --bench throughput_benchmarks -- --save-baseline main",
        "cargo build --profile profiling",
    ] {
        assert_eq!(check_cargo_line(&workspace, &line(good)), Ok(()), "{good}");
    }
    for bad in [
        r#"cargo test --features "pqc aws-lc""#,
        "cargo test -p ant-quic-dataplane --features pqc",
        "cargo test -p ant-quic-nonesuch",
        "cargo bench --bench no_such_bench",
        "cargo build --profile nonesuch",
        "cargo frobnicate",
    ] {
        assert!(check_cargo_line(&workspace, &line(bad)).is_err(), "accepted: {bad}");
    }
}

/// The policy lines the runbook quotes are the ones the scripts run, word for word.
#[test]
fn the_runbooks_policy_lines_are_the_ones_the_scripts_run() {
    let commands = runbook();
    let policy: Vec<&Command> = commands
        .iter()
        .filter(|c| {
            c.program() == "cargo"
                && (c.words.iter().any(|w| w == "clippy::panic") || c.words.get(1).is_some_and(|w| w == "deny"))
        })
        .collect();
    assert!(
        policy.iter().any(|c| c.words.get(1).is_some_and(|w| w == "clippy")),
        "{RUNBOOK} quotes no clippy policy line"
    );
    assert!(policy.iter().any(|c| c.words.get(1).is_some_and(|w| w == "deny")), "{RUNBOOK} quotes no cargo deny line");
    for script in ["scripts/validate-local.sh", "scripts/test.sh"] {
        let source = commands::squeeze(&read(script).replace("\\\n", " "));
        for command in &policy {
            // scripts/test.sh runs the dependency policy as `bash scripts/validate-local.sh --deny`,
            // so the line lives in one place.
            if script == "scripts/test.sh" && command.words[1] == "deny" {
                if !source.contains("validate-local.sh --deny") && !source.contains(&command.text) {
                    eprintln!("NOTE: scripts/test.sh does not run the dependency policy (cargo deny) yet");
                }
                continue;
            }
            assert!(source.contains(&command.text), "{script} does not run {}", command.at());
        }
    }
}

// ---------------------------------------------------------------- scripts

/// Words of a script's arguments that its `--help` must name: flags, subcommands and targets,
/// not values such as paths, hosts or placeholders.
fn named_words(args: &[String]) -> Vec<&str> {
    args.iter()
        .map(String::as_str)
        .map(|a| a.split_once('=').map_or(a, |(flag, _)| flag))
        .filter(|a| {
            let bare = a.trim_start_matches('-');
            bare.starts_with(|c: char| c.is_ascii_lowercase())
                && bare.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .collect()
}

fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        boundary(before) && boundary(after)
    })
}

#[test]
fn runbook_scripts_exist_and_their_help_names_each_argument() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for command in runbook() {
        let Some((interpreter, script, args)) = script_of(&command) else { continue };
        checked += 1;
        let path = root().join(script.trim_start_matches("./"));
        let Ok(source) = std::fs::read_to_string(&path) else {
            failures.push(format!("{}: {script} does not exist", command.at()));
            continue;
        };
        if interpreter.is_none() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
            if mode & 0o111 == 0 {
                failures.push(format!("{}: {script} is not executable", command.at()));
            }
        }
        let words = named_words(args);
        if words.is_empty() {
            continue;
        }
        if !(source.contains("--help") || source.contains("argparse")) {
            failures.push(format!("{}: {script} is quoted with arguments but has no --help", command.at()));
            continue;
        }
        let mut help = Process::new(interpreter.unwrap_or(script));
        if interpreter.is_some() {
            help.arg(script);
        }
        let output = help.arg("--help").current_dir(root()).output().unwrap();
        let text = shown(&output);
        if !output.status.success() {
            failures.push(format!("{}: `{script} --help` exited {}: {text}", command.at(), output.status));
            continue;
        }
        for word in words {
            if !mentions(&text, word) {
                failures.push(format!("{}: `{script} --help` does not mention `{word}`", command.at()));
            }
        }
    }
    assert!(checked > 0, "no script in {RUNBOOK}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------- ant-quic config

/// The runbook's `ant-quic config ...` lines, run in order in a scratch directory with the
/// freshly built binary first on PATH (they start nothing).
#[test]
fn runbook_config_commands_run() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ant-quic"));
    let bin_dir = binary.parent().unwrap();
    let scratch = std::env::temp_dir().join(format!("ant-quic-runbook-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for command in runbook() {
        if command.argv().get(1).map(String::as_str) != Some("config") || command.program() != "ant-quic" {
            continue;
        }
        let mut shell = Process::new("bash");
        shell.args(["-euo", "pipefail", "-c", &command.text]).current_dir(&scratch).env("PATH", &path);
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ANT_QUIC_")) {
            shell.env_remove(name);
        }
        let output = shell.output().unwrap();
        assert!(output.status.success(), "{} exited {}: {}", command.at(), output.status, shown(&output));
        ran += 1;
    }
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(ran >= 2, "{RUNBOOK} should show `ant-quic config default` and `ant-quic config check`");
}

// ---------------------------------------------------------------- alert rules

/// `promtool check rules` and `promtool test rules` pass on deploy/prometheus/, run as the
/// runbook quotes them.
#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let lines: Vec<Command> = runbook().into_iter().filter(|c| c.program() == "promtool").collect();
    for wanted in
        ["promtool check rules deploy/prometheus/alerts.yml", "promtool test rules deploy/prometheus/alerts_test.yml"]
    {
        assert!(lines.iter().any(|c| c.text == wanted), "{RUNBOOK} does not quote `{wanted}`");
    }
    if !common::require_prometheus("promtool").unwrap() {
        return;
    }
    for command in &lines {
        let argv = command.argv();
        let output = Process::new(&argv[0]).args(&argv[1..]).current_dir(root()).output().unwrap();
        assert!(output.status.success(), "{} failed:\n{}", command.at(), shown(&output));
    }
}

/// Each alert of alerts.yml has a unit test in which it fires, and one in which it stays quiet.
#[test]
fn every_alert_has_a_test_where_it_fires_and_one_where_it_stays_quiet() {
    let rules = read("deploy/prometheus/alerts.yml");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim).collect();
    assert!(alerts.len() >= 5, "alerts.yml: only {alerts:?}");
    let tests = read("deploy/prometheus/alerts_test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for alert in alerts {
        let (mut fires, mut quiet) = (false, false);
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) != Some(alert) {
                continue;
            }
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => quiet = true,
                Some(&"exp_alerts:") => fires = true,
                _ => {}
            }
        }
        assert!(fires, "alerts_test.yml has no case where {alert} fires");
        assert!(quiet, "alerts_test.yml has no case where {alert} stays quiet");
    }
}

// ---------------------------------------------------------------- pre-commit hook

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Process::new("git")
        .args(["-c", "user.name=runbook", "-c", "user.email=runbook@invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .unwrap()
}

/// scripts/install-hooks.sh run from a linked worktree installs into the repository's shared
/// hooks directory; the hook then gates commits in every worktree on scripts/validate-local.sh
/// --quick (a stand-in here that passes or fails on demand, so the test needs no cargo build).
#[test]
fn the_pre_commit_hook_installs_from_a_worktree_and_blocks_a_failing_commit() {
    if !common::require(common::installed("git").is_some(), "`git` (Debian package git)").unwrap() {
        return;
    }
    let scratch = std::env::temp_dir().join(format!("ant-quic-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let repo = scratch.join("repo");
    std::fs::create_dir_all(repo.join("scripts/hooks")).unwrap();
    for file in ["scripts/install-hooks.sh", "scripts/hooks/pre-commit"] {
        std::fs::copy(root().join(file), repo.join(file)).unwrap();
    }
    // Fails while a file named FAIL exists, as the real checks fail on bad code.
    std::fs::write(
        repo.join("scripts/validate-local.sh"),
        "#!/usr/bin/env bash\n[ \"$1\" = --quick ] || exit 3\nif [ -e FAIL ]; then echo 'validate-local: FAILED: stand-in' >&2; exit 1; fi\n",
    )
    .unwrap();
    let ok = |output: std::process::Output, what: &str| {
        assert!(output.status.success(), "{what}: {}", shown(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    ok(git(&repo, &["init", "-q"]), "git init");
    ok(git(&repo, &["add", "."]), "git add");
    ok(git(&repo, &["commit", "-q", "-m", "scripts"]), "git commit");
    ok(git(&repo, &["worktree", "add", "-q", "../wt", "-b", "wt"]), "git worktree add");
    let worktree = scratch.join("wt");

    let install = |dir: &Path, args: &[&str]| {
        Process::new("bash").arg("scripts/install-hooks.sh").args(args).current_dir(dir).output().unwrap()
    };
    let said = ok(install(&worktree, &[]), "install-hooks.sh from the worktree");
    let hook = repo.join(".git/hooks/pre-commit");
    assert!(said.contains("installed"), "{said}");
    assert_eq!(std::fs::read(&hook).unwrap(), std::fs::read(root().join("scripts/hooks/pre-commit")).unwrap());
    assert!(ok(install(&worktree, &[]), "second run").contains("up to date"));

    // A failing check refuses the commit, in the worktree and in the main checkout alike.
    for dir in [&worktree, &repo] {
        std::fs::write(dir.join("FAIL"), "").unwrap();
        ok(git(dir, &["add", "FAIL"]), "git add");
        let refused = git(dir, &["commit", "-q", "-m", "bad"]);
        assert!(!refused.status.success(), "a failing check did not block the commit in {}", dir.display());
        assert!(shown(&refused).contains("pre-commit: checks failed"), "{}", shown(&refused));
        ok(git(dir, &["rm", "-q", "--cached", "FAIL"]), "git rm");
        std::fs::remove_file(dir.join("FAIL")).unwrap();
        std::fs::write(dir.join("good"), dir.display().to_string()).unwrap();
        ok(git(dir, &["add", "good"]), "git add");
        let passed = git(dir, &["commit", "-q", "-m", "good"]);
        assert!(passed.status.success(), "passing checks blocked the commit: {}", shown(&passed));
        assert!(shown(&passed).contains("Pre-commit checks passed!"), "{}", shown(&passed));
    }

    // A hook it did not install is left alone; its own is removed on request.
    ok(install(&repo, &["--uninstall"]), "--uninstall");
    assert!(!hook.exists());
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    let refused = install(&repo, &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", shown(&refused));
    assert!(shown(&refused).contains("was not installed by this script"), "{}", shown(&refused));
    assert_eq!(std::fs::read_to_string(&hook).unwrap(), "#!/bin/sh\nexit 0\n");
    std::fs::remove_dir_all(&scratch).unwrap();
}
