//! `low_priority_delay`: a real server leaves a `low` event in a client's queue until the
//! next event of another priority comes (both are written together), or until the delay
//! ends, and the client receives everything in publish order.

mod common;

use std::time::Duration;

use common::scrape::{scrape, value};
use common::TestServer;
use serde_json::{json, Value};
use sigmahub::{ChannelRule, Priority};

/// The next `metrics.*` or `orders` event, as `type=v`.
async fn next_event(client: &mut common::Client) -> String {
    let message = client
        .recv_until("an event", |m| {
            m["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("metrics.") || t == "orders")
        })
        .await;
    format!(
        "{}={}",
        message["type"].as_str().unwrap(),
        message["data"]["v"]
    )
}

async fn publish(server: &TestServer, event: Value) {
    let (status, reply) = server.publish(&event).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn a_low_event_waits_for_the_next_event_of_another_priority() {
    // A delay far longer than the test: only the normal event can wake the writer.
    let server = TestServer::with(|c| {
        c.low_priority_delay = Duration::from_secs(10);
        let mut metrics = ChannelRule::new("metrics.*");
        metrics.priority = Some(Priority::Low);
        c.channels = vec![metrics];
    })
    .await;
    let mut client = server.client().await;
    client.subscribe(&["metrics.cpu", "orders"]).await;
    // Everything queued so far has been written once this arrives.
    publish(&server, json!({"type": "orders", "data": {"v": 0}})).await;
    assert_eq!(next_event(&mut client).await, "orders=0");

    // `low` by its channel's rule: it stays queued.
    publish(&server, json!({"type": "metrics.cpu", "data": {"v": 1}})).await;
    let early = tokio::time::timeout(Duration::from_millis(500), client.recv()).await;
    assert!(
        early.is_err(),
        "the low event was written at once: {early:?}"
    );

    // A normal event wakes the writer: both come, in publish order.
    publish(&server, json!({"type": "orders", "data": {"v": 1}})).await;
    assert_eq!(next_event(&mut client).await, "metrics.cpu=1");
    assert_eq!(next_event(&mut client).await, "orders=1");

    // An event's own priority overrides its channel's: a `high` metric is not held.
    publish(
        &server,
        json!({"type": "metrics.cpu", "data": {"v": 2}, "priority": "high"}),
    )
    .await;
    assert_eq!(next_event(&mut client).await, "metrics.cpu=2");
    let samples = scrape(&server).await;
    assert_eq!(
        value(&samples, "sigmahub_low_priority_wakes_total", None),
        0.0,
        "no writer waited for the ticker"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn low_events_alone_are_written_when_the_delay_ends() {
    let server = TestServer::with(|c| c.low_priority_delay = Duration::from_millis(200)).await;
    let mut client = server.client().await;
    client.subscribe(&["metrics.cpu", "orders"]).await;
    for v in 1..=3 {
        publish(
            &server,
            json!({"type": "metrics.cpu", "data": {"v": v}, "priority": "low"}),
        )
        .await;
    }
    for v in 1..=3 {
        assert_eq!(next_event(&mut client).await, format!("metrics.cpu={v}"));
    }
    let samples = scrape(&server).await;
    assert!(value(&samples, "sigmahub_low_priority_wakes_total", None) >= 1.0);

    server.shutdown().await;
}

#[tokio::test]
async fn a_keepalive_ping_wakes_a_writer_holding_low_events() {
    // The ticker is 10 s away; pings come every second, from another task than the
    // client's, and find the low event queued.
    let server = TestServer::with(|c| {
        c.low_priority_delay = Duration::from_secs(10);
        c.ping_interval = Duration::from_secs(1);
    })
    .await;
    let mut client = server.client().await;
    client.subscribe(&["metrics.cpu"]).await;
    publish(
        &server,
        json!({"type": "metrics.cpu", "data": {"v": 1}, "priority": "low"}),
    )
    .await;
    let event = tokio::time::timeout(Duration::from_secs(5), next_event(&mut client))
        .await
        .expect("the ping woke the writer before the delay ended");
    assert_eq!(event, "metrics.cpu=1");
    server.shutdown().await;
}
