//! The admin HTTP listener: `/health` follows the cores' liveness (503 while a core is stalled,
//! 200 again after), `/ready` follows start and drain, and malformed or hostile requests get an
//! error status or a closed connection while the node keeps serving QUIC; a client over the cap
//! closes the oldest, so idle, slow and oversized clients together cannot lock the operator out,
//! and unfinished requests time out. In a takeover the new process joins the admin port and gets
//! every request once the old one closes its listener.

use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ant_quic::client::{BulkApp, BulkPayload};
use ant_quic::dataplane::stats::read;
use ant_quic::dataplane::{Application, Connections, Node, NodeConfig, NodeError};
use ant_quic::node::{connect_request, start_client_app, start_server, NodeOptions, Server};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use ant_quic_control::admin::{MAX_CLIENTS, MAX_REQUEST, MAX_REQUEST_LINE, REQUEST_DEADLINE};
use ant_quic_control::liveness::{STALL_AFTER, WAKE_INTERVAL};
use ant_quic_control::{AdminServer, AdminView, PreviousGeneration};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn server_with_admin(cores: usize) -> (Server, AdminServer) {
    let server = start_server(&NodeOptions {
        listen: SocketAddr::new(LOCALHOST, 0),
        cores: Some(cores),
        cpus: None,
        ..NodeOptions::default()
    })
    .unwrap();
    let admin = AdminServer::start(SocketAddr::new(LOCALHOST, 0), view_of(&server, 1)).unwrap();
    (server, admin)
}

/// What the admin server of `server` shows, as generation `generation` with no predecessor.
fn view_of(server: &Server, generation: u16) -> AdminView {
    AdminView {
        node: server.node.handle(),
        version: env!("CARGO_PKG_VERSION").into(),
        build: ant_quic::build_info::build_line().into(),
        peer_id: server.identity.peer_id().to_string(),
        started: Instant::now(),
        log_lines_dropped: None,
        bootstraps: None,
        nat: None,
        registry: None,
        generation,
        previous: Default::default(),
    }
}

/// Send raw bytes, half-close, read the answer: (status or 0 when closed without one, body).
fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A server that closes early may reset a large write: that is an acceptable answer too.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(), false)
}

fn wait_status(addr: SocketAddr, path: &str, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = get(addr, path);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} stayed {status}, wanted {want}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 1 MiB upload to `server` completes intact.
fn transfer_works(server: &Server) {
    let (tx, rx) = mpsc::channel();
    let data = ant_quic::protocol::filler();
    let repeat = (1u64 << 20).div_ceil(data.len() as u64);
    let client = start_client_app(
        SocketAddr::new(LOCALHOST, 0),
        None,
        None,
        BulkApp::new(BulkPayload::Upload { data, repeat, hash: true }, true, tx),
    )
    .unwrap();
    let request =
        connect_request(server.node.local_addr(), ServerAuth::PeerId(server.identity.peer_id()), &[ALPN_ANT_QUIC], 1)
            .unwrap();
    client.connect(request, Some(0)).unwrap();
    let outcome = rx.recv_timeout(Duration::from_secs(60)).expect("transfer did not finish");
    client.shutdown();
    client.join().unwrap();
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.remote_sha256, Some(outcome.local_sha256), "payload differs at the two ends");
}

