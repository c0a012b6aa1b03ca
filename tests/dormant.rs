//! Dormant connections: an idle client's connection gives its task up (the hub's sweep
//! asks after a second with nothing sent to it). Events to it are written at once by their
//! publisher; a message from the client, its close, its disappearance, its token's expiry
//! and the server's shutdown give it a task again. Real server, real WebSocket clients,
//! real sockets.

mod common;

use std::time::{Duration, SystemTime};

use common::scrape::{scrape, value};
use common::{eventually_async, Client, TestServer};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "integration-test-secret-32-bytes!";

/// `sigmahub_connections_dormant` and `sigmahub_connections_awoken_total` now.
async fn dormancy(server: &TestServer) -> (f64, f64) {
    let samples = scrape(server).await;
    (
        value(&samples, "sigmahub_connections_dormant", None),
        value(&samples, "sigmahub_connections_awoken_total", None),
    )
}

/// Waits until `n` connections are dormant; returns the wake-ups so far.
async fn until_dormant(server: &TestServer, n: f64) -> f64 {
    eventually_async(&format!("{n} dormant connections"), || async {
        dormancy(server).await.0 == n
    })
    .await;
    dormancy(server).await.1
}

async fn clients(server: &TestServer, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(server.client().await);
    }
    out
}

#[tokio::test]
async fn idle_connections_go_dormant_and_wake_for_events_messages_and_closes() {
    let server = TestServer::start().await;
    let mut clients = clients(&server, 3).await;
    let awoken = until_dormant(&server, 3.0).await;

    // An event wakes every subscriber, in order, and each goes dormant again.
    for n in 0..3 {
        server
            .publish(&json!({"type": "notification", "data": {"n": n}}))
            .await;
    }
    for client in &mut clients {
        for n in 0..3 {
            assert_eq!(client.recv_type("notification").await["data"]["n"], n);
        }
    }
    // Written by the publisher at once: no connection needed its task back.
    let after_events = until_dormant(&server, 3.0).await;
    assert_eq!(after_events, awoken, "events alone wake no task");

    // A message from a dormant client's side is read and answered by its task.
    clients[0].send(&json!({"type": "ping"})).await;
    assert_eq!(clients[0].recv_type("pong").await["type"], "pong");
    assert_eq!(dormancy(&server).await.1, awoken + 1.0);
    let reply = clients[1].subscribe(&["orders.new"]).await;
    assert_eq!(reply["data"]["success"], true, "{reply}");
    until_dormant(&server, 3.0).await;
    server
        .publish(&json!({"type": "orders.new", "data": {"id": 7}}))
        .await;
    assert_eq!(clients[1].recv_type("orders.new").await["data"]["id"], 7);
    until_dormant(&server, 3.0).await;

    // A dormant client that closes gets its close answered; one that vanishes is noticed.
    let mut closing = clients.remove(0);
    closing
        .send_message(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    assert_eq!(closing.closed().await, Some(1000), "the close answered");
    drop(clients.remove(0));
    eventually_async("the two gone from the hub", || async {
        server.hub.stats().clients == 1
    })
    .await;
    until_dormant(&server, 1.0).await;
    // The last one still gets what is published.
    server
        .publish(&json!({"type": "notification", "data": {"n": 9}}))
        .await;
    assert_eq!(clients[0].recv_type("notification").await["data"]["n"], 9);
}

/// The keep-alive's ping is written and the client's pong read without giving a resting
/// connection its task; a client that answers stays, one that does not is closed (4001).
#[tokio::test]
async fn keep_alive_rounds_leave_dormant_connections_resting() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.pong_timeout = Duration::from_millis(800);
    })
    .await;
    let answering: Vec<_> = clients(&server, 3)
        .await
        .into_iter()
        .map(|mut client| {
            // Reading is what makes the client library answer pings.
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while let Ok(read) = tokio::time::timeout_at(deadline, client.read()).await {
                    if let common::Read::Close(_) | common::Read::Ended = read {
                        panic!("the server closed an answering client: {read:?}");
                    }
                }
                client
            })
        })
        .collect();
    // A raw socket that never answers.
    let mut silent = common::raw::raw_ws(&server).await;
    let awoken = until_dormant(&server, 4.0).await;
    for client in answering {
        let mut client = common::within(client).await.unwrap();
        client.send(&json!({"type": "ping"})).await;
        assert_eq!(client.recv_type("pong").await["type"], "pong", "still open");
    }
    assert_eq!(common::raw::close_code(&mut silent).await, Some(4001));
    // Four rounds of pings and pongs at least; the three answering clients woke only to
    // read the `ping` messages above, the silent one to be closed.
    let samples = scrape(&server).await;
    assert!(value(&samples, "websocket_messages_sent_total", None) >= 3.0 * 4.0);
    assert_eq!(dormancy(&server).await.1, awoken + 4.0);
}

