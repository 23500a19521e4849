//! NAT traversal through a bootstrap on loopback (no NAT, no root): what a user of the CLI and an
//! operator of a bootstrap see, and what a hostile client of the signalling stream gets.
//!
//! - `--connect PEER_ID --json --send-bytes N` reaches a registered peer directly; the bytes
//!   arrive with the same SHA-256; the bootstrap's metrics count the registration, the punch and
//!   the reported success; `/health` of the peer lists its bootstrap with the observed address;
//! - `--connect` to a peer nobody registered fails with one line; so does connecting to oneself;
//! - `--test` with one bootstrap: reachable, observed address, mapping unknown;
//! - the signalling stream refuses a client without a certificate (`not_authenticated`),
//!   answers a malformed frame with `malformed`, and rate-limits a flood (`rate_limited`, counted);
//! - `--relay-lifetime` (`[nat] relay_lifetime`) is the lifetime a bootstrap grants, and its
//!   allocation forwards frames between its two ends;
//! - a bootstrap with short relay lifetimes and small limits (started in this process) forwards
//!   between the two ends of an allocation up to its rate and byte limits, drops and counts the
//!   rest by reason, and removes the allocation when its lifetime ends;
//! - a bootstrap handing over (`Nat::begin_handover`, as before a takeover) has its registered
//!   peers open a new connection each and register there, the old connections close without
//!   error, and both peers can still be reached by ID;
//! - with the bootstrap on `--backend af-xdp` (root; `nat_loopback/af_xdp.rs`): peers reach each
//!   other by ID through it, and a relay allocation forwards between its two ends, every datagram
//!   to the bootstrap through its AF_XDP rings.

#[cfg(target_os = "linux")]
#[path = "nat_loopback/af_xdp.rs"]
mod af_xdp;
mod common;
#[cfg(target_os = "linux")]
#[path = "../dataplane/tests/common/veth.rs"]
mod veth;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::relay::MIN_RATE_BURST;
use ant_quic::dataplane::stats::read;
use ant_quic::dataplane::{Application, ConnId, ConnRef, Connections, Node, ReadOutcome, RelayDrop, RELAY_MARKER};
use ant_quic::identity::Identity;
use ant_quic::nat::NatOptions;
use ant_quic::node::{start_client, start_server, NodeOptions, Server};
use ant_quic::tls::{self, CertifiedKey, ServerAuth, ALPN_ANT_QUIC};
use ant_quic_control::nat::coordinator::CoordinatorConfig;
use ant_quic_control::nat::wire::{encode_frame, FrameReader};
use ant_quic_control::nat::{ErrorCode, Message};
use ant_quic_control::PeerId;
use anyhow::{ensure, Context, Result};
use common::{http_get, run, sample, NodeProcess, TempDir, NODE_BIN};
use quinn_proto::StreamId;

fn node(dir: &TempDir, name: &str, extra: &[&str]) -> Result<NodeProcess> {
    node_at(dir, name, "127.0.0.1", extra)
}

/// A node listening on `ip` (any port), one core.
fn node_at(dir: &TempDir, name: &str, ip: &str, extra: &[&str]) -> Result<NodeProcess> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", &format!("{ip}:0"), "--cores", "1", "--data-dir"]).arg(dir.path().join(name)).args(extra);
    let logs = dir.path().join(format!("{name}-logs"));
    std::fs::create_dir_all(&logs)?;
    NodeProcess::start(&mut cmd, &logs)
}

fn one_shot(dir: &TempDir, name: &str, args: &[&str]) -> Result<common::Finished> {
    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--cores", "1", "--data-dir"]).arg(dir.path().join(name)).args(args);
    run(name, &mut cmd, dir.path(), Duration::from_secs(60))
}

fn admin(node: &NodeProcess) -> SocketAddr {
    node.admin().unwrap()
}

