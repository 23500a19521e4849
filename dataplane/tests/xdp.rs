//! The AF_XDP path: the XDP redirect program, attached to one end of a veth pair between two
//! network namespaces of our own, with an AF_XDP socket on its RX queue 0.
//!
//! - the program alone, run by the kernel over hand-made frames (BPF_PROG_TEST_RUN): only the
//!   node's UDP datagrams are taken;
//! - a datagram to the node's port arrives in the socket's RX ring; a datagram to another port
//!   reaches an ordinary UDP socket and ping works, while the program is attached;
//! - a frame written to the TX ring reaches an ordinary UDP socket in the other namespace;
//! - a process killed with SIGKILL leaves no XDP program on the interface (the BPF link was its).
//!
//! Needs root, `ip` (iproute2), and a kernel with BPF and AF_XDP: without
//! them the tests fail under `CI=true` and are skipped elsewhere (tests/common/prerequisite.rs).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ant_quic_dataplane::sys::bpf::{Map, Program, XdpMode};
use ant_quic_dataplane::sys::poll;
use ant_quic_dataplane::sys::process::current_uid;
use ant_quic_dataplane::sys::xdp::{interface_index, CopyMode, XskConfig, XskSocket};
use ant_quic_dataplane::xdp::program::{redirect_program, COUNTERS, XDP_PASS};
use ant_quic_dataplane::xdp::relay::ENTRY_SIZE;
use ant_quic_dataplane::xdp::{Counter, Filter, Redirect};
use common::in_netns::{enter, in_netns, ping};
use common::veth::{run, Netns, NODE_IP, NODE_MAC, PEER_IP, PEER_MAC};

const NODE_PORT: u16 = 4433;
const DEADLINE: Duration = Duration::from_secs(20);
/// Set in a child process: the namespace it attaches the program in before it is killed.
const CHILD_ENV: &str = "AQ_XDP_TEST_CHILD_NETNS";

/// Root and a kernel that lets us create an XSKMAP.
fn bpf_here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test loads XDP programs and creates network namespaces)")
        .unwrap()
        && prerequisite::require_ok(Map::xsk(1, "probe").map(drop), "BPF maps of type XSKMAP (Linux 4.18+, CAP_BPF)")
            .unwrap()
}

/// [`bpf_here`], and `ip` for the namespaces.
fn xdp_here() -> bool {
    bpf_here()
        && prerequisite::require(
            prerequisite::installed("ip").is_some(),
            "`ip` (Debian package iproute2; scripts/test.sh installs it)",
        )
        .unwrap()
}

