//! Logging: JSON lines carry the documented fields, the level comes from config < `--log-level`
//! and `RUST_LOG` overrides it, the level changes at run time, and old rotated files are pruned.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use ant_quic::config::{LogFormat, LogOutput, LogRotation, LoggingSection};
use ant_quic::logging;
use common::{NodeProcess, TempDir, NODE_BIN};

const DAY: Duration = Duration::from_secs(86_400);

/// Run a node with `config` until it announces its address, stop it, and return the lines of
/// the log files in `logs` (the node flushes them on exit).
fn node_log(dir: &TempDir, config: &str, args: &[&str], rust_log: Option<&str>) -> (Vec<String>, Vec<String>) {
    let file = dir.path().join("node.toml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(NODE_BIN);
    command
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--backend", "portable", "--data-dir"])
        .arg(dir.subdir("data").unwrap())
        .args(args);
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let logs = dir.path().join("logs");
    let mut names: Vec<String> =
        std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut lines = Vec::new();
    for name in &names {
        lines.extend(std::fs::read_to_string(logs.join(name)).unwrap().lines().map(str::to_owned));
    }
    let _ = std::fs::remove_dir_all(&logs);
    (names, lines)
}

fn file_config(dir: &TempDir, format: &str, level: &str, rotation: &str) -> String {
    format!(
        "[logging]\nformat = \"{format}\"\nlevel = \"{level}\"\noutputs = [\"file\"]\nfile_path = \"{}/logs/node.log\"\n\
         rotation = \"{rotation}\"\n",
        dir.path().display()
    )
}

#[test]
fn json_lines_carry_the_documented_fields() {
    let mut dir = TempDir::new("logging-json").unwrap().keep_unless_passed();
    let (names, lines) = node_log(&dir, &file_config(&dir, "json", "info", "daily"), &[], None);
    // Daily rotation names the file STEM.YYYY-MM-DD.EXT.
    assert_eq!(names.len(), 1, "{names:?}");
    let date = names[0].strip_prefix("node.").and_then(|n| n.strip_suffix(".log")).unwrap();
    assert!(date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2, "{names:?}");

    assert!(!lines.is_empty());
    let mut saw_loaded = false;
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["timestamp", "level", "target", "message", "threadName"] {
            assert!(value.get(field).is_some_and(|v| v.is_string()), "no {field} in {line}");
        }
        let timestamp = value["timestamp"].as_str().unwrap();
        assert!(timestamp.ends_with('Z') && timestamp.contains('T'), "not RFC 3339 UTC: {timestamp}");
        assert!(["ERROR", "WARN", "INFO"].contains(&value["level"].as_str().unwrap()), "{line}");
        if value["message"] == "configuration loaded" {
            saw_loaded = true;
            assert!(value["config"].as_str().unwrap().ends_with("node.toml"), "event fields are top-level: {line}");
        }
    }
    assert!(saw_loaded, "no 'configuration loaded' line in {lines:?}");
    dir.passed();
}

#[test]
fn level_from_config_flag_and_rust_log() {
    let mut dir = TempDir::new("logging-level").unwrap().keep_unless_passed();
    let config = file_config(&dir, "text", "error", "never");
    let has = |lines: &[String], level: &str| lines.iter().any(|l| l.contains(level));

    let (names, lines) = node_log(&dir, &config, &[], None);
    assert_eq!(names, vec!["node.log".to_owned()], "rotation = never writes file_path itself");
    assert!(!has(&lines, " INFO "), "info lines at level error: {lines:?}");

    let (_, lines) = node_log(&dir, &config, &["--log-level", "debug"], None);
    assert!(has(&lines, " INFO ") && has(&lines, " DEBUG "), "--log-level debug: {lines:?}");

    let (_, lines) = node_log(&dir, &config, &["--log-level", "debug"], Some("info"));
    assert!(has(&lines, " INFO ") && !has(&lines, " DEBUG "), "RUST_LOG=info did not override: {lines:?}");
    dir.passed();
}

fn touch(path: &Path, modified: SystemTime) {
    let file = File::create(path).unwrap();
    std::io::Write::write_all(&mut &file, b"a line\n").unwrap();
    file.set_modified(modified).unwrap();
}

