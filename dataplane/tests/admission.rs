//! Admission on a real node over loopback (`dataplane::admission`): Retry, the half-open cap
//! and the handshake timeout, seen from the wire and from the node's counters.
//!
//! Half-open connections are made the way a flood makes them: a QUIC client endpoint builds a
//! fresh connection's first Initial, a plain UDP socket sends it, and nothing answers the
//! server afterwards. Every wait is bounded by a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic_dataplane::admission::RefuseReason;
use ant_quic_dataplane::quinn_proto::{
    ClientConfig, ConnectionError, DatagramEvent, Endpoint, EndpointConfig, EndpointEvent, Event, ServerConfig,
    TransportErrorCode,
};
use ant_quic_dataplane::stats::read;
use ant_quic_dataplane::{AdmissionConfig, Application, ConnRef, ConnectRequest, Node, NodeConfig, RetryPolicy};
use bytes::BytesMut;
use common::{tls, total, wait_for, DEADLINE};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Tells the test when a connection completes its handshake.
struct Connected(Arc<Mutex<mpsc::Sender<()>>>);

impl Application for Connected {
    fn on_connected(&mut self, _conn: &mut ConnRef<'_>) {
        let _ = self.0.lock().unwrap().send(());
    }
}

fn start(server: Option<Arc<ServerConfig>>, admission: AdmissionConfig) -> (Node, mpsc::Receiver<()>) {
    let mut config = NodeConfig::new(SocketAddr::new(LOCALHOST, 0), server);
    config.cores = Some(1);
    config.admission = admission;
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let node =
        Node::start(config, Arc::new(move |_core: usize| Box::new(Connected(Arc::clone(&tx))) as Box<dyn Application>))
            .unwrap();
    (node, rx)
}

/// A client node completes a handshake with `server`; the connection lives as long as the node.
fn handshake(server: SocketAddr, client_tls: &ClientConfig) -> Node {
    let (client, connected) = start(None, AdmissionConfig::DEFAULT);
    let request =
        ConnectRequest { remote: server, server_name: "server.test".into(), config: client_tls.clone(), tag: 1 };
    client.connect(request, None).unwrap();
    connected.recv_timeout(DEADLINE).expect("the client's handshake completes");
    client
}

fn stop(node: Node) {
    node.shutdown();
    node.join().unwrap();
}

/// Sends the first Initial of fresh connections from one socket and never answers.
struct Flood {
    endpoint: Endpoint,
    socket: UdpSocket,
    config: ClientConfig,
    sent_bytes: usize,
}

impl Flood {
    fn new(config: &ClientConfig) -> Self {
        let socket = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        Self { endpoint, socket, config: config.clone(), sent_bytes: 0 }
    }

    fn send(&mut self, to: SocketAddr, count: usize) {
        for _ in 0..count {
            let now = Instant::now();
            let (handle, mut conn) = self.endpoint.connect(now, self.config.clone(), to, "server.test").unwrap();
            let mut buf = Vec::new();
            let transmit = conn.poll_transmit(now, 1, &mut buf).unwrap();
            self.socket.send_to(&buf[..transmit.size], to).unwrap();
            self.sent_bytes += transmit.size;
            let _ = self.endpoint.handle_event(handle, EndpointEvent::drained());
        }
    }

    /// First bytes and total size of everything received until the socket is quiet for 200 ms.
    fn answers(&self) -> (Vec<u8>, usize) {
        let (mut first_bytes, mut bytes) = (Vec::new(), 0);
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.socket.recv(&mut buf) {
            first_bytes.push(buf[0]);
            bytes += n;
        }
        (first_bytes, bytes)
    }
}

fn is_retry(first: u8) -> bool {
    first & 0x80 != 0 && (first >> 4) & 0x03 == 0x03
}

#[test]
fn retry_always_makes_every_client_prove_its_address_first() {
    let (server_tls, client_tls) = tls("server.test");
    let admission = AdmissionConfig { retry: RetryPolicy::Always, ..AdmissionConfig::DEFAULT };
    let (server, _) = start(Some(server_tls), admission);
    let addr = server.local_addr();

    stop(handshake(addr, &client_tls));
    assert_eq!(total(&server, |c| read(&c.retry_sent)), 1, "one Retry before the handshake");
    assert_eq!(total(&server, |c| read(&c.connections_accepted)), 1, "accepted once the token came back");

    // A flood gets a Retry for each Initial, and the server keeps nothing.
    let mut flood = Flood::new(&client_tls);
    flood.send(addr, 20);
    let (answers, bytes) = flood.answers();
    assert_eq!(answers.len(), 20, "one answer per Initial");
    assert!(answers.iter().all(|&b| is_retry(b)), "every answer is a Retry: {answers:x?}");
    assert!(bytes < flood.sent_bytes, "Retry packets are smaller than the Initials they answer");
    assert_eq!(total(&server, |c| read(&c.connections_accepted)), 1);
    assert_eq!(total(&server, |c| read(&c.handshakes_in_flight)), 0);
    stop(server);
}

