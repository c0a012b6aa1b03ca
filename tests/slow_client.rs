//! A client that never reads is closed as a slow consumer; nobody else notices, and the
//! metrics count it.

mod common;

use common::scrape::{scrape, value};
use common::{Read, TestServer};
use serde_json::json;
use sigmahub::SlowConsumerPolicy;

/// A ~16 KiB event, so socket buffers fill after a few hundred.
fn big_event(seq: u64) -> serde_json::Value {
    json!({"type": "firehose", "data": {"seq": seq, "pad": "x".repeat(16 * 1024)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_while_a_normal_client_gets_everything() {
    let server = TestServer::with(|c| {
        c.client_queue_capacity = 64;
        c.default_subscriptions = vec!["firehose".into()];
    })
    .await;
    let mut normal = server.client().await;
    let mut stalled = server.client().await; // reads its welcome, then nothing more

    // Closed loop: publish a batch, let the normal client read it, repeat, until the stalled
    // client's socket buffers and queue have overflowed.
    let mut seq = 0;
    let mut overflowed = false;
    while !overflowed {
        assert!(seq < 20_000, "the stalled client was never closed");
        let batch: Vec<_> = (seq..seq + 32).map(big_event).collect();
        let (status, reply) = server.publish(&json!(batch)).await;
        assert_eq!(status, 200);
        overflowed = reply["slow_consumers"].as_u64().unwrap() > 0;
        for expected in seq..seq + 32 {
            assert_eq!(normal.recv().await["data"]["seq"], expected);
        }
        seq += 32;
    }
    // The stalled client, reading at last (within the server's 2 s close linger), finds a
    // well-formed stream ending in close 4000.
    let mut last_seq = None;
    let code = loop {
        match stalled.read().await {
            Read::Json(event) => last_seq = event["data"]["seq"].as_u64().or(last_seq),
            Read::Ping | Read::Pong => {}
            Read::Close(code) => break code,
            Read::Ended => break None,
        }
    };
    assert_eq!(code, Some(4000), "after seq {last_seq:?}");
    common::eventually("the stalled client to be gone", || {
        server.hub.stats().clients == 1
    })
    .await;

    // The normal client is still connected and served.
    server.publish(&big_event(seq)).await;
    assert_eq!(normal.recv().await["data"]["seq"], seq);

    // Operators see it: one slow-consumer close, counted by its code too.
    let metrics = scrape(&server).await;
    assert_eq!(
        value(&metrics, "sigmahub_slow_consumer_closes_total", None),
        1.0
    );
    assert_eq!(
        value(&metrics, "sigmahub_closes_total", Some(("code", "4000"))),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_drop_policy_the_client_stays_and_is_told_what_it_lost() {
    let server = TestServer::with(|c| {
        c.client_queue_capacity = 8;
        c.slow_consumer = SlowConsumerPolicy::Drop;
        c.default_subscriptions = vec!["firehose".into()];
    })
    .await;
    let mut lagging = server.client().await;

    let mut dropped_by_server = 0;
    let mut seq = 0;
    while dropped_by_server == 0 {
        assert!(seq < 20_000, "nothing was ever dropped");
        let batch: Vec<_> = (seq..seq + 32).map(big_event).collect();
        let (status, reply) = server.publish(&json!(batch)).await;
        assert_eq!(status, 200, "{reply}");
        dropped_by_server += reply["dropped"].as_u64().unwrap();
        seq += 32;
    }

    // Reading now: events in increasing order with gaps, and `frames_dropped` notices whose
    // counts add up to what the server dropped.
    let mut reported = 0;
    let mut received = 0;
    let mut last = None;
    while received + reported < seq {
        let message = lagging.recv().await;
        match message["type"].as_str() {
            Some("firehose") => {
                let n = message["data"]["seq"].as_u64().unwrap();
                assert!(last.is_none_or(|l| n > l), "out of order");
                last = Some(n);
                received += 1;
            }
            Some("error") => {
                assert_eq!(message["data"]["code"], "frames_dropped");
                reported += message["data"]["dropped"].as_u64().unwrap();
            }
            _ => panic!("unexpected {message}"),
        }
    }
    assert_eq!(reported, dropped_by_server);
    let metrics = scrape(&server).await;
    assert_eq!(
        value(&metrics, "sigmahub_frames_dropped_total", None),
        dropped_by_server as f64
    );
    assert_eq!(
        server.hub.stats().clients,
        1,
        "the client must stay connected"
    );
}
