//! History and recovery on one node: every event carries an offset; a client that
//! reconnects with `since` gets what it missed, in order and without duplicates, then live
//! events, and `subscribe_response` says whether that was everything.

mod common;

use common::TestServer;
use serde_json::{json, Value};

fn orders(n: u64) -> Value {
    json!({"type": "orders", "data": {"n": n}})
}

/// Subscribes with `since` and returns the `subscribe_response`.
async fn resume(client: &mut common::Client, since: Value, epoch: Option<&str>) -> Value {
    let mut data = json!({"channels": ["orders"], "since": since});
    if let Some(epoch) = epoch {
        data["epoch"] = epoch.into();
    }
    client
        .send(&json!({"type": "subscribe", "data": data}))
        .await;
    client.recv_type("subscribe_response").await
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_then_live_events() {
    let server = TestServer::with(|c| c.default_subscriptions = vec![]).await;
    let mut first = server.client().await;
    let reply = first.subscribe(&["orders"]).await;
    let epoch = reply["data"]["epoch"]
        .as_str()
        .expect("an epoch")
        .to_owned();
    for n in 0..3 {
        server.publish(&orders(n)).await;
    }
    let mut last_offset = 0;
    for n in 0..3 {
        let event = first.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n);
        let offset = event["offset"].as_u64().expect("an offset");
        assert!(
            offset > last_offset,
            "offsets rise: {offset} after {last_offset}"
        );
        last_offset = offset;
    }
    first.close().await;
    common::eventually("gone", || server.hub.stats().clients == 0).await;

    // Missed while away: 3, 4, 5, and something on another channel.
    for n in 3..6 {
        server.publish(&orders(n)).await;
    }
    server
        .publish(&json!({"type": "billing", "data": {}}))
        .await;

    let mut second = server.client().await;
    let reply = resume(&mut second, json!({"orders": last_offset}), Some(&epoch)).await;
    assert_eq!(
        reply["data"]["recovery"]["orders"],
        json!({"recovered": true, "replayed": 3}),
        "{reply}"
    );
    server.publish(&orders(6)).await;
    for n in 3..7 {
        let event = second.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n, "{event}");
    }
}

#[tokio::test]
async fn a_gap_longer_than_the_history_is_reported() {
    let server = TestServer::with(|c| {
        c.default_subscriptions = vec![];
        c.history.size = 3;
    })
    .await;
    let mut client = server.client().await;
    client.subscribe(&["orders"]).await;
    server.publish(&orders(0)).await;
    let seen = client.recv_type("orders").await["offset"].as_u64().unwrap();
    client.close().await;
    for n in 1..6 {
        server.publish(&orders(n)).await;
    }
    let mut again = server.client().await;
    let reply = resume(&mut again, json!({"orders": seen}), None).await;
    assert_eq!(
        reply["data"]["recovery"]["orders"],
        json!({"recovered": false, "replayed": 3, "reason": "history_truncated"}),
        "{reply}"
    );
    // What is kept (3, 4, 5) is still replayed, in order.
    for n in 3..6 {
        assert_eq!(again.recv_type("orders").await["data"]["n"], n);
    }
}

#[tokio::test]
async fn offsets_from_another_epoch_or_the_future_are_not_trusted() {
    let server = TestServer::with(|c| c.default_subscriptions = vec![]).await;
    server.publish(&orders(0)).await;
    let mut client = server.client().await;
    let reply = resume(&mut client, json!({"orders": 1}), Some("not-this-server")).await;
    assert_eq!(
        reply["data"]["recovery"]["orders"]["reason"], "epoch_changed",
        "{reply}"
    );
    assert_eq!(reply["data"]["subscribed"], json!(["orders"]));

    let mut other = server.client().await;
    let reply = resume(&mut other, json!({"orders": 1_000_000}), None).await;
    assert_eq!(
        reply["data"]["recovery"]["orders"]["reason"],
        "unknown_offset"
    );
    let reply = resume(&mut other, json!({"orders": 1}), None).await;
    assert_eq!(
        reply["data"]["recovery"]["orders"]["reason"],
        "already_subscribed"
    );
}

#[tokio::test]
async fn default_channels_resume_through_the_upgrade_url() {
    let server = TestServer::with(|c| c.default_subscriptions = vec!["notification".into()]).await;
    let mut first = server.raw_client().await;
    let welcome = first.recv().await;
    let epoch = welcome["data"]["epoch"].as_str().unwrap().to_owned();
    server
        .publish(&json!({"type": "notification", "data": {"n": 0}}))
        .await;
    let seen = first.recv_type("notification").await["offset"]
        .as_u64()
        .unwrap();
    first.close().await;
    for n in 1..3 {
        server
            .publish(&json!({"type": "notification", "data": {"n": n}}))
            .await;
    }
    let mut again = server
        .connect_with(&format!("?since=notification:{seen}&epoch={epoch}"), &[])
        .await
        .unwrap();
    let welcome = again.recv().await;
    assert_eq!(
        welcome["data"]["recovery"]["notification"],
        json!({"recovered": true, "replayed": 2}),
        "{welcome}"
    );
    for n in 1..3 {
        assert_eq!(again.recv_type("notification").await["data"]["n"], n);
    }

    // A malformed `since` is refused before the upgrade.
    let refused = server.connect_with("?since=notification", &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        Err(other) => panic!("expected HTTP 400, got {other}"),
        Ok(_) => panic!("a malformed `since` was upgraded"),
    }
}

