//! What a test needs from the machine (root, a tool, a kernel feature), and what happens when it
//! is missing: under `CI=true` the test fails, naming the prerequisite and how to get it (CI
//! installs everything, so something missing there is a real failure); elsewhere the test says
//! `SKIPPED` on stderr and adds its name to [`SKIPPED_LIST`], which `scripts/test.sh` prints at
//! the end of the run (`cargo test` hides what a passing test prints).
//!
//! The integration tests of every crate include this file (`#[path]`), so it uses only `std`.
#![allow(dead_code)] // each test binary uses a part of it

use std::io::Write;
use std::path::{Path, PathBuf};

/// Tests skipped for a missing prerequisite, one line each (`binary::test: needs WHAT`).
pub const SKIPPED_LIST: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// A prerequisite missing under `CI=true`: the test fails with this.
pub struct MissingPrerequisite(String);

impl std::fmt::Display for MissingPrerequisite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// `unwrap()` and a test's `Err` print this: the same one line.
impl std::fmt::Debug for MissingPrerequisite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MissingPrerequisite {}

/// Whether the test can go on: `Ok(true)` when `present`. When it is not, `needs` names the
/// prerequisite and how to get it; under `CI=true` that is an error, elsewhere the test is
/// recorded as skipped and this returns `Ok(false)` (the caller returns at once).
pub fn require(present: bool, needs: &str) -> Result<bool, MissingPrerequisite> {
    if present {
        return Ok(true);
    }
    // libtest names each test's thread after the test.
    let test = format!("{}::{}", env!("CARGO_CRATE_NAME"), std::thread::current().name().unwrap_or("?"));
    if under_ci() {
        return Err(MissingPrerequisite(format!("{test}: needs {needs}, which is missing (CI=true)")));
    }
    eprintln!("SKIPPED: {test}: needs {needs}");
    let recorded = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_LIST)
        .and_then(|mut list| list.write_all(format!("{test}: needs {needs}\n").as_bytes()));
    if let Err(error) = recorded {
        eprintln!("SKIPPED: {test}: could not be recorded in {SKIPPED_LIST}: {error}");
    }
    Ok(false)
}

/// [`require`] for a probe that says why it failed: `what` names the prerequisite.
pub fn require_ok<E: std::fmt::Display>(probe: Result<(), E>, what: &str) -> Result<bool, MissingPrerequisite> {
    match probe {
        Ok(()) => Ok(true),
        Err(error) => require(false, &format!("{what} ({error})")),
    }
}

/// Whether the tests run under CI (`CI=true`, as CI services set it, or `CI=1`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this process runs with effective user ID 0.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
    uid == Some("0")
}

/// Where `program` is installed: on `PATH`, or in /usr/sbin or /sbin (not always on a user's
/// `PATH`).
pub fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [Path::new("/usr/sbin"), Path::new("/sbin")].map(Path::to_path_buf);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(program)).find(|p| p.is_file())
}
