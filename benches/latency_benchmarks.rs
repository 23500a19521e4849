//! Request/response latency over an established loopback connection: echo round trips on the
//! `ant-quic/1` `E` operation (a new bidirectional stream per request: open, write, FIN, read the
//! answer to its FIN), one after the other, between a server node and a client node in this
//! process.
//!
//! The client's core runs the round trips back to back and reports once, so a figure is the
//! round trip through both nodes' data planes and the kernel's loopback, not the hand-off
//! between the bench thread and a core (amortised over the batch).
//!
//! ```sh
//! cargo bench --bench latency_benchmarks             # about 15 s
//! cargo bench --bench latency_benchmarks -- --test   # each once, as a check
//! ```

#[path = "support/loopback.rs"]
mod loopback;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loopback::Loopback;

fn configured() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .noise_threshold(0.05)
}

fn echo_round_trip(c: &mut Criterion) {
    let mut loopback = match Loopback::start(false) {
        Ok(loopback) => loopback,
        Err(e) => panic!("cannot start the nodes: {e}"),
    };
    if let Err(e) = loopback.connect(1) {
        panic!("cannot connect: {e}");
    }
    let mut group = c.benchmark_group("echo_round_trip");
    for size in [32usize, 1024] {
        let payload = vec![0x5au8; size];
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(format!("{size}B")), &payload, |b, payload| {
            b.iter_custom(|iters| match loopback.echo(iters, payload) {
                Ok(elapsed) => elapsed,
                Err(e) => panic!("echo: {e}"),
            })
        });
    }
    group.finish();
    loopback.stop();
}

criterion_group! { name = benches; config = configured(); targets = echo_round_trip }
criterion_main!(benches);
