//! CPU cost of NAT traversal on a bootstrap and on a peer: candidate pairing, the signalling
//! codec, punch coordination on the coordinator (also with a large registry), and whole
//! traversals of two peers through one coordinator in memory.
//!
//! Everything runs without sockets: messages and probes are handed from one state machine to the
//! other and time is advanced synthetically, so a figure is the CPU time of the work, never time
//! spent waiting for a start instant or a probe interval.
//!
//! ```sh
//! cargo bench --bench nat_traversal_performance            # all groups (well under 2 minutes)
//! cargo bench --bench nat_traversal_performance -- --test  # run each once, as a check
//! cargo bench --bench nat_traversal_performance -- coordinator   # one group
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use ant_quic_control::nat::candidate::{check_list, pair_priority, priority};
use ant_quic_control::nat::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig, SessionId};
use ant_quic_control::nat::traversal::{Traversal, TraversalAction, TraversalConfig, TraversalEvent};
use ant_quic_control::nat::wire::{encode_frame, FrameReader};
use ant_quic_control::nat::{Candidate, CandidateKind, Message, Outcome, Probe, PunchRole};
use ant_quic_control::PeerId;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

/// Short runs: the whole bench stays well under two minutes on a 2-core machine.
fn configured() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .noise_threshold(0.05)
}

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

fn v6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), port, 0, 0))
}

fn candidate(kind: CandidateKind, local_preference: u16, address: SocketAddr) -> Candidate {
    Candidate { kind, priority: priority(kind, local_preference), address }
}

/// Eight candidates as a peer with a few interfaces has them: its observed (server-reflexive)
/// address, five IPv4 host addresses and two IPv6 ones. `seed` varies the addresses.
fn eight_candidates(seed: u8) -> Vec<Candidate> {
    let mut list = vec![candidate(CandidateKind::ServerReflexive, u16::MAX, v4(198, 18, seed, 10, 40000))];
    for i in 0..5u8 {
        list.push(candidate(CandidateKind::Host, u16::MAX - u16::from(i), v4(10, seed, i, 2, 5000)));
    }
    for i in 0..2u16 {
        list.push(candidate(CandidateKind::Host, 60000 - i, v6(u16::from(seed) << 8 | i, 5000)));
    }
    list
}

fn peer(n: u32) -> PeerId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[31] = 0xa5;
    PeerId(id)
}

// ---------------------------------------------------------------------------------------------
// Candidate pairing

