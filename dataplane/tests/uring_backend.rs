//! The io_uring backend against real loopback sockets: datagrams arrive intact, GSO batches are
//! split by the kernel, GRO super-datagrams are reported with their stride, the waker wakes.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::backend::portable::PortableBackend;
use ant_quic_dataplane::backend::uring::{self, UringBackend};
use ant_quic_dataplane::backend::{Backend, BackendParams, OutBatch, RecvMeta, SendRefused};
use ant_quic_dataplane::batch::split_gro;
use ant_quic_dataplane::stats::{read, CoreStats};
use ant_quic_dataplane::sys::poll::Waker;
use quinn_proto::EcnCodepoint;

const DEADLINE: Duration = Duration::from_secs(10);

/// io_uring may be forbidden where the tests run (containers, seccomp): see
/// `prerequisite::require`.
fn uring_available() -> bool {
    prerequisite::require_ok(uring::probe(), "io_uring").unwrap()
}

struct Node<B> {
    backend: B,
    addr: SocketAddr,
    stats: Arc<CoreStats>,
    _waker: Waker,
}

fn bind(ip: std::net::IpAddr) -> Option<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
    socket.set_nonblocking(true).unwrap();
    Some(socket)
}

fn uring_node(socket: UdpSocket) -> Node<UringBackend> {
    let addr = socket.local_addr().unwrap();
    let stats = Arc::new(CoreStats::default());
    let waker = Waker::new().unwrap();
    let backend = UringBackend::open(BackendParams { socket, wake_fd: waker.fd(), stats: &stats })
        .unwrap_or_else(|e| panic!("open: {e}"));
    Node { backend, addr, stats, _waker: waker }
}

fn portable_node(socket: UdpSocket) -> Node<PortableBackend> {
    let addr = socket.local_addr().unwrap();
    let stats = Arc::new(CoreStats::default());
    let waker = Waker::new().unwrap();
    let backend = PortableBackend::open(BackendParams { socket, wake_fd: waker.fd(), stats: &stats }).unwrap();
    Node { backend, addr, stats, _waker: waker }
}

/// A datagram whose content says which one it is.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8).collect();
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

fn send_all<B: Backend>(backend: &mut B, mut batch: OutBatch) {
    let start = Instant::now();
    loop {
        match backend.send(batch) {
            Ok(()) => return,
            Err(SendRefused::WouldBlock(b)) => {
                assert!(start.elapsed() < DEADLINE, "send stayed blocked");
                batch = b;
                backend.flush().unwrap();
                backend.wait(Some(Duration::from_millis(10))).unwrap();
                backend.recv(&mut |_, _| {}).unwrap();
            }
        }
    }
}

/// Receive until `want` datagrams (after GRO splitting) arrived; returns them with their meta.
fn receive<B: Backend>(backend: &mut B, want: usize) -> Vec<(RecvMeta, Vec<u8>)> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.iter().map(|(m, d): &(RecvMeta, Vec<u8>)| split_gro(d, m.stride).count()).sum::<usize>() < want {
        assert!(start.elapsed() < DEADLINE, "only {} of {want} datagrams arrived", got.len());
        backend.flush().unwrap();
        backend.wait(Some(Duration::from_millis(50))).unwrap();
        backend.recv(&mut |meta, data| got.push((meta, data.to_vec()))).unwrap();
    }
    got
}

/// Send `count` datagrams from `a` to `b` in bursts, checking every one arrives once and intact.
fn exchange<A: Backend, B: Backend>(a: &mut Node<A>, b: &mut Node<B>, count: u32, ecn: Option<EcnCodepoint>) {
    let mut expected = HashMap::new();
    for burst in (0..count).collect::<Vec<_>>().chunks(16) {
        for &seq in burst {
            let len = 20 + (seq as usize * 97) % 1400;
            let data = datagram(seq, len);
            expected.insert(seq, data.clone());
            let mut buf = a.backend.take_buffer();
            buf.extend_from_slice(&data);
            let batch = OutBatch { destination: b.addr, ecn, src_ip: None, segment_size: len, buf };
            send_all(&mut a.backend, batch);
        }
        a.backend.flush().unwrap();
        for (meta, data) in receive(&mut b.backend, burst.len()) {
            assert_eq!(meta.remote, a.addr, "source address");
            assert_eq!(meta.len, data.len());
            assert_eq!(meta.local_ip, Some(b.addr.ip()), "IP_PKTINFO / IPV6_PKTINFO destination");
            if ecn.is_some() {
                assert_eq!(meta.ecn, ecn, "ECN codepoint");
            }
            for d in split_gro(&data, meta.stride) {
                let seq = u32::from_be_bytes(d[..4].try_into().unwrap());
                let want = expected.remove(&seq).unwrap_or_else(|| panic!("datagram {seq} unexpected or duplicated"));
                assert_eq!(d, &want[..], "content of datagram {seq}");
            }
        }
        // Let the sender see its send completions.
        a.backend.recv(&mut |_, _| {}).unwrap();
    }
    assert!(expected.is_empty(), "missing datagrams: {:?}", expected.keys().collect::<Vec<_>>());
}

