//! CID steering on real nodes over loopback: with the reuseport program on, the kernel delivers
//! each datagram to the core that owns its connection, so no datagram takes the hand-off path.
//!
//! - Many connections: 64 uploads from eight two-core client nodes to a two-core server. A
//!   server connection lives on the core the kernel's hash chose for its first Initial, and that
//!   4-tuple never changes, so the server hands nothing over with or without steering. A client
//!   node's connections all share one 4-tuple (node port to server port), so the server's
//!   answers all hash to one of its cores: without steering every datagram for a connection
//!   opened on the other core is handed over; with steering only the server's Initial
//!   datagrams are (the program leaves Initials to the hash).
//! - NAT rebinding: a client behind a small UDP proxy that moves to a new source port in the
//!   middle of an upload, one whose 4-tuple the kernel hashes to the other server core. With
//!   steering, the owner still gets every datagram; without, every one is handed over. The
//!   transfer completes both ways and the server sees the new address.
//!
//! Every wait is bounded by a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ant_quic_dataplane::quinn_proto::{ConnectionError, ServerConfig, StreamId};
use ant_quic_dataplane::stats::read;
use ant_quic_dataplane::{
    Application, ConnId, ConnRef, ConnectRequest, Connections, MultiSocket, Node, NodeConfig, ReadOutcome,
};
use common::{pattern, tls, total, wait_for, DEADLINE};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn config(cores: usize, steering: bool, server: Option<Arc<ServerConfig>>) -> NodeConfig {
    let mut config = NodeConfig::new(SocketAddr::new(LOCALHOST, 0), server);
    config.cores = Some(cores);
    config.cid_steering = steering;
    config
}

// ---------------------------------------------------------------------------------------------
// The applications.

/// The server: checks every byte of each stream against the pattern, answers with the byte count
/// and the number of bad bytes, and publishes progress and the peer's latest address.
struct Checker {
    streams: HashMap<(ConnId, StreamId), (u64, u64)>,
    received: Arc<AtomicU64>,
    remote: Arc<Mutex<Option<SocketAddr>>>,
}

impl Checker {
    fn new(received: Arc<AtomicU64>, remote: Arc<Mutex<Option<SocketAddr>>>) -> Self {
        Self { streams: HashMap::new(), received, remote }
    }
}

impl Application for Checker {
    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        *self.remote.lock().unwrap() = Some(conn.remote_address());
        let (count, bad) = self.streams.entry((conn.id(), stream)).or_default();
        let before = *count;
        let outcome = conn.read(stream, &mut |chunk| {
            for &byte in chunk.iter() {
                *bad += u64::from(byte != pattern(*count));
                *count += 1;
            }
        });
        self.received.fetch_add(*count - before, Ordering::Relaxed);
        if let Ok(ReadOutcome::Finished) = outcome {
            let mut answer = count.to_be_bytes().to_vec();
            answer.extend_from_slice(&bad.to_be_bytes());
            conn.write(stream, &answer).unwrap();
            conn.finish(stream).unwrap();
        }
    }
}

/// What a client learns of one upload: its tag, and the server's count and bad bytes.
type Outcome = Result<(u64, u64, u64), String>;

/// Releases the rest of every upload on a core (see [`Uploader::allowed`]).
struct SendRest;

struct Upload {
    stream: StreamId,
    sent: u64,
    finished: bool,
    answer: Vec<u8>,
}

/// The client: on each connection, uploads `size` bytes (holding after `allowed` until
/// [`SendRest`] arrives), finishes, and reports the server's answer with the connection's tag.
struct Uploader {
    size: u64,
    allowed: u64,
    uploads: HashMap<ConnId, Upload>,
    done: mpsc::Sender<Outcome>,
}

impl Uploader {
    fn new(size: u64, allowed: u64, done: mpsc::Sender<Outcome>) -> Self {
        Self { size, allowed, uploads: HashMap::new(), done }
    }

    fn pump(&mut self, conn: &mut ConnRef<'_>) {
        let Some(upload) = self.uploads.get_mut(&conn.id()) else { return };
        let mut chunk = [0u8; 16 * 1024];
        let limit = self.allowed.min(self.size);
        while upload.sent < limit {
            let len = (limit - upload.sent).min(chunk.len() as u64) as usize;
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern(upload.sent + i as u64);
            }
            let n = conn.write(upload.stream, &chunk[..len]).unwrap();
            if n == 0 {
                return;
            }
            upload.sent += n as u64;
        }
        if upload.sent == self.size && !upload.finished {
            conn.finish(upload.stream).unwrap();
            upload.finished = true;
        }
    }
}

