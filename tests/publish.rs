//! `POST /api/v1/publish` and in-process publishing through the library.

mod common;

use common::TestServer;
use serde_json::json;
use sigmahub::Event;

#[tokio::test]
async fn one_event_or_an_array_reaches_subscribers_in_order() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe(&["orders"]).await;
    b.subscribe(&["orders", "billing"]).await;

    let (status, reply) = server
        .publish(&json!({"type": "orders", "data": {"n": 0}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["accepted"], 1);
    assert_eq!(reply["delivered"], 2);

    let batch: Vec<_> = (1..=5)
        .map(|n| json!({"type": if n % 2 == 0 { "billing" } else { "orders" }, "data": {"n": n}}))
        .collect();
    let (status, reply) = server.publish(&json!(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(reply["accepted"], 5);
    assert_eq!(reply["delivered"], 3 * 2 + 2);

    for n in [0, 1, 3, 5] {
        let event = a.recv().await;
        assert_eq!(
            (event["type"].as_str(), event["data"]["n"].as_u64()),
            (Some("orders"), Some(n))
        );
    }
    for n in 0..=5u64 {
        let event = b.recv().await;
        assert_eq!(event["data"]["n"], n);
        let timestamp = event["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
        // SigmaVault's envelope, plus the offset for recovery (docs/protocol.md).
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["data", "offset", "timestamp", "type"], "{event}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason_and_publish_nothing() {
    let server = TestServer::with(|c| c.max_publish_body_size = 4096).await;
    let mut client = server.client().await;
    client.subscribe(&["ok"]).await;

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/publish",
            b"{nope".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/publish",
            b"17".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/publish",
            br#"{"data":{}}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/api/v1/publish",
            br#"{"type":3}"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/api/v1/publish",
            br#"[{"type":"ok"},{"type":"no way"}]"#.to_vec(),
            400,
            "invalid_event",
        ),
        (
            "POST",
            "/api/v1/publish",
            vec![b' '; 5000],
            413,
            "body_too_large",
        ),
        ("GET", "/api/v1/publish", vec![], 405, "method_not_allowed"),
        ("GET", "/nowhere", vec![], 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, reply) = server.request(method, path, body).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{reply}"
        );
    }
    let (_, reply) = server
        .request(
            "POST",
            "/api/v1/publish",
            br#"[{"type":"ok"},{"type":"no way"}]"#.to_vec(),
        )
        .await;
    assert_eq!(reply["error"]["index"], 1);

    // Nothing from the refused batch was published: the next event is the first received.
    server
        .publish(&json!({"type": "ok", "data": {"first": true}}))
        .await;
    assert_eq!(client.recv().await["data"]["first"], true);
}

#[tokio::test]
async fn the_library_publishes_in_process() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe(&["in.process"]).await;
    let delivery = server
        .hub
        .publish(&Event::new("in.process", &json!({"from": "rust"})).unwrap());
    assert_eq!(delivery.queued, 1);
    let event = client.recv().await;
    assert_eq!(event["type"], "in.process");
    assert_eq!(event["data"]["from"], "rust");
}
