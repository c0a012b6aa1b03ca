//! One client's outbox: a burst of frames pushed and drained, as a publisher and the
//! client's writer do it; and the same with the queue's memory given back after each
//! burst (`shrink`), so that the next burst allocates it again. The difference is what a
//! give-back costs: the hub's sweep does it at most once a second per client (perf/README.md,
//! "Idle memory, allocation by allocation"). Throughput is in frames.

use bytes::Bytes;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sigmahub::engine::outbox::{Outbox, SlowConsumerPolicy};

fn outbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox");
    let frame = sigmahub::frame::text(
        br#"{"type":"bench","timestamp":"2026-01-01T00:00:00.000Z","data":{"n":1}}"#,
    );
    for burst in [1usize, 10] {
        group.throughput(Throughput::Elements(burst as u64));
        for shrink in [false, true] {
            let outbox = Outbox::new(256, SlowConsumerPolicy::Close);
            let mut batch: Vec<Bytes> = Vec::with_capacity(burst);
            let name = if shrink { "burst_then_shrink" } else { "burst" };
            group.bench_function(BenchmarkId::new(name, burst), |b| {
                b.iter(|| {
                    for _ in 0..burst {
                        outbox.push(frame.clone());
                    }
                    outbox.drain_into(&mut batch, usize::MAX);
                    batch.clear();
                    if shrink {
                        assert!(outbox.shrink());
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, outbox);
criterion_main!(benches);