impl Application<SendRest> for Uploader {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let stream = conn.open_bi().unwrap();
        self.uploads.insert(conn.id(), Upload { stream, sent: 0, finished: false, answer: Vec::new() });
        self.pump(conn);
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, _stream: StreamId) {
        self.pump(conn);
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, _message: SendRest) {
        self.allowed = u64::MAX;
        let ids: Vec<ConnId> = self.uploads.keys().copied().collect();
        for id in ids {
            if let Some(mut conn) = conns.get(id) {
                self.pump(&mut conn);
            }
        }
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let Some(upload) = self.uploads.get_mut(&conn.id()) else { return };
        let answer = &mut upload.answer;
        match conn.read(stream, &mut |chunk| answer.extend_from_slice(&chunk)) {
            Ok(ReadOutcome::Finished) => {
                let outcome = match upload.answer.get(..16) {
                    Some(a) => Ok((
                        conn.tag(),
                        u64::from_be_bytes(a[..8].try_into().unwrap()),
                        u64::from_be_bytes(a[8..].try_into().unwrap()),
                    )),
                    None => Err(format!("upload {}: short answer", conn.tag())),
                };
                let _ = self.done.send(outcome);
                self.uploads.remove(&conn.id());
                conn.close(0u32.into(), b"done");
            }
            Ok(ReadOutcome::Pending) => {}
            Err(e) => {
                let _ = self.done.send(Err(format!("upload {}: reading the answer: {e}", conn.tag())));
            }
        }
    }

    fn on_closed(&mut self, id: ConnId, tag: u64, reason: &ConnectionError) {
        if self.uploads.remove(&id).is_some() {
            let _ = self.done.send(Err(format!("upload {tag}: connection closed: {reason}")));
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ant_quic_dataplane::quinn_proto::ConnectError) {
        let _ = self.done.send(Err(format!("upload {tag}: connect failed: {error}")));
    }
}

/// Wait for `count` outcomes; each must report `size` bytes, all intact.
fn expect_uploads(done: &mpsc::Receiver<Outcome>, count: usize, size: u64) {
    let mut tags = Vec::new();
    for _ in 0..count {
        let (tag, received, bad) = done.recv_timeout(DEADLINE).expect("an upload did not finish").unwrap();
        assert_eq!(received, size, "upload {tag}: the server counted every byte");
        assert_eq!(bad, 0, "upload {tag}: bytes arrived intact and in order");
        tags.push(tag);
    }
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), count, "every upload reported once");
}

fn server(steering: bool, server_config: Arc<ServerConfig>) -> (Node, Arc<AtomicU64>, Arc<Mutex<Option<SocketAddr>>>) {
    let received = Arc::new(AtomicU64::new(0));
    let remote = Arc::new(Mutex::new(None));
    let (r, a) = (Arc::clone(&received), Arc::clone(&remote));
    let node = Node::start(
        config(2, steering, Some(server_config)),
        Arc::new(move |_core: usize| -> Box<dyn Application> {
            Box::new(Checker::new(Arc::clone(&r), Arc::clone(&a)))
        }),
    )
    .unwrap();
    (node, received, remote)
}