#[test]
fn health_turns_503_while_a_core_stalls_and_200_after() {
    let (server, admin) = server_with_admin(2);
    let addr = admin.local_addr();

    let body = wait_status(addr, "/health", 200, Duration::from_secs(5));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["peer_id"], server.identity.peer_id().to_string());
    assert_eq!(json["backend"], server.node.backend().name());
    assert!(json["uptime_seconds"].is_u64());
    assert_eq!(json["cores"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["cores"][1]["alive"], true);
    assert_eq!(json["generation"], 1);
    assert!(json["previous"].is_null(), "{body}");

    // Idle cores sleep in the kernel; the liveness wake-ups keep them healthy past the stall
    // threshold: once every core has turned three more times (three wake-ups, each at least
    // WAKE_INTERVAL after the last) and at least STALL_AFTER has passed, no stall was ever counted.
    let turns = |server: &Server| server.node.stats().iter().map(|s| read(&s.loop_turns)).collect::<Vec<u64>>();
    let (before, idle_since) = (turns(&server), Instant::now());
    let deadline = idle_since + Duration::from_secs(30);
    while turns(&server).iter().zip(&before).any(|(now, then)| now < &(then + 3))
        || idle_since.elapsed() < STALL_AFTER + WAKE_INTERVAL
    {
        assert!(Instant::now() < deadline, "idle cores were not woken: turns {:?} from {before:?}", turns(&server));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = get(addr, "/metrics");
    for core in 0..2 {
        let stalls = format!("ant_quic_core_stalls_total{{core=\"{core}\"}} 0");
        assert!(metrics.contains(&stalls), "an idle core was taken for a stalled one:\n{metrics}");
    }
    assert_eq!(get(addr, "/health").0, 200, "an idle core was taken for a stalled one");
    assert!(admin.healthy());

    server.node.stall_core(1, Duration::from_secs(5)).unwrap();
    let body = wait_status(addr, "/health", 503, Duration::from_secs(5));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["cores"][1]["alive"], false);
    assert_eq!(json["cores"][0]["alive"], true);
    assert!(json["reason"].as_str().unwrap().contains("core 1 stalled"), "{body}");
    assert!(!admin.healthy(), "the watchdog condition ignores the stall");
    let (_, metrics) = get(addr, "/metrics");
    assert!(metrics.contains("ant_quic_core_alive{core=\"1\"} 0"), "{metrics}");
    assert!(metrics.contains("ant_quic_core_stalls_total{core=\"1\"} 1"), "{metrics}");

    wait_status(addr, "/health", 200, Duration::from_secs(8));
    transfer_works(&server);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

#[test]
fn ready_while_running_and_503_while_draining() {
    let (server, admin) = server_with_admin(1);
    let addr = admin.local_addr();
    wait_status(addr, "/ready", 200, Duration::from_secs(5));
    admin.set_draining();
    let body = wait_status(addr, "/ready", 503, Duration::from_secs(2));
    assert!(body.contains("draining"), "{body}");
    let (status, body) = get(addr, "/health");
    assert_eq!(status, 200, "a draining node is still healthy: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "draining", "{body}");
    server.node.shutdown();
    // Stopped cores: not ready and not healthy, with the reason.
    let body = wait_status(addr, "/health", 503, Duration::from_secs(5));
    assert!(body.contains("stopped"), "{body}");
    server.node.join().unwrap();
    admin.shutdown();
}

#[test]
fn malformed_requests_are_refused_and_the_node_keeps_serving() {
    let (server, admin) = server_with_admin(1);
    let addr = admin.local_addr();

    assert_eq!(exchange(addr, b"\x00\x01garbage\r\n\r\n", false).0, 400, "binary garbage");
    assert_eq!(exchange(addr, b"GET /health HTTP/9.9\r\n\r\n", false).0, 400, "bad version");
    assert_eq!(exchange(addr, b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", false).0, 400, "bad header");
    // The answer arrives even though the client sent far more than was read (lingering close).
    assert_eq!(exchange(addr, &huge_header(), false).0, 431, "huge header");
    assert_eq!(exchange(addr, &huge_request_line(), false).0, 414, "huge request line");
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(exchange(addr, format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes(), false).0, 431, "100 headers");
    // Incomplete request, then the client closes its side.
    assert_eq!(exchange(addr, b"GET /heal", true).0, 400, "incomplete request");
    assert_eq!(exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", false).0, 405, "wrong method");
    assert_eq!(get(addr, "/nope").0, 404);

    // A client that connects and says nothing does not hold up others.
    let silent = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    assert_eq!(get(addr, "/health").0, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "a silent client stalled the listener");
    drop(silent);

    assert_eq!(get(addr, "/metrics").0, 200);
    transfer_works(&server);
    assert_eq!(get(addr, "/health").0, 200);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

/// A request head four times the size limit.
fn huge_header() -> Vec<u8> {
    format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(4 * MAX_REQUEST)).into_bytes()
}

/// A request line four times its limit.
fn huge_request_line() -> Vec<u8> {
    format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(4 * MAX_REQUEST_LINE)).into_bytes()
}

/// Watch `clients` until one is closed without an answer; remove it and return its index. Fails
/// if none is within `limit`, or if one is answered meanwhile.
fn wait_for_one_closed(clients: &mut Vec<(TcpStream, Instant)>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    for (stream, _) in clients.iter() {
        stream.set_nonblocking(true).unwrap();
    }
    loop {
        let mut byte = [0u8; 1];
        for (i, (stream, _)) in clients.iter_mut().enumerate() {
            match stream.read(&mut byte) {
                Ok(0) => {
                    clients.remove(i);
                    for (stream, _) in clients.iter() {
                        stream.set_nonblocking(false).unwrap();
                    }
                    return i;
                }
                Ok(_) => panic!("slow client {i} was answered before its deadline"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A reset is a close without an answer too.
                Err(_) => {
                    clients.remove(i);
                    for (stream, _) in clients.iter() {
                        stream.set_nonblocking(false).unwrap();
                    }
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no slow client was closed to make room within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The listener holds at most `MAX_CLIENTS` connections: while that many slow clients hold them,
/// one more closes the oldest (unanswered) and is answered itself. A client whose request never
/// completes gets 408 once `REQUEST_DEADLINE` has passed (never before).
#[test]
fn a_client_over_the_cap_closes_the_oldest_and_unfinished_requests_time_out() {
    let (server, admin) = server_with_admin(1);
    let addr = admin.local_addr();
    wait_status(addr, "/health", 200, Duration::from_secs(5));

    // Each connect returns once the kernel queued the connection, so the listener accepts them in
    // this order: all the slow clients before the one over the cap.
    let mut slow: Vec<(TcpStream, Instant)> = (0..MAX_CLIENTS)
        .map(|_| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            let connected = Instant::now();
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: adm").unwrap();
            (stream, connected)
        })
        .collect();
    // One more, slow too: whether the listener accepts it before or after its first bytes, its
    // request is unfinished, so it needs a slot, and the oldest slow client gives it up: closed
    // unanswered, well before any 408 is due. (A complete request found in the queue is answered
    // at once without taking a slot, so this client completes its request only afterwards.)
    let mut over = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    over.write_all(b"GET /health HTTP/1.1\r\nHost: adm").unwrap();
    // Which one is the listener's oldest depends on the order the kernel completed the
    // handshakes, which under load is not always the order of the connects.
    let closed = wait_for_one_closed(&mut slow, REQUEST_DEADLINE - Duration::from_secs(1));
    eprintln!("slow client {closed} was closed to make room");
    over.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    over.write_all(b"in\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = over.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "a client over the cap of {MAX_CLIENTS} was not answered: {answer:?}");

    for (i, (mut stream, connected)) in slow.into_iter().enumerate() {
        stream.set_read_timeout(Some(REQUEST_DEADLINE + Duration::from_secs(30))).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let waited = connected.elapsed();
        assert!(response.starts_with("HTTP/1.1 408 "), "slow client {i} got {response:?} after {waited:?}");
        assert!(waited >= REQUEST_DEADLINE, "slow client {i} timed out after {waited:?}, before {REQUEST_DEADLINE:?}");
    }
    assert_eq!(get(addr, "/health").0, 200);
    transfer_works(&server);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

/// Hundreds of idle connections, slow clients sending a byte at a time and oversized requests,
/// all at once, do not lock the operator out: every `/health` is answered, oversized requests get
/// 414 and 431, and the node keeps serving QUIC.
#[test]
fn idle_slow_and_oversized_clients_together_do_not_lock_out_health() {
    const IDLE: usize = 500;
    const SLOW: usize = 2 * MAX_CLIENTS;
    const PROBES: usize = 20;
    let (server, admin) = server_with_admin(1);
    let addr = admin.local_addr();
    wait_status(addr, "/health", 200, Duration::from_secs(5));

    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect()).collect();
    let mut slow: Vec<TcpStream> = (0..SLOW).map(|_| connect()).collect();
    let oversized = std::thread::spawn(move || {
        (0..10)
            .map(|_| (exchange(addr, &huge_header(), false).0, exchange(addr, &huge_request_line(), false).0))
            .collect::<Vec<_>>()
    });
    let request = b"GET /health HTTP/1.1\r\nHost: admin\r\n";
    for probe in 0..PROBES {
        // Each slow client sends one more byte between probes (some are closed by now: ignored).
        for stream in &mut slow {
            let _ = stream.write_all(request.get(probe..=probe).unwrap_or(b"x"));
        }
        let (status, body) = get(addr, "/health");
        assert_eq!(status, 200, "probe {probe} of /health under {IDLE} idle and {SLOW} slow clients: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "ok", "{body}");
    }
    for (status_header, status_line) in oversized.join().unwrap() {
        assert_eq!((status_header, status_line), (431, 414), "oversized requests under load");
    }
    transfer_works(&server);
    drop((idle, slow));
    assert_eq!(get(addr, "/health").0, 200);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

/// Panics on any message: a bug on a core thread.
struct Panicky;
impl Application for Panicky {
    fn on_message(&mut self, _conns: &mut Connections<'_>, _message: ()) {
        panic!("deliberate panic on the core (test)");
    }
}

#[test]
fn a_panic_on_a_core_is_caught_and_reported() {
    let mut config = NodeConfig::new(SocketAddr::new(LOCALHOST, 0), None);
    config.cores = Some(2);
    config.pin_threads = false;
    let node = Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Panicky) })).unwrap();
    let view = AdminView {
        node: node.handle(),
        version: env!("CARGO_PKG_VERSION").into(),
        build: ant_quic::build_info::build_line().into(),
        peer_id: "test".into(),
        started: Instant::now(),
        log_lines_dropped: None,
        bootstraps: None,
        nat: None,
        registry: None,
        generation: 1,
        previous: Default::default(),
    };
    let admin = AdminServer::start(SocketAddr::new(LOCALHOST, 0), view).unwrap();
    let addr = admin.local_addr();
    wait_status(addr, "/health", 200, Duration::from_secs(5));

    node.send_message(1, ()).unwrap();
    let body = wait_status(addr, "/health", 503, Duration::from_secs(5));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["cores"][1]["state"], "failed", "{body}");
    assert_eq!(json["cores"][0]["alive"], true, "{body}");
    let reason = json["reason"].as_str().unwrap();
    assert!(reason.contains("core 1 failed") && reason.contains("deliberate panic"), "{body}");
    assert_eq!(get(addr, "/ready").0, 503);
    let (_, metrics) = get(addr, "/metrics");
    assert!(metrics.contains("ant_quic_core_failures_total{core=\"1\"} 1"), "{metrics}");

    admin.shutdown();
    node.shutdown();
    match node.join() {
        Err(NodeError::CoreFailed { core: 1, reason }) => assert!(reason.contains("deliberate panic"), "{reason}"),
        other => panic!("join should report core 1's panic, got {other:?}"),
    }
}

/// The generation that answered `GET /health` on `addr`, and the JSON it answered.
fn health_generation(addr: SocketAddr) -> (u64, serde_json::Value) {
    let (status, body) = get(addr, "/health");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    (json["generation"].as_u64().unwrap(), json)
}

#[test]
fn a_takeover_joins_the_admin_port_and_gets_every_request_once_the_old_listener_closes() {
    let (server, old) = server_with_admin(1);
    let addr = old.local_addr();
    let previous = Arc::new(Mutex::new(Some(PreviousGeneration { pid: 4242, generation: 1, connections: 7 })));
    let new =
        AdminServer::start_joining(addr, AdminView { previous: Arc::clone(&previous), ..view_of(&server, 2) }).unwrap();
    assert_eq!(new.local_addr(), addr);

    // The kernel spreads connections over the group by their addresses: both processes answer.
    let mut seen = [false; 2];
    for _ in 0..400 {
        let (generation, _) = health_generation(addr);
        assert!(generation == 1 || generation == 2, "generation {generation}");
        seen[usize::from(generation == 2)] = true;
        if seen == [true; 2] {
            break;
        }
    }
    assert_eq!(seen, [true; 2], "both listeners of the group answer (old, new)");

    let started = Instant::now();
    old.close_listener();
    assert!(started.elapsed() < Duration::from_millis(50), "close_listener took {:?}", started.elapsed());
    for request in 0..50 {
        let (generation, json) = health_generation(addr);
        assert_eq!(generation, 2, "request {request} after close_listener reached the old process");
        assert_eq!(json["previous"], serde_json::json!({ "pid": 4242, "generation": 1, "connections": 7 }));
    }
    // The binary updates what it knows of its predecessor; /health follows.
    *previous.lock().unwrap() = None;
    assert!(health_generation(addr).1["previous"].is_null());
    let (_, metrics) = get(addr, "/metrics");
    assert!(metrics.contains("\nant_quic_generation 2\n"), "{metrics}");
    // The old control thread still watches its cores.
    assert!(old.healthy());

    old.shutdown();
    assert_eq!(health_generation(addr).0, 2);
    new.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

#[test]
fn a_connection_queued_when_the_listener_closes_is_still_answered() {
    let (server, admin) = server_with_admin(1);
    let addr = admin.local_addr();
    // The kernel completes the handshake at once; the thread accepts it now or while closing.
    let mut queued = TcpStream::connect(addr).unwrap();
    admin.close_listener();
    queued.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    queued.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut response = String::new();
    queued.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    // Alone in its group, a closed listener leaves nobody to connect to.
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    admin.shutdown();
    server.node.shutdown();
    server.node.join().unwrap();
}

#[test]
fn start_refuses_a_port_another_listener_holds() {
    let (server, held) = server_with_admin(1);
    let addr = held.local_addr();
    // Another node given the same admin port fails as it did before SO_REUSEPORT.
    let error = AdminServer::start(addr, view_of(&server, 1)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    assert_eq!(get(addr, "/ready").0, 200, "the holder keeps serving");
    held.shutdown();

    // A listener without SO_REUSEPORT cannot be joined, not even by a takeover.
    let plain = TcpListener::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let error = AdminServer::start_joining(plain.local_addr().unwrap(), view_of(&server, 2)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
    drop(plain);
    server.node.shutdown();
    server.node.join().unwrap();
}
