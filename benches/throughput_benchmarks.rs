//! Bulk throughput of the whole engine over loopback: a server node and a client node in this
//! process (`ant_quic::bulk::bulk_transfer`), 64 MiB per transfer, each direction.
//!
//! The figure is the transfer itself, from opening the stream to its last byte (the nodes'
//! start, handshake and shutdown are excluded); criterion reports it as bytes per second.
//!
//! ```sh
//! cargo bench --bench throughput_benchmarks             # about 30 s on 2 cores
//! cargo bench --bench throughput_benchmarks -- --test   # one transfer each, as a check
//! ```
//!
//! On a shared 2-core machine the absolute figure moves from run to run: compare against a saved
//! baseline (`-- --save-baseline NAME`, then `-- --baseline NAME`) as advice, never as a gate.

use std::time::Duration;

use ant_quic::bulk::{bulk_transfer, BulkOptions};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const BYTES: u64 = 64 * 1024 * 1024;

fn configured() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .noise_threshold(0.05)
}

fn bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulk_loopback");
    // One transfer per sample: each takes tens of milliseconds and starts two nodes.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(BYTES));
    for (name, upload) in [("download_64MiB", false), ("upload_64MiB", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let options = BulkOptions { bytes: BYTES, upload, backend: None, cores: 1 };
                    match bulk_transfer(&options) {
                        Ok(report) if report.bytes >= BYTES => total += report.elapsed,
                        Ok(report) => panic!("{name}: moved {} of {BYTES} bytes", report.bytes),
                        Err(e) => panic!("{name}: {e}"),
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = configured(); targets = bulk }
criterion_main!(benches);