fn client(cores: usize, steering: bool, size: u64, allowed: u64, done: &mpsc::Sender<Outcome>) -> Node<SendRest> {
    let done = Mutex::new(done.clone());
    Node::start(
        config(cores, steering, None),
        Arc::new(move |_core: usize| -> Box<dyn Application<SendRest>> {
            Box::new(Uploader::new(size, allowed, done.lock().unwrap().clone()))
        }),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Many connections.

const CLIENT_NODES: usize = 8;
const CONNECTIONS_PER_NODE: usize = 8;
const UPLOAD_BYTES: u64 = 256 * 1024;

/// Hand-offs counted after 64 uploads: (server, all client nodes).
fn many_uploads(steering: bool) -> (u64, u64) {
    let (server_config, client_config) = tls("server.test");
    let (server, _, _) = server(steering, server_config);
    let (done_tx, done_rx) = mpsc::channel();
    let clients: Vec<Node<SendRest>> =
        (0..CLIENT_NODES).map(|_| client(2, steering, UPLOAD_BYTES, u64::MAX, &done_tx)).collect();
    for (n, node) in clients.iter().enumerate() {
        for c in 0..CONNECTIONS_PER_NODE {
            let request = ConnectRequest {
                remote: server.local_addr(),
                server_name: "server.test".into(),
                config: client_config.clone(),
                tag: (n * CONNECTIONS_PER_NODE + c) as u64,
            };
            // Half the connections of each node on each of its cores.
            node.connect(request, Some(c % 2)).unwrap();
        }
    }
    expect_uploads(&done_rx, CLIENT_NODES * CONNECTIONS_PER_NODE, UPLOAD_BYTES);

    // Late datagrams (ACKs, closes) may still sit in a hand-off queue; none is lost.
    for node in clients.iter().map(|c| c.handle()).chain([server.handle()]) {
        wait_for("hand-offs in flight to arrive", || {
            total(&node, |s| read(&s.handoffs_out)) == total(&node, |s| read(&s.handoffs_in))
        });
        assert_eq!(total(&node, |s| read(&s.drops_handoff_full)), 0);
    }
    let accepted: Vec<u64> = server.stats().iter().map(|s| read(&s.connections_accepted)).collect();
    let server_handoffs = total(&server, |s| read(&s.handoffs_out));
    let client_handoffs: u64 = clients.iter().map(|c| total(c, |s| read(&s.handoffs_out))).sum();
    let client_datagrams: u64 = clients.iter().map(|c| total(c, |s| read(&s.rx_datagrams))).sum();
    eprintln!(
        "steering {}: {} connections, accepted per server core {accepted:?}; hand-offs: server {server_handoffs} \
         of {} datagrams received, client nodes {client_handoffs} of {client_datagrams}",
        if steering { "on" } else { "off" },
        CLIENT_NODES * CONNECTIONS_PER_NODE,
        total(&server, |s| read(&s.rx_datagrams)),
    );
    for node in clients {
        node.shutdown();
        node.join().unwrap();
    }
    server.shutdown();
    server.join().unwrap();
    (server_handoffs, client_handoffs)
}

#[test]
fn many_connections_reach_their_owning_core_without_hand_offs() {
    let (server_on, client_on) = many_uploads(true);
    let (server_off, client_off) = many_uploads(false);
    // The server's connections keep the 4-tuple the kernel hashed to their core.
    assert_eq!(server_on, 0, "the server handed datagrams between its cores with steering");
    assert_eq!(server_off, 0, "the server handed datagrams between its cores without steering");
    // Client nodes: 32 connections live on the core the server's answers do not hash to. Without
    // steering every datagram for them is handed over (handshake, ACKs, the answer: seen ~28
    // each); with it only the server's first flight is, which starts with an Initial packet
    // (seen exactly one each).
    let misplaced = (CLIENT_NODES * CONNECTIONS_PER_NODE / 2) as u64;
    assert!(client_off >= 3 * misplaced, "only {client_off} hand-offs on the client nodes without steering");
    assert!(client_on <= 2 * misplaced, "{client_on} hand-offs on the client nodes with steering");
}

// ---------------------------------------------------------------------------------------------
// NAT rebinding.

/// Bytes uploaded before the client is released to finish; the proxy moves halfway through them.
const PHASE_BYTES: u64 = 2 << 20;
const REBIND_BYTES: u64 = 2 * PHASE_BYTES;

/// The server core the kernel's hash picks for datagrams from `socket`: sends a control
/// datagram (the steering program leaves those to the hash) and sees which core counted it.
fn hashed_core(server: &Node, socket: &UdpSocket) -> usize {
    let before: Vec<u64> = server.stats().iter().map(|s| read(&s.control_datagrams_dropped)).collect();
    socket.send_to(&[0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], server.local_addr()).unwrap();
    let mut core = None;
    wait_for("the probe to be counted", || {
        core = server.stats().iter().zip(&before).position(|(s, b)| read(&s.control_datagrams_dropped) > *b);
        core.is_some()
    });
    core.unwrap()
}

/// A NAT between the client and the server: datagrams from the client leave through the current
/// upstream socket; a new one arriving on `rebind` replaces it (the old mapping is forgotten,
/// as a NAT that timed it out would). Runs until `stop` has a message or is gone.
fn proxy(front: UdpSocket, upstream: UdpSocket, server: SocketAddr, rebind: mpsc::Receiver<UdpSocket>) {
    const FRONT: usize = 0;
    let mut up = 1;
    let mut set = MultiSocket::from_sockets(vec![front, upstream]).unwrap();
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        match rebind.try_recv() {
            Ok(socket) => {
                // The new socket goes in the old one's place in a fresh set.
                let front = set.take(FRONT).unwrap();
                set = MultiSocket::from_sockets(vec![front, socket]).unwrap();
                up = 1;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
        set.wait(Duration::from_millis(5), None).unwrap();
        for index in set.take_ready() {
            while let Ok((n, from)) = set.recv_from(index, &mut buf) {
                if index == FRONT {
                    client = Some(from);
                    let _ = set.send_to(up, &buf[..n], server);
                } else if let Some(client) = client {
                    let _ = set.send_to(FRONT, &buf[..n], client);
                }
            }
        }
    }
}

/// Upload through the proxy, moving it to a source port the server's kernel hashes to the core
/// that does not own the connection. Returns the server's hand-offs before and after the move.
fn upload_across_rebinding(steering: bool) -> (u64, u64) {
    let (server_config, client_config) = tls("server.test");
    let (server, received, remote) = server(steering, server_config);
    let (done_tx, done_rx) = mpsc::channel();
    let client = client(1, steering, REBIND_BYTES, PHASE_BYTES, &done_tx);

    let front = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let front_addr = front.local_addr().unwrap();
    let first = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let first_addr = first.local_addr().unwrap();
    let (rebind_tx, rebind_rx) = mpsc::channel();
    let server_addr = server.local_addr();
    let proxy = std::thread::spawn(move || proxy(front, first, server_addr, rebind_rx));

    client
        .connect(
            ConnectRequest { remote: front_addr, server_name: "server.test".into(), config: client_config, tag: 1 },
            None,
        )
        .unwrap();
    wait_for("the first half of the first phase", || received.load(Ordering::Relaxed) >= PHASE_BYTES / 2);
    assert_eq!(*remote.lock().unwrap(), Some(first_addr), "the server knows the client by the proxy's first port");
    let owner = server.stats().iter().position(|s| read(&s.connections_accepted) == 1).unwrap();

    // A new source port whose datagrams the kernel hashes to the other core.
    let second = (0..256)
        .map(|_| UdpSocket::bind((LOCALHOST, 0)).unwrap())
        .find(|socket| hashed_core(&server, socket) != owner)
        .expect("no port hashed to the other core");
    let second_addr = second.local_addr().unwrap();
    let handoffs_before = total(&server, |s| read(&s.handoffs_out));
    rebind_tx.send(second).unwrap();

    wait_for("the whole first phase", || received.load(Ordering::Relaxed) >= PHASE_BYTES);
    client.send_message(0, SendRest).unwrap();
    expect_uploads(&done_rx, 1, REBIND_BYTES);
    assert_eq!(*remote.lock().unwrap(), Some(second_addr), "the server follows the client to its new port");
    let handoffs_after = total(&server, |s| read(&s.handoffs_out)) - handoffs_before;
    eprintln!(
        "steering {}: connection on server core {owner}; hand-offs {handoffs_before} before the rebinding, \
         {handoffs_after} after, of {} datagrams received",
        if steering { "on" } else { "off" },
        total(&server, |s| read(&s.rx_datagrams)),
    );

    drop(rebind_tx);
    proxy.join().unwrap();
    client.shutdown();
    client.join().unwrap();
    server.shutdown();
    server.join().unwrap();
    (handoffs_before, handoffs_after)
}

#[test]
fn nat_rebinding_keeps_the_connection_on_its_core() {
    let (before, after) = upload_across_rebinding(true);
    assert_eq!(before, 0, "hand-offs before the rebinding");
    assert_eq!(after, 0, "hand-offs after the rebinding: steering lost the connection's core");
}

/// The control for the test above: the new port does reach the wrong core when nothing steers.
#[test]
fn nat_rebinding_without_steering_takes_the_hand_off_path() {
    let (before, after) = upload_across_rebinding(false);
    assert_eq!(before, 0, "hand-offs before the rebinding");
    // The second phase alone is 2 MiB, more than 1400 full datagrams.
    assert!(after > 1000, "only {after} datagrams handed over after the rebinding");
}
