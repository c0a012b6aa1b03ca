//! `[[channels]] throttle`: a real server throttles HTTP publishes per key, and its client
//! receives the first event of a window at once, the latest one when the window ends, and
//! never the ones in between.

mod common;

use std::time::Duration;

use common::scrape::{scrape, value};
use common::TestServer;
use serde_json::{json, Value};
use sigmahub::ChannelRule;

/// The `metrics.*` and `orders` events a client receives next, `n` of them.
async fn next_events(client: &mut common::Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let message = client
            .recv_until("an event", |m| {
                m["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("metrics.") || t == "orders")
            })
            .await;
        seen.push(format!(
            "{}={}",
            message["type"].as_str().unwrap(),
            message["data"]["v"]
        ));
    }
    seen
}

fn event(channel: &str, v: &str, key: Option<&str>) -> Value {
    let mut event = json!({"type": channel, "data": {"v": v}});
    if let Some(key) = key {
        event["conflate"] = key.into();
    }
    event
}

#[tokio::test]
async fn a_throttled_channel_delivers_the_first_and_the_latest_of_each_window() {
    let server = TestServer::with(|c| {
        let mut metrics = ChannelRule::new("metrics.*");
        metrics.throttle = Some(Duration::from_millis(300));
        c.channels = vec![metrics];
    })
    .await;
    let mut client = server.client().await;
    client
        .subscribe(&["metrics.cpu", "metrics.agents", "orders"])
        .await;

    // One channel without keys: 1 passes, 2-4 are superseded, 5 follows the window.
    let mut batch: Vec<Value> = (1..=5)
        .map(|v| event("metrics.cpu", &v.to_string(), None))
        .collect();
    batch.push(event("orders", "1", None));
    let (status, reply) = server.publish(&Value::Array(batch)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 6, "{reply}");
    assert_eq!(reply["throttled"], 4, "{reply}");
    assert_eq!(
        next_events(&mut client, 3).await,
        ["metrics.cpu=\"1\"", "orders=\"1\"", "metrics.cpu=\"5\""]
    );
    // Nothing else of that window comes: the next event is the one published now.
    let (status, reply) = server.publish(&event("orders", "2", None)).await;
    assert_eq!(status, 200);
    assert!(reply.get("throttled").is_none(), "{reply}");
    assert_eq!(next_events(&mut client, 1).await, ["orders=\"2\""]);

    // Keys have their own windows; the held ones come in the order they were held.
    let batch = [
        ("a", "a1"),
        ("b", "b1"),
        ("a", "a2"),
        ("a", "a3"),
        ("b", "b2"),
    ]
    .iter()
    .map(|(key, v)| event("metrics.agents", v, Some(key)))
    .collect();
    let (status, reply) = server.publish(&Value::Array(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(reply["throttled"], 3, "{reply}");
    assert_eq!(
        next_events(&mut client, 4).await,
        [
            "metrics.agents=\"a1\"",
            "metrics.agents=\"b1\"",
            "metrics.agents=\"a3\"",
            "metrics.agents=\"b2\""
        ]
    );

    let samples = scrape(&server).await;
    assert_eq!(
        value(&samples, "sigmahub_throttled_events_total", None),
        7.0
    );
    assert_eq!(
        value(&samples, "sigmahub_throttle_superseded_events_total", None),
        4.0
    );
}

#[tokio::test]
async fn what_a_throttle_holds_is_published_at_shutdown() {
    let server = TestServer::with(|c| {
        let mut hourly = ChannelRule::new("metrics.*");
        hourly.throttle = Some(Duration::from_secs(3600));
        c.channels = vec![hourly];
    })
    .await;
    let mut client = server.client().await;
    client.subscribe(&["metrics.cpu"]).await;
    let batch = (1..=3)
        .map(|v| event("metrics.cpu", &v.to_string(), None))
        .collect();
    let (status, reply) = server.publish(&Value::Array(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(reply["throttled"], 2, "{reply}");
    assert_eq!(next_events(&mut client, 1).await, ["metrics.cpu=\"1\""]);

    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(next_events(&mut client, 1).await, ["metrics.cpu=\"3\""]);
    assert_eq!(client.closed().await, Some(1001));
    stopping.await.unwrap();
}