#[test]
fn auto_retries_only_once_the_threshold_is_in_flight() {
    let (server_tls, client_tls) = tls("server.test");
    let admission = AdmissionConfig { retry: RetryPolicy::Auto, retry_threshold: 3, ..AdmissionConfig::DEFAULT };
    let (server, _) = start(Some(server_tls), admission);
    let addr = server.local_addr();

    let mut flood = Flood::new(&client_tls);
    flood.send(addr, 3);
    wait_for("three half-open connections", || total(&server, |c| read(&c.handshakes_in_flight)) == 3);
    assert_eq!(total(&server, |c| read(&c.retry_sent)), 0, "below the threshold nobody is asked to retry");
    flood.send(addr, 5);
    wait_for("five Retry packets", || total(&server, |c| read(&c.retry_sent)) == 5);
    assert_eq!(total(&server, |c| read(&c.connections_accepted)), 3);

    // Every answer to the unvalidated flood stays within the anti-amplification limit.
    let (answers, bytes) = flood.answers();
    assert_eq!(answers.iter().filter(|&&b| is_retry(b)).count(), 5);
    assert!(bytes <= 3 * flood.sent_bytes, "answers {bytes} bytes to {} bytes sent", flood.sent_bytes);

    // A legitimate client still gets in, through a Retry.
    stop(handshake(addr, &client_tls));
    assert_eq!(total(&server, |c| read(&c.retry_sent)), 6);
    assert_eq!(total(&server, |c| read(&c.handshakes_completed)), 1);
    stop(server);
}

#[test]
fn the_half_open_cap_refuses_and_the_handshake_timeout_frees_the_state() {
    let (server_tls, client_tls) = tls("server.test");
    let admission = AdmissionConfig {
        retry: RetryPolicy::Never,
        max_half_open: 4,
        handshake_timeout: Duration::from_secs(1),
        ..AdmissionConfig::DEFAULT
    };
    let (server, _) = start(Some(server_tls), admission);
    let addr = server.local_addr();

    let mut flood = Flood::new(&client_tls);
    flood.send(addr, 6);
    wait_for("two refusals at the cap", || total(&server, |c| c.handshakes_refused(RefuseReason::HalfOpenLimit)) == 2);
    assert_eq!(total(&server, |c| read(&c.connections_accepted)), 4);
    assert_eq!(total(&server, |c| read(&c.handshakes_in_flight)), 4);
    assert_eq!(total(&server, |c| read(&c.connections_active)), 4);

    // Nobody answers: after the handshake timeout (not the 30 s idle timeout) the state is gone.
    wait_for("the half-open connections to time out", || total(&server, |c| read(&c.handshakes_timed_out)) == 4);
    assert_eq!(total(&server, |c| read(&c.connections_active)), 0);
    assert_eq!(total(&server, |c| read(&c.handshakes_in_flight)), 0);
    assert_eq!(total(&server, |c| read(&c.handshake_failures)), 4);

    // The core takes connections again, and completed ones are not timed out.
    let client = handshake(addr, &client_tls);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(total(&server, |c| read(&c.handshakes_timed_out)), 4, "a completed handshake never times out");
    assert_eq!(total(&server, |c| read(&c.connections_active)), 1, "the client's connection lives on");
    assert_eq!(total(&server, |c| c.handshakes_refused(RefuseReason::HalfOpenLimit)), 2);
    stop(client);
    stop(server);
}

#[test]
fn a_timed_out_handshake_is_closed_and_the_client_told() {
    let (server_tls, client_tls) = tls("server.test");
    // Shorter than the node's first PTO (about 1 s): the close is not kept from the client by an
    // anti-amplification budget spent on retransmitting a flight the client never acknowledges.
    let admission = AdmissionConfig {
        retry: RetryPolicy::Never,
        handshake_timeout: Duration::from_millis(500),
        ..AdmissionConfig::DEFAULT
    };
    let (server, _) = start(Some(server_tls), admission);
    let addr = server.local_addr();

    // A client whose first Initial reaches the node, and which then listens without answering.
    let socket = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
    let (handle, mut conn) = endpoint.connect(Instant::now(), client_tls, addr, "server.test").unwrap();
    let mut buf = Vec::new();
    let transmit = conn.poll_transmit(Instant::now(), 1, &mut buf).unwrap();
    socket.send_to(&buf[..transmit.size], addr).unwrap();

    // Everything that arrives goes to the client's connection, until it reports its end. Its own
    // timers never run, so only the node can end it.
    let deadline = Instant::now() + DEADLINE;
    let (mut datagrams, mut bytes) = (0, 0);
    let reason = 'listen: loop {
        assert!(Instant::now() < deadline, "no close after {datagrams} datagrams from the node");
        let mut datagram = [0u8; 2048];
        if let Ok((n, from)) = socket.recv_from(&mut datagram) {
            (datagrams, bytes) = (datagrams + 1, bytes + n);
            let data = BytesMut::from(&datagram[..n]);
            if let Some(DatagramEvent::ConnectionEvent(to, event)) =
                endpoint.handle(Instant::now(), from, None, None, data, &mut Vec::new())
            {
                assert_eq!(to, handle);
                conn.handle_event(event);
            }
        }
        while let Some(event) = conn.poll() {
            if let Event::ConnectionLost { reason } = event {
                break 'listen reason;
            }
        }
    };
    // Before the handshake completes the close is a transport CONNECTION_CLOSE (APPLICATION_ERROR);
    // a client that can read 1-RTT packets gets the node's reason too.
    match &reason {
        ConnectionError::ConnectionClosed(close) => assert_eq!(close.error_code, TransportErrorCode::APPLICATION_ERROR),
        ConnectionError::ApplicationClosed(close) => assert_eq!(&close.reason[..], b"handshake timeout"),
        other => panic!("the client's connection ended otherwise: {other}"),
    }
    assert!(bytes <= 3 * transmit.size, "{bytes} bytes answered {} bytes", transmit.size);

    // The node keeps nothing, and counts it as before.
    wait_for("the handshake to time out", || total(&server, |c| read(&c.handshakes_timed_out)) == 1);
    assert_eq!(total(&server, |c| read(&c.connections_active)), 0);
    assert_eq!(total(&server, |c| read(&c.handshakes_in_flight)), 0);
    assert_eq!(total(&server, |c| read(&c.handshake_failures)), 1);
    eprintln!(
        "the client was told after {datagrams} datagrams, {bytes} bytes, for {} bytes sent: {reason}",
        transmit.size
    );
    stop(server);
}