/// A client that saw nothing on a channel resumes from the position the welcome or its
/// `subscribe_response` gave it: exactly what came after, nothing from before.
#[tokio::test]
async fn a_quiet_channel_resumes_from_its_position() {
    let server = TestServer::with(|c| c.default_subscriptions = vec!["notification".into()]).await;
    server.publish(&orders(0)).await;
    server
        .publish(&json!({"type": "notification", "data": {"n": 0}}))
        .await;
    let mut first = server.raw_client().await;
    let welcome = first.recv().await;
    let epoch = welcome["data"]["epoch"].as_str().unwrap().to_owned();
    let at_welcome = welcome["data"]["offsets"]["notification"]
        .as_u64()
        .unwrap_or_else(|| panic!("the welcome gives the defaults' positions: {welcome}"));
    assert_eq!(at_welcome, 2, "notification's latest event: {welcome}");
    let reply = first.subscribe(&["orders", "quiet"]).await;
    assert_eq!(
        reply["data"]["offsets"],
        json!({"orders": 1, "quiet": 0}),
        "{reply}"
    );
    first.close().await;
    common::eventually("gone", || server.hub.stats().clients == 0).await;

    for n in 1..3 {
        server.publish(&orders(n)).await;
    }
    server
        .publish(&json!({"type": "quiet", "data": {"n": 0}}))
        .await;
    server
        .publish(&json!({"type": "notification", "data": {"n": 1}}))
        .await;

    let mut again = server
        .connect_with(
            &format!("?since=notification:{at_welcome}&epoch={epoch}"),
            &[],
        )
        .await
        .unwrap();
    let welcome = again.recv().await;
    assert_eq!(
        welcome["data"]["recovery"]["notification"],
        json!({"recovered": true, "replayed": 1}),
        "{welcome}"
    );
    assert_eq!(again.recv_type("notification").await["data"]["n"], 1);
    again
        .send(&json!({"type": "subscribe", "data": {
            "channels": ["orders", "quiet"],
            "since": {"orders": 1, "quiet": 0},
            "epoch": epoch,
        }}))
        .await;
    let reply = again.recv_type("subscribe_response").await;
    assert_eq!(
        reply["data"]["recovery"],
        json!({"orders": {"recovered": true, "replayed": 2},
               "quiet": {"recovered": true, "replayed": 1}}),
        "{reply}"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = again.recv().await;
        got.push((event["type"].clone(), event["data"]["n"].clone()));
    }
    got.sort_by_key(|(t, n)| (t.to_string(), n.as_u64()));
    assert_eq!(
        got,
        [
            (json!("orders"), json!(1)),
            (json!("orders"), json!(2)),
            (json!("quiet"), json!(0))
        ]
    );
}

/// The race recovery exists for: a publisher never stops while clients drop and resume.
/// Every client must see every event exactly once, in order, across its reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_under_a_steady_stream_loses_and_repeats_nothing() {
    const EVENTS: u64 = 600;
    let server = TestServer::with(|c| {
        c.default_subscriptions = vec![];
        c.history.size = 1_000;
        c.client_queue_capacity = 2_048;
    })
    .await;
    let hub = server.hub.clone();
    let publisher = tokio::spawn(async move {
        for n in 0..EVENTS {
            hub.publish(&sigmahub::Event::new("orders", &json!({"n": n})).unwrap());
            if n % 5 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    });
    let mut next = 0u64;
    let mut last_offset: Option<u64> = None;
    let mut epoch = String::new();
    let mut reconnects = 0;
    while next < EVENTS {
        let mut client = server.client().await;
        // The first time from the channel's beginning (offset 0): the publisher has
        // already started.
        let reply = match last_offset {
            None => resume(&mut client, json!({"orders": 0}), None).await,
            Some(offset) => {
                reconnects += 1;
                resume(&mut client, json!({"orders": offset}), Some(&epoch)).await
            }
        };
        assert_eq!(
            reply["data"]["recovery"]["orders"]["recovered"], true,
            "{reply}"
        );
        epoch = reply["data"]["epoch"].as_str().unwrap().to_owned();
        // Read a few events, then drop the connection.
        for _ in 0..37 {
            if next == EVENTS {
                break;
            }
            let event = client.recv_type("orders").await;
            assert_eq!(event["data"]["n"], next, "after {reconnects} reconnects");
            last_offset = event["offset"].as_u64();
            next += 1;
        }
        client.close().await;
    }
    publisher.await.unwrap();
    assert!(reconnects >= 10, "only {reconnects} reconnects");
}

#[tokio::test]
async fn without_history_events_carry_no_offset_and_say_so() {
    let server = TestServer::with(|c| {
        c.default_subscriptions = vec![];
        c.history.size = 0;
    })
    .await;
    let mut client = server.client().await;
    let reply = resume(&mut client, json!({"orders": 5}), None).await;
    assert_eq!(reply["data"]["recovery"]["orders"]["reason"], "no_history");
    assert!(reply["data"].get("epoch").is_none());
    server.publish(&orders(0)).await;
    let event = client.recv_type("orders").await;
    assert!(event.get("offset").is_none(), "{event}");
}

#[tokio::test]
async fn a_malformed_since_is_an_error_message() {
    let server = TestServer::with(|c| c.default_subscriptions = vec![]).await;
    let mut client = server.client().await;
    for since in [json!([1, 2]), json!({"orders": -1}), json!({"orders": "7"})] {
        client
            .send(&json!({"type": "subscribe", "data": {"channels": ["orders"], "since": since}}))
            .await;
        let error = client.recv_type("error").await;
        assert_eq!(error["data"]["code"], "invalid_message", "{since}: {error}");
    }
    // The connection is still served.
    assert_eq!(client.subscribe(&["orders"]).await["data"]["success"], true);
}