/// Wait until the backend's send completions have been counted.
fn settle_sends<B: Backend>(node: &mut Node<B>, datagrams: u64) {
    let start = Instant::now();
    while read(&node.stats.tx_datagrams) < datagrams {
        assert!(start.elapsed() < DEADLINE, "sends never completed");
        node.backend.flush().unwrap();
        node.backend.wait(Some(Duration::from_millis(10))).unwrap();
        node.backend.recv(&mut |_, _| {}).unwrap();
    }
}

#[test]
fn loopback_exchange_between_two_uring_backends() {
    if !uring_available() {
        return;
    }
    let mut a = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let mut b = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    eprintln!("io_uring backend: {}", a.backend.features());
    assert!(a.backend.features().contains("taskrun") || a.backend.features().contains("plain"));
    exchange(&mut a, &mut b, 600, None);
    exchange(&mut b, &mut a, 600, Some(EcnCodepoint::Ect0));
    settle_sends(&mut a, 600);
    settle_sends(&mut b, 600);
    assert_eq!(read(&a.stats.tx_errors), 0);
    assert_eq!(read(&b.stats.tx_errors), 0);
}

#[test]
fn loopback_ipv6_with_ecn_against_portable_backend() {
    if !uring_available() {
        return;
    }
    let (s1, s2) = (bind(Ipv6Addr::LOCALHOST.into()), bind(Ipv6Addr::LOCALHOST.into()));
    if !prerequisite::require(
        s1.is_some() && s2.is_some(),
        "IPv6 loopback (::1; sysctl net.ipv6.conf.lo.disable_ipv6=0)",
    )
    .unwrap()
    {
        return;
    }
    let (Some(s1), Some(s2)) = (s1, s2) else { unreachable!("checked above") };
    let mut u = uring_node(s1);
    let mut p = portable_node(s2);
    exchange(&mut u, &mut p, 200, Some(EcnCodepoint::Ect1));
    exchange(&mut p, &mut u, 200, Some(EcnCodepoint::Ce));
}

#[test]
fn gso_batch_arrives_as_separate_datagrams_at_a_plain_socket() {
    if !uring_available() {
        return;
    }
    let mut sender = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    assert!(sender.backend.max_gso_segments() > 1, "this kernel has UDP GSO; the backend must offer it");
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let lens = [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 321];
    let datagrams: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &len)| datagram(i as u32, len)).collect();
    let batch = OutBatch {
        destination: receiver.local_addr().unwrap(),
        ecn: None,
        src_ip: Some(Ipv4Addr::LOCALHOST.into()),
        segment_size: 1000,
        buf: datagrams.concat(),
    };
    assert_eq!(batch.segments(), 10);
    send_all(&mut sender.backend, batch);
    sender.backend.flush().unwrap();
    settle_sends(&mut sender, 10);

    let mut buf = [0u8; 2000];
    for want in &datagrams {
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(from, sender.addr);
        assert_eq!(&buf[..n], &want[..]);
    }
    assert_eq!(read(&sender.stats.tx_bytes), 9321);
    assert_eq!(sender.stats.tx_batch.multi(), 1, "one GSO submission of 10 datagrams");
    assert_eq!(read(&sender.stats.gso_fallbacks), 0);
}

#[test]
fn plain_socket_datagrams_arrive_at_uring_backend() {
    if !uring_available() {
        return;
    }
    let mut receiver = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut sent = HashMap::new();
    for seq in 0..50u32 {
        let d = datagram(seq, 100 + seq as usize);
        sender.send_to(&d, receiver.addr).unwrap();
        sent.insert(seq, d);
    }
    for (meta, data) in receive(&mut receiver.backend, 50) {
        assert_eq!(meta.remote, sender.local_addr().unwrap());
        for d in split_gro(&data, meta.stride) {
            let seq = u32::from_be_bytes(d[..4].try_into().unwrap());
            assert_eq!(sent.remove(&seq).as_deref(), Some(d));
        }
    }
    assert!(sent.is_empty());
}

