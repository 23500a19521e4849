//! Instruction counts of the hot paths, measured by callgrind through gungraun: the figures the
//! regression gate (`scripts/bench-gate`) compares with `benches/baselines/instructions.json`.
//!
//! - `receive`: GRO buffers of sealed short-header packets, each copied once and split into
//!   datagrams that share the copy (as the core receives), handed to the server endpoint,
//!   decrypted and delivered, and the stream read (an in-memory client/server pair with the
//!   node's TLS and endpoint settings).
//! - `send`: stream data packetised, sealed and assembled into GSO batches of the size the core
//!   asks for.
//! - `signalling`: NAT traversal signalling messages emitted into frames and read back.
//! - `pairing`: RFC 8445 check lists built and pruned from candidate sets.
//!
//! Setup (handshake, sealing the packets to receive, building the messages) runs outside the
//! measured function; inputs are fixed, so the counts repeat. Needs valgrind and the
//! `gungraun-runner` of the same version as the `gungraun` crate:
//!
//! ```sh
//! scripts/bench-gate                                       # installs both, runs, compares
//! cargo bench --features instruction-count --bench hot_paths
//! ```
//!
//! `ANT_QUIC_BENCH_SLOWDOWN=1` in the environment adds a quarter more work inside the measured
//! region of `signalling_codec` only (read during its setup): `scripts/bench-gate --self-test`
//! uses it to prove the gate trips.

#[path = "support/signalling.rs"]
mod signalling;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::batch::split_gro_owned;
use ant_quic::dataplane::cid::{configure_core_endpoint, CidKey};
use ant_quic::identity::Identity;
use ant_quic::quinn_proto::congestion::CubicConfig;
use ant_quic::quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent, StreamId,
    TransportConfig,
};
use ant_quic::tls::{self, ServerAuth, ALPN_ANT_QUIC};
use ant_quic_control::nat::candidate::check_list;
use ant_quic_control::nat::wire::{encode_frame, FrameReader};
use ant_quic_control::nat::{Candidate, CandidateKind, Message};
use bytes::BytesMut;
use signalling::{candidate, candidates, signalling_message, v4, PUNCH_ROUND};

/// Payload the client sends in `receive` and the server sends in `send`.
const PAYLOAD: usize = 64 * 1024;
/// The largest GSO send the core makes (segments).
const GSO_SEGMENTS: usize = 64;
/// As in the core: at most 65 507 bytes of UDP payload per GSO send.
const MAX_GSO_BYTES: usize = 65_507;

// ---------------------------------------------------------------------------------------------
// An in-memory QUIC client/server pair with the node's settings

/// One side: its endpoint, its connection once there is one, its address.
struct Side {
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, Connection)>,
    addr: SocketAddr,
}

/// A client and a server that hand datagrams to each other, with synthetic time.
struct Pair {
    client: Side,
    server: Side,
    now: Instant,
}

/// A GSO (or GRO) buffer: `stride`-byte datagrams back to back.
struct Batch {
    data: Vec<u8>,
    stride: usize,
}

/// The node's endpoint settings (dataplane/src/node.rs): core-tagged connection IDs and no QUIC
/// bit greasing.
fn endpoint_config() -> Arc<EndpointConfig> {
    let mut config = EndpointConfig::default();
    configure_core_endpoint(&mut config, 0, 1, &CidKey::random());
    Arc::new(config)
}

