//! The AF_XDP backend alone, one core, on `v0` of a veth pair between two namespaces of the
//! test's own, against an ordinary UDP socket in the peer namespace: what it sends before it
//! has heard from a peer goes through its UDP socket; a datagram from the peer arrives through
//! the RX ring with its source and payload, and teaches the hop back; what it sends then goes
//! through the TX ring as frames the peer's kernel takes, from the node's address.
//!
//! Needs root, `ip`, `ethtool` and a kernel with BPF and AF_XDP: without them the test fails
//! under `CI=true` and is skipped elsewhere (tests/common/prerequisite.rs).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::backend::xdp::XdpBackend;
use ant_quic_dataplane::backend::xdp_attach;
use ant_quic_dataplane::backend::{Backend, BackendKind, BackendParams, OutBatch, RecvMeta};
use ant_quic_dataplane::stats::{read, CoreStats};
use ant_quic_dataplane::sys::bpf::Map;
use ant_quic_dataplane::sys::poll::Waker;
use ant_quic_dataplane::sys::process::current_uid;
use common::in_netns::in_netns;
use common::veth::{run, Netns, NODE_IP, PEER_IP};

const DEADLINE: Duration = Duration::from_secs(20);

fn lab_here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test attaches XDP programs and creates network namespaces)")
        .unwrap()
        && prerequisite::require(
            prerequisite::installed("ip").is_some() && prerequisite::installed("ethtool").is_some(),
            "`ip` and `ethtool` (Debian packages iproute2 and ethtool; scripts/test.sh installs them)",
        )
        .unwrap()
        && prerequisite::require_ok(Map::xsk(1, "probe").map(drop), "BPF maps of type XSKMAP (CAP_BPF)").unwrap()
}

/// Call `recv` until a datagram arrives (at most the deadline).
fn receive_one(backend: &mut XdpBackend) -> (RecvMeta, Vec<u8>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        backend.wait(Some(Duration::from_millis(100))).unwrap();
        let mut got = None;
        backend.recv(&mut |meta, data| got = Some((meta, data.to_vec()))).unwrap();
        if let Some(got) = got {
            return got;
        }
        assert!(Instant::now() < deadline, "no datagram arrived");
    }
}

/// The next datagram at `socket`, with its source.
fn peer_receives(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).expect("the peer received a datagram");
    (buf[..n].to_vec(), from)
}

#[test]
fn the_backend_sends_through_its_socket_until_a_datagram_teaches_it_the_hop_then_through_the_tx_ring() {
    if !lab_here() {
        return;
    }
    let ns = Netns::create("afxb");
    // The peer's kernel writes whole UDP checksums, as a NIC would (see docs/af-xdp.md).
    run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
    let node_socket = in_netns(&ns.node, || UdpSocket::bind((NODE_IP, 0)).unwrap());
    node_socket.set_nonblocking(true).unwrap();
    let listen = node_socket.local_addr().unwrap();
    let peer = in_netns(&ns.peer, || UdpSocket::bind((PEER_IP, 0)).unwrap());
    peer.set_read_timeout(Some(DEADLINE)).unwrap();
    let peer_addr = peer.local_addr().unwrap();

    let (redirect, mut cores) = in_netns(&ns.node, move || xdp_attach::attach(listen, None, 1, true).unwrap());
    let waker = Waker::new().unwrap();
    let stats = Arc::new(CoreStats::default());
    let params = BackendParams { socket: node_socket, wake_fd: waker.fd(), stats: &stats };
    let mut backend = XdpBackend::open(params, cores.pop().unwrap()).unwrap();
    assert_eq!(backend.kind(), BackendKind::AfXdp);
    let batch = |buf: Vec<u8>, segment_size: usize| OutBatch {
        destination: peer_addr,
        ecn: None,
        src_ip: None,
        segment_size,
        buf,
    };

    // Never heard from the peer: no hop, so the UDP socket.
    backend.send(batch(b"before".to_vec(), 6)).unwrap();
    backend.flush().unwrap();
    assert_eq!(peer_receives(&peer), (b"before".to_vec(), listen));
    assert_eq!((read(&stats.xdp_socket_tx_datagrams), read(&stats.xdp_tx_datagrams)), (1, 0));

    // The peer speaks: through the RX ring, with its address.
    peer.send_to(b"hello node", listen).unwrap();
    let (meta, data) = receive_one(&mut backend);
    assert_eq!((meta.remote, data.as_slice()), (peer_addr, &b"hello node"[..]));
    assert_eq!(meta.local_ip, Some(listen.ip()));
    assert_eq!((read(&stats.xdp_rx_datagrams), read(&stats.xdp_socket_rx_datagrams)), (1, 0));

    // Three datagrams in one batch: three frames through the TX ring, each a whole datagram from
    // the node's address for the peer's kernel.
    let mut buf = Vec::new();
    for i in 0..3u8 {
        buf.extend(std::iter::repeat_n(b'a' + i, 1200));
    }
    buf.truncate(3000);
    backend.send(batch(buf, 1200)).unwrap();
    backend.flush().unwrap();
    for (i, len) in [1200, 1200, 600].into_iter().enumerate() {
        let (data, from) = peer_receives(&peer);
        assert_eq!(from, listen, "datagram {i} comes from the node's address");
        assert_eq!(data, vec![b'a' + i as u8; len], "datagram {i}");
    }
    assert_eq!((read(&stats.xdp_tx_datagrams), read(&stats.xdp_socket_tx_datagrams)), (3, 1));
    assert_eq!(read(&stats.xdp_frames_not_ours), 0);
    drop(backend);
    drop(redirect);
    assert!(!ns.xdp_attached(), "dropping the Redirect detaches the program");
}
