//! The NAT lab of `scripts/natlab/` for integration tests: a lab under its own namespace prefix,
//! removed when dropped, and what each peer's NAT allows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::prerequisite::{installed, is_root, require, MissingPrerequisite};
use super::{run, Finished};

/// `natlab.py`.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab/natlab.py");
/// `traverse.py`: the traversal matrix of the node binary.
pub const TRAVERSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab/traverse.py");

/// The peers of the lab, in its order.
pub const PEERS: [&str; 10] = ["pub", "fc1", "fc2", "ar1", "ar2", "pr1", "pr2", "sy1", "sy2", "pr1b"];

/// Whether the lab can run here: root, `ip`, `nft`, `python3`, /dev/net/tun, and the right to
/// create network namespaces. See [`require`] for what happens when one is missing.
pub fn can_run() -> Result<bool, MissingPrerequisite> {
    if !require(is_root(), "root (network namespaces and nftables need it): run the tests as root")? {
        return Ok(false);
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables"), ("python3", "python3")] {
        let missing = format!("`{tool}` (Debian package {package}; scripts/test.sh installs it)");
        if !require(installed(tool).is_some(), &missing)? {
            return Ok(false);
        }
    }
    if !require(Path::new("/dev/net/tun").exists(), "/dev/net/tun (the impairment needs TUN: modprobe tun)")? {
        return Ok(false);
    }
    let refused = netns_refused();
    let missing = format!("the right to create network namespaces (`ip netns add` failed: {refused})");
    require(refused.is_empty(), &missing)
}

/// Why a network namespace cannot be created here (an unprivileged container), or "" if it can.
fn netns_refused() -> String {
    // Unique per call: the tests of one binary probe in parallel threads of one process.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("aq-probe-{}-{probe}", std::process::id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            String::new()
        }
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(error) => error.to_string(),
    }
}

/// A lab under its own prefix; removed when dropped (also when `up` failed half-way).
pub struct Lab {
    pub prefix: String,
    pub logs: PathBuf,
    /// One lab at a time per test binary: its tests run in parallel threads, and a lab's timings
    /// (the NAT matrix's punches) should not share the machine with another lab's.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    /// Build a lab named after `tag` and this process, with `up_args` (e.g. the impairment). A
    /// failure is an error (call [`can_run`] first), and whatever `up` built is removed then too.
    pub fn up(tag: &str, logs: &Path, up_args: &[&str]) -> Result<Lab> {
        // A test that failed while holding the lab still removed it (Drop), so a poisoned lock is fine.
        let one_at_a_time = ONE_LAB.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lab = Lab {
            prefix: format!("{tag}{}", std::process::id() % 100_000),
            logs: logs.to_owned(),
            _one_at_a_time: one_at_a_time,
        };
        let mut args = vec!["up"];
        args.extend_from_slice(up_args);
        let up = lab.run("up", &args, Duration::from_secs(90))?;
        anyhow::ensure!(up.status.success(), "natlab up failed:\n{}{}", up.stdout, up.stderr);
        eprintln!("{}", up.stdout.trim_end());
        Ok(lab)
    }

    pub fn command(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(args).args(["--prefix", &self.prefix]);
        cmd
    }

    pub fn run(&self, name: &str, args: &[&str], limit: Duration) -> Result<Finished> {
        run(name, &mut self.command(SCRIPT, args), &self.logs, limit)
    }

    /// Run a check that prints JSON; the report, whatever the exit status (the caller asserts).
    pub fn json(&self, check: &str, limit: Duration) -> Result<serde_json::Value> {
        let out = self.run(check, &[check, "--json"], limit)?;
        parse_report(check, &out)
    }

    /// `ip netns exec` into `node`'s namespace.
    pub fn exec(&self, node: &str, program: &str) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(SCRIPT).args(["--prefix", &self.prefix, "exec", node, "--", program]);
        cmd
    }
}

/// `out`'s stdout as one JSON document, or else its last line that is one (after progress lines).
pub fn parse_report(name: &str, out: &Finished) -> Result<serde_json::Value> {
    if let Ok(report) = serde_json::from_str(&out.stdout) {
        return Ok(report);
    }
    let line = out.stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("{name}: no JSON report (exit {})\nstderr:\n{}", out.status, out.stderr))
}

impl Drop for Lab {
    fn drop(&mut self) {
        match self.run("down", &["down"], Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("natlab down failed: {}", out.stderr.trim()),
            Err(err) => eprintln!("natlab down failed: {err:#}"),
        }
    }
}

/// NAT type of each peer, as the lab builds it (scripts/natlab/README.md).
pub fn nat_of(peer: &str) -> &'static str {
    match peer {
        "pub" => "none",
        "fc1" | "fc2" => "full-cone",
        "ar1" | "ar2" => "address-restricted",
        "pr1" | "pr2" | "pr1b" => "port-restricted",
        "sy1" | "sy2" => "symmetric",
        _ => "unknown",
    }
}

/// Whether raw UDP simultaneous open connects `a` and `b` (shared/natlab.md); the two peers
/// behind pr1 reach each other on their LAN.
pub fn expected_direct(a: &str, b: &str) -> bool {
    let (ka, kb) = (nat_of(a), nat_of(b));
    let open = |k| matches!(k, "none" | "full-cone" | "address-restricted");
    open(ka) || open(kb) || (ka == "port-restricted" && kb == "port-restricted")
}

/// Reading a JSON report with errors that name what is missing.
pub trait Report {
    fn at(&self, key: &str) -> Result<&serde_json::Value>;
    fn text(&self) -> Result<&str>;
    fn list(&self) -> Result<&Vec<serde_json::Value>>;
    fn flag(&self) -> Result<bool>;
    fn num(&self) -> Result<f64>;
}

impl Report for serde_json::Value {
    fn at(&self, key: &str) -> Result<&serde_json::Value> {
        self.get(key).with_context(|| format!("no `{key}` in {self}"))
    }
    fn text(&self) -> Result<&str> {
        self.as_str().with_context(|| format!("{self} is not a string"))
    }
    fn list(&self) -> Result<&Vec<serde_json::Value>> {
        self.as_array().with_context(|| format!("{self} is not a list"))
    }
    fn flag(&self) -> Result<bool> {
        self.as_bool().with_context(|| format!("{self} is not a boolean"))
    }
    fn num(&self) -> Result<f64> {
        self.as_f64().with_context(|| format!("{self} is not a number"))
    }
}
