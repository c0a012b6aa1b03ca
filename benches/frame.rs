//! Encoding an event into its ready-to-send WebSocket frame (done once per publish).

use std::time::SystemTime;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sigmahub::Event;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame/encode_event");
    let now = SystemTime::now();
    for size in [64usize, 1024, 16 * 1024, 100 * 1024] {
        let event = Event::new(
            "system.status",
            &serde_json::json!({"pad": "x".repeat(size)}),
        )
        .unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &event, |b, event| {
            b.iter(|| event.to_frame(now))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("frame/text");
    for size in [125usize, 126, 65_535, 65_536] {
        let payload = vec![b'a'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| sigmahub::frame::text(p))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