#[test]
fn recv_alone_sees_datagrams_without_wait() {
    // A busy-polling core calls `recv` without `wait`; deferred task work must still run.
    if !uring_available() {
        return;
    }
    let mut receiver = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for seq in 0..5u32 {
        sender.send_to(&datagram(seq, 200), receiver.addr).unwrap();
    }
    let mut got = 0;
    let start = Instant::now();
    while got < 5 {
        assert!(start.elapsed() < Duration::from_secs(5), "recv alone saw {got} of 5 datagrams");
        receiver.backend.recv(&mut |meta, data| got += split_gro(&data, meta.stride).count()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn gro_super_datagram_reports_stride_and_splits_back() {
    if !uring_available() {
        return;
    }
    let mut receiver = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    // The reference backend sends the GSO batch, so this checks the io_uring receive path alone.
    let mut sender = portable_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    assert!(sender.backend.max_gso_segments() > 1);
    let lens = [1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 700];
    let datagrams: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &len)| datagram(i as u32, len)).collect();
    let batch =
        OutBatch { destination: receiver.addr, ecn: None, src_ip: None, segment_size: 1200, buf: datagrams.concat() };
    send_all(&mut sender.backend, batch);

    let got = receive(&mut receiver.backend, 10);
    assert!(
        got.iter().any(|(meta, data)| meta.stride == 1200 && data.len() > 1200),
        "loopback GSO to a GRO socket arrives coalesced: {:?}",
        got.iter().map(|(m, _)| (m.len, m.stride)).collect::<Vec<_>>()
    );
    let split: Vec<&[u8]> = got.iter().flat_map(|(meta, data)| split_gro(data, meta.stride)).collect();
    assert_eq!(split.len(), 10);
    for (d, want) in split.iter().zip(&datagrams) {
        assert_eq!(*d, &want[..]);
    }
    assert!(receiver.stats.rx_batch.multi() >= 1);
}

/// GRO batches of at least 8 KiB reach the sink in the receive buffer itself, which the ring
/// replaces: kept far longer than the ring takes to reuse every slot (128 buffers, each filled
/// three times over here), every kept batch still holds what was sent.
#[test]
fn kept_gro_buffers_stay_intact_while_the_ring_refills() {
    if !uring_available() {
        return;
    }
    let mut receiver = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let mut sender = portable_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    const SEGMENTS: usize = 10;
    const BURST: usize = 8;
    const BURSTS: usize = 50;
    let mut kept: Vec<(RecvMeta, bytes::BytesMut)> = Vec::new();
    let mut arrived = 0;
    for burst in 0..BURSTS {
        let first = (burst * BURST * SEGMENTS) as u32;
        for batch in 0..BURST {
            let base = first + (batch * SEGMENTS) as u32;
            let buf: Vec<u8> = (0..SEGMENTS as u32).flat_map(|i| datagram(base + i, 1200)).collect();
            let batch = OutBatch { destination: receiver.addr, ecn: None, src_ip: None, segment_size: 1200, buf };
            send_all(&mut sender.backend, batch);
        }
        sender.backend.flush().unwrap();
        let want = arrived + BURST * SEGMENTS;
        let start = Instant::now();
        while arrived < want {
            assert!(start.elapsed() < DEADLINE, "burst {burst}: datagrams missing");
            receiver.backend.wait(Some(Duration::from_millis(50))).unwrap();
            receiver
                .backend
                .recv(&mut |meta, data| {
                    arrived += split_gro(&data, meta.stride).count();
                    kept.push((meta, data));
                })
                .unwrap();
        }
    }
    let total = BURSTS * BURST * SEGMENTS;
    let mut seen = vec![0u32; total];
    for (meta, data) in &kept {
        for d in split_gro(data, meta.stride) {
            let seq = u32::from_be_bytes(d[..4].try_into().unwrap());
            assert_eq!(d, &datagram(seq, 1200)[..], "datagram {seq} changed after it was received");
            seen[seq as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "every datagram exactly once: {seen:?}");
    // A kept receive buffer has room for a 64 KiB batch; a copy would be exactly its length.
    let in_place = kept.iter().filter(|(_, d)| d.len() >= 8 * 1024 && d.capacity() > 60 * 1024).count();
    assert!(in_place * 2 >= kept.len(), "{in_place} of {} batches kept in their receive buffer", kept.len());
}

#[test]
fn receive_resumes_after_running_out_of_buffers() {
    if !uring_available() {
        return;
    }
    let mut receiver = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let total = 200u32;
    // Let the kernel fill every provided buffer without handing any back (no `recv`): the
    // multishot receive ends with ENOBUFS, the rest waits in the socket.
    for burst in (0..total).collect::<Vec<_>>().chunks(20) {
        for &seq in burst {
            sender.send_to(&datagram(seq, 64), receiver.addr).unwrap();
        }
        receiver.backend.wait(Some(Duration::ZERO)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        receiver.backend.wait(Some(Duration::ZERO)).unwrap();
    }
    let mut seen = vec![0u32; total as usize];
    for (meta, data) in receive(&mut receiver.backend, total as usize) {
        for d in split_gro(&data, meta.stride) {
            seen[u32::from_be_bytes(d[..4].try_into().unwrap()) as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "every datagram exactly once: {seen:?}");
    assert!(read(&receiver.stats.rx_no_buffers) >= 1, "the provided buffers ran out at least once");
}

#[test]
fn waker_ends_a_long_wait() {
    if !uring_available() {
        return;
    }
    let socket = bind(Ipv4Addr::LOCALHOST.into()).unwrap();
    let stats = Arc::new(CoreStats::default());
    let waker = Arc::new(Waker::new().unwrap());
    let mut backend = UringBackend::open(BackendParams { socket, wake_fd: waker.fd(), stats: &stats }).unwrap();

    // A plain timeout expires on time.
    let start = Instant::now();
    backend.wait(Some(Duration::from_millis(200))).unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(5), "waited {waited:?}");

    for round in 0..3 {
        let w = Arc::clone(&waker);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            w.wake();
        });
        let start = Instant::now();
        backend.wait(Some(Duration::from_secs(10))).unwrap();
        let waited = start.elapsed();
        writer.join().unwrap();
        assert!(waited < Duration::from_secs(2), "round {round}: the waker did not end the wait ({waited:?})");

        // The completion is still pending: a second wait must not block.
        let start = Instant::now();
        backend.wait(Some(Duration::from_secs(10))).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "wait blocked with a completion pending");

        // The core drains the eventfd; the backend must not have.
        assert!(waker.drain(), "the eventfd was still readable");
        backend.recv(&mut |_, _| panic!("no datagram was sent")).unwrap();
    }

    // With the waker drained and the completions consumed, wait blocks again until its timeout.
    let start = Instant::now();
    backend.wait(Some(Duration::from_millis(200))).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[test]
fn sends_beyond_the_slots_are_submitted_in_place() {
    if !uring_available() {
        return;
    }
    let mut sender = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20).unwrap();
    receiver.set_read_timeout(Some(DEADLINE)).unwrap();
    let destination = receiver.local_addr().unwrap();
    // Far more sends than slots in one turn (a relay forwarding a burst): when the slots run out
    // the queued ones are submitted and reaped on the spot, so none is refused or lost.
    const SENDS: u32 = 1000;
    for seq in 0..SENDS {
        let batch = OutBatch { destination, ecn: None, src_ip: None, segment_size: 10, buf: datagram(seq, 10) };
        assert!(sender.backend.send(batch).is_ok(), "send {seq} refused although the kernel takes datagrams");
    }
    sender.backend.flush().unwrap();
    settle_sends(&mut sender, u64::from(SENDS));
    let mut seen = vec![false; SENDS as usize];
    let mut buf = [0u8; 64];
    for _ in 0..SENDS {
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(n, 10);
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert!(!seen[seq], "datagram {seq} twice");
        seen[seq] = true;
    }
    assert_eq!(read(&sender.stats.tx_errors), 0);
}

#[test]
fn drop_with_operations_in_flight_is_prompt() {
    if !uring_available() {
        return;
    }
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for round in 0..5 {
        let mut node = uring_node(bind(Ipv4Addr::LOCALHOST.into()).unwrap());
        for seq in 0..40u32 {
            let buf = datagram(seq, 1000).repeat(4);
            let batch = OutBatch {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                src_ip: None,
                segment_size: 1000,
                buf,
            };
            let _ = node.backend.send(batch);
            if seq % 8 == 0 {
                node.backend.flush().unwrap();
            }
        }
        // Receive still armed, the waker poll armed, sends submitted and not yet reaped.
        let start = Instant::now();
        drop(node);
        assert!(start.elapsed() < Duration::from_secs(1), "round {round}: teardown took {:?}", start.elapsed());
    }
}
