//! CPU cost of NAT traversal on a bootstrap and on a peer: candidate pairing, the signalling
//! codec, punch coordination on the coordinator (also with a large registry), and whole
//! traversals of two peers through one coordinator in memory.
//!
//! Everything runs without sockets: messages and probes are handed from one state machine to the
//! other and time is advanced synthetically, so a figure is the CPU time of the work, never time
//! spent waiting for a start instant or a probe interval. Whole traversals run in the simulated
//! NAT world of the traversal's tests (`ant_quic_control::nat::sim`); a figure includes its
//! bookkeeping (NAT mappings and filters, the record of what each peer did).
//!
//! ```sh
//! cargo bench --bench nat_traversal_performance            # all groups (well under 2 minutes)
//! cargo bench --bench nat_traversal_performance -- --test  # run each once, as a check
//! cargo bench --bench nat_traversal_performance -- coordinator   # one group
//! ```

#[path = "support/signalling.rs"]
mod signalling;

use std::hint::black_box;
use std::time::{Duration, Instant};

use ant_quic_control::nat::candidate::{check_list, pair_priority, priority};
use ant_quic_control::nat::coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig, SessionId};
use ant_quic_control::nat::sim::{NatKind, World};
use ant_quic_control::nat::traversal::TraversalEvent;
use ant_quic_control::nat::wire::{encode_frame, FrameReader};
use ant_quic_control::nat::{CandidateKind, Message, Outcome};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use signalling::{candidate, candidates, peer, punch_me_now, signalling_message, v4, v6, PUNCH_ROUND};

/// Short runs: the whole bench stays well under two minutes on a 2-core machine.
fn configured() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .noise_threshold(0.05)
}

// ---------------------------------------------------------------------------------------------
// Candidate pairing

fn candidate_pairing(c: &mut Criterion) {
    let mut group = c.benchmark_group("candidate_pairing");
    // Eight candidates each, as a peer with a few interfaces has them.
    let remote = candidates(2, 5);
    let one = vec![candidate(CandidateKind::Host, u16::MAX, v4(10, 1, 0, 2, 5000))];
    let eight = candidates(1, 5);
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

/// A signalling stream as a bootstrap reads it from busy peers: 100 frames of every kind a peer
/// sends, and a few that only a bootstrap sends (it must still delimit and decode them).
fn signalling_stream() -> (Vec<u8>, usize) {
    let mut stream = Vec::new();
    let mut frames = 0;
    for i in 0..100u64 {
        let message = signalling_message(i, PUNCH_ROUND);
        stream.extend_from_slice(&encode_frame(&message));
        frames += 1;
    }
    (stream, frames)
}

fn signalling_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("signalling_codec");
    let message = punch_me_now(PUNCH_ROUND);
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

/// Two peers in the simulated NAT world, registered with one coordinator, their host candidates
/// (one IPv4 and one IPv6 address each) added and their observed addresses known: the state
/// before a connection attempt. Not timed. With `direct`, both NATs are full cones and every
/// probe to the other peer's public address gets in; without, both are symmetric, which filter
/// everything the other sends: every probe is lost and the attempt falls back to the relay.
fn settled_world(direct: bool, seed: u64) -> World {
    let kind = if direct { NatKind::FullCone } else { NatKind::Symmetric };
    let mut world = World::new(seed);
    for (index, one_way) in [(0u16, 10), (1, 25)] {
        let node = world.add_node(kind, Duration::from_millis(one_way));
        let (now, inner) = (world.now, world.nodes[node].inner);
        world.nodes[node].traversal.set_host_candidates(now, vec![inner, v6(index, 5000)]);
    }
    world.run_for(Duration::from_millis(200));
    world
}

/// A connects to B; runs until A's attempt ended with `expected` and the bootstrap has its REPORT
/// (and, when direct, B's own probe was answered too).
fn connect(world: &mut World, expected: Outcome) {
    let (now, target) = (world.now, world.nodes[1].id);
    world.nodes[0].traversal.connect(now, target).unwrap();
    let finished = |w: &World| {
        w.nodes[0].events.iter().find_map(|e| match e {
            TraversalEvent::AttemptFinished { outcome, .. } => Some(*outcome),
            _ => None,
        })
    };
    let settled = world.run_until(Duration::from_secs(30), |w| {
        let stats = w.coordinator.stats();
        let reported = stats.reports_direct + stats.reports_relayed + stats.reports_failed == 1;
        let responder_done = expected != Outcome::Direct || w.nodes[1].traversal.stats().probes_acked > 0;
        finished(w).is_some() && reported && responder_done
    });
    assert!(settled, "the traversal does not settle");
    assert_eq!(finished(world), Some(expected));
}

fn traversal(c: &mut Criterion) {
    let mut group = c.benchmark_group("traversal");
    group.throughput(Throughput::Elements(1));
    // CONNECT_REQUEST → PUNCH_ME_NOW to both → probes and acks both ways → the QUIC connection on
    // the valid pair → REPORT: every state machine step of one successful punch.
    group.bench_function("direct_punch", |b| {
        b.iter_batched(
            || settled_world(true, 7),
            |mut world| connect(&mut world, Outcome::Direct),
            BatchSize::SmallInput,
        )
    });
    // The same attempt when nothing gets through: 3 s (synthetic) of probe rounds every 50 ms to
    // all of B's candidates, then RELAY_REQUEST → RELAY_GRANT to both → the relayed connection.
    group.bench_function("failed_punch_relay_fallback", |b| {
        b.iter_batched(
            || settled_world(false, 7),
            |mut world| connect(&mut world, Outcome::Relayed),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = configured();
    targets = candidate_pairing, signalling_codec, coordinator, traversal
}
criterion_main!(benches);
