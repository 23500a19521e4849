//! Relay frames, path aliases and control datagrams on real nodes over loopback.
//!
//! - A node with an allocation forwards frames between two plain sockets, both ways, byte for
//!   byte; it drops frames from a third socket, frames after the allocation is removed, and
//!   counts each.
//! - Two peer nodes connect through a relay node to path aliases, move data, then move both
//!   routes to the direct path mid-transfer: the connection survives and the relay stops carrying.
//! - Control datagrams reach the control channel with their source; `send_datagram` sends raw.
//!
//! Every wait is bounded by a deadline; nothing waits a fixed time to let something happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic_dataplane::quinn_proto::{ServerConfig, StreamId};
use ant_quic_dataplane::relay::RelayDrop;
use ant_quic_dataplane::stats::read;
use ant_quic_dataplane::{
    Application, BackendKind, ConnId, ConnRef, ConnectRequest, Connections, ControlDatagram, Node, NodeConfig,
    NodeError, PathRoute, ReadOutcome, RelayAllocation, RELAY_HEADER_LEN, RELAY_MARKER,
};
use common::{pattern, tls, total, wait_for, DEADLINE};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Idle;
impl<M> Application<M> for Idle {}

fn node(cores: usize, backend: Option<BackendKind>, server: Option<Arc<ServerConfig>>) -> NodeConfig {
    let mut config = NodeConfig::new(SocketAddr::new(LOCALHOST, 0), server);
    config.cores = Some(cores);
    config.backend = backend;
    config
}

fn idle_node(config: NodeConfig) -> Node {
    Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Idle) })).unwrap()
}

fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![RELAY_MARKER];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn socket() -> UdpSocket {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket
}

/// Receive one datagram (retrying a call a signal interrupted).
fn recv(socket: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    loop {
        match socket.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other.unwrap(),
        }
    }
}

/// Nothing is waiting on `socket` (checked after a counter proved the datagram was handled).
fn assert_nothing_arrived(socket: &UdpSocket, what: &str) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: unexpected datagram {other:?}"),
    }
    socket.set_nonblocking(false).unwrap();
}

