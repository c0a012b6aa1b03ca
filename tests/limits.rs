//! Per-connection limits: the inbound message rate and the handshake deadline.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_flooding_client_is_warned_then_closed_with_1008() {
    // The defaults: 100 messages a minute, bursts of 10.
    let server = TestServer::with(|c| {
        c.max_inbound_per_minute = 100;
        c.inbound_burst = 10;
    })
    .await;
    let mut bystander = server.client().await;
    let mut flooder = server.client().await;
    for _ in 0..10 {
        flooder.send(&json!({"type": "ping"})).await;
    }
    for _ in 0..10 {
        assert_eq!(flooder.recv_type("pong").await["type"], "pong");
    }
    flooder.send(&json!({"type": "ping"})).await;
    let warning = flooder.recv().await;
    assert_eq!(warning["type"], "error", "{warning}");
    assert_eq!(warning["data"]["code"], "rate_limited");
    assert!(warning["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    flooder.send(&json!({"type": "ping"})).await;
    assert_eq!(flooder.closed().await, Some(1008));

    server
        .publish(&json!({"type": "notification", "data": {"ok": true}}))
        .await;
    assert_eq!(
        bystander.recv_type("notification").await["data"]["ok"],
        true
    );
}

#[tokio::test]
async fn a_slowloris_handshake_is_dropped_after_the_deadline() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Half a request head, then silence.
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // `within` fails the test unless the server hangs up (EOF or reset) within 20 s.
    let _ = common::within(slow.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "unexpected answer: {}",
        String::from_utf8_lossy(&rest)
    );
    // Others are served as usual.
    let mut client = server.client().await;
    client.send(&json!({"type": "ping"})).await;
    assert_eq!(client.recv_type("pong").await["type"], "pong");
}
