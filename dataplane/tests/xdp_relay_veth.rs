//! Relay channels forwarded inside XDP on a real interface: the redirect program with its channel
//! map (`Redirect::attach`) on one end of a veth pair, a channel installed with
//! `Redirect::install_channel`, and the channel's two ends as ordinary UDP sockets in the other
//! namespace. Frames sent by one end to the node's port reach the other end, from the node's
//! address and port, sent back out of the veth with XDP_TX.
//!
//! Two things a veth needs, which a NIC does not: the peer's end takes XDP_TX frames only while
//! it runs NAPI (an XDP program attached there; on Linux 6.18 GRO on was not enough), and its
//! transmit checksum offload must be off (else the UDP checksum the program updates is a partial
//! one, and the receiving end drops the frame).
//!
//! Needs root, `ip` and `ethtool`: without them the test fails under `CI=true` and is skipped
//! elsewhere (tests/common/prerequisite.rs).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ant_quic_dataplane::sys::bpf::{Map, Program, XdpLink};
use ant_quic_dataplane::sys::process::current_uid;
use ant_quic_dataplane::sys::xdp::interface_index;
use ant_quic_dataplane::xdp::bench_programs::pass_all;
use ant_quic_dataplane::xdp::relay::{RelayEnd, RelayEntry};
use ant_quic_dataplane::xdp::{Counter, Filter, Redirect};
use common::in_netns::in_netns;
use common::veth::{mac, run, Netns, NODE_IP, NODE_MAC, PEER_IP, PEER_MAC};

const NODE_PORT: u16 = 4433;
const CHANNEL: u32 = 0x0A0B_0C0D;
const FRAMES: u32 = 200;
const BURST: u32 = 20;
const DEADLINE: Duration = Duration::from_secs(5);

fn here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test loads XDP programs and creates network namespaces)")
        .unwrap()
        && prerequisite::require(
            prerequisite::installed("ip").is_some() && prerequisite::installed("ethtool").is_some(),
            "`ip` and `ethtool` (Debian packages iproute2, ethtool)",
        )
        .unwrap()
        && prerequisite::require_ok(Map::hash(4, 8, 1, "probe").map(drop), "BPF hash maps (CAP_BPF)").unwrap()
}

/// An XDP program that passes every frame, attached to `interface` of the calling thread's
/// namespace, with its link (dropping both detaches it).
fn attach_pass(interface: &str) -> (XdpLink, Program) {
    let program = Program::load_xdp(&pass_all().unwrap(), "t_pass").unwrap_or_else(|e| panic!("{e}"));
    let link = XdpLink::attach(&program, interface_index(interface).unwrap()).unwrap();
    (link, program)
}

fn relay_frame(i: u32) -> Vec<u8> {
    let mut frame = vec![0x22];
    frame.extend_from_slice(&CHANNEL.to_be_bytes());
    frame.extend_from_slice(&i.to_be_bytes());
    frame.extend(std::iter::repeat_n(i as u8, 1000));
    frame
}

/// Receives on `socket` until `count` datagrams came or the deadline passed; returns them with
/// their sources.
fn receive(socket: &UdpSocket, count: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < count && Instant::now() < deadline {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
    }
    got
}

#[test]
fn a_channel_installed_through_redirect_is_relayed_over_a_veth_with_xdp_tx() {
    if !here() {
        return;
    }
    let ns = Netns::create("xrelv");
    run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
    // No ARP while the frames go: an unresolved neighbour queues only a few.
    run("ip", &["-n", &ns.peer, "neigh", "replace", &NODE_IP.to_string(), "lladdr", &mac(NODE_MAC), "dev", "v1"]);
    let (a, b) =
        in_netns(&ns.peer, || (UdpSocket::bind((PEER_IP, 0)).unwrap(), UdpSocket::bind((PEER_IP, 0)).unwrap()));
    let _peer_pass = in_netns(&ns.peer, || attach_pass("v1"));
    let v4 = |s: &UdpSocket| match s.local_addr().unwrap() {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!(),
    };
    let (end_a, end_b) = (v4(&a), v4(&b));
    let node = SocketAddr::V4(SocketAddrV4::new(NODE_IP, NODE_PORT));
    let redirect =
        in_netns(&ns.node, move || Redirect::attach("v0", &Filter::for_bound(node)).unwrap_or_else(|e| panic!("{e}")));
    let entry = RelayEntry::new(RelayEnd::new(end_a, PEER_MAC), RelayEnd::new(end_b, PEER_MAC), u64::MAX, u64::MAX);
    redirect.install_channel(CHANNEL, &entry).unwrap();

    // a → b, in bursts that b's receive buffer holds, each read before the next is sent.
    let mut got = Vec::new();
    for burst in 0..FRAMES / BURST {
        for i in burst * BURST..(burst + 1) * BURST {
            a.send_to(&relay_frame(i), node).unwrap();
        }
        got.extend(receive(&b, BURST as usize));
        if got.len() < ((burst + 1) * BURST) as usize {
            break;
        }
    }
    assert_eq!(got.len(), FRAMES as usize, "every frame from end a reaches end b");
    for (i, (data, from)) in got.iter().enumerate() {
        assert_eq!(*from, node, "frame {i} comes from the node's address and port");
        assert_eq!(*data, relay_frame(i as u32), "frame {i} arrives whole and in order");
    }
    // b → a: the other direction of the same channel.
    b.send_to(&relay_frame(7), node).unwrap();
    let back = receive(&a, 1);
    assert_eq!(back, vec![(relay_frame(7), node)], "a frame from end b reaches end a");

    let counted = redirect.relay_entry(CHANNEL).unwrap().unwrap();
    assert_eq!(counted.packets, u64::from(FRAMES) + 1, "the channel counts every frame relayed");
    assert_eq!(counted.bytes, (u64::from(FRAMES) + 1) * relay_frame(0).len() as u64);
    assert_eq!(redirect.count(Counter::Relayed).unwrap(), u64::from(FRAMES) + 1);
    assert_eq!(redirect.count(Counter::NoSocket).unwrap(), 0, "no frame went on to the kernel");
    assert!(redirect.install_channel(CHANNEL, &entry).is_ok(), "an entry can be replaced");
}
