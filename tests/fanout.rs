//! 1,000 concurrent clients each receive all of 1,000 published events exactly once, in order.

mod common;

use common::TestServer;
use serde_json::json;

const CLIENTS: usize = 1_000;
const EVENTS: u64 = 1_000;
const BATCH: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_get_a_thousand_events_exactly_once_in_order() {
    // Queues large enough that this test is about exactly-once and order, not slowness.
    let server = TestServer::with(|c| {
        c.client_queue_capacity = EVENTS as usize + 16;
        c.default_subscriptions = vec!["fan".into()];
    })
    .await;

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(server.client().await);
    }
    common::eventually("all subscribed", || {
        server.hub.subscriber_count("fan") == CLIENTS
    })
    .await;

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for expected in 0..EVENTS {
                    let event = client.recv().await;
                    assert_eq!(event["type"], "fan");
                    assert_eq!(
                        event["data"]["seq"], expected,
                        "lost, duplicated or reordered"
                    );
                }
                client
            })
        })
        .collect();

    let mut delivered = 0;
    for start in (0..EVENTS).step_by(BATCH as usize) {
        let batch: Vec<_> = (start..start + BATCH)
            .map(|seq| json!({"type": "fan", "data": {"seq": seq}}))
            .collect();
        let (status, reply) = server.publish(&json!(batch)).await;
        assert_eq!(status, 200);
        delivered += reply["delivered"].as_u64().unwrap();
    }
    assert_eq!(delivered, CLIENTS as u64 * EVENTS);

    let mut clients = Vec::with_capacity(CLIENTS);
    for reader in readers {
        clients.push(reader.await.expect("a client failed"));
    }
    // Nothing beyond the 1,000: the very next message each client gets is the reply to a
    // request sent now.
    for client in &mut clients {
        client.send(&json!({"type": "ping"})).await;
        let next = client.recv().await;
        assert_eq!(next["type"], "pong", "extra message {next}");
    }
    assert_eq!(server.hub.stats().clients, CLIENTS);
}
