//! The NAT lab of `scripts/natlab/` for integration tests: a lab under its own namespace prefix,
//! removed when dropped, and what each peer's NAT allows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{run, Finished};

/// `natlab.py`.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab/natlab.py");
/// `traverse.py`: the traversal matrix of the node binary.
pub const TRAVERSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/natlab/traverse.py");

/// The peers of the lab, in its order.
pub const PEERS: [&str; 10] = ["pub", "fc1", "fc2", "ar1", "ar2", "pr1", "pr2", "sy1", "sy2", "pr1b"];

/// Why the lab cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
    if uid != Some("0") {
        return Some("not running as root (network namespaces and nftables need it)".into());
    }
    for tool in ["ip", "nft", "python3"] {
        if find_in_path(tool).is_none() {
            return Some(format!("`{tool}` not found (scripts/test.sh installs it)"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing (the impairment needs TUN)".into());
    }
    None
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(tool)).find(|p| p.is_file())
}

/// A lab under its own prefix; removed when dropped.
pub struct Lab {
    pub prefix: String,
    pub logs: PathBuf,
}

/// How bringing a lab up went.
pub enum Up {
    Ready(Lab),
    /// The kernel refused network namespaces here (an unprivileged container): the reason.
    NotPermitted(String),
}

impl Lab {
    /// Build a lab named after `tag` and this process, with `up_args` (e.g. the impairment).
    pub fn up(tag: &str, logs: &Path, up_args: &[&str]) -> Result<Up> {
        let lab = Lab { prefix: format!("{tag}{}", std::process::id() % 100_000), logs: logs.to_owned() };
        let mut args = vec!["up"];
        args.extend_from_slice(up_args);
        let up = lab.run("up", &args, Duration::from_secs(90))?;
        if !up.status.success() && up.stderr.contains("Operation not permitted") {
            let reason = up.stderr.trim().to_owned();
            std::mem::forget(lab);
            return Ok(Up::NotPermitted(reason));
        }
        anyhow::ensure!(up.status.success(), "natlab up failed:\n{}{}", up.stdout, up.stderr);
        eprintln!("{}", up.stdout.trim_end());
        Ok(Up::Ready(lab))
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
