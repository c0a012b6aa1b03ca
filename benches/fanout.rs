//! In-process fan-out: one publish to N subscribers, including draining every subscriber's
//! queue (as its writer would) inside the timed region. Throughput is in delivered frames.

use bytes::Bytes;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sigmahub::{Config, Hub};

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20);
    for subscribers in [1usize, 100, 1_000, 10_000, 100_000] {
        let hub = Hub::new(&Config::default());
        let clients: Vec<_> = (0..subscribers)
            .map(|_| {
                let mut client = hub.connect().unwrap();
                client.subscribe(["bench"]);
                client
            })
            .collect();
        let frame = sigmahub::frame::text(
            br#"{"type":"bench","timestamp":"2026-01-01T00:00:00.000Z","data":{"n":1}}"#,
        );
        let mut scratch: Vec<Bytes> = Vec::with_capacity(8);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| {
                let delivery = hub.publish_frame("bench", &frame);
                assert_eq!(delivery.queued, subscribers);
                for client in &clients {
                    client.outbox().drain_into(&mut scratch, 8);
                    scratch.clear();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