/// The one's-complement sum of the IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame (UDP checksum 0: none), with the given IPv4 header tweaks.
fn ipv4_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8], tweak: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else { panic!("IPv4 addresses") };
    let mut frame = Vec::new();
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]); // id 1, DF, TTL 64, UDP
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    tweak(&mut ip);
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&src.port().to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// An Ethernet/IPv6/UDP frame (the checksum is not looked at by the program).
fn ipv6_frame(dst: Ipv6Addr, port: u16, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn node_addr(port: u16) -> SocketAddr {
    SocketAddr::from((NODE_IP, port))
}

fn peer_addr(port: u16) -> SocketAddr {
    SocketAddr::from((PEER_IP, port))
}

/// The program, run by the kernel over each frame with no socket in its map: the node's
/// datagrams are counted as "no socket" (and passed), everything else as passed.
#[test]
fn program_takes_only_the_nodes_udp_datagrams() {
    if !bpf_here() {
        return;
    }
    let node6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let check_one = |filter: Filter, cases: &[(&str, Vec<u8>, bool)], with_relay: bool| {
        let xsks = Map::xsk(1, "t_xsks").unwrap();
        let counters = Map::counters(COUNTERS, "t_counters").unwrap();
        let channels = Map::hash(4, ENTRY_SIZE as u32, 1, "t_channels").unwrap();
        let relay = with_relay.then(|| channels.as_raw_fd());
        let code = redirect_program(&filter, xsks.as_raw_fd(), counters.as_raw_fd(), relay).unwrap();
        let program = Program::load_xdp(&code, "t_redirect").unwrap_or_else(|e| panic!("{e}"));
        for (what, frame, ours) in cases {
            let (what, ours) = (format!("{what} (relay map: {with_relay})"), *ours);
            let before = (
                counters.counter(Counter::NoSocket as u32).unwrap(),
                counters.counter(Counter::Passed as u32).unwrap(),
            );
            assert_eq!(program.test_run(frame).unwrap(), XDP_PASS, "{what}: no socket, so passed");
            let after = (
                counters.counter(Counter::NoSocket as u32).unwrap(),
                counters.counter(Counter::Passed as u32).unwrap(),
            );
            let expected = if ours { (before.0 + 1, before.1) } else { (before.0, before.1 + 1) };
            assert_eq!(after, expected, "{what}: taken as ours = {ours}");
        }
    };
    // With and without a (here empty) relay channel map: no frame changes its fate.
    let check = |filter: Filter, cases: Vec<(&str, Vec<u8>, bool)>| {
        for with_relay in [false, true] {
            check_one(filter, &cases, with_relay);
        }
    };
    let (src, dst) = (peer_addr(40000), node_addr(NODE_PORT));
    let payload = b"payload";
    let v4 = |tweak: fn(&mut [u8])| ipv4_frame(src, dst, payload, tweak);
    let mut arp = v4(|_| {});
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut vlan = v4(|_| {});
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    let full = v4(|_| {});
    check(
        Filter::for_bound(dst),
        vec![
            ("the node's datagram", v4(|_| {}), true),
            ("DF set is still ours", v4(|ip| ip[6] = 0x40), true),
            ("another port", ipv4_frame(src, node_addr(NODE_PORT + 1), payload, |_| {}), false),
            ("another address", ipv4_frame(src, peer_addr(NODE_PORT), payload, |_| {}), false),
            ("first fragment (MF)", v4(|ip| ip[6] = 0x20), false),
            ("later fragment (offset)", v4(|ip| ip[7] = 0x10), false),
            ("IPv4 options (IHL 6)", v4(|ip| ip[0] = 0x46), false),
            ("TCP", v4(|ip| ip[9] = 6), false),
            ("ARP", arp, false),
            ("VLAN-tagged", vlan, false),
            ("cut inside the UDP header", full[..14 + 20 + 6].to_vec(), false),
            ("Ethernet header only", full[..14].to_vec(), false),
            ("IPv6 to the port", ipv6_frame(node6, NODE_PORT, 17, payload), false),
        ],
    );
    check(
        Filter::for_bound(SocketAddr::from((Ipv4Addr::UNSPECIFIED, NODE_PORT))),
        vec![
            ("any address: the node's", v4(|_| {}), true),
            ("any address: another", ipv4_frame(src, peer_addr(NODE_PORT), payload, |_| {}), true),
            ("any address: another port", ipv4_frame(src, peer_addr(9), payload, |_| {}), false),
        ],
    );
    check(
        Filter::for_bound(SocketAddr::from((node6, NODE_PORT))),
        vec![
            ("IPv6: the node's", ipv6_frame(node6, NODE_PORT, 17, payload), true),
            ("IPv6: another address", ipv6_frame(Ipv6Addr::LOCALHOST, NODE_PORT, 17, payload), false),
            ("IPv6: another port", ipv6_frame(node6, 53, 17, payload), false),
            ("IPv6: an extension header first", ipv6_frame(node6, NODE_PORT, 0, payload), false),
            ("IPv4 to an IPv6-only node", v4(|_| {}), false),
        ],
    );
    check(
        Filter::for_bound(SocketAddr::from((Ipv6Addr::UNSPECIFIED, NODE_PORT))),
        vec![
            ("dual-stack: IPv6", ipv6_frame(Ipv6Addr::LOCALHOST, NODE_PORT, 17, payload), true),
            ("dual-stack: IPv4", v4(|_| {}), true),
        ],
    );
}

/// The program attached to `v0` and an AF_XDP socket on its queue 0, in the calling thread's
/// namespace.
fn attach_with_socket() -> (Redirect, XskSocket) {
    attach_with_socket_for(node_addr(NODE_PORT))
}

/// [`attach_with_socket`] for a node bound to `bound`.
fn attach_with_socket_for(bound: SocketAddr) -> (Redirect, XskSocket) {
    let redirect = Redirect::attach("v0", &Filter::for_bound(bound)).unwrap_or_else(|e| panic!("{e}"));
    let config = XskConfig { frame_size: 4096, frames: 256, ring_size: 128 };
    let socket = XskSocket::open(interface_index("v0").unwrap(), 0, config).unwrap_or_else(|e| panic!("{e}"));
    redirect.add_socket(0, &socket).unwrap();
    (redirect, socket)
}

/// Receive from the RX ring until a frame containing `payload` came, or the deadline.
fn receive_containing(socket: &mut XskSocket, payload: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let mut found = None;
        socket.receive(64, |frame| {
            if frame.windows(payload.len()).any(|w| w == payload) {
                found = Some(frame.to_vec());
            }
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn datagrams_to_the_node_arrive_in_the_rx_ring_and_the_rest_reaches_the_kernel() {
    if !xdp_here() {
        return;
    }
    let ns = Netns::create("xsk-rx");
    enter(&ns.node);
    let (redirect, mut socket) = attach_with_socket();
    assert_eq!(redirect.mode(), XdpMode::Native, "veth supports native XDP");
    assert_eq!(ns.xdp_on("v0").as_deref(), Some("xdp"));
    assert_eq!(socket.mode(), CopyMode::Copy, "veth has no zero-copy AF_XDP: bound in copy mode");
    let other = UdpSocket::bind(node_addr(NODE_PORT + 1)).unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();

    // (a) to the node's port: in the RX ring, not to the kernel.
    let sent = in_netns(&ns.peer, || {
        let sender = UdpSocket::bind(peer_addr(0)).unwrap();
        sender.send_to(b"to-the-node-over-xdp", node_addr(NODE_PORT)).unwrap();
        sender.local_addr().unwrap()
    });
    // poll(2) says the socket is readable once a frame is on its RX ring (what a core waits on).
    let mut fds = [poll::readable(socket.as_raw_fd())];
    assert_eq!(poll::poll(&mut fds, Some(DEADLINE)).unwrap(), 1, "the AF_XDP socket became readable");
    let frame = receive_containing(&mut socket, b"to-the-node-over-xdp").expect("the datagram in the RX ring");
    assert_eq!(&frame[0..6], &NODE_MAC, "a whole Ethernet frame, to the node's MAC");
    assert_eq!(&frame[14 + 12..14 + 16], &PEER_IP.octets(), "from the peer");
    assert_eq!(&frame[14 + 20..14 + 22], &sent.port().to_be_bytes(), "from the sender's port");
    assert!(redirect.count(Counter::Redirected).unwrap() >= 1);
    // 12 bursts of 25: more than the socket's 128 RX frames, so received frames must go back to
    // the fill ring to be received into again.
    for burst in 0..12 {
        in_netns(&ns.peer, move || {
            let sender = UdpSocket::bind(peer_addr(0)).unwrap();
            for i in 0..25 {
                sender.send_to(format!("rx-{burst}-{i}").as_bytes(), node_addr(NODE_PORT)).unwrap();
            }
        });
        let mut expected: std::collections::HashSet<Vec<u8>> =
            (0..25).map(|i| format!("rx-{burst}-{i}").into_bytes()).collect();
        let deadline = Instant::now() + DEADLINE;
        while !expected.is_empty() {
            assert!(Instant::now() < deadline, "burst {burst}: {} datagrams not in the RX ring", expected.len());
            socket.receive(64, |frame| {
                // The payload follows the 42 bytes of Ethernet, IPv4 and UDP headers.
                expected.remove(&frame[42.min(frame.len())..]);
            });
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // (b) another port: the ordinary socket gets it; ping answers, ARP resolved meanwhile.
    in_netns(&ns.peer, || {
        let sender = UdpSocket::bind(peer_addr(0)).unwrap();
        sender.send_to(b"to-the-kernel", node_addr(NODE_PORT + 1)).unwrap();
    });
    let statistics = socket.statistics().unwrap();
    assert_eq!((statistics.rx_invalid_descs, statistics.rx_dropped), (0, 0), "{statistics:?}");
    let mut buf = [0u8; 64];
    let (n, from) = other.recv_from(&mut buf).expect("the datagram to another port reaches the kernel's socket");
    assert_eq!((&buf[..n], from.ip()), (&b"to-the-kernel"[..], std::net::IpAddr::V4(PEER_IP)));
    assert!(in_netns(&ns.peer, || ping(NODE_IP)), "ping across the veth while the program is attached");
    assert!(redirect.count(Counter::Passed).unwrap() >= 2, "ARP, ICMP and the other port were passed");
    assert_eq!(redirect.count(Counter::NoSocket).unwrap(), 0);
}

#[test]
fn frames_written_to_the_tx_ring_reach_a_socket_in_the_other_namespace() {
    if !xdp_here() {
        return;
    }
    let ns = Netns::create("xsk-tx");
    enter(&ns.node);
    let (_redirect, mut socket) = attach_with_socket();
    let receiver = in_netns(&ns.peer, || {
        let receiver = UdpSocket::bind(peer_addr(5555)).unwrap();
        receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        receiver
    });
    // 10 bursts of 32 frames: more than the socket's 128 TX frames, so frames must come back
    // through the completion ring to be used again.
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 64];
    for burst in 0..10 {
        let mut expected = std::collections::HashSet::new();
        for i in 0..32 {
            let payload = format!("tx-{burst}-{i}");
            let mut frame = ipv4_frame(node_addr(NODE_PORT), peer_addr(5555), payload.as_bytes(), |_| {});
            // From the node to the peer: the helper's MACs are for the other way.
            frame[0..6].copy_from_slice(&PEER_MAC);
            frame[6..12].copy_from_slice(&NODE_MAC);
            while !socket
                .transmit(|umem| {
                    umem[..frame.len()].copy_from_slice(&frame);
                    frame.len()
                })
                .unwrap()
            {
                assert!(Instant::now() < deadline, "no TX frame came back free");
                std::thread::sleep(Duration::from_millis(1));
            }
            expected.insert(payload.into_bytes());
        }
        while !expected.is_empty() {
            assert!(
                Instant::now() < deadline,
                "burst {burst}: {} frames from the TX ring never arrived",
                expected.len()
            );
            if let Ok((n, from)) = receiver.recv_from(&mut buf) {
                assert_eq!(from, node_addr(NODE_PORT), "the source the frame names");
                expected.remove(&buf[..n]);
            }
        }
    }
    assert_eq!(socket.statistics().unwrap().tx_invalid_descs, 0);
}

#[test]
fn a_dual_stack_node_receives_ipv6_and_ipv4_datagrams_in_the_rx_ring() {
    if !xdp_here() {
        return;
    }
    let ns = Netns::create("xsk-v6");
    run("ip", &["-n", &ns.node, "addr", "add", "fd00:204::1/64", "dev", "v0", "nodad"]);
    run("ip", &["-n", &ns.peer, "addr", "add", "fd00:204::2/64", "dev", "v1", "nodad"]);
    enter(&ns.node);
    let (redirect, mut socket) = attach_with_socket_for(SocketAddr::from((Ipv6Addr::UNSPECIFIED, NODE_PORT)));
    let node6: SocketAddr = format!("[fd00:204::1]:{NODE_PORT}").parse().unwrap();
    // Neighbour discovery (ICMPv6) is passed to the kernel, so the peer finds the node's MAC.
    in_netns(&ns.peer, move || {
        let sender = UdpSocket::bind("[fd00:204::2]:0").unwrap();
        sender.send_to(b"over-ipv6", node6).unwrap();
        let sender = UdpSocket::bind(peer_addr(0)).unwrap();
        sender.send_to(b"over-ipv4", node_addr(NODE_PORT)).unwrap();
    });
    let (mut ipv6, mut ipv4) = (None, false);
    let deadline = Instant::now() + DEADLINE;
    while ipv6.is_none() || !ipv4 {
        assert!(Instant::now() < deadline, "in the RX ring: IPv6 {}, IPv4 {ipv4}", ipv6.is_some());
        socket.receive(64, |frame| {
            if frame.ends_with(b"over-ipv6") {
                ipv6 = Some(frame.to_vec());
            }
            ipv4 |= frame.ends_with(b"over-ipv4");
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ipv6.map(|frame| [frame[12], frame[13]]), Some([0x86, 0xdd]), "an IPv6 frame");
    assert!(redirect.count(Counter::Redirected).unwrap() >= 2);
}

/// Kills its child with SIGKILL and reaps it, whatever happens.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_process_killed_with_sigkill_leaves_no_xdp_program() {
    if let Ok(netns) = std::env::var(CHILD_ENV) {
        // The child: attach, say so, and wait to be killed.
        enter(&netns);
        let _attached = attach_with_socket();
        println!("ATTACHED");
        std::thread::sleep(DEADLINE * 3);
        return;
    }
    if !xdp_here() {
        return;
    }
    let ns = Netns::create("xsk-kill");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_process_killed_with_sigkill_leaves_no_xdp_program", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &ns.node)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ATTACHED") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(DEADLINE).expect("the child attached the program");
    assert!(ns.xdp_attached(), "the child's program is on v0");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while ns.xdp_attached() {
        let out = Command::new("ip").args(["-n", &ns.node, "-d", "link", "show", "v0"]).output().unwrap();
        assert!(
            Instant::now() < deadline,
            "the XDP program outlived the process that attached it: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_refused_program_comes_back_with_the_verifiers_log() {
    if !bpf_here() {
        return;
    }
    use ant_quic_dataplane::xdp::asm::{Asm, Size, R0, R1, R2};
    // Reads the first packet byte without checking it against data_end.
    let mut asm = Asm::default();
    asm.load(Size::W, R2, R1, 0);
    asm.load(Size::B, R0, R2, 0);
    asm.exit();
    let error = Program::load_xdp(&asm.finish().unwrap(), "t_unchecked").unwrap_err();
    assert_eq!(error.error.raw_os_error(), Some(libc::EACCES), "{error}");
    assert!(error.log.contains("invalid access to packet"), "{error}");
    assert!(error.to_string().contains("verifier log"), "{error}");
}

#[test]
fn unknown_interfaces_are_named_the_loopback_falls_back_to_generic_mode_and_queues_are_counted() {
    if !xdp_here() {
        return;
    }
    let ns = Netns::create("xsk-modes");
    enter(&ns.node);
    let filter = Filter::for_bound(node_addr(NODE_PORT));
    let error = Redirect::attach("nosuch0", &filter).unwrap_err().to_string();
    assert!(error.contains("nosuch0"), "{error}");
    run("ip", &["-n", &ns.node, "link", "set", "lo", "up"]);
    let redirect = Redirect::attach("lo", &filter).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(redirect.mode(), XdpMode::Generic, "the loopback has no native XDP");
    assert_eq!(ns.xdp_on("lo").as_deref(), Some("xdpgeneric"));
    drop(redirect);
    assert_eq!(ns.xdp_on("lo"), None, "dropping the link detaches the program");
    // The socket map has one entry per RX queue, counted by ethtool.
    run(
        "ip",
        &[
            "-n",
            &ns.node,
            "link",
            "add",
            "q0",
            "numrxqueues",
            "3",
            "numtxqueues",
            "3",
            "type",
            "veth",
            "peer",
            "name",
            "q1",
        ],
    );
    run("ip", &["-n", &ns.node, "link", "set", "q0", "up"]);
    assert_eq!(Redirect::attach("q0", &filter).unwrap_or_else(|e| panic!("{e}")).queues(), 3);
}