impl Pair {
    /// Handshake done, confirmed and quiet. `sender_window`: the congestion window of the side that
    /// sends the payload, opened so a whole payload can be sealed without the other side acking.
    fn established(client_sends: bool) -> Result<Self, String> {
        let identity = Identity::ephemeral().map_err(|e| e.to_string())?;
        let server_config = tls::server_config(&identity, &[ALPN_ANT_QUIC]).map_err(|e| e.to_string())?;
        let mut server_config = server_config;
        let mut client_config =
            tls::client_config(ServerAuth::PeerId(identity.peer_id()), &[ALPN_ANT_QUIC]).map_err(|e| e.to_string())?;
        let mut wide = TransportConfig::default();
        let mut cubic = CubicConfig::default();
        cubic.initial_window(4 * PAYLOAD as u64);
        wide.congestion_controller_factory(Arc::new(cubic));
        if client_sends {
            client_config.transport_config(Arc::new(wide));
        } else {
            server_config.transport_config(Arc::new(wide));
        }
        let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);
        let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9_000);
        let mut pair = Pair {
            client: Side {
                endpoint: Endpoint::new(endpoint_config(), None, true, Some([1; 32])),
                conn: None,
                addr: client_addr,
            },
            server: Side {
                endpoint: Endpoint::new(endpoint_config(), Some(Arc::new(server_config)), true, Some([2; 32])),
                conn: None,
                addr: server_addr,
            },
            now: Instant::now(),
        };
        let conn = pair
            .client
            .endpoint
            .connect(pair.now, client_config, server_addr, tls::default_server_name())
            .map_err(|e| e.to_string())?;
        pair.client.conn = Some(conn);
        pair.settle();
        let connected = |side: &Side| side.conn.as_ref().is_some_and(|(_, c)| !c.is_handshaking());
        if !connected(&pair.client) || !connected(&pair.server) {
            return Err("handshake did not complete".into());
        }
        Ok(pair)
    }

    /// Exchange datagrams (1 ms each way) and fire timers due within 100 ms until both are quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let moved = self.exchange();
            if moved {
                continue;
            }
            let next = [&mut self.client, &mut self.server]
                .into_iter()
                .filter_map(|side| side.conn.as_mut().and_then(|(_, c)| c.poll_timeout()))
                .min();
            match next {
                Some(deadline) if deadline <= self.now + Duration::from_millis(100) => {
                    self.now = self.now.max(deadline);
                    for side in [&mut self.client, &mut self.server] {
                        if let Some((_, conn)) = side.conn.as_mut() {
                            conn.handle_timeout(self.now);
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// One round: everything the client sends reaches the server, then the other way.
    fn exchange(&mut self) -> bool {
        self.now += Duration::from_millis(1);
        let to_server = drain(&mut self.client, self.now, 1);
        let mut moved = !to_server.is_empty();
        for batch in &to_server {
            receive(&mut self.server, self.client.addr, self.now, batch);
        }
        self.now += Duration::from_millis(1);
        let to_client = drain(&mut self.server, self.now, 1);
        moved |= !to_client.is_empty();
        for batch in &to_client {
            receive(&mut self.client, self.server.addr, self.now, batch);
        }
        moved
    }
}

/// Everything `side` has to send now, `max_segments` datagrams per batch.
fn drain(side: &mut Side, now: Instant, max_segments: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let Some((_, conn)) = side.conn.as_mut() else { return out };
    loop {
        let mut buf = Vec::new();
        let Some(transmit) = conn.poll_transmit(now, max_segments, &mut buf) else { break };
        buf.truncate(transmit.size);
        out.push(Batch { stride: transmit.segment_size.unwrap_or(transmit.size), data: buf });
    }
    out
}

/// Split `batch` into datagrams and hand them to `side` as the core does: one copy of the whole
/// buffer (the core's copy out of a receive buffer it gives back), its datagrams sharing that
/// copy; endpoint first, then the connection, then the endpoint events the connection raises.
fn receive(side: &mut Side, from: SocketAddr, now: Instant, batch: &Batch) {
    let mut response = Vec::new();
    for datagram in split_gro_owned(BytesMut::from(batch.data.as_slice()), batch.stride) {
        match side.endpoint.handle(now, from, None, None, datagram, &mut response) {
            Some(DatagramEvent::ConnectionEvent(_, event)) => {
                if let Some((_, conn)) = side.conn.as_mut() {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if let Ok(conn) = side.endpoint.accept(incoming, now, &mut response, None) {
                    side.conn = Some(conn);
                }
            }
            Some(DatagramEvent::Response(_)) | None => {}
        }
        response.clear();
    }
    let Some((handle, conn)) = side.conn.as_mut() else { return };
    while let Some(event) = conn.poll_endpoint_events() {
        if let Some(back) = side.endpoint.handle_event(*handle, event) {
            conn.handle_event(back);
        }
    }
}

/// Read every stream the peer opened, as far as its data has arrived; bytes read.
fn read_streams(conn: &mut Connection) -> usize {
    let mut bytes = 0;
    while let Some(event) = conn.poll() {
        match event {
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = conn.streams().accept(Dir::Uni) {
                    bytes += read_stream(conn, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => bytes += read_stream(conn, id),
            _ => {}
        }
    }
    bytes
}

fn read_stream(conn: &mut Connection, id: StreamId) -> usize {
    let mut bytes = 0;
    let mut stream = conn.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else { return 0 };
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        bytes += chunk.bytes.len();
    }
    let _ = chunks.finalize();
    bytes
}

/// Open a unidirectional stream on `side` and queue the whole payload on it.
fn queue_payload(side: &mut Side) -> Result<(), String> {
    let (_, conn) = side.conn.as_mut().ok_or("no connection")?;
    let id = conn.streams().open(Dir::Uni).ok_or("no stream credit")?;
    let data: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    let mut send = conn.send_stream(id);
    let written = send.write(&data).map_err(|e| e.to_string())?;
    if written != PAYLOAD {
        return Err(format!("stream took {written} of {PAYLOAD} bytes"));
    }
    send.finish().map_err(|e| e.to_string())
}

/// The GSO segment count the core asks quinn-proto for (dataplane/src/core_loop.rs).
fn gso_segments(conn: &Connection) -> usize {
    let mtu = usize::from(conn.current_mtu()).max(1);
    GSO_SEGMENTS.min(MAX_GSO_BYTES / mtu).max(1)
}

// ---------------------------------------------------------------------------------------------
// receive: split, decrypt, deliver, read

/// A server that has not yet seen the client's payload, and that payload as the client sealed it
/// (GSO batches, which arrive as GRO buffers of the same shape).
struct Receive {
    pair: Pair,
    batches: Vec<Batch>,
}

/// An established pair, the payload queued on a stream of the client (`client_sends`) or the
/// server, and 1 ms later. `bench` names the bench in a setup failure.
fn pair_with_payload(client_sends: bool, bench: &str) -> Pair {
    let mut pair = match Pair::established(client_sends) {
        Ok(pair) => pair,
        Err(e) => panic!("{bench} setup: {e}"),
    };
    let sender = if client_sends { &mut pair.client } else { &mut pair.server };
    if let Err(e) = queue_payload(sender) {
        panic!("{bench} setup: {e}");
    }
    pair.now += Duration::from_millis(1);
    pair
}

fn setup_receive() -> Receive {
    let mut pair = pair_with_payload(true, "receive");
    let segments = pair.client.conn.as_ref().map_or(1, |(_, c)| gso_segments(c));
    let batches = drain(&mut pair.client, pair.now, segments);
    let sealed: usize = batches.iter().map(|b| b.data.len()).sum();
    assert!(sealed > PAYLOAD, "the client sealed only {sealed} bytes");
    pair.now += Duration::from_millis(1);
    Receive { pair, batches }
}

fn run_receive(mut input: Receive) -> (Receive, usize) {
    let mut bytes = 0;
    let (now, from) = (input.pair.now, input.pair.client.addr);
    for batch in &input.batches {
        receive(&mut input.pair.server, from, now, batch);
        if let Some((_, conn)) = input.pair.server.conn.as_mut() {
            bytes += read_streams(conn);
        }
    }
    (input, bytes)
}

// ---------------------------------------------------------------------------------------------
// send: packetise, seal, batch

/// A server with the payload queued on a stream and nothing sent yet.
fn setup_send() -> Pair {
    pair_with_payload(false, "send")
}

fn run_send(mut pair: Pair) -> (Pair, Vec<Batch>) {
    let now = pair.now;
    let segments = pair.server.conn.as_ref().map_or(1, |(_, c)| gso_segments(c));
    let batches = drain(&mut pair.server, now, segments);
    (pair, batches)
}

// ---------------------------------------------------------------------------------------------
// signalling: emit and read frames

/// A peer's candidates (see [`candidates`]) and a relayed one.
fn candidates_and_relayed(seed: u8, hosts: u8) -> Vec<Candidate> {
    let mut list = candidates(seed, hosts);
    list.push(candidate(CandidateKind::Relayed, 1, v4(203, 0, 113, seed, 3478)));
    list
}

/// 100 messages of the kinds a bootstrap reads and writes, in a fixed order.
struct Signalling {
    messages: Vec<Message>,
    /// Rounds of emit and read; one more with the gate's self-test slowdown.
    rounds: usize,
}

fn setup_signalling() -> Signalling {
    let rounds = if std::env::var_os("ANT_QUIC_BENCH_SLOWDOWN").is_some() { 5 } else { 4 };
    let messages = (0..100u64).map(|i| signalling_message(i, PUNCH_ROUND + i)).collect();
    Signalling { messages, rounds }
}

/// Emit every message as a frame, then read the stream back in 1200-byte chunks (about what one
/// packet delivers), draining the reader after each chunk as the driver does.
fn run_signalling(input: Signalling) -> (Signalling, usize) {
    let mut decoded = 0;
    for round in 0..input.rounds {
        let mut stream = Vec::new();
        for message in &input.messages {
            stream.extend_from_slice(&encode_frame(message));
        }
        let mut reader = FrameReader::new();
        for chunk in black_box(&stream).chunks(1200 - round) {
            reader.push(chunk);
            while let Some(message) = reader.next_message() {
                if black_box(message).is_ok() {
                    decoded += 1;
                }
            }
        }
    }
    (input, decoded)
}

// ---------------------------------------------------------------------------------------------
// pairing: check lists

/// Candidate sets of one punch each: (local, remote), small to large.
type CandidateSets = Vec<(Vec<Candidate>, Vec<Candidate>)>;

fn setup_pairing() -> CandidateSets {
    (0..16u8)
        .map(|i| (candidates_and_relayed(2 * i + 1, 1 + i % 8), candidates_and_relayed(2 * i + 2, 5 + i % 4)))
        .collect()
}

fn run_pairing(sets: CandidateSets) -> (CandidateSets, usize) {
    let mut pairs = 0;
    for (local, remote) in &sets {
        pairs += check_list(black_box(local), black_box(remote), true).len();
        pairs += check_list(black_box(remote), black_box(local), false).len();
    }
    (sets, pairs)
}

// ---------------------------------------------------------------------------------------------
// The harness

use gungraun::{library_benchmark, library_benchmark_group, LibraryBenchmarkConfig};

#[library_benchmark]
#[bench::payload_64k(setup = setup_receive)]
fn receive_path(input: Receive) -> (Receive, usize) {
    let (input, bytes) = black_box(run_receive(input));
    assert_eq!(bytes, PAYLOAD, "the server read {bytes} bytes");
    (input, bytes)
}

#[library_benchmark]
#[bench::payload_64k(setup = setup_send)]
fn send_batching(pair: Pair) -> (Pair, Vec<Batch>) {
    let (pair, batches) = black_box(run_send(pair));
    let sealed: usize = batches.iter().map(|b| b.data.len()).sum();
    assert!(sealed > PAYLOAD && batches.len() > 1, "{} batches, {sealed} bytes", batches.len());
    (pair, batches)
}

#[library_benchmark]
#[bench::frames_100x4(setup = setup_signalling)]
fn signalling_codec(input: Signalling) -> (Signalling, usize) {
    let (input, decoded) = black_box(run_signalling(input));
    assert_eq!(decoded, input.messages.len() * input.rounds);
    (input, decoded)
}

#[library_benchmark]
#[bench::sets_16(setup = setup_pairing)]
fn candidate_pairing(sets: CandidateSets) -> (CandidateSets, usize) {
    let (sets, pairs) = black_box(run_pairing(sets));
    assert!(pairs > 0);
    (sets, pairs)
}

library_benchmark_group!(name = quic; benchmarks = receive_path, send_batching);
library_benchmark_group!(name = nat; benchmarks = signalling_codec, candidate_pairing);

/// Valgrind runs the benches with a cleared environment: let the self-test's switch through.
fn config() -> LibraryBenchmarkConfig {
    let mut config = LibraryBenchmarkConfig::default();
    config.pass_through_env("ANT_QUIC_BENCH_SLOWDOWN");
    config
}

/// gungraun takes `--save-baseline=NAME`, `--baseline=NAME` and `--load-baseline=NAME` only with
/// `=`; `cargo bench -- --save-baseline NAME` (criterion's form) would otherwise save under the
/// name "default" and take NAME for a filter that matches nothing. Returns the arguments in the
/// `=` form when any needed rewriting.
fn joined_baseline_args(args: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut changed = false;
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        let takes_name = matches!(arg.as_str(), "--save-baseline" | "--baseline" | "--load-baseline");
        match iter.peek() {
            Some(name) if takes_name && !name.starts_with('-') => {
                out.push(format!("{arg}={name}"));
                iter.next();
                changed = true;
            }
            _ => out.push(arg.clone()),
        }
    }
    changed.then_some(out)
}

fn run_benchmarks() {
    gungraun::main!(
        config = config();
        library_benchmark_groups = quic, nat
    );
    main();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(program), Some(fixed)) = (args.first(), args.get(1..).and_then(joined_baseline_args)) {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(program).args(fixed).exec();
        eprintln!("hot_paths: cannot re-run with the baseline arguments joined: {error}");
        std::process::exit(2);
    }
    run_benchmarks();
}