/// Scrape `node` until `done` holds.
fn metrics_until(node: &NodeProcess, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(admin(node), "/metrics");
        if done(&body) {
            return Ok(body);
        }
        ensure!(Instant::now() < deadline, "/metrics never showed what was expected:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll `/health` of `node` until `done` holds on its JSON.
fn health_until(node: &NodeProcess, done: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(admin(node), "/health");
        let json: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{status} {body}"))?;
        if done(&json) {
            return Ok(json);
        }
        ensure!(Instant::now() < deadline, "/health never showed what was expected: {json}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn peers_reach_each_other_by_id_through_a_bootstrap() -> Result<()> {
    let mut dir = TempDir::new("nat-loopback")?.keep_unless_passed();
    let bootstrap = node(&dir, "bootstrap", &[])?;
    let b_addr = bootstrap.addr.to_string();
    peers_reach_each_other_by_id(&dir, &bootstrap, "127.0.0.1")?;

    // --test: reachable, observed address, and the mapping from one bootstrap: its alternate port
    // sees the same address (no NAT on loopback), so endpoint-independent.
    let out = one_shot(&dir, "tester", &["--bootstrap", &b_addr, "--test", "--json"])?;
    ensure!(out.status.success(), "--test failed: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(report["reachable"], true);
    let observed = report["observed"].as_str().unwrap_or_default();
    assert!(observed.starts_with("127.0.0.1:"), "{report}");
    assert_eq!(report["bootstraps"][0]["observed_from_alternate"][0], observed, "{report}");
    assert_eq!(report["mapping"], "endpoint-independent", "{report}");

    // A bootstrap with its alternate port off: one bootstrap tells no mapping.
    let mut cmd = Command::new(NODE_BIN);
    cmd.env("ANT_QUIC_NAT_ALTERNATE_PORT", "0").args(["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"]);
    cmd.arg(dir.path().join("plain"));
    let plain = NodeProcess::start(&mut cmd, dir.path())?;
    let plain_addr = plain.addr.to_string();
    let out = one_shot(&dir, "tester-plain", &["--bootstrap", &plain_addr, "--test", "--json"])?;
    ensure!(out.status.success(), "--test failed: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    assert!(report["mapping"].as_str().is_some_and(|m| m.starts_with("unknown")), "{report}");
    assert_eq!(report["bootstraps"][0]["observed_from_alternate"], serde_json::json!([]), "{report}");

    dir.passed();
    Ok(())
}

/// A peer on `peer_ip` registers with `bootstrap`; a client reaches it by its ID and sends it
/// 8 MB (SHA-256 checked); the bootstrap counts the punch; an unknown ID fails with one line.
fn peers_reach_each_other_by_id(dir: &TempDir, bootstrap: &NodeProcess, peer_ip: &str) -> Result<()> {
    let b_addr = bootstrap.addr.to_string();
    let peer = node_at(dir, "peer", peer_ip, &["--bootstrap", &b_addr])?;

    let health = health_until(&peer, |h| h["bootstraps"][0]["observed"].is_string())?;
    assert_eq!(health["peer_id"], peer.peer_id.as_str());
    assert_eq!(health["bootstraps"][0]["address"], b_addr.as_str());
    assert_eq!(health["bootstraps"][0]["registered"], true);
    assert_eq!(health["bootstraps"][0]["observed"], peer.addr.to_string().as_str(), "no NAT between them");

    // Reach the peer by its ID and send 8 MB over the connection.
    let out = one_shot(
        dir,
        "client",
        &["--bootstrap", &b_addr, "--connect", &peer.peer_id, "--json", "--send-bytes", "8000000"],
    )?;
    ensure!(out.status.success(), "--connect failed: {}", out.stderr);
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).context("one JSON line")?;
    assert_eq!(line["path"], "direct", "{line}");
    assert_eq!(line["remote"], peer.addr.to_string().as_str(), "{line}");
    assert_eq!(line["bytes"], 8_000_000, "{line}");
    assert_eq!(line["verified"], true, "the receiver's SHA-256 differs: {line}");
    assert!(line["connect_ms"].as_f64().is_some_and(|ms| ms > 0.0 && ms < 5000.0), "{line}");
    assert!(line["rtt_ms"].as_f64().is_some(), "{line}");

    // The bootstrap counted the registrations, the punch and the initiator's report.
    let metrics = metrics_until(bootstrap, |m| {
        sample(m, "nat_traversal_attempts_total{outcome=\"connected\",path=\"direct\"}").is_some_and(|v| v >= 1.0)
            && sample(m, "nat_punches_coordinated_total").is_some_and(|v| v >= 1.0)
    })?;
    assert_eq!(sample(&metrics, "nat_traversal_success_rate"), Some(1.0));
    assert!(sample(&metrics, "nat_traversal_time_to_direct_seconds_count").is_some_and(|v| v >= 1.0));
    if common::require_prometheus("promtool")? {
        common::promtool_check_metrics(&metrics);
    }

    // The peer punched too (as responder): it probed and answered the client's probes.
    metrics_until(&peer, |m| {
        sample(m, "nat_probes_total{kind=\"sent\"}").is_some_and(|v| v >= 1.0)
            && sample(m, "nat_probes_total{kind=\"answered\"}").is_some_and(|v| v >= 1.0)
    })?;

    // Nobody registered this ID: one line, non-zero exit.
    let stranger = PeerId([7; 32]).to_string();
    let out = one_shot(dir, "client", &["--bootstrap", &b_addr, "--connect", &stranger, "--timeout", "10"])?;
    ensure!(!out.status.success(), "connected to a peer nobody registered: {}", out.stdout);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    ensure!(errors.len() == 1 && errors[0].contains("unknown_peer"), "{}", out.stderr);

    Ok(())
}

/// Opens the signalling stream, sends `frames`, then any frame sent to it as a message; hands
/// every answer over.
struct Signaller {
    frames: Vec<Vec<u8>>,
    reader: FrameReader,
    stream: Option<(ConnId, StreamId)>,
    answers: mpsc::Sender<Message>,
}

impl Application<Vec<u8>> for Signaller {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let stream = conn.open_bi().unwrap();
        let mut bytes = vec![b'S'];
        for frame in &self.frames {
            bytes.extend_from_slice(frame);
        }
        assert_eq!(conn.write(stream, &bytes).unwrap(), bytes.len());
        self.stream = Some((conn.id(), stream));
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let mut chunks = Vec::new();
        let outcome = conn.read(stream, &mut |c| chunks.push(c));
        for chunk in chunks {
            self.reader.push(&chunk);
        }
        while let Some(Ok(message)) = self.reader.next_message() {
            let _ = self.answers.send(message);
        }
        let _ = outcome.map(|o| o == ReadOutcome::Finished);
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, frame: Vec<u8>) {
        let Some((id, stream)) = self.stream else { return };
        if let Some(mut conn) = conns.get(id) {
            assert_eq!(conn.write(stream, &frame).unwrap(), frame.len());
        }
    }
}

/// A client of a node's signalling stream: a node of its own, the answers that came so far, and
/// frames to send after the first ones. Stopped when dropped.
struct Peer {
    node: Node<Vec<u8>>,
    rx: mpsc::Receiver<Message>,
    answers: Vec<Message>,
}

impl Peer {
    /// Connect to `server` (as `identity`, if any) and send `frames` on the signalling stream.
    fn open(server: SocketAddr, identity: Option<&Identity>, frames: Vec<Vec<u8>>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let app = Signaller { frames, reader: FrameReader::new(), stream: None, answers: tx };
        let node = start_client(None, app)?;
        let certified = identity.map(CertifiedKey::of_identity);
        let config = tls::client_config_with(ServerAuth::Insecure, &[ALPN_ANT_QUIC], certified.as_ref())?;
        let request = ant_quic::dataplane::ConnectRequest {
            remote: server,
            server_name: tls::default_server_name().to_owned(),
            config,
            tag: 0,
        };
        node.connect(request, Some(0))?;
        Ok(Self { node, rx, answers: Vec::new() })
    }

    /// Collect answers until `done` holds for all of them (checked on every answer and every
    /// 100 ms), at most 10 s; whether it came to hold.
    fn collect(&mut self, mut done: impl FnMut(&[Message]) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.answers) {
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(message) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.answers.push(message);
            }
        }
        true
    }

    /// Write `frame` on the signalling stream.
    fn send(&self, frame: Vec<u8>) -> Result<()> {
        Ok(self.node.send_message(0, frame)?)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

/// Opens the signalling stream of `server` (as `identity`, if any), sends `frames`, and collects
/// the answers until `done` holds for them, or for 10 s; the caller asserts on what came.
fn signal(
    server: SocketAddr,
    identity: Option<&Identity>,
    frames: Vec<Vec<u8>>,
    done: impl FnMut(&[Message]) -> bool,
) -> Result<Vec<Message>> {
    let mut peer = Peer::open(server, identity, frames)?;
    peer.collect(done);
    Ok(std::mem::take(&mut peer.answers))
}

/// The metric of signalling messages dropped by the rate limit.
const RATE_LIMITED: &str = "nat_signalling_rejected_total{reason=\"rate_limited\"}";

/// The requests answered `unknown_peer` (served: the target is unknown), in order.
fn served(answers: &[Message]) -> Vec<u64> {
    answers
        .iter()
        .filter_map(|m| match m {
            Message::Error { code: ErrorCode::UnknownPeer, request, .. } => Some(*request),
            _ => None,
        })
        .collect()
}

fn error_codes(answers: &[Message]) -> Vec<ErrorCode> {
    answers.iter().filter_map(|m| if let Message::Error { code, .. } = m { Some(*code) } else { None }).collect()
}

#[test]
fn the_signalling_stream_refuses_anonymous_malformed_and_flooding_clients() -> Result<()> {
    let mut dir = TempDir::new("nat-signalling")?.keep_unless_passed();
    let bootstrap = node(&dir, "bootstrap", &[])?;
    let request = |n: u64| encode_frame(&Message::ConnectRequest { request: n, target: PeerId([9; 32]) });

    // No client certificate: no peer ID, so it cannot register or ask for anything.
    let answers = signal(bootstrap.addr, None, vec![request(1)], |a| a.len() >= 2)?;
    ensure!(error_codes(&answers).contains(&ErrorCode::NotAuthenticated), "{answers:?}");
    ensure!(!answers.iter().any(|m| matches!(m, Message::ObservedAddress { .. })), "{answers:?}");

    // Authenticated: registered (observed address), and a malformed message is answered as such.
    let identity = Identity::ephemeral()?;
    let bad = vec![0u8, 4, 1, 0x7f, 0, 0]; // a 4-byte frame: version 1, unknown type 0x7f
    let answered = |a: &[Message]| {
        error_codes(a).contains(&ErrorCode::Malformed) && error_codes(a).contains(&ErrorCode::UnknownPeer)
    };
    let answers = signal(bootstrap.addr, Some(&identity), vec![bad, request(2)], answered)?;
    ensure!(
        answers.iter().any(|m| matches!(m, Message::OtherAddress { .. })),
        "no alternate address named: {answers:?}"
    );
    ensure!(answers.iter().any(|m| matches!(m, Message::ObservedAddress { .. })), "{answers:?}");
    ensure!(error_codes(&answers).contains(&ErrorCode::Malformed), "{answers:?}");
    ensure!(error_codes(&answers).contains(&ErrorCode::UnknownPeer), "{answers:?}");

    // A flood of 100 requests on one stream. The session's token bucket (40 at once, 20 a second
    // after that) serves some, each answered `unknown_peer`; the rest are dropped and counted in
    // the metric, with one `rate_limited` answer per burst. Every request is one or the other.
    const FLOOD: u64 = 100;
    let flood: Vec<Vec<u8>> = (10..10 + FLOOD).map(request).collect();
    let refused = || sample(&http_get(admin(&bootstrap), "/metrics").1, RATE_LIMITED).unwrap_or(0.0) as u64;
    let started = Instant::now();
    let mut flooder = Peer::open(bootstrap.addr, Some(&identity), flood)?;
    flooder.collect(|a| served(a).len() as u64 + refused() >= FLOOD);
    // All the flood's answers are in once the answer to a later request is (one stream, answered
    // in order). That request is served: 100 ms after the flood the bucket holds two tokens again.
    std::thread::sleep(Duration::from_millis(100));
    flooder.send(request(1000))?;
    let last = flooder.collect(|a| served(a).contains(&1000));
    let watched = started.elapsed();
    let codes = error_codes(&flooder.answers);
    ensure!(last, "the request after the flood was not answered: {codes:?}");
    let served: Vec<u64> = served(&flooder.answers).into_iter().filter(|r| *r != 1000).collect();
    drop(flooder);
    let refused = refused();
    ensure!(
        served.len() as u64 + refused == FLOOD,
        "{} requests served and {refused} refused, of {FLOOD}: {codes:?}",
        served.len()
    );
    ensure!(codes.contains(&ErrorCode::RateLimited), "no rate_limited answer: {codes:?}");
    ensure!(served.iter().all(|r| (10..10 + FLOOD).contains(r)), "answers to requests never sent: {served:?}");
    ensure!(served.windows(2).all(|w| w[0] < w[1]), "a request answered twice or out of order: {served:?}");
    // No more than the burst and what the bucket refilled while the test watched.
    let allowance = 40 + (20.0 * watched.as_secs_f64()).ceil() as usize;
    ensure!(served.len() <= allowance, "{} served within {watched:?}: more than the bucket allows", served.len());
    metrics_until(&bootstrap, |m| {
        sample(m, "nat_signalling_rejected_total{reason=\"malformed\"}").is_some_and(|v| v >= 1.0)
    })?;
    ensure!(!bootstrap.stderr().contains("panicked"), "{}", bootstrap.stderr());
    dir.passed();
    Ok(())
}

/// Sum of one counter over a node's cores.
fn total(node: &ant_quic::dataplane::NodeHandle, read: impl Fn(&ant_quic::dataplane::stats::CoreStats) -> u64) -> u64 {
    node.all_stats().map(read).sum()
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn peers_re_register_when_their_bootstrap_hands_over() -> Result<()> {
    use ant_quic::dataplane::stats::CloseClass;
    use std::sync::atomic::Ordering::Relaxed;

    let mut dir = TempDir::new("nat-handover")?.keep_unless_passed();
    // In process, so that the test can call begin_handover as the binary will at a takeover. With
    // no successor on the port, the new connections reach this same node: it registers them again
    // and does not tell those peers twice.
    let options = ant_quic::node::NodeOptions {
        listen: "127.0.0.1:0".parse()?,
        cores: Some(1),
        ..ant_quic::node::NodeOptions::default()
    };
    let bootstrap = ant_quic::node::start_server(&options)?;
    let b_addr = bootstrap.node.local_addr().to_string();
    let peers = [node(&dir, "peer-a", &["--bootstrap", &b_addr])?, node(&dir, "peer-b", &["--bootstrap", &b_addr])?];
    for peer in &peers {
        health_until(peer, |h| h["bootstraps"][0]["observed"].is_string())?;
    }
    wait_for("two peers registered", Duration::from_secs(10), || bootstrap.nat.status().registered_peers == 2)?;
    let node = &bootstrap.node;
    let accepted = total(node, |c| c.connections_accepted.load(Relaxed));
    let closed_by_peers = total(node, |c| c.closes(CloseClass::PeerApplication));
    assert_eq!(total(node, |c| c.connections_active.load(Relaxed)), 2);

    let window = Duration::from_secs(2);
    let began = Instant::now();
    bootstrap.nat.begin_handover(window);

    // Each peer hears the message, connects again and registers there, then closes the old
    // connection with an application close.
    for peer in &peers {
        wait_for("the peer re-registers", Duration::from_secs(15), || {
            peer.stderr().contains("re-registered with bootstrap")
        })
        .with_context(|| peer.stderr())?;
        ensure!(peer.stderr().contains("bootstrap is being taken over"), "{}", peer.stderr());
    }
    assert!(began.elapsed() < window + Duration::from_secs(5), "re-registration took {:?}", began.elapsed());
    wait_for("the old connections close", Duration::from_secs(10), || {
        total(node, |c| c.connections_active.load(Relaxed)) == 2
            && total(node, |c| c.closes(CloseClass::PeerApplication)) == closed_by_peers + 2
    })?;
    assert_eq!(total(node, |c| c.connections_accepted.load(Relaxed)), accepted + 2, "one new connection each");
    for peer in &peers {
        assert_eq!(peer.stderr().matches("re-registered with bootstrap").count(), 1, "told once: {}", peer.stderr());
        let health = health_until(peer, |h| h["bootstraps"][0]["registered"] == true)?;
        assert_eq!(health["bootstraps"][0]["observed"], peer.addr.to_string().as_str());
    }
    wait_for("both still registered", Duration::from_secs(5), || bootstrap.nat.status().registered_peers == 2)?;

    // The registrations resolve: each peer is reached by its ID through the bootstrap.
    for peer in &peers {
        let out = one_shot(&dir, "client", &["--bootstrap", &b_addr, "--connect", &peer.peer_id, "--json"])?;
        ensure!(out.status.success(), "--connect {} failed: {}", peer.peer_id, out.stderr);
        let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).context("one JSON line")?;
        assert_eq!(line["peer"], peer.peer_id.as_str(), "{line}");
        assert_eq!(line["remote"], peer.addr.to_string().as_str(), "{line}");
    }
    for peer in &peers {
        ensure!(!peer.stderr().contains("panicked"), "{}", peer.stderr());
    }
    let ant_quic::node::Server { node, mut nat, .. } = bootstrap;
    nat.stop();
    node.shutdown();
    let _ = node.join();
    dir.passed();
    Ok(())
}

// ---------------------------------------------------------------- relay allocations

/// A bootstrap started in this process with `coordinator` settings (short lifetimes, small
/// limits), one core, on loopback.
fn relay_bootstrap(coordinator: CoordinatorConfig) -> Result<Server> {
    let options = NodeOptions {
        listen: "127.0.0.1:0".parse()?,
        cores: Some(1),
        nat: NatOptions { coordinator, ..NatOptions::default() },
        ..NodeOptions::default()
    };
    Ok(start_server(&options)?)
}

/// Two registered peers and the channel the bootstrap granted between them (`a` asked).
struct RelayPair {
    a: Peer,
    b: Peer,
    channel: u32,
    lifetime_s: u32,
    /// When `a` asked: the allocation cannot have been made before.
    asked: Instant,
}

fn relay_pair(bootstrap: &Server) -> Result<RelayPair> {
    relay_pair_at(bootstrap.node.local_addr())
}

/// [`relay_pair`] with the bootstrap at `addr`.
fn relay_pair_at(addr: SocketAddr) -> Result<RelayPair> {
    let (id_a, id_b) = (Identity::ephemeral()?, Identity::ephemeral()?);
    let mut b = Peer::open(addr, Some(&id_b), Vec::new())?;
    let registered = |a: &[Message]| a.iter().any(|m| matches!(m, Message::ObservedAddress { .. }));
    ensure!(b.collect(registered), "b did not register: {:?}", b.answers);
    let asked = Instant::now();
    let request = encode_frame(&Message::RelayRequest { request: 1, target: id_b.peer_id() });
    let mut a = Peer::open(addr, Some(&id_a), vec![request])?;
    let grant = |answers: &[Message]| {
        answers.iter().find_map(|m| match m {
            Message::RelayGrant { channel, lifetime_s, .. } => Some((*channel, *lifetime_s)),
            _ => None,
        })
    };
    ensure!(a.collect(|m| grant(m).is_some()), "no RELAY_GRANT for a: {:?}", a.answers);
    ensure!(b.collect(|m| grant(m).is_some()), "no RELAY_GRANT for b: {:?}", b.answers);
    let (channel, lifetime_s) = grant(&a.answers).context("a's grant")?;
    ensure!(grant(&b.answers) == Some((channel, lifetime_s)), "a and b were granted different channels");
    Ok(RelayPair { a, b, channel, lifetime_s, asked })
}

/// `[nat] relay_lifetime` (here its flag) is the lifetime a bootstrap grants, and the allocation
/// forwards between its two ends.
#[test]
fn a_relay_allocation_forwards_between_its_two_ends_for_the_configured_lifetime() -> Result<()> {
    let mut dir = TempDir::new("nat-relay-lifetime")?.keep_unless_passed();
    let bootstrap = node(&dir, "bootstrap", &["--relay-lifetime", "42"])?;
    assert_eq!(relay_forwards_between_its_two_ends(&bootstrap)?, 42);
    dir.passed();
    Ok(())
}

/// Relay frames each way between the two ends of an allocation granted by `bootstrap`.
const RELAYED_EACH_WAY: u64 = 20;
const RELAYED_LEN: usize = 1000;

/// Two peers get an allocation from `bootstrap` and send [`RELAYED_EACH_WAY`] frames each way
/// through it: the bootstrap forwards every one and drops none. Returns the granted lifetime (s).
fn relay_forwards_between_its_two_ends(bootstrap: &NodeProcess) -> Result<u32> {
    let pair = relay_pair_at(bootstrap.addr)?;
    for _ in 0..RELAYED_EACH_WAY {
        pair.a.node.handle().send_datagram(bootstrap.addr, relay_frame(pair.channel, RELAYED_LEN))?;
        pair.b.node.handle().send_datagram(bootstrap.addr, relay_frame(pair.channel, RELAYED_LEN))?;
    }
    let frames = 2 * RELAYED_EACH_WAY;
    let dropped = |m: &str| RelayDrop::ALL.iter().filter_map(|r| sample(m, &relay_dropped(*r))).sum::<f64>();
    let metrics =
        metrics_until(bootstrap, |m| sample(m, "relay_packets_total").unwrap_or(0.0) + dropped(m) >= frames as f64)?;
    ensure!(dropped(&metrics) == 0.0, "relay frames dropped:\n{metrics}");
    ensure!(sample(&metrics, "relay_packets_total") == Some(frames as f64), "{metrics}");
    ensure!(sample(&metrics, "relay_bytes_total") == Some((frames as usize * RELAYED_LEN) as f64), "{metrics}");
    Ok(pair.lifetime_s)
}

/// The series of relay frames dropped for `reason`.
fn relay_dropped(reason: RelayDrop) -> String {
    format!("relay_dropped_total{{reason=\"{}\"}}", reason.name())
}

/// A relay frame on `channel`, `len` bytes in all (header included).
fn relay_frame(channel: u32, len: usize) -> Vec<u8> {
    let mut frame = vec![RELAY_MARKER];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.resize(len, 0xab);
    frame
}

/// The bootstrap's relay counters: (frames forwarded, bytes forwarded, drops by reason).
fn relay_counts(bootstrap: &Server) -> (u64, u64, impl Fn(RelayDrop) -> u64) {
    let stats = bootstrap.node.stats();
    let forwarded = stats.iter().map(|s| read(&s.relay_forwarded)).sum();
    let bytes = stats.iter().map(|s| read(&s.relay_forwarded_bytes)).sum();
    (forwarded, bytes, move |reason| stats.iter().map(|s| s.relay_drops(reason)).sum())
}

/// Wait (at most 10 s) until the bootstrap has accounted for `frames` relay frames in all.
fn relay_frames_counted(bootstrap: &Server, frames: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (forwarded, _, dropped) = relay_counts(bootstrap);
        let seen = forwarded + RelayDrop::ALL.iter().map(|r| dropped(*r)).sum::<u64>();
        if seen >= frames {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the bootstrap accounted for {seen} of {frames} relay frames");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running bootstrap forwards between the two ends of an allocation up to its rate (per
/// direction) and byte (both directions) limits, and drops and counts the rest by reason.
#[test]
fn a_relay_allocation_stops_at_its_rate_and_byte_limits() -> Result<()> {
    // 1 byte/s: each direction's bucket holds its least depth (16 KiB) and barely refills.
    let bootstrap = relay_bootstrap(CoordinatorConfig {
        relay_byte_limit: 24_000,
        relay_rate_limit: 1,
        ..CoordinatorConfig::default()
    })?;
    assert_eq!(MIN_RATE_BURST, 16 * 1024, "the counts below assume a 16 KiB bucket");
    let pair = relay_pair(&bootstrap)?;
    let to = bootstrap.node.local_addr();

    // a → b: 20 frames of 1000 bytes; the bucket lets 16 through (16 000 of 16 384 bytes).
    for _ in 0..20 {
        pair.a.node.handle().send_datagram(to, relay_frame(pair.channel, 1000))?;
    }
    relay_frames_counted(&bootstrap, 20)?;
    let (forwarded, _, dropped) = relay_counts(&bootstrap);
    ensure!(
        (forwarded, dropped(RelayDrop::RateLimit)) == (16, 4),
        "a → b: {forwarded} forwarded, {} rate-limited",
        dropped(RelayDrop::RateLimit)
    );

    // b → a: its own bucket, but the allocation has 8 000 of its 24 000 bytes left.
    for _ in 0..20 {
        pair.b.node.handle().send_datagram(to, relay_frame(pair.channel, 1000))?;
    }
    relay_frames_counted(&bootstrap, 40)?;
    let (forwarded, bytes, dropped) = relay_counts(&bootstrap);
    ensure!(
        (forwarded, bytes, dropped(RelayDrop::ByteLimit)) == (24, 24_000, 12),
        "after b → a: {forwarded} forwarded ({bytes} bytes), {} over the byte limit",
        dropped(RelayDrop::ByteLimit)
    );
    ensure!(dropped(RelayDrop::RateLimit) == 4 && dropped(RelayDrop::WrongSource) == 0);
    drop(pair);
    bootstrap.node.shutdown();
    bootstrap.node.join()?;
    Ok(())
}

/// A running bootstrap removes an allocation when its lifetime ends, and forwards nothing on its
/// channel after that.
#[test]
fn a_relay_allocation_expires_on_a_running_bootstrap() -> Result<()> {
    let lifetime = Duration::from_secs(1);
    let bootstrap = relay_bootstrap(CoordinatorConfig { relay_lifetime: lifetime, ..CoordinatorConfig::default() })?;
    let pair = relay_pair(&bootstrap)?;
    ensure!(pair.lifetime_s == 1, "granted for {} s", pair.lifetime_s);
    let to = bootstrap.node.local_addr();

    // The allocation was installed: a frame now is forwarded, or (on a slow machine) found expired,
    // but never on an unknown channel.
    pair.a.node.handle().send_datagram(to, relay_frame(pair.channel, 500))?;
    relay_frames_counted(&bootstrap, 1)?;
    let (forwarded, _, dropped) = relay_counts(&bootstrap);
    ensure!(
        forwarded + dropped(RelayDrop::Expired) == 1,
        "the first frame: {forwarded} forwarded, {} unknown channel",
        dropped(RelayDrop::UnknownChannel)
    );

    // The coordinator removes it from every core at the end of its lifetime, not before.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bootstrap.node.stats().iter().any(|s| read(&s.relay_allocations) > 0) {
        ensure!(Instant::now() < deadline, "the allocation outlived its lifetime by far");
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(pair.asked.elapsed() >= lifetime, "removed {:?} after it was asked for", pair.asked.elapsed());

    // Nothing is forwarded on its channel any more.
    pair.b.node.handle().send_datagram(to, relay_frame(pair.channel, 500))?;
    relay_frames_counted(&bootstrap, 2)?;
    let (after, _, dropped) = relay_counts(&bootstrap);
    ensure!(after == forwarded, "a frame was forwarded on an expired channel");
    ensure!(dropped(RelayDrop::UnknownChannel) == 1, "the late frame was not dropped as on an unknown channel");
    drop(pair);
    bootstrap.node.shutdown();
    bootstrap.node.join()?;
    Ok(())
}
