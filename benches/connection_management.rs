//! Connection management: full handshakes over loopback (TLS 1.3 with the node's certificate
//! and key exchange, then an immediate close), one at a time and with several in flight, and the
//! per-packet cost of the data plane's connection IDs (issue, validate, route a datagram).
//!
//! ```sh
//! cargo bench --bench connection_management             # about 30 s
//! cargo bench --bench connection_management -- --test   # each once, as a check
//! ```
//!
//! Handshakes run between a one-core server node and a one-core client node in this process; a
//! figure is the time from asking the client core to connect until every handshake in the batch
//! has completed on the client (which closes each at once).

#[path = "support/loopback.rs"]
mod loopback;

use std::hint::black_box;
use std::time::{Duration, Instant};

use ant_quic::dataplane::cid::{route, CidKey, CoreCidGenerator, Route};
use ant_quic::quinn_proto::ConnectionIdGenerator;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use loopback::Loopback;

fn configured() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .noise_threshold(0.05)
}

fn handshakes(c: &mut Criterion) {
    let mut loopback = match Loopback::start(true) {
        Ok(loopback) => loopback,
        Err(e) => panic!("cannot start the nodes: {e}"),
    };
    let mut group = c.benchmark_group("handshake_and_close");
    group.sampling_mode(SamplingMode::Flat);
    for in_flight in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(in_flight as u64));
        group.bench_with_input(BenchmarkId::new("in_flight", in_flight), &in_flight, |b, &in_flight| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    if let Err(e) = loopback.connect(in_flight) {
                        panic!("handshakes: {e}");
                    }
                }
                started.elapsed()
            })
        });
    }
    group.finish();
    loopback.stop();
}

fn connection_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("connection_ids");
    let key = CidKey::random();
    let mut generator = CoreCidGenerator::new(1, 1, key.clone());
    group.bench_function("generate", |b| b.iter(|| generator.generate_cid()));
    let cid = generator.generate_cid();
    group.bench_function("validate", |b| b.iter(|| generator.validate(black_box(&cid))));
    // A short-header datagram addressed to core 1, and a client Initial's random ID (long header).
    let mut short = vec![0x40u8];
    short.extend_from_slice(&cid);
    short.resize(1200, 0);
    let mut initial = vec![0xc0u8, 0, 0, 0, 1, 8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    initial.resize(1200, 0);
    assert_eq!(route(&key, 1, &short), Route::Core(1));
    assert_eq!(route(&key, 1, &initial), Route::Local);
    group.bench_function("route_short_header", |b| b.iter(|| route(&key, 1, black_box(&short))));
    group.bench_function("route_initial", |b| b.iter(|| route(&key, 1, black_box(&initial))));
    group.finish();
}

criterion_group! { name = benches; config = configured(); targets = handshakes, connection_ids }
criterion_main!(benches);
