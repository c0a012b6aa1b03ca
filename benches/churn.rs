//! Subscribe and unsubscribe while 100k clients are subscribed to the same channel: the
//! copy-on-write cost must stay proportional to one chunk, not to the client count.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sigmahub::{Config, Hub};

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn/subscribe_unsubscribe");
    for existing in [1_000usize, 100_000] {
        let mut config = Config::default();
        config.max_subscriptions_per_connection = 8;
        let hub = Hub::new(&config);
        let _clients: Vec<_> = (0..existing)
            .map(|_| {
                let mut client = hub.connect().unwrap();
                client.subscribe(["busy"]);
                client
            })
            .collect();
        let mut churner = hub.connect().unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(existing), |b| {
            b.iter(|| {
                churner.subscribe(["busy"]);
                churner.unsubscribe(["busy"]);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("churn/connect_disconnect");
    let hub = Hub::new(&Config::default());
    let _clients: Vec<_> = (0..100_000).map(|_| hub.connect().unwrap()).collect();
    group.throughput(Throughput::Elements(1));
    group.bench_function("100000", |b| {
        b.iter(|| {
            let mut client = hub.connect().unwrap();
            client.subscribe(["a", "b"]);
            drop(client);
        })
    });
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
