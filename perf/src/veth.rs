//! Two network namespaces joined by a veth pair, made for one benchmark session and removed when
//! it ends (also when it fails): the node's end `v0` in one, the peer's end `v1` in the other.
//! Needs root and iproute2's `ip` (and `ethtool` for the peer's checksum offload).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// The node's address on `v0` and the peer's on `v1`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 205, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 205, 0, 2);
/// Fixed MAC addresses, so that an XDP program can be given them.
pub const NODE_MAC: [u8; 6] = [0x02, 0xab, 0, 0, 0, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0xab, 0, 0, 0, 2];
/// The interfaces' names inside their namespaces.
pub const NODE_IF: &str = "v0";
pub const PEER_IF: &str = "v1";

/// What every namespace of these benchmarks is named with first, then the creating process's id.
const PREFIX: &str = "aqb-";

/// Deletes the namespaces a benchmark left behind when it was killed before it could remove
/// them: ours by name, made by a process that no longer exists.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", name]).stderr(Stdio::null()).status();
        }
    }
}

/// The namespaces and the veth pair; dropping it deletes both namespaces (and so the pair).
#[derive(Debug)]
pub struct VethPair {
    /// Namespace of the node's end.
    pub node: String,
    /// Namespace of the peer's end.
    pub peer: String,
}

/// Runs `program args`, one error line with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl VethPair {
    /// Creates `aqb-PID-TAG` and `aqb-PID-TAG-p` (first deleting those of killed runs), the
    /// pair, addresses, MACs, both ends up, and transmit checksum offload off on the peer's end:
    /// with it on, the veth hands frames over with the UDP checksum left undone, which an AF_XDP
    /// socket or an XDP program reads as wrong (docs/af-xdp.md). Done for every kind of run, so
    /// that all see the same frames.
    pub fn create(tag: &str) -> Result<Self> {
        remove_orphans();
        let node = format!("{PREFIX}{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &node]).context("creating a network namespace (needs root)")?;
        let mut pair = Self { node, peer: String::new() };
        let peer = format!("{}-p", pair.node);
        run("ip", &["netns", "add", &peer])?;
        pair.peer = peer;
        let (a, b) = (pair.node.clone(), pair.peer.clone());
        let (node_mac, peer_mac) = (mac(NODE_MAC), mac(PEER_MAC));
        run("ip", &["-n", &a, "link", "add", NODE_IF, "address", &node_mac, "type", "veth", "peer", "name", PEER_IF])?;
        run("ip", &["-n", &a, "link", "set", PEER_IF, "netns", &b])?;
        run("ip", &["-n", &b, "link", "set", PEER_IF, "address", &peer_mac])?;
        run("ip", &["-n", &a, "addr", "add", &format!("{NODE_IP}/24"), "dev", NODE_IF])?;
        run("ip", &["-n", &b, "addr", "add", &format!("{PEER_IP}/24"), "dev", PEER_IF])?;
        run("ip", &["-n", &a, "link", "set", NODE_IF, "up"])?;
        run("ip", &["-n", &b, "link", "set", PEER_IF, "up"])?;
        run("ip", &["-n", &a, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &b, "link", "set", "lo", "up"])?;
        // Each side knows the other's MAC: no ARP in the measured runs.
        run("ip", &["-n", &a, "neigh", "replace", &PEER_IP.to_string(), "lladdr", &peer_mac, "dev", NODE_IF])?;
        run("ip", &["-n", &b, "neigh", "replace", &NODE_IP.to_string(), "lladdr", &node_mac, "dev", PEER_IF])?;
        pair.in_peer("ethtool", &["-K", PEER_IF, "tx", "off"])?;
        Ok(pair)
    }

    /// Runs `program args` inside the peer's namespace.
    pub fn in_peer(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", self.peer.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The file that names a namespace, for `sys::netns::enter`.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{name}"))
    }

    /// `ip netns exec NAME` and then `program`: a command that runs inside a namespace.
    pub fn command(name: &str, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", name]).arg(program);
        command
    }
}

/// Moves the calling thread into namespace `name` (threads it starts then live there too).
pub fn enter(name: &str) -> Result<()> {
    ant_quic_dataplane::sys::netns::enter(&VethPair::path(name))
        .map_err(|e| anyhow!("cannot enter network namespace {name}: {e}"))
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for name in [&self.node, &self.peer] {
            if !name.is_empty() {
                let _ = Command::new("ip").args(["netns", "delete", name.as_str()]).stderr(Stdio::null()).status();
            }
        }
    }
}

/// Runs `f` on a thread of its own inside namespace `name` (sockets it opens, and threads it
/// starts, belong there), and returns what it returned.
pub fn in_namespace<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let name = name.to_owned();
    std::thread::Builder::new()
        .name("in-netns".into())
        .spawn(move || {
            enter(&name)?;
            f()
        })?
        .join()
        .map_err(|_| anyhow!("a thread in namespace panicked"))?
}
