//! permessage-deflate: what compressing one message costs at each level, and what a
//! broadcast to 10,000 subscribers costs per delivered frame with and without compression
//! (compressed once for all of them, then shared). The message shapes are SigmaVault's
//! (seed 000) and a 1 KB JSON payload; their sizes before and after are printed once.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use sigmahub::compression::compress;
use sigmahub::dialect::Encoding;
use sigmahub::{Config, Dialect, Event, Hub};

/// The events, as (type, data), that both benchmarks send.
fn shapes() -> Vec<(&'static str, Value)> {
    let agents: Vec<Value> = (0..12)
        .map(|a| json!({"agent_id": format!("agent-{a}"), "status": "busy", "load": a * 7 % 100, "queue": a * 3}))
        .collect();
    vec![
        (
            "system.status",
            json!({"hostname": "The_Plug", "uptime": 123456.78, "cpu_usage": 65.3,
                   "memory_used": 4294967296u64, "memory_total": 17179869184u64,
                   "memory_pct": 25.0, "load_average": [1.5, 1.2, 0.9], "timestamp": 1703337717}),
        ),
        (
            "compression.update",
            json!({"job_id": "job-abc123", "status": "running", "job_type": "compress_file",
                   "priority": "normal", "progress": 45.2, "phase": "compressing",
                   "bytes_processed": 52428800, "bytes_total": 116000000,
                   "compression_ratio": 0.23, "elapsed_seconds": 120.5, "eta_seconds": 147.3,
                   "input_path": "/data/file.tar", "output_path": "/data/file.tar.sigma",
                   "timestamp": 1703337717}),
        ),
        (
            "agent.status",
            json!({"agent_id": "TENSOR-07", "status": "active",
                   "current_task": "compression_analysis", "memory_usage": 256.5,
                   "timestamp": 1703337717}),
        ),
        ("json.1kb", json!({"i": 1, "agents": agents})),
    ]
}

/// The SigmaVault frame payload of an event, as subscribers get it.
fn payload(kind: &str, data: &Value) -> Vec<u8> {
    let hub = Hub::new(&Config::default());
    let mut client = hub.connect().unwrap();
    client.subscribe([kind]);
    hub.publish(&Event::new(kind, data).unwrap());
    let mut frames: Vec<Bytes> = Vec::new();
    client.outbox().drain_into(&mut frames, 1);
    sigmahub::frame::payload_of(&frames[0]).to_vec()
}

fn per_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_message");
    for (kind, data) in shapes() {
        let payload = payload(kind, &data);
        let sizes: Vec<String> = [1, 6, 9]
            .iter()
            .map(|&level| {
                let out = compress(&payload, level).map_or(payload.len(), |c| c.len());
                format!("level {level}: {out} B")
            })
            .collect();
        eprintln!("{kind}: {} B; {}", payload.len(), sizes.join(", "));
        group.throughput(Throughput::Bytes(payload.len() as u64));
        for level in [1, 6, 9] {
            let id = BenchmarkId::new(kind, format!("level{level}"));
            group.bench_function(id, |b| b.iter(|| compress(&payload, level)));
        }
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut group = c.benchmark_group("deflate_fanout_10k");
    group.sample_size(20);
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for (kind, data) in shapes() {
        let event = Event::new(kind, &data).unwrap();
        for deflate in [false, true] {
            let hub = Hub::new(&Config::default());
            let encoding = match deflate {
                true => Encoding::deflated(Dialect::SigmaVault),
                false => Encoding::plain(Dialect::SigmaVault),
            };
            let clients: Vec<_> = (0..SUBSCRIBERS)
                .map(|_| {
                    let mut client = hub.connect_with(encoding).unwrap();
                    client.subscribe([kind]);
                    client
                })
                .collect();
            let mut scratch: Vec<Bytes> = Vec::with_capacity(8);
            let id = BenchmarkId::new(kind, if deflate { "deflate" } else { "plain" });
            group.bench_function(id, |b| {
                b.iter(|| {
                    let delivery = hub.publish(&event);
                    assert_eq!(delivery.queued, SUBSCRIBERS);
                    for client in &clients {
                        client.outbox().drain_into(&mut scratch, 8);
                        scratch.clear();
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, per_message, fanout);
criterion_main!(benches);