fn forwards_between_two_sockets(backend: BackendKind) {
    let relay = idle_node(node(2, Some(backend), None));
    let (a, b, stranger) = (socket(), socket(), socket());
    // Generation 1 (the node's) in the high half, as the coordinator allocates them.
    let channel = 0x0001_0304;
    relay
        .install_relay(RelayAllocation {
            channel,
            a: a.local_addr().unwrap(),
            b: b.local_addr().unwrap(),
            expires: Instant::now() + Duration::from_secs(600),
            byte_limit: u64::MAX,
            rate_limit: u32::MAX,
        })
        .unwrap();
    // Every core has it before the first frame can reach one of them.
    wait_for("the allocation on every core", || relay.stats().iter().all(|s| read(&s.relay_allocations) == 1));

    let mut buf = [0u8; 2048];
    let mut sent_bytes = 0;
    for i in 0..20u8 {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // Anything after the header is carried as it is, QUIC or not.
        let payload: Vec<u8> = (0..100 + usize::from(i) * 50).map(|j| (j as u8) ^ i).collect();
        let sent = frame(channel, &payload);
        from.send_to(&sent, relay.local_addr()).unwrap();
        let (n, source) = recv(to, &mut buf);
        assert_eq!(source, relay.local_addr(), "frame {i} comes from the relay");
        assert_eq!(&buf[..n], &sent[..], "frame {i} is forwarded unchanged");
        sent_bytes += sent.len() as u64;
    }
    // A burst of equal frames and a shorter one among them: the relay may gather them into GSO
    // sends, and each must still arrive as its own datagram.
    let burst: Vec<Vec<u8>> =
        (0..40u32).map(|i| frame(channel, &vec![i as u8; if i == 25 { 700 } else { 1200 }])).collect();
    for sent in &burst {
        a.send_to(sent, relay.local_addr()).unwrap();
        sent_bytes += sent.len() as u64;
    }
    for (i, sent) in burst.iter().enumerate() {
        let (n, _) = recv(&b, &mut buf);
        assert_eq!(&buf[..n], &sent[..], "burst frame {i}");
    }
    assert_eq!(total(&relay, |s| read(&s.relay_forwarded)), 60);
    assert_eq!(total(&relay, |s| read(&s.relay_forwarded_bytes)), sent_bytes);

    // A third party cannot use the channel, nor a frame too short to name one.
    stranger.send_to(&frame(channel, b"let me in"), relay.local_addr()).unwrap();
    wait_for("the stranger's frame to be dropped", || total(&relay, |s| s.relay_drops(RelayDrop::WrongSource)) == 1);
    a.send_to(&[RELAY_MARKER, 1, 2], relay.local_addr()).unwrap();
    wait_for("the short frame to be dropped", || total(&relay, |s| s.relay_drops(RelayDrop::Malformed)) == 1);
    a.send_to(&frame(channel + 1, b"wrong channel"), relay.local_addr()).unwrap();
    wait_for("the unknown channel to be dropped", || total(&relay, |s| s.relay_drops(RelayDrop::UnknownChannel)) == 1);
    // A channel of another generation (a process sharing the port in a takeover) is counted apart.
    a.send_to(&frame(0x0002_0304, b"not this process's"), relay.local_addr()).unwrap();
    wait_for("the other generation's frame", || total(&relay, |s| read(&s.foreign_generation)) == 1);
    assert_eq!(total(&relay, |s| s.relay_drops(RelayDrop::UnknownChannel)), 1);
    assert_nothing_arrived(&a, "a");
    assert_nothing_arrived(&b, "b");

    relay.remove_relay(channel).unwrap();
    wait_for("the removal on every core", || relay.stats().iter().all(|s| read(&s.relay_allocations) == 0));
    a.send_to(&frame(channel, b"after removal"), relay.local_addr()).unwrap();
    wait_for("the frame after removal to be dropped", || {
        total(&relay, |s| s.relay_drops(RelayDrop::UnknownChannel)) == 2
    });
    assert_nothing_arrived(&b, "b after removal");
    assert_eq!(total(&relay, |s| read(&s.relay_forwarded)), 60);
    assert_eq!(total(&relay, |s| read(&s.tx_errors)), 0);

    relay.shutdown();
    relay.join().unwrap();
}

/// io_uring may be forbidden where the tests run (containers, seccomp): see
/// `prerequisite::require`.
fn uring_available() -> bool {
    prerequisite::require_ok(ant_quic_dataplane::backend::uring::probe(), "io_uring").unwrap()
}

#[test]
fn relay_forwards_between_two_sockets_portable() {
    forwards_between_two_sockets(BackendKind::Portable);
}

#[test]
fn relay_forwards_between_two_sockets_io_uring() {
    if !uring_available() {
        return;
    }
    forwards_between_two_sockets(BackendKind::IoUring);
}

// ---------------------------------------------------------------------------------------------
// A QUIC connection through the relay, moved to the direct path mid-transfer.

/// Bytes sent before the routes move, and after.
const PHASE_BYTES: u64 = 3 << 20;
const TOTAL_BYTES: u64 = 2 * PHASE_BYTES;

/// Releases the second half of the upload.
struct SendRest;

/// The client: uploads `PHASE_BYTES`, waits for [`SendRest`], uploads as much again, finishes,
/// and reports the receiver's answer.
struct Uploader {
    stream: Option<(ConnId, StreamId)>,
    sent: u64,
    allowed: u64,
    finished: bool,
    answer: Vec<u8>,
    done: mpsc::Sender<Result<Vec<u8>, String>>,
}