fn candidate_pairing(c: &mut Criterion) {
    let mut group = c.benchmark_group("candidate_pairing");
    let remote = eight_candidates(2);
    let one = vec![candidate(CandidateKind::Host, u16::MAX, v4(10, 1, 0, 2, 5000))];
    let eight = eight_candidates(1);
    group.bench_function("check_list_1x8", |b| b.iter(|| check_list(black_box(&one), black_box(&remote), true)));
    group.bench_function("check_list_8x8", |b| b.iter(|| check_list(black_box(&eight), black_box(&remote), true)));
    // The RFC 8445 arithmetic alone: 16 candidate priorities and the 64 pair priorities of 8×8.
    let kinds =
        [CandidateKind::Host, CandidateKind::ServerReflexive, CandidateKind::PeerReflexive, CandidateKind::Host];
    group.bench_function("priorities_8x8", |b| {
        b.iter(|| {
            let mut local = [0u32; 8];
            let mut remote = [0u32; 8];
            for i in 0..8 {
                local[i] = priority(kinds[i % 4], black_box(65535 - i as u16));
                remote[i] = priority(kinds[(i + 1) % 4], black_box(65000 - i as u16));
            }
            let mut sum = 0u64;
            for g in local {
                for d in remote {
                    sum = sum.wrapping_add(pair_priority(g, d));
                }
            }
            sum
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Signalling codec

fn punch_me_now() -> Message {
    Message::PunchMeNow {
        round: 0x0123_4567_89ab,
        request: 0xdead_beef,
        peer: peer(7),
        role: PunchRole::Initiator,
        flags: 0,
        start_in_ms: 70,
        token: [0x5a; 16],
        candidates: eight_candidates(3),
    }
}

/// A signalling stream as a bootstrap reads it from busy peers: 100 frames of every kind a peer
/// sends, and a few that only a bootstrap sends (it must still delimit and decode them).
fn signalling_stream() -> (Vec<u8>, usize) {
    let mut stream = Vec::new();
    let mut frames = 0;
    for i in 0..100u64 {
        let message = match i % 10 {
            0..=3 => Message::AddAddress {
                sequence: i,
                candidate: candidate(CandidateKind::Host, 65535, v4(10, 0, (i % 250) as u8, 2, 5000)),
            },
            4 | 5 => Message::ConnectRequest { request: i + 1, target: peer(i as u32) },
            6 => Message::Report { request: i, outcome: Outcome::Direct, connect_ms: 85 },
            7 => Message::RemoveAddress { sequence: i - 4 },
            8 => Message::ObservedAddress { sequence: i, address: v4(198, 18, 0, 10, 40000) },
            _ => punch_me_now(),
        };
        stream.extend_from_slice(&encode_frame(&message));
        frames += 1;
    }
    (stream, frames)
}

fn signalling_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("signalling_codec");
    let message = punch_me_now();
    let mut encoded = Vec::new();
    message.emit(&mut encoded);
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function(BenchmarkId::new("punch_me_now_parse", format!("8_candidates_{}B", encoded.len())), |b| {
        b.iter(|| Message::parse(black_box(&encoded)).unwrap())
    });
    let mut out = Vec::with_capacity(encoded.len());
    group.bench_function(BenchmarkId::new("punch_me_now_emit", format!("8_candidates_{}B", encoded.len())), |b| {
        b.iter(|| {
            out.clear();
            black_box(&message).emit(&mut out);
            out.len()
        })
    });

    // A stream read in 1200-byte chunks (about what one QUIC packet delivers), draining the reader
    // after every chunk as the driver does.
    let (stream, frames) = signalling_stream();
    group.throughput(Throughput::Elements(frames as u64));
    group.bench_function(BenchmarkId::new("frame_reader", format!("{frames}_frames_{}B", stream.len())), |b| {
        b.iter(|| {
            let mut reader = FrameReader::new();
            let mut decoded = 0;
            for chunk in black_box(&stream).chunks(1200) {
                reader.push(chunk);
                while let Some(message) = reader.next_message() {
                    black_box(message.unwrap());
                    decoded += 1;
                }
            }
            assert_eq!(decoded, frames);
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Coordinator

/// The default configuration without the per-session rate limit: these benches send one
/// session's requests back to back, which a real peer could not.
fn unlimited() -> CoordinatorConfig {
    CoordinatorConfig { signal_rate: u32::MAX, signal_burst: u32::MAX, ..CoordinatorConfig::default() }
}

/// Registers `peers` peers (sessions 1..=peers), each with its observed address and two host
/// candidates, as their signalling streams would; the answers are drained.
fn register(coordinator: &mut Coordinator, now: Instant, peers: u32) {
    for n in 0..peers {
        let session = SessionId::from(n) + 1;
        let [a, b, c, d] = n.to_be_bytes();
        let observed = v4(100, 64 | (b & 0x3f), c, d.max(1), 40000 + u16::from(a));
        coordinator.session_opened(
            now,
            session,
            Some(peer(n)),
            observed,
            Duration::from_millis(20 + u64::from(d % 80)),
        );
        for (sequence, host) in [(1, v4(10, b, c, d.max(1), 5000)), (2, v6(n as u16, 5000))] {
            let candidate = candidate(CandidateKind::Host, u16::MAX - sequence as u16, host);
            coordinator.handle(now, session, Message::AddAddress { sequence, candidate });
        }
    }
    while coordinator.poll_action().is_some() {}
}

/// One CONNECT_REQUEST from `from` to `to` and both PUNCH_ME_NOWs drained.
fn round(coordinator: &mut Coordinator, now: Instant, from: u32, to: u32, request: u64) {
    coordinator.handle(now, SessionId::from(from) + 1, Message::ConnectRequest { request, target: peer(to) });
    let mut punches = 0;
    while let Some(action) = coordinator.poll_action() {
        if let CoordinatorAction::Send { message: Message::PunchMeNow { .. }, .. } = black_box(action) {
            punches += 1;
        }
    }
    assert_eq!(punches, 2, "a round sends PUNCH_ME_NOW to both peers");
}

fn coordinator(c: &mut Criterion) {
    let mut group = c.benchmark_group("coordinator");
    let now = Instant::now();

    // One round between two peers of a registry of `size`. "random_pairs": the pair changes every
    // round (a multiplicative walk over the registry), as on a busy bootstrap, so a large registry
    // is not served from the CPU caches. "same_pair": the same two peers every round, which
    // separates the cost of the lookups from that of cache misses.
    group.throughput(Throughput::Elements(1));
    for size in [2u32, 10_000, 100_000] {
        let mut coordinator = Coordinator::new(unlimited(), 1);
        register(&mut coordinator, now, size);
        assert_eq!(coordinator.registered(), size as usize);
        let mut i = 0u64;
        group.bench_function(BenchmarkId::new("round", format!("{size}_registered_random_pairs")), |b| {
            b.iter(|| {
                i += 1;
                let from = (i.wrapping_mul(2_654_435_761) % u64::from(size)) as u32;
                let to = (from + 1 + (i % u64::from(size - 1)) as u32) % size;
                round(&mut coordinator, now, from, to, i);
            })
        });
        if size > 2 {
            let (from, to) = (size / 3, 2 * size / 3);
            group.bench_function(BenchmarkId::new("round", format!("{size}_registered_same_pair")), |b| {
                b.iter(|| {
                    i += 1;
                    round(&mut coordinator, now, from, to, i);
                })
            });
        }
    }

    // Filling a registry: 10 000 × (session_opened + 2 ADD_ADDRESS), answers drained.
    let peers = 10_000u32;
    group.throughput(Throughput::Elements(u64::from(peers)));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("register", format!("{peers}_peers")), |b| {
        b.iter_batched(
            || Coordinator::new(unlimited(), 1),
            |mut coordinator| {
                register(&mut coordinator, now, peers);
                coordinator
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Whole traversals in memory

const BOOTSTRAP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 443));
/// One-way delay of a probe between the peers.
const P2P: Duration = Duration::from_millis(15);

enum Delivery {
    ToCoordinator { session: SessionId, message: Message },
    ToPeer { peer: usize, message: Message },
    Probe { to_peer: usize, from: SocketAddr, probe: Probe },
    ConnectionResult { peer: usize, attempt: u64, connected: bool },
}

struct Peer {
    id: PeerId,
    traversal: Traversal,
    session: SessionId,
    /// Where the bootstrap (and the other peer, through the NAT) sees this peer.
    public: SocketAddr,
    one_way: Duration,
    finished: Option<Outcome>,
}

/// One coordinator and two peers behind NATs that map endpoint-independently. When `direct` is
/// false the NATs filter everything unsolicited (as two symmetric NATs do for each other): every
/// probe is lost and the attempt falls back to the relay.
struct World {
    now: Instant,
    coordinator: Coordinator,
    peers: [Peer; 2],
    direct: bool,
    queue: BTreeMap<(Instant, u64), Delivery>,
    sequence: u64,
}

impl World {
    /// Both peers registered, their host candidates added, their observed addresses known: the
    /// state before a connection attempt. Not timed.
    fn new(direct: bool, seed: u64) -> Self {
        let now = Instant::now();
        let coordinator = Coordinator::new(CoordinatorConfig::default(), seed);
        let make = |n: u8, one_way: u64| Peer {
            id: PeerId([n; 32]),
            traversal: Traversal::new(TraversalConfig::default(), seed ^ u64::from(n)),
            session: SessionId::from(n),
            public: v4(198, 18, 0, 10 * n, 40000),
            one_way: Duration::from_millis(one_way),
            finished: None,
        };
        let mut world =
            Self { now, coordinator, peers: [make(1, 10), make(2, 25)], direct, queue: BTreeMap::new(), sequence: 0 };
        for index in 0..2 {
            let p = &mut world.peers[index];
            p.traversal.set_host_candidates(now, vec![v4(10, index as u8, 0, 2, 5000), v6(index as u16, 5000)]);
            world.coordinator.session_opened(now, p.session, Some(p.id), p.public, 2 * p.one_way);
            p.traversal.bootstrap_connected(now, p.session, BOOTSTRAP);
        }
        world.run_until(|w| w.coordinator.poll_timeout().is_some() && w.queue.is_empty());
        world
    }

    fn schedule(&mut self, delay: Duration, delivery: Delivery) {
        self.sequence += 1;
        self.queue.insert((self.now + delay, self.sequence), delivery);
    }

    fn pump(&mut self) {
        while let Some(action) = self.coordinator.poll_action() {
            if let CoordinatorAction::Send { session, message } = action {
                let peer = self.peers.iter().position(|p| p.session == session).unwrap();
                let delay = self.peers[peer].one_way;
                self.schedule(delay, Delivery::ToPeer { peer, message });
            }
        }
        for index in 0..2 {
            while let Some(action) = self.peers[index].traversal.poll_action() {
                let other = 1 - index;
                match action {
                    TraversalAction::Signal { session, message } => {
                        let delay = self.peers[index].one_way;
                        self.schedule(delay, Delivery::ToCoordinator { session, message });
                    }
                    // Only the other peer's public address leads anywhere (private addresses are
                    // on another network), and only when the NATs let it through; other probes
                    // are lost (the last arm).
                    TraversalAction::SendProbe { to, probe } if self.direct && to == self.peers[other].public => {
                        let from = self.peers[index].public;
                        self.schedule(P2P, Delivery::Probe { to_peer: other, from, probe });
                    }
                    TraversalAction::ConnectDirect { attempt, address, .. } => {
                        let connected = address == self.peers[other].public;
                        self.schedule(2 * P2P, Delivery::ConnectionResult { peer: index, attempt, connected });
                    }
                    TraversalAction::ConnectRelayed { attempt, .. } => {
                        let delay = 4 * self.peers[index].one_way;
                        self.schedule(delay, Delivery::ConnectionResult { peer: index, attempt, connected: true });
                    }
                    // Lost probes, path bookkeeping for the data plane, and the extra sockets of
                    // many-probe rounds (neither peer's mapping is known as endpoint-dependent
                    // here, so none is opened): nothing for this model to carry out.
                    _ => {}
                }
            }
            while let Some(event) = self.peers[index].traversal.poll_event() {
                if let TraversalEvent::AttemptFinished { outcome, .. } = event {
                    self.peers[index].finished = Some(outcome);
                }
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.now;
        match delivery {
            Delivery::ToCoordinator { session, message } => self.coordinator.handle(now, session, message),
            Delivery::ToPeer { peer, message } => {
                let p = &mut self.peers[peer];
                p.traversal.handle_signal(now, p.session, message);
            }
            Delivery::Probe { to_peer, from, probe } => self.peers[to_peer].traversal.handle_probe(now, from, probe),
            Delivery::ConnectionResult { peer, attempt, connected } => {
                self.peers[peer].traversal.connection_result(now, attempt, connected)
            }
        }
    }

    /// Delivers what is due, runs timers and advances time to the next event until `done` holds.
    fn run_until(&mut self, done: impl Fn(&World) -> bool) {
        for _ in 0..100_000 {
            self.pump();
            if done(self) {
                return;
            }
            let queued = self.queue.keys().next().map(|(at, _)| *at);
            let timers = self.peers.iter().filter_map(|p| p.traversal.poll_timeout());
            let Some(next) = queued.into_iter().chain(timers).min() else { panic!("nothing left to happen") };
            self.now = self.now.max(next);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery);
                self.pump();
            }
            let now = self.now;
            for p in &mut self.peers {
                if p.traversal.poll_timeout().is_some_and(|t| t <= now) {
                    p.traversal.handle_timeout(now);
                }
            }
        }
        panic!("the traversal does not settle");
    }

    /// A connects to B; runs until A's attempt ended with `expected` and the bootstrap has its
    /// REPORT (and, when direct, B's own probe was answered too).
    fn connect(&mut self, expected: Outcome) {
        let target = self.peers[1].id;
        self.peers[0].traversal.connect(self.now, target).unwrap();
        self.run_until(|w| {
            let stats = w.coordinator.stats();
            let reported = stats.reports_direct + stats.reports_relayed + stats.reports_failed == 1;
            let responder_done = expected != Outcome::Direct || w.peers[1].traversal.stats().probes_acked > 0;
            w.peers[0].finished.is_some() && reported && responder_done
        });
        assert_eq!(self.peers[0].finished, Some(expected));
    }
}

fn traversal(c: &mut Criterion) {
    let mut group = c.benchmark_group("traversal");
    group.throughput(Throughput::Elements(1));
    // CONNECT_REQUEST → PUNCH_ME_NOW to both → probes and acks both ways → the QUIC connection on
    // the valid pair → REPORT: every state machine step of one successful punch.
    group.bench_function("direct_punch", |b| {
        b.iter_batched(|| World::new(true, 7), |mut world| world.connect(Outcome::Direct), BatchSize::SmallInput)
    });
    // The same attempt when nothing gets through: 3 s (synthetic) of probe rounds every 50 ms to
    // all of B's candidates, then RELAY_REQUEST → RELAY_GRANT to both → the relayed connection.
    group.bench_function("failed_punch_relay_fallback", |b| {
        b.iter_batched(|| World::new(false, 7), |mut world| world.connect(Outcome::Relayed), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = configured();
    targets = candidate_pairing, signalling_codec, coordinator, traversal
}
criterion_main!(benches);
