//! `GET /metrics` and `GET /api/v1/stats` against a real server, the metrics parsed with a
//! Prometheus text parser: the values move as clients connect, subscribe, publish, get
//! refused and are closed.

mod common;

use std::time::Duration;

use common::scrape::{sample, scrape, value};
use common::TestServer;
use prometheus_parse::Value;
use serde_json::json;

#[tokio::test]
async fn metrics_follow_connections_subscriptions_refusals_and_closes() {
    let server = TestServer::with(|c| {
        c.max_connections_per_ip = 2;
        c.default_subscriptions = vec!["notification".into()];
    })
    .await;
    let before = scrape(&server).await;
    assert_eq!(value(&before, "websocket_connections_active", None), 0.0);
    assert_eq!(value(&before, "websocket_connections_total", None), 0.0);

    // The clients come from an address of their own: the scrapes and publishes below
    // (plain HTTP connections count too) from another.
    let clients = [127, 0, 0, 2].into();
    let mut a = server.client_from(clients).await;
    let mut b = server.client_from(clients).await;
    a.send(&json!({"type": "subscribe", "data": {"channels": ["orders", "bad name"]}}))
        .await;
    a.recv_type("subscribe_response").await;
    // The third connection from that address is refused with 429.
    assert!(server.connect_from(clients, "").await.is_err());
    server
        .publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    a.recv_type("orders").await;
    // A binary message closes b with 1003.
    futures_util::SinkExt::send(
        &mut b.ws,
        tokio_tungstenite::tungstenite::Message::Binary(vec![1u8].into()),
    )
    .await
    .unwrap();
    assert_eq!(b.closed().await, Some(1003));
    common::eventually("b gone", || server.hub.stats().clients == 1).await;

    let after = scrape(&server).await;
    assert_eq!(value(&after, "websocket_connections_active", None), 1.0);
    assert_eq!(value(&after, "websocket_connections_total", None), 2.0);
    assert_eq!(
        value(&after, "websocket_connections_failed_total", None),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "sigmahub_connections_refused_total",
            Some(("reason", "too_many_connections_from_address"))
        ),
        1.0
    );
    assert_eq!(
        value(&after, "websocket_subscriptions_failed_total", None),
        1.0
    );
    assert_eq!(
        value(&after, "websocket_broadcast_delivered_total", None),
        1.0
    );
    assert_eq!(value(&after, "sigmahub_events_published_total", None), 1.0);
    assert_eq!(
        value(&after, "websocket_messages_received_total", None),
        1.0
    );
    // Two welcomes, one subscribe_response, one event, and b's close frame is not a frame
    // of the queue: at least 4 frames written.
    assert!(value(&after, "websocket_messages_sent_total", None) >= 4.0);
    assert_eq!(
        value(&after, "sigmahub_closes_total", Some(("code", "1003"))),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "sigmahub_channel_subscribers",
            Some(("channel", "orders"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "sigmahub_channel_subscribers",
            Some(("channel", "notification"))
        ),
        1.0
    );
}

#[tokio::test]
async fn channel_series_stay_bounded() {
    let server = TestServer::with(|c| c.max_subscriptions_per_connection = 100).await;
    let mut client = server.client().await;
    let many: Vec<String> = (0..60).map(|i| format!("ch{i}")).collect();
    client
        .send(&json!({"type": "subscribe", "data": {"channels": many}}))
        .await;
    client.recv_type("subscribe_response").await;
    let samples = scrape(&server).await;
    let series: Vec<_> = samples
        .iter()
        .filter(|s| s.metric == "sigmahub_channel_subscribers")
        .collect();
    assert_eq!(series.len(), 21, "20 channels by name and _other");
    // 68 channels of one subscriber each: 20 shown, 48 summed.
    assert_eq!(
        value(
            &samples,
            "sigmahub_channel_subscribers",
            Some(("channel", "_other"))
        ),
        48.0
    );
    assert_eq!(value(&samples, "sigmahub_channels", None), 68.0);
}