impl Uploader {
    fn pump(&mut self, conn: &mut ConnRef<'_>) {
        let Some((_, stream)) = self.stream else { return };
        let mut chunk = [0u8; 16 * 1024];
        while self.sent < self.allowed {
            let len = (self.allowed - self.sent).min(chunk.len() as u64) as usize;
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern(self.sent + i as u64);
            }
            let n = conn.write(stream, &chunk[..len]).unwrap();
            if n == 0 {
                return;
            }
            self.sent += n as u64;
        }
        if self.sent == TOTAL_BYTES && !self.finished {
            conn.finish(stream).unwrap();
            self.finished = true;
        }
    }
}

impl Application<SendRest> for Uploader {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let stream = conn.open_bi().unwrap();
        self.stream = Some((conn.id(), stream));
        self.pump(conn);
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, _stream: StreamId) {
        self.pump(conn);
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, _message: SendRest) {
        self.allowed = TOTAL_BYTES;
        if let Some((id, _)) = self.stream {
            if let Some(mut conn) = conns.get(id) {
                self.pump(&mut conn);
            }
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let answer = &mut self.answer;
        match conn.read(stream, &mut |chunk| answer.extend_from_slice(&chunk)) {
            Ok(ReadOutcome::Finished) => {
                let _ = self.done.send(Ok(std::mem::take(&mut self.answer)));
                conn.close(0u32.into(), b"done");
            }
            Ok(ReadOutcome::Pending) => {}
            Err(e) => {
                let _ = self.done.send(Err(format!("reading the answer: {e}")));
            }
        }
    }

    fn on_closed(&mut self, _id: ConnId, _tag: u64, reason: &ant_quic_dataplane::quinn_proto::ConnectionError) {
        let _ = self.done.send(Err(format!("connection closed: {reason}")));
    }
}

/// The server: checks every byte against the pattern, publishes its progress, and answers with
/// the byte count and the number of bad bytes.
struct Checker {
    received: Arc<AtomicU64>,
    count: u64,
    bad: u64,
    remote: Arc<Mutex<Option<SocketAddr>>>,
}

impl Application for Checker {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        *self.remote.lock().unwrap() = Some(conn.remote_address());
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let (count, bad) = (&mut self.count, &mut self.bad);
        let outcome = conn.read(stream, &mut |chunk| {
            for &byte in chunk.iter() {
                *bad += u64::from(byte != pattern(*count));
                *count += 1;
            }
        });
        self.received.store(self.count, Ordering::Relaxed);
        if let Ok(ReadOutcome::Finished) = outcome {
            let mut answer = self.count.to_be_bytes().to_vec();
            answer.extend_from_slice(&self.bad.to_be_bytes());
            conn.write(stream, &answer).unwrap();
            conn.finish(stream).unwrap();
        }
    }
}