#[test]
fn retention_prunes_rotated_files_older_than_the_limit() {
    let dir = TempDir::new("logging-retention").unwrap();
    let d = dir.path();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    touch(&d.join("node.2026-09-01.log"), now - 30 * DAY);
    touch(&d.join("node.2026-09-20-13.log"), now - 8 * DAY);
    touch(&d.join("node.2026-09-25.log"), now - 3 * DAY);
    touch(&d.join("node.2026-09-27.log"), now - DAY / 2);
    // Not rotated files of this log: the unrotated file, another log, another program's file.
    touch(&d.join("node.log"), now - 30 * DAY);
    touch(&d.join("other.2026-09-01.log"), now - 30 * DAY);
    touch(&d.join("node.2026-09-01.txt"), now - 30 * DAY);

    assert_eq!(logging::prune_old_logs(d, "node", Some("log"), 0, now).unwrap(), Vec::<std::path::PathBuf>::new());
    let removed = logging::prune_old_logs(d, "node", Some("log"), 7, now).unwrap();
    assert_eq!(removed, vec![d.join("node.2026-09-01.log"), d.join("node.2026-09-20-13.log")]);
    let removed = logging::prune_old_logs(d, "node", Some("log"), 2, now).unwrap();
    assert_eq!(removed, vec![d.join("node.2026-09-25.log")]);
    for kept in ["node.2026-09-27.log", "node.log", "other.2026-09-01.log", "node.2026-09-01.txt"] {
        assert!(d.join(kept).exists(), "{kept} was removed");
    }
    // The same clock a day later takes the last one.
    let removed = logging::prune_old_logs(d, "node", Some("log"), 2, now + 2 * DAY).unwrap();
    assert_eq!(removed, vec![d.join("node.2026-09-27.log")]);
}

/// In-process: the only test here that installs a global subscriber.
#[test]
fn set_level_changes_what_is_written() {
    let dir = TempDir::new("logging-reload").unwrap();
    let path = dir.path().join("live.log");
    let config = LoggingSection {
        level: "warn".into(),
        format: LogFormat::Json,
        outputs: vec![LogOutput::File],
        file_path: Some(path.clone()),
        rotation: LogRotation::Never,
        retention_days: 0,
    };
    // RUST_LOG would override the configured level this test relies on.
    if !common::require(std::env::var_os("RUST_LOG").is_none(), "RUST_LOG unset (it overrides the configured level)")
        .unwrap()
    {
        return;
    }
    let handle = logging::init(&config).unwrap();
    tracing::info!("before reload");
    tracing::warn!("a warning");
    handle.set_level("info").unwrap();
    tracing::info!("after reload");
    assert!(handle.set_level("=[").is_err(), "a broken filter was accepted");
    assert_eq!(handle.dropped_lines(), 0);
    assert_eq!(logging::dropped_lines(), 0);
    drop(handle); // flushes
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("before reload"), "{text}");
    assert!(text.contains("a warning") && text.contains("after reload"), "{text}");
}

#[test]
fn the_log_file_rotates_when_its_period_ends() {
    let mut dir = TempDir::new("logging-rotation").unwrap().keep_unless_passed();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, file_config(&dir, "text", "info", "minutely")).unwrap();
    let mut command = Command::new(NODE_BIN);
    command
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--backend", "portable", "--data-dir"])
        .arg(dir.subdir("data").unwrap())
        .env_remove("RUST_LOG");
    let mut node = NodeProcess::start(&mut command, dir.path()).unwrap();
    // Wait into the next minute (UTC), then make the node log again: a SIGHUP reload logs a line.
    let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_secs(61 - since_epoch.as_secs() % 60));
    // The pid is our own running child.
    let _ = ant_quic::dataplane::sys::process::send_signal(node.pid() as u32, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();

    let logs = dir.path().join("logs");
    let mut names: Vec<String> =
        std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert!(names.len() >= 2, "no new file after the minute ended: {names:?}");
    for name in &names {
        // STEM.YYYY-MM-DD-HH-MM.EXT
        let stamp = name.strip_prefix("node.").and_then(|n| n.strip_suffix(".log")).unwrap_or_default();
        assert_eq!(stamp.len(), 16, "unexpected file name {name}");
    }
    let first = std::fs::read_to_string(logs.join(&names[0])).unwrap();
    let last = std::fs::read_to_string(logs.join(names.last().unwrap())).unwrap();
    // Start-up lines went to an earlier file (start-up may straddle a minute: any earlier one).
    assert!(!first.is_empty() && !first.contains("configuration reloaded"), "{first}");
    assert!(last.contains("configuration reloaded"), "the line after the rotation is not in the new file: {last}");
    dir.passed();
}
