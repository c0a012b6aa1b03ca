//! Seed 000's WebSocket behaviour, over a real socket.

mod common;

use std::time::Duration;

use common::{Read, TestServer};
use serde_json::json;
use sigmahub::protocol::channel::DEFAULT_CHANNELS;

#[tokio::test]
async fn welcome_then_the_eight_default_subscriptions() {
    let server = TestServer::start().await;
    let mut client = server.raw_client().await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "notification");
    assert_eq!(
        welcome["data"]["message"],
        "Welcome to SigmaVault WebSocket"
    );
    assert_eq!(welcome["data"]["level"], "info");
    assert!(welcome["data"]["client_id"].is_string());
    assert_eq!(welcome["data"]["subscriptions"], json!(DEFAULT_CHANNELS));
    assert!(welcome["timestamp"].as_str().unwrap().ends_with('Z'));

    for channel in DEFAULT_CHANNELS {
        common::eventually("default subscription", || {
            server.hub.subscriber_count(channel) == 1
        })
        .await;
        let (status, reply) = server
            .publish(&json!({"type": channel, "data": {"n": 1}}))
            .await;
        assert_eq!(
            (status, reply["delivered"].as_u64()),
            (200, Some(1)),
            "{channel}"
        );
        let event = client.recv_type(channel).await;
        assert_eq!(event["data"], json!({"n": 1}));
    }
}

#[tokio::test]
async fn every_list_spelling_subscribes_and_the_ack_echoes_the_correlation_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (key, channel) in [("events", "one"), ("types", "two"), ("channels", "three")] {
        client
            .send(&json!({"type": "subscribe", "correlation_id": key, "data": {key: [channel]}}))
            .await;
        let ack = client.recv_type("subscribe_response").await;
        assert_eq!(ack["correlation_id"], key);
        assert_eq!(ack["data"]["success"], true);
        assert_eq!(ack["data"]["subscribed"], json!([channel]));
        assert!(ack["data"]["subscriptions"]
            .as_array()
            .unwrap()
            .contains(&json!(channel)));
        assert_eq!(ack["data"]["rejected"], json!([]));
    }
    for channel in ["one", "two", "three"] {
        server
            .publish(&json!({"type": channel, "data": {"c": channel}}))
            .await;
        assert_eq!(client.recv_type(channel).await["data"]["c"], channel);
    }
}

#[tokio::test]
async fn invalid_names_are_rejected_with_a_reason_and_the_rest_applied() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send(&json!({"type": "subscribe", "data": {"events": ["good.one", "bad name", ""]}}))
        .await;
    let ack = client.recv_type("subscribe_response").await;
    assert_eq!(ack["data"]["success"], false);
    assert_eq!(ack["data"]["subscribed"], json!(["good.one"]));
    let rejected = ack["data"]["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["channel"], "bad name");
    assert_eq!(rejected[0]["code"], "invalid_channel");
    assert_eq!(rejected[1]["code"], "empty_channel");
    assert!(rejected[0]["reason"].as_str().unwrap().len() > 5);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe(&["orders"]).await;
    client
        .send(&json!({"type": "unsubscribe", "correlation_id": 9, "data": {"events": ["orders", "system.status"]}}))
        .await;
    let ack = client.recv_type("unsubscribe_response").await;
    assert_eq!(ack["correlation_id"], 9);
    assert_eq!(
        ack["data"]["unsubscribed"],
        json!(["orders", "system.status"])
    );
    assert!(!ack["data"]["subscriptions"]
        .as_array()
        .unwrap()
        .contains(&json!("orders")));

    let (_, reply) = server.publish(&json!({"type": "orders", "data": {}})).await;
    assert_eq!(reply["delivered"], 0);
    // A marker on a channel still subscribed proves nothing else was queued before it.
    server
        .publish(&json!({"type": "notification", "data": {"marker": true}}))
        .await;
    let next = client.recv().await;
    assert_eq!(next["type"], "notification", "got {next}");
}

#[tokio::test]
async fn subscriptions_are_enforced_for_every_event() {
    let server = TestServer::start().await;
    let mut listener = server.client().await;
    listener.subscribe(&["mine"]).await;
    for channel in ["other", "mine.sub", "min", "MINE", "mine"] {
        server
            .publish(&json!({"type": channel, "data": {"c": channel}}))
            .await;
    }
    let only = listener.recv().await;
    assert_eq!(only["type"], "mine", "received {only}");
}

#[tokio::test]
async fn ping_message_gets_a_pong() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send(&json!({"type": "ping", "correlation_id": "p"}))
        .await;
    let pong = client.recv_type("pong").await;
    assert_eq!(pong["correlation_id"], "p");
    assert!(pong["timestamp"].is_string());
    assert!(pong["data"]["server_time"].as_u64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn heartbeat_events_carry_the_server_time() {
    let server = TestServer::with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let mut client = server.client().await;
    let beat = client.recv_type("heartbeat").await;
    let t = beat["data"]["server_time"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t.abs_diff(now) < 60);
    // Unsubscribed clients get none.
    client
        .send(&json!({"type": "unsubscribe", "data": {"events": ["heartbeat"]}}))
        .await;
    client.recv_type("unsubscribe_response").await;
    server
        .publish(&json!({"type": "notification", "data": {}}))
        .await;
    let marker = client.recv().await;
    assert_eq!(marker["type"], "notification");
}

#[tokio::test]
async fn clients_that_answer_pings_stay_and_silent_ones_are_closed() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(300);
        c.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut lively = server.client().await;
    let mut silent = server.client().await;

    // The lively client keeps reading (tungstenite answers each ping as it reads) until the
    // silent one, which never reads and so never answers, has been closed.
    let mut pings = 0;
    while pings < 3 || server.hub.stats().clients > 1 {
        match lively.read().await {
            Read::Ping => pings += 1,
            Read::Json(_) => {}
            other => panic!("lively client lost its connection: {other:?}"),
        }
    }
    assert_eq!(silent.closed().await, Some(4001));
    server
        .publish(&json!({"type": "notification", "data": {"still": "here"}}))
        .await;
    assert_eq!(
        lively.recv_type("notification").await["data"]["still"],
        "here"
    );
}

#[tokio::test]
async fn custom_default_subscriptions_apply() {
    let server = TestServer::with(|c| c.default_subscriptions = vec!["only.this".into()]).await;
    let mut client = server.raw_client().await;
    let welcome = client.recv().await;
    assert_eq!(welcome["data"]["subscriptions"], json!(["only.this"]));
    common::eventually("subscribed", || {
        server.hub.subscriber_count("only.this") == 1
    })
    .await;
    assert_eq!(server.hub.subscriber_count("system.status"), 0);
}

#[tokio::test]
async fn a_plain_http_get_on_ws_is_told_to_upgrade() {
    let server = TestServer::start().await;
    let (status, body) = server.request("GET", "/ws", vec![]).await;
    assert_eq!(status, 426);
    assert_eq!(body["error"]["code"], "upgrade_required");
}
