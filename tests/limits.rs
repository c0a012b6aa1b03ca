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

/// Tries to open a WebSocket; on refusal returns the HTTP status and `Retry-After`.
async fn refused(server: &TestServer) -> Option<(u16, String)> {
    match common::within(tokio_tungstenite::connect_async(server.ws_url())).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Some((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn the_eleventh_connection_from_one_address_gets_429_with_retry_after() {
    // The defaults: 10 per address.
    let server = TestServer::with(|c| {
        c.max_connections_per_ip = 10;
        c.connection_rate_per_ip = 0;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.client().await);
    }
    let (status, retry_after) = refused(&server).await.expect("the 11th was admitted");
    assert_eq!(status, 429);
    assert!(retry_after.parse::<u64>().unwrap() >= 1);
    // A place frees when a client leaves.
    clients.pop().unwrap().close().await;
    common::eventually("a free place", || server.hub.stats().clients == 9).await;
    let mut again = None;
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.ws_url()).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "no place after a client left");
    // Plain HTTP counts too: 127.0.0.1 is full, so ask from another address.
    let (status, _) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(status, 429, "an 11th connection, plain HTTP");
    let other = [127, 0, 0, 2].into();
    let (_, stats) = server
        .request_from(other, "GET", "/api/v1/stats", vec![], &[])
        .await;
    assert!(
        stats["refused"]["too_many_connections_from_address"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn a_full_server_answers_503_and_a_reconnect_storm_429() {
    let server = TestServer::with(|c| {
        c.max_connections = 2;
        c.max_connections_per_ip = 0;
        c.connection_rate_per_ip = 0;
    })
    .await;
    let _a = server.client().await;
    let _b = server.client().await;
    let (status, retry_after) = refused(&server).await.expect("a third was admitted");
    assert_eq!((status, retry_after.as_str()), (503, "5"));

    let storm = TestServer::with(|c| {
        c.max_connections_per_ip = 0;
        c.connection_rate_per_ip = 60;
        c.connection_burst_per_ip = 5;
    })
    .await;
    for _ in 0..5 {
        storm.client().await.close().await;
    }
    let (status, _) = refused(&storm).await.expect("the storm was not slowed");
    assert_eq!(status, 429);
    let (_, stats) = storm.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(stats["refused"]["connection_rate_exceeded"], 1);
}

#[tokio::test]
async fn a_ping_frame_flood_counts_against_the_same_limit() {
    let server = TestServer::with(|c| {
        c.max_inbound_per_minute = 100;
        c.inbound_burst = 10;
    })
    .await;
    let mut flooder = server.client().await;
    for _ in 0..12 {
        let ping = tokio_tungstenite::tungstenite::Message::Ping(b"x"[..].into());
        // The server may close before the last ping is sent.
        let _ = futures_util::SinkExt::send(&mut flooder.ws, ping).await;
    }
    assert_eq!(flooder.closed().await, Some(1008));
}

/// Unsolicited pongs are frames too: a pong flood is warned, then closed with 1008 (the
/// audit sent 3.3 million in 5 s, all accepted).
#[tokio::test]
async fn a_pong_frame_flood_counts_against_the_same_limit() {
    let server = TestServer::with(|c| {
        c.max_inbound_per_minute = 100;
        c.inbound_burst = 10;
    })
    .await;
    let mut flooder = server.client().await;
    for _ in 0..12 {
        let pong = tokio_tungstenite::tungstenite::Message::Pong(b"x"[..].into());
        let _ = futures_util::SinkExt::send(&mut flooder.ws, pong).await;
    }
    assert_eq!(flooder.closed().await, Some(1008));
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(stats["limits"]["rate_limited"], 1, "{stats}");
    assert_eq!(stats["closes"]["1008"], 1, "{stats}");
}

/// Reads an HTTP response head from `tcp` (within the test deadline); its status and the
/// head's text.
async fn response_head(tcp: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        common::within(tcp.read_exact(&mut byte))
            .await
            .expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    (head[9..12].parse().unwrap(), head)
}

/// The audit's slow bodies: a publish body that never completes held its connection
/// forever (1,000 from one address all stayed open), and a declared length of a terabyte
/// waited instead of being refused. Now bodies have a deadline (408, closed), a declared
/// length over the limit is refused at once (413), a body framed two ways is refused
/// (400), and plain HTTP connections count against the per-address limit.
#[tokio::test]
async fn slow_bodies_have_a_deadline_and_http_connections_count_per_address() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| {
        c.body_timeout = Duration::from_millis(500);
        c.max_connections_per_ip = 10;
    })
    .await;
    let addr = server.addr;
    let head = |length: &str| {
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };

    // A terabyte declared: 413 before a byte of it, and the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head("1000000000000").as_bytes())
        .await
        .unwrap();
    let (status, text) = response_head(&mut tcp).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");

    // Content-Length and chunked together, with a second request pipelined behind: hyper
    // reads the body by Transfer-Encoding alone and closes the connection after answering
    // (RFC 9112 6.3), so nothing can be smuggled in behind a disputed length.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let event = r#"{"type":"x","data":1}"#;
    let ambiguous = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n0\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        event.len()
    );
    tcp.write_all(ambiguous.as_bytes()).await.unwrap();
    let (status, text) = response_head(&mut tcp).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");
    let mut rest = String::new();
    use tokio::io::AsyncReadExt;
    common::within(tcp.read_to_string(&mut rest)).await.unwrap();
    assert!(
        !rest.contains("HTTP/1.1"),
        "a second response on the connection: {rest}"
    );

    // Ten bodies that never complete hold the address's ten places...
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head("100").as_bytes()).await.unwrap();
        tcp.write_all(br#"{"type":"#).await.unwrap();
        stalled.push(tcp);
    }
    // ...so an eleventh connection from it is refused at once,
    let mut eleventh = tokio::net::TcpStream::connect(addr).await.unwrap();
    eleventh
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(response_head(&mut eleventh).await.0, 429);
    // ...and each stalled one is answered 408 when its body is late, and closed.
    for tcp in &mut stalled {
        let (status, text) = response_head(tcp).await;
        assert_eq!(status, 408, "{text}");
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        common::within(tcp.read_to_end(&mut rest)).await.unwrap();
    }
    // The places are free again.
    common::eventually_async("a place for 127.0.0.1", || async {
        server.request("GET", "/healthz", vec![]).await.0 == 200
    })
    .await;
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(stats["limits"]["body_timeout"], 10, "{stats}");
    assert_eq!(stats["limits"]["publish_body_too_large"], 1, "{stats}");
    assert_eq!(
        stats["refused"]["too_many_connections_from_address"], 1,
        "{stats}"
    );
}
