//! `GET /metrics` against a real server, parsed with a Prometheus text parser: the values
//! move as clients connect, subscribe, publish, get refused and are closed.

mod common;

use common::TestServer;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

async fn scrape(server: &TestServer) -> Vec<Sample> {
    let (status, headers, body) = server.request_raw("GET", "/metrics", Vec::new(), &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let found = samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)));
    match found
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .value
    {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

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

    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(&json!({"type": "subscribe", "data": {"channels": ["orders", "bad name"]}}))
        .await;
    a.recv_type("subscribe_response").await;
    // The third connection from this address is refused with 429.
    assert!(tokio_tungstenite::connect_async(server.ws_url())
        .await
        .is_err());
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
    let (status, _, _) = server
        .request_full("GET", "/metrics", Vec::new(), &[])
        .await;
    assert_eq!(status, 401);
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