#[tokio::test]
async fn metrics_need_a_publish_key_once_keys_exist_and_readyz_reports() {
    let server =
        TestServer::with(|c| c.auth.publish_keys = vec!["metrics-key-0123456789".into()]).await;
    for path in ["/metrics", "/api/v1/stats", "/api/v1/stats/history"] {
        let (status, _, _) = server.request_full("GET", path, Vec::new(), &[]).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _, _) = server
        .request_full(
            "GET",
            "/metrics",
            Vec::new(),
            &[("authorization", "Bearer metrics-key-0123456789")],
        )
        .await;
    assert_eq!(status, 200);
    let (status, ready) = server.request("GET", "/readyz", Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn publish_to_write_latency_is_observed_per_delivered_batch() {
    let server = TestServer::with(|c| c.default_subscriptions = vec!["orders".into()]).await;
    let mut client = server.client().await;
    let before = scrape(&server).await;
    let count = |samples: &[prometheus_parse::Sample]| {
        value(samples, "sigmahub_publish_to_write_seconds_count", None)
    };
    let observed_before = count(&before);
    for n in 0..3 {
        server
            .publish(&json!({"type": "orders", "data": {"n": n}}))
            .await;
        // One at a time: each event finds the queue empty and is its own batch.
        assert_eq!(client.recv_type("orders").await["data"]["n"], n);
    }
    let after = scrape(&server).await;
    assert_eq!(count(&after) - observed_before, 3.0);
    // Cumulative buckets, ending in +Inf with every observation.
    let Value::Histogram(buckets) =
        &sample(&after, "sigmahub_publish_to_write_seconds", None).value
    else {
        panic!("not a histogram");
    };
    assert_eq!(buckets.len(), 18);
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    let last = buckets.last().unwrap();
    assert!(last.less_than.is_infinite());
    assert_eq!(last.count, count(&after));
    let sum = value(&after, "sigmahub_publish_to_write_seconds_sum", None);
    assert!(sum > 0.0 && sum < 60.0, "{sum}");

    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    let latency = &stats["latency"]["publish_to_write"];
    assert_eq!(latency["observations"], 3, "{stats}");
    assert!(latency["p99_ms_at_most"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn stats_report_durations_reconnections_throughput_and_history() {
    let server = TestServer::with(|c| c.default_subscriptions = vec!["orders".into()]).await;
    // Two connections from one address, one after the other: the second is a reconnection.
    let first = server.client().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.close().await;
    common::eventually("the first to be gone", || server.hub.stats().clients == 0).await;
    let mut second = server.client().await;
    server
        .publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    second.recv_type("orders").await;

    let (status, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(status, 200);
    let analytics = &stats["analytics"];
    assert_eq!(analytics["connections_closed"], 1, "{stats}");
    assert!(
        analytics["connection_duration_avg_seconds"]
            .as_f64()
            .unwrap()
            >= 0.05
    );
    assert_eq!(analytics["reconnections"], 1);
    assert_eq!(analytics["reconnection_rate"], 0.5);
    assert_eq!(stats["peak_connections"], 1);
    assert_eq!(stats["channels"]["orders"], 1);

    // The sampler adds one sample a second; after a few, the event shows in the history.
    let mut samples = Vec::new();
    common::within(async {
        loop {
            let (_, history) = server
                .request("GET", "/api/v1/stats/history", Vec::new())
                .await;
            samples = history["samples"].as_array().unwrap().clone();
            let events: u64 = samples.iter().map(|s| s["events"].as_u64().unwrap()).sum();
            if events >= 1 && samples.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(samples.last().unwrap()["connections"], 1);
    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    let throughput = &stats["analytics"]["throughput"];
    assert!(throughput["window_seconds"].as_u64().unwrap() >= 2);
    assert!(throughput["events_per_second"].as_f64().unwrap() > 0.0);

    let metrics = scrape(&server).await;
    assert_eq!(
        value(&metrics, "sigmahub_connections_closed_total", None),
        1.0
    );
    assert_eq!(value(&metrics, "sigmahub_reconnections_total", None), 1.0);
    assert!(value(&metrics, "sigmahub_connection_duration_seconds_total", None) >= 0.05);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let server = TestServer::with(|c| {
        c.metrics = false;
        c.default_subscriptions = vec!["orders".into()];
    })
    .await;
    let (status, body) = server.request("GET", "/metrics", Vec::new()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "metrics_disabled");
    let mut client = server.client().await;
    server
        .publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    client.recv_type("orders").await;
    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    // Per-frame figures are not kept; per-publish and per-connection ones still are.
    assert_eq!(stats["latency"]["publish_to_write"]["observations"], 0);
    assert_eq!(stats["messages_sent"], 0);
    assert_eq!(stats["events_published"], 1);
    assert_eq!(stats["active_connections"], 1);
}