#[tokio::test]
async fn a_dormant_connection_is_closed_when_its_token_expires() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.to_owned());
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    let expiry = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 4;
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "a", "exp": expiry}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut client = server
        .connect_with(&format!("?token={token}"), &[])
        .await
        .unwrap();
    client.recv().await;
    until_dormant(&server, 1.0).await;
    // Only the timer can wake it now.
    assert_eq!(client.closed().await, Some(4004));
}

#[tokio::test]
async fn shutdown_wakes_dormant_connections_and_closes_them_with_1001() {
    let server = TestServer::start().await;
    let mut clients = clients(&server, 4).await;
    until_dormant(&server, 4.0).await;
    server.shutdown().await;
    for client in &mut clients {
        assert_eq!(client.closed().await, Some(1001));
    }
}

#[tokio::test]
async fn a_client_that_keeps_receiving_never_goes_dormant() {
    let server = TestServer::start().await;
    let mut busy = server.client().await;
    let mut idle = server.client().await;
    idle.subscribe(&["idle.only"]).await;
    idle.send(&json!({"type": "unsubscribe", "data": {"channels": ["notification"]}}))
        .await;
    idle.recv_type("unsubscribe_response").await;
    // Events every 100 ms for three sweeps: `busy` receives them all awake.
    for n in 0..30 {
        server
            .publish(&json!({"type": "notification", "data": {"n": n}}))
            .await;
        assert_eq!(busy.recv_type("notification").await["data"]["n"], n);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (dormant, _) = dormancy(&server).await;
    assert_eq!(dormant, 1.0, "only the idle one rests");
}

/// Dormant connections under concurrent traffic on a multi-threaded runtime: two
/// publishers on two channels, each on its own thread, publishing straight into the hub
/// (so each writes to resting clients from its thread, racing the other and the server's
/// tasks), in bursts with pauses shorter and longer than the sweep; clients that send now
/// and then mid-stream. Every client gets every event of each channel, in order, and all of
/// them rest again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mixed_traffic_every_client_gets_every_event_in_order() {
    const CLIENTS: usize = 40;
    const SECOND: usize = 150;
    let server = TestServer::start().await;
    let clients = clients(&server, CLIENTS).await;
    until_dormant(&server, CLIENTS as f64).await;
    let bursts: [(usize, u64); 7] = [
        (1, 50),
        (20, 1500),
        (3, 10),
        (50, 2200),
        (1, 300),
        (10, 1200),
        (30, 0),
    ];
    let first: usize = bursts.iter().map(|(n, _)| n).sum();
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let (mut n, mut m) = (0, 0);
                while n < first || m < SECOND {
                    let message = client.recv().await;
                    match message["type"].as_str() {
                        Some("notification") => {
                            assert_eq!(message["data"]["n"], n, "client {i}");
                            n += 1;
                            // A few clients speak up mid-stream, awake or resting (and
                            // so wake; the others rely on the publishers alone).
                            if i % 8 == 0 && n % 13 == i % 13 {
                                client.send(&json!({"type": "ping"})).await;
                            }
                        }
                        Some("compression.update") => {
                            assert_eq!(message["data"]["m"], m, "client {i}");
                            m += 1;
                        }
                        _ => {}
                    }
                }
                client
            })
        })
        .collect();
    let hub = server.hub.clone();
    let second = tokio::spawn(async move {
        for m in 0..SECOND {
            let event = sigmahub::Event::new("compression.update", &json!({ "m": m })).unwrap();
            hub.publish(&event);
            match m % 10 {
                0 => tokio::time::sleep(Duration::from_millis(4 * m as u64)).await,
                _ => tokio::task::yield_now().await,
            }
        }
    });
    let mut n = 0;
    for (burst, pause) in bursts {
        for _ in 0..burst {
            let event = sigmahub::Event::new("notification", &json!({ "n": n })).unwrap();
            server.hub.publish(&event);
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    common::within(second).await.unwrap();
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(common::within(reader).await.expect("a reader failed"));
    }
    let awoken = until_dormant(&server, CLIENTS as f64).await;
    assert!(awoken > 0.0, "clients that spoke were given their task");
    drop(clients);
}
