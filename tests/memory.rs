//! Memory that hostile or unlucky clients can make the server hold: every client's queue is
//! bounded in bytes as well as frames, no reply is much larger than its request, and a few
//! clients that never read cannot grow the server.

mod common;

use std::time::{Duration, Instant};

use common::binary::Binary;
use common::raw::{frame, raw_ws, raw_ws_at};
use common::TestServer;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A client that never reads, with a huge frame bound and a 64 KiB byte bound, is closed
/// as a slow consumer once its queue holds 64 KiB, and is counted as one (4000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queue_is_bounded_in_bytes() {
    const BOUND: u64 = 64 * 1024;
    let server = TestServer::with(|c| {
        c.client_queue_capacity = 100_000;
        c.client_queue_bytes = BOUND as usize;
    })
    .await;
    let _silent = raw_ws(&server).await;
    common::eventually("the silent client subscribed", || {
        server.hub.subscriber_count("notification") == 1
    })
    .await;
    let filler = "x".repeat(8 * 1024);
    let mut closed_after = None;
    // The kernel's socket buffers take a few MB first; 4,000 events are 32 MB.
    for n in 1..=4_000 {
        let (status, answer) = server
            .publish(&json!({"type": "notification", "data": {"n": n, "filler": filler}}))
            .await;
        assert_eq!(status, 200, "{answer}");
        let queued = server.hub.queued();
        assert!(
            queued.bytes <= BOUND + 9 * 1024,
            "the queue holds {} bytes in {} frames",
            queued.bytes,
            queued.frames
        );
        if answer["slow_consumers"] == 1 {
            closed_after = Some(n);
            break;
        }
    }
    let n = closed_after.expect("never closed as a slow consumer");
    println!("closed as a slow consumer after {n} events of 8 KiB");
    // Reading nothing, it cannot take the close frame either: still a slow consumer.
    common::eventually("the close counted", || server.hub.stats().clients == 0).await;
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(stats["closes"]["4000"], 1, "{stats}");
    assert_eq!(stats["memory"]["queued_bytes"], 0, "{stats}");
    let (_, _, metrics) = server.request_raw("GET", "/metrics", vec![], &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("sigmahub_slow_consumer_closes_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sigmahub_queued_bytes 0"), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );
}

/// The audit's attack: three clients within every default limit send a subscribe of
/// 16,000 invalid names (64 KB) at the inbound rate the server allows, for 30 s, and read
/// nothing. Each reply used to echo every name (1.6 MB); 438 MB of server memory later
/// the audit stopped. Now a list longer than a connection may hold is refused whole in a
/// small error, the server's resident size grows by less than 32 MiB (measured: +19 MiB,
/// flat from the first seconds), and the attackers stay connected (they broke no limit).
#[test]
fn non_reading_clients_sending_refused_subscribes_leave_memory_bounded() {
    const BOUND: u64 = 32 << 20;
    let server = Binary::spawn(&["--host-enabled", "false"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let names = vec!["!"; 16_000];
    let request = json!({"type": "subscribe", "data": {"events": names}}).to_string();
    assert!(request.len() < 64 * 1024);
    let message = frame(0x81, request.as_bytes(), true);
    let before = server.rss_bytes();
    let mut peak = before;
    runtime.block_on(async {
        let mut attackers = Vec::new();
        for _ in 0..3 {
            attackers.push(raw_ws_at(server.addr, "/ws").await);
        }
        let start = Instant::now();
        let mut sent = 0;
        // Within the default limit (bursts of 10, then 100 a minute): 80 a minute.
        let mut next = start;
        while start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep_until(next.into()).await;
            for tcp in &mut attackers {
                tcp.write_all(&message)
                    .await
                    .expect("the server closed an attacker");
            }
            sent += 1;
            if sent >= 10 {
                next += Duration::from_millis(750);
            }
            peak = peak.max(server.rss_bytes());
        }
        println!(
            "each attacker sent {sent} subscribes of {} bytes",
            request.len()
        );
        let (status, stats) = common::http_get_json(server.addr, "/api/v1/stats").await;
        assert_eq!(status, 200);
        assert_eq!(stats["active_connections"], 3, "{stats}");
        assert_eq!(stats["limits"]["rate_limited"], 0, "{stats}");
        let queued = stats["memory"]["queued_bytes"].as_u64().unwrap();
        assert!(queued <= 3 * (256 + 64) * 1024, "{stats}");
    });
    let grew = peak.saturating_sub(before);
    println!(
        "server RSS {} MiB before, {} MiB at its peak: +{:.1} MiB",
        before >> 20,
        peak >> 20,
        grew as f64 / f64::from(1 << 20)
    );
    assert!(grew < BOUND, "the server grew by {grew} bytes");
    server.stop();
}
