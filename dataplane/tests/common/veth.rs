//! Two network namespaces of a test's own joined by a veth pair, and running code inside them:
//! shared by the data-plane tests (`mod common`) and, through `#[path]`, by the node binary's
//! tests (which may not use unsafe code: entering a namespace from a thread is in `in_netns.rs`).
//! Needs root and `ip` (iproute2); callers check with `prerequisite::require` first.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

/// The node's end (namespace `node`, interface `v0`) and the peer's (namespace `peer`, `v1`).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
/// The IPv6 addresses of [`Netns::add_ipv6`].
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x207, 0, 0, 0, 0, 0, 1);
pub const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x207, 0, 0, 0, 0, 0, 2);
pub const NODE_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];

/// Run `program` with `args` (output dropped) and require success.
pub fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// A MAC address as `ip` writes it.
pub fn mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Two network namespaces joined by a veth pair (`v0` in `node`, `v1` in `peer`), deleted when
/// the guard drops, whatever happened.
pub struct Netns {
    pub node: String,
    pub peer: String,
}

impl Netns {
    pub fn create(tag: &str) -> Self {
        Self::create_with_queues(tag, 1)
    }

    /// As [`Netns::create`], each end with `queues` RX and TX queues.
    pub fn create_with_queues(tag: &str, queues: u32) -> Self {
        let node = format!("aq-{}-{tag}", std::process::id());
        let peer = format!("{node}-p");
        run("ip", &["netns", "add", &node]);
        let mut ns = Self { node, peer: String::new() };
        run("ip", &["netns", "add", &peer]);
        ns.peer = peer;
        let (a, b) = (ns.node.as_str(), ns.peer.as_str());
        let (node_mac, peer_mac) = (mac(NODE_MAC), mac(PEER_MAC));
        let queues = queues.to_string();
        let q = ["numrxqueues", queues.as_str(), "numtxqueues", queues.as_str()];
        let mut add = vec!["-n", a, "link", "add", "v0", "address", &node_mac];
        add.extend(q);
        add.extend(["type", "veth", "peer", "name", "v1"]);
        add.extend(q);
        run("ip", &add);
        run("ip", &["-n", a, "link", "set", "v1", "netns", b]);
        run("ip", &["-n", b, "link", "set", "v1", "address", &peer_mac]);
        run("ip", &["-n", a, "addr", "add", &format!("{NODE_IP}/24"), "dev", "v0"]);
        run("ip", &["-n", b, "addr", "add", &format!("{PEER_IP}/24"), "dev", "v1"]);
        run("ip", &["-n", a, "link", "set", "v0", "up"]);
        run("ip", &["-n", b, "link", "set", "v1", "up"]);
        ns
    }

    /// Namespaces for a node on af-xdp on `v0`: `lo` up on both sides, and the peer's transmit
    /// checksum offload off. A veth hands frames over with the UDP checksum left to the receiver
    /// (CHECKSUM_PARTIAL), which reads as a bad checksum in an RX ring; with offload off the
    /// peer's kernel puts the whole checksum on the wire, as a NIC does.
    pub fn for_af_xdp(tag: &str) -> Self {
        Self::for_af_xdp_with_queues(tag, 1)
    }

    /// As [`Netns::for_af_xdp`], each end with `queues` RX and TX queues.
    pub fn for_af_xdp_with_queues(tag: &str, queues: u32) -> Self {
        let ns = Self::create_with_queues(tag, queues);
        run("ip", &["-n", &ns.node, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns.peer, "link", "set", "lo", "up"]);
        run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
        ns
    }

    /// [`NODE_IP6`] on `v0` and [`PEER_IP6`] on `v1` (/64, no duplicate address detection: usable
    /// at once).
    pub fn add_ipv6(&self) {
        for (netns, dev, ip) in [(&self.node, "v0", NODE_IP6), (&self.peer, "v1", PEER_IP6)] {
            run("ip", &["-n", netns, "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]);
        }
    }

    /// Whether an XDP program is attached to `v0`.
    pub fn xdp_attached(&self) -> bool {
        self.xdp_on("v0").is_some()
    }

    /// The XDP mode `ip link` shows on `interface` (`xdp`, `xdpgeneric`, ...), if a program is
    /// attached.
    pub fn xdp_on(&self, interface: &str) -> Option<String> {
        let out = Command::new("ip").args(["-n", &self.node, "link", "show", interface]).output().unwrap();
        assert!(out.status.success(), "ip link show {interface} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mode = text.split_whitespace().find(|w| matches!(*w, "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload"));
        mode.map(str::to_owned)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.node, &self.peer] {
            if !name.is_empty() {
                let _ = Command::new("ip").args(["netns", "delete", name.as_str()]).status();
            }
        }
    }
}