#[test]
fn connection_through_relay_moves_to_direct_path_mid_transfer() {
    let (server_config, client_config) = tls("peer.test");
    let relay = idle_node(node(1, None, None));

    // Y accepts; it knows X only as the alias x_alias.
    let received = Arc::new(AtomicU64::new(0));
    let remote_seen = Arc::new(Mutex::new(None));
    let checker = Mutex::new(Some(Checker {
        received: Arc::clone(&received),
        count: 0,
        bad: 0,
        remote: Arc::clone(&remote_seen),
    }));
    let y = Node::start(
        node(1, None, Some(server_config)),
        Arc::new(move |_core: usize| -> Box<dyn Application> {
            match checker.lock().unwrap().take() {
                Some(app) => Box::new(app),
                None => Box::new(Idle),
            }
        }),
    )
    .unwrap();

    // X connects from core 1 while every datagram reaches core 0: everything X receives, through
    // the relay or direct, is handed between cores with the alias as its source.
    let (done_tx, done_rx) = mpsc::channel();
    let uploader = Mutex::new(Some(Uploader {
        stream: None,
        sent: 0,
        allowed: PHASE_BYTES,
        finished: false,
        answer: Vec::new(),
        done: done_tx,
    }));
    let mut x_config = node(2, None, None);
    x_config.steer_all_to_core = Some(0);
    let x = Node::start(
        x_config,
        Arc::new(move |core: usize| -> Box<dyn Application<SendRest>> {
            match if core == 1 { uploader.lock().unwrap().take() } else { None } {
                Some(app) => Box::new(app),
                None => Box::new(Idle),
            }
        }),
    )
    .unwrap();

    let channel = 77;
    let x_alias: SocketAddr = "240.0.0.1:1".parse().unwrap();
    let y_alias: SocketAddr = "240.0.0.2:1".parse().unwrap();
    relay
        .install_relay(RelayAllocation {
            channel,
            a: x.local_addr(),
            b: y.local_addr(),
            expires: Instant::now() + Duration::from_secs(600),
            byte_limit: u64::MAX,
            rate_limit: u32::MAX,
        })
        .unwrap();
    let through_relay = PathRoute::Relay { relay: relay.local_addr(), channel };
    x.set_path(y_alias, Some(through_relay)).unwrap();
    y.set_path(x_alias, Some(through_relay)).unwrap();
    wait_for("the allocation", || read(&relay.stats()[0].relay_allocations) == 1);

    x.connect(
        ConnectRequest { remote: y_alias, server_name: "peer.test".into(), config: client_config, tag: 1 },
        Some(1),
    )
    .unwrap();

    // The first half crosses the relay.
    wait_for("the first half", || received.load(Ordering::Relaxed) >= PHASE_BYTES / 2);
    assert_eq!(*remote_seen.lock().unwrap(), Some(x_alias), "Y knows X by its alias");
    assert!(total(&relay, |s| read(&s.relay_forwarded_bytes)) >= PHASE_BYTES / 2, "the data went through the relay");

    // Both move to the direct path while data is still flowing.
    x.set_path(y_alias, Some(PathRoute::Direct(y.local_addr()))).unwrap();
    y.set_path(x_alias, Some(PathRoute::Direct(x.local_addr()))).unwrap();
    let relay_bytes_at_switch = total(&relay, |s| read(&s.relay_forwarded_bytes));
    wait_for("all of the first phase", || received.load(Ordering::Relaxed) >= PHASE_BYTES);
    // What was in flight through the relay at the switch has arrived by now.
    let relay_bytes_at_release = total(&relay, |s| read(&s.relay_forwarded_bytes));
    x.send_message(1, SendRest).unwrap();

    let answer = done_rx.recv_timeout(DEADLINE).expect("the transfer did not finish").unwrap();
    let count = u64::from_be_bytes(answer[..8].try_into().unwrap());
    let bad = u64::from_be_bytes(answer[8..16].try_into().unwrap());
    assert_eq!(count, TOTAL_BYTES, "the receiver counted every byte");
    assert_eq!(bad, 0, "bytes arrived intact and in order");

    // After the switch the relay carried only what was already in flight; the second phase went
    // entirely direct.
    let relay_bytes_end = total(&relay, |s| read(&s.relay_forwarded_bytes));
    let relay_bytes_after = relay_bytes_end - relay_bytes_at_switch;
    let relay_bytes_second_phase = relay_bytes_end - relay_bytes_at_release;
    assert!(
        relay_bytes_after < PHASE_BYTES,
        "the relay carried {relay_bytes_after} bytes after the switch, of {} that followed it",
        TOTAL_BYTES - PHASE_BYTES / 2
    );
    assert!(
        relay_bytes_second_phase < 64 * 1024,
        "the relay carried {relay_bytes_second_phase} bytes during the second phase"
    );
    let relay_frames = total(&relay, |s| read(&s.relay_forwarded));
    let direct_sent = total(&x, |s| read(&s.alias_sent_direct));
    let relay_sent = total(&x, |s| read(&s.alias_sent_relay));
    // QUIC packets on loopback carry at most about 1.45 KB.
    assert!(direct_sent * 1500 >= PHASE_BYTES, "X sent only {direct_sent} datagrams direct");
    assert!(relay_sent * 1500 >= PHASE_BYTES / 2, "X sent only {relay_sent} datagrams through the relay");
    assert!(total(&y, |s| read(&s.alias_received_direct)) > 0);
    assert!(total(&y, |s| read(&s.alias_received_relay)) > 0);
    assert!(total(&x, |s| read(&s.handoffs_out)) > 0, "X's datagrams were handed to the owning core");
    for n in [x.handle(), y.handle()] {
        assert_eq!(total(&n, |s| read(&s.alias_dropped_no_route)), 0);
        assert_eq!(total(&n, |s| read(&s.tx_errors)), 0);
    }
    for reason in RelayDrop::ALL.into_iter().filter(|r| *r != RelayDrop::SendBlocked) {
        assert_eq!(total(&relay, |s| s.relay_drops(reason)), 0, "relay dropped frames: {}", reason.name());
    }
    // Back-pressure may drop a little on a loaded machine (QUIC recovers), never a lot: the relay
    // sends bursts as GSO batches, not one send per frame.
    let blocked = total(&relay, |s| s.relay_drops(RelayDrop::SendBlocked));
    assert!(blocked * 100 <= relay_frames, "relay dropped {blocked} of {relay_frames} frames under back-pressure");
    eprintln!(
        "relay forwarded {relay_frames} frames; {relay_bytes_after} bytes after the switch, \
         {relay_bytes_second_phase} in the second phase; X sent {relay_sent} datagrams relayed, {direct_sent} direct"
    );

    x.shutdown();
    x.join().unwrap();
    for n in [y, relay] {
        n.shutdown();
        n.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Control datagrams and raw sends.

#[test]
fn control_datagrams_reach_the_channel_and_raw_sends_leave_the_socket() {
    let (tx, rx) = crossbeam_channel::bounded::<ControlDatagram>(16);
    let mut config = node(2, None, None);
    config.control_datagrams = Some(tx);
    let node = idle_node(config);
    let peer = socket();

    let probe = [0x21, 1, 1, 0xaa, 0xbb, 0xcc];
    peer.send_to(&probe, node.local_addr()).unwrap();
    let got = rx.recv_timeout(DEADLINE).expect("no control datagram");
    assert_eq!(got.source, peer.local_addr().unwrap());
    assert_eq!(&got.bytes[..], &probe[..]);
    assert!(got.core < node.cores());
    wait_for("the control datagram count", || total(&node, |s| read(&s.control_datagrams_in)) == 1);

    // Neither QUIC nor ours: dropped before the endpoint, and counted.
    peer.send_to(&[0x05, 1, 2, 3], node.local_addr()).unwrap();
    wait_for("the not-QUIC drop", || total(&node, |s| read(&s.drops_not_quic)) == 1);

    node.send_datagram(peer.local_addr().unwrap(), b"\x21raw from the node".to_vec()).unwrap();
    let mut buf = [0u8; 64];
    let (n, source) = recv(&peer, &mut buf);
    assert_eq!(source, node.local_addr());
    assert_eq!(&buf[..n], b"\x21raw from the node");

    // A relay frame that is neither ours to unwrap nor to forward is dropped too.
    peer.send_to(&frame(5, b"x"), node.local_addr()).unwrap();
    wait_for("the relay drop", || total(&node, |s| s.relay_drops(RelayDrop::UnknownChannel)) == 1);
    assert_eq!(total(&node, |s| read(&s.drops_malformed)), 0);

    node.shutdown();
    node.join().unwrap();
    drop(rx);
}

#[test]
fn control_datagrams_without_a_receiver_are_dropped_and_counted() {
    let node = idle_node(node(1, None, None));
    let peer = socket();
    peer.send_to(&[0x21, 1, 1], node.local_addr()).unwrap();
    wait_for("the control drop", || total(&node, |s| read(&s.control_datagrams_dropped)) == 1);
    assert_eq!(total(&node, |s| read(&s.control_datagrams_in)), 0);
    node.shutdown();
    node.join().unwrap();
}

#[test]
fn control_datagrams_through_an_alias_arrive_from_the_alias() {
    let (tx, rx) = crossbeam_channel::bounded::<ControlDatagram>(16);
    let mut config = node(1, None, None);
    config.control_datagrams = Some(tx);
    let node = idle_node(config);
    let relay = socket();
    let alias: SocketAddr = "240.1.2.3:4".parse().unwrap();
    node.set_path(alias, Some(PathRoute::Relay { relay: relay.local_addr().unwrap(), channel: 9 })).unwrap();

    // Out: a datagram to the alias leaves in a relay frame to the relay.
    node.send_datagram(alias, vec![0x21, 7]).unwrap();
    let mut buf = [0u8; 64];
    let (n, source) = recv(&relay, &mut buf);
    assert_eq!(source, node.local_addr());
    assert_eq!(&buf[..n], &frame(9, &[0x21, 7])[..]);
    assert_eq!(n, RELAY_HEADER_LEN + 2);

    // In: a frame from the relay on the alias's channel arrives from the alias.
    relay.send_to(&frame(9, &[0x21, 8]), node.local_addr()).unwrap();
    let got = rx.recv_timeout(DEADLINE).expect("no control datagram");
    assert_eq!(got.source, alias);
    assert_eq!(&got.bytes[..], &[0x21, 8]);

    // An alias without a route drops what is sent to it; non-aliases are refused as aliases.
    node.set_path(alias, None).unwrap();
    node.send_datagram(alias, vec![0x21, 9]).unwrap();
    wait_for("the no-route drop", || total(&node, |s| read(&s.alias_dropped_no_route)) == 1);
    assert!(matches!(node.set_path("10.0.0.1:4".parse().unwrap(), None), Err(NodeError::InvalidPath { .. })));
    assert!(matches!(
        node.set_path(alias, Some(PathRoute::Direct("240.0.0.9:1".parse().unwrap()))),
        Err(NodeError::InvalidPath { .. })
    ));

    node.shutdown();
    node.join().unwrap();
}

/// A burst of datagrams larger than the backend's send slots (probe bursts are hundreds): every
/// one leaves, none is dropped for back-pressure.
fn burst_of_raw_sends_all_leave(backend: BackendKind) {
    const BURST: usize = 1000;
    let node = idle_node(node(1, Some(backend), None));
    let peer = socket();
    socket2::SockRef::from(&peer).set_recv_buffer_size(4 << 20).unwrap();
    let to = peer.local_addr().unwrap();
    for i in 0..BURST as u32 {
        let mut payload = vec![0x21u8; 64];
        payload[1..5].copy_from_slice(&i.to_be_bytes());
        node.send_datagram(to, payload).unwrap();
    }
    let mut seen = vec![false; BURST];
    let mut buf = [0u8; 128];
    for _ in 0..BURST {
        let (n, source) = recv(&peer, &mut buf);
        assert_eq!((n, source), (64, node.local_addr()));
        let i = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert!(!seen[i], "datagram {i} arrived twice");
        seen[i] = true;
    }
    assert_eq!(total(&node, |s| read(&s.send_datagrams_dropped)), 0);
    node.shutdown();
    node.join().unwrap();
}

#[test]
fn burst_of_raw_sends_all_leave_io_uring() {
    if !uring_available() {
        return;
    }
    burst_of_raw_sends_all_leave(BackendKind::IoUring);
}

#[test]
fn burst_of_raw_sends_all_leave_portable() {
    burst_of_raw_sends_all_leave(BackendKind::Portable);
}
