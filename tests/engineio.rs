//! Engine.IO 4 and Socket.IO v5 at the packet level, against a real server: the
//! behaviours the Socket.IO project's protocol test suites check of a server (handshake
//! fields, bad requests, heartbeat over both transports, close, upgrade, namespace
//! connect, acks), with raw HTTP and WebSocket clients. The real clients are in
//! tests/socketio.rs.
//!
//! Where sigmahub answers differently from the suites' echo fixture, by design: any
//! namespace is accepted (namespaces are channel prefixes), and a malformed packet gets an
//! `error` event instead of closing the connection.

mod common;

use std::time::Duration;

use common::{within, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const PING_INTERVAL: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(200);

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.ping_interval = PING_INTERVAL;
        c.pong_timeout = PING_TIMEOUT;
    })
    .await
}

async fn get(server: &TestServer, query: &str) -> (u16, String) {
    let (status, _, body) = server
        .request_raw("GET", &format!("/socket.io/?{query}"), Vec::new(), &[])
        .await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn post(server: &TestServer, query: &str, body: &str) -> (u16, String) {
    let (status, _, body) = server
        .request_raw(
            "POST",
            &format!("/socket.io/?{query}"),
            body.as_bytes().to_vec(),
            &[("content-type", "text/plain;charset=UTF-8")],
        )
        .await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The open packet's fields.
fn open(packet: &str) -> Value {
    let value: Value = serde_json::from_str(packet.strip_prefix('0').expect(packet)).unwrap();
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    assert_eq!(value["pingInterval"], 300);
    assert_eq!(value["pingTimeout"], 200);
    assert_eq!(value["maxPayload"], 64 * 1024);
    value
}

async fn polling_session(server: &TestServer) -> String {
    let (status, body) = get(server, "EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    let value = open(&body);
    assert_eq!(value["upgrades"], json!(["websocket"]));
    value["sid"].as_str().unwrap().to_owned()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn websocket(server: &TestServer, query: &str) -> Ws {
    let url = format!("ws://{}/socket.io/?{query}", server.addr);
    within(tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .0
}

/// The next text frame, skipping Engine.IO pings.
async fn text(ws: &mut Ws) -> String {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => continue,
            Some(Ok(Message::Text(t))) => return t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Whether the server closed `ws` (a close frame, or the end of the stream).
async fn closed(ws: &mut Ws) -> bool {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn handshakes_state_the_servers_terms() {
    let server = server().await;
    polling_session(&server).await;
    let mut ws = websocket(&server, "EIO=4&transport=websocket").await;
    let value = open(&text(&mut ws).await);
    assert_eq!(value["upgrades"], json!([]), "no upgrade from WebSocket");
    assert!(value["sid"].as_str().unwrap().len() >= 20);
}

#[tokio::test]
async fn bad_handshakes_get_engine_io_errors() {
    let server = server().await;
    for (query, code) in [
        ("transport=polling", 5),
        ("EIO=abc&transport=polling", 5),
        ("EIO=3&transport=polling", 5),
        ("EIO=4", 0),
        ("EIO=4&transport=abc", 0),
        ("EIO=4&transport=polling&sid=unknown", 1),
    ] {
        let (status, body) = get(&server, query).await;
        assert_eq!(status, 400, "{query}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], code, "{query}: {body}");
    }
    let (status, body) = post(&server, "EIO=4&transport=polling", "").await;
    assert_eq!((status, body.contains("\"code\":2")), (400, true), "{body}");
    let (status, _, _) = server
        .request_raw(
            "PUT",
            "/socket.io/?EIO=4&transport=polling",
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(status, 400);
    // A WebSocket without a valid version or transport is refused before the upgrade.
    for query in [
        "transport=websocket",
        "EIO=abc&transport=websocket",
        "EIO=4",
    ] {
        let url = format!("ws://{}/socket.io/?{query}", server.addr);
        assert!(
            tokio_tungstenite::connect_async(url).await.is_err(),
            "{query}"
        );
    }
}

#[tokio::test]
async fn heartbeat_over_long_polling() {
    let server = server().await;
    let sid = polling_session(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    // The server pings every ping interval; the client answers by POST.
    for _ in 0..3 {
        let (status, body) = get(&server, &query).await;
        assert_eq!((status, body.as_str()), (200, "2"));
        assert_eq!(post(&server, &query, "3").await, (200, "ok".into()));
    }
    // A client ping is answered too.
    assert_eq!(post(&server, &query, "2").await.0, 200);
    assert_eq!(get(&server, &query).await, (200, "3".into()));
}

#[tokio::test]
async fn a_silent_long_polling_session_is_closed() {
    let server = server().await;
    let sid = polling_session(&server).await;
    tokio::time::sleep(PING_INTERVAL * 2 + PING_TIMEOUT * 2).await;
    common::eventually("the session closed", || server.hub.stats().clients == 0).await;
    let (status, body) = get(&server, &format!("EIO=4&transport=polling&sid={sid}")).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn heartbeat_over_websocket_and_a_silent_socket_is_closed() {
    let server = server().await;
    let mut ws = websocket(&server, "EIO=4&transport=websocket").await;
    text(&mut ws).await;
    for _ in 0..3 {
        send(&mut ws, "2").await;
        assert_eq!(text(&mut ws).await, "3");
    }
    // Pings come, unanswered: closed after the interval and the timeout.
    let mut silent = websocket(&server, "EIO=4&transport=websocket").await;
    assert!(closed(&mut silent).await);
}

#[tokio::test]
async fn the_client_closes_the_session() {
    let server = server().await;
    let sid = polling_session(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let (poll, close) = tokio::join!(get(&server, &query), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        post(&server, &query, "1").await
    });
    assert_eq!(close, (200, "ok".into()));
    assert_eq!(poll.0, 200);
    common::eventually("the session closed", || server.hub.stats().clients == 0).await;
    let (status, _) = get(&server, &query).await;
    assert_eq!(status, 400);

    let mut ws = websocket(&server, "EIO=4&transport=websocket").await;
    text(&mut ws).await;
    send(&mut ws, "1").await;
    assert!(closed(&mut ws).await);
}

#[tokio::test]
async fn packets_are_batched_with_the_record_separator() {
    let server = TestServer::start().await;
    let sid = polling_session_default(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    // Two packets in one POST: a connect, then an event with an ack id.
    let (status, _) = post(&server, &query, "40\u{1e}421[\"subscribe\",[\"orders\"]]").await;
    assert_eq!(status, 200);
    let mut packets = Vec::new();
    while !packets.iter().any(|p: &String| p.starts_with("431[")) {
        let (status, body) = get(&server, &query).await;
        assert_eq!(status, 200, "{body}");
        packets.extend(body.split('\u{1e}').map(str::to_owned));
    }
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert!(
        packets[1].starts_with("42[\"connection_established\","),
        "{packets:?}"
    );
    let ack = packets.iter().find(|p| p.starts_with("431[")).unwrap();
    let reply: Value = serde_json::from_str(&ack[3..]).unwrap();
    assert_eq!(reply[0]["subscribed"], json!(["orders"]));
    // Larger than maxPayload: refused.
    let big = "4".repeat(64 * 1024 + 1);
    assert_eq!(post(&server, &query, &big).await.0, 413);
}

async fn polling_session_default(server: &TestServer) -> String {
    let (_, body) = get(server, "EIO=4&transport=polling").await;
    let value: Value = serde_json::from_str(&body[1..]).unwrap();
    value["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_second_concurrent_poll_closes_the_session() {
    let server = TestServer::start().await;
    let sid = polling_session_default(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let (first, second) = tokio::join!(get(&server, &query), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&server, &query).await
    });
    assert_eq!(second.0, 400, "overlapping polls");
    assert_eq!(first.0, 200);
    common::eventually("the session closed", || server.hub.stats().clients == 0).await;
}

#[tokio::test]
async fn upgrade_moves_the_session_and_retires_the_sid() {
    let server = TestServer::start().await;
    let sid = polling_session_default(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(post(&server, &query, "40").await.0, 200);
    let (_, body) = get(&server, &query).await;
    assert!(body.starts_with("40{"), "{body}");

    let mut ws = websocket(&server, &format!("EIO=4&transport=websocket&sid={sid}")).await;
    // A poll waiting while the probe is answered is let go.
    let waiting = {
        let addr = server.addr;
        let path = format!("/socket.io/?{query}");
        tokio::spawn(
            async move { common::request_raw_at(addr, "GET", &path, Vec::new(), &[]).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&mut ws, "2probe").await;
    assert_eq!(text(&mut ws).await, "3probe");
    let (status, _, body) = within(waiting).await.unwrap();
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    send(&mut ws, "5").await;
    // The session is on the socket now: an emit there is answered there.
    send(&mut ws, "4212[\"ping\"]").await;
    let ack = text(&mut ws).await;
    assert!(ack.starts_with("4312[{\"server_time\":"), "{ack}");
    // The sid no longer polls, nor upgrades again.
    assert_eq!(get(&server, &query).await.0, 400);
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        server.addr
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    assert_eq!(server.hub.stats().clients, 1);
}

#[tokio::test]
async fn namespace_connects_and_disconnects() {
    let server = TestServer::start().await;
    let mut ws = websocket(&server, "EIO=4&transport=websocket").await;
    text(&mut ws).await;
    send(&mut ws, "40").await;
    let connected = text(&mut ws).await;
    let sid: Value = serde_json::from_str(connected.strip_prefix("40").unwrap()).unwrap();
    assert!(sid["sid"].is_string(), "{connected}");
    assert!(text(&mut ws)
        .await
        .starts_with("42[\"connection_established\","));
    // A server without token auth takes any token, as on `/ws`.
    send(&mut ws, "40/custom,{\"token\":\"anything\"}").await;
    assert!(text(&mut ws).await.starts_with("40/custom,{\"sid\":"));

    let mut ws = websocket(&server, "EIO=4&transport=websocket").await;
    text(&mut ws).await;
    send(&mut ws, "40/custom,").await;
    assert!(text(&mut ws).await.starts_with("40/custom,{\"sid\":"));
    send(&mut ws, "42/custom,3[\"subscribe\",\"orders\"]").await;
    let ack = text(&mut ws).await;
    // The welcome came on `/` first; the ack on `/custom`.
    let ack = if ack.starts_with("42[") {
        text(&mut ws).await
    } else {
        ack
    };
    assert!(ack.starts_with("43/custom,3[{"), "{ack}");
    assert!(ack.contains("\"/custom/orders\""), "{ack}");
    // Leaving the namespace leaves its channels.
    send(&mut ws, "41/custom,").await;
    common::eventually("unsubscribed", || {
        server.hub.subscriber_count("/custom/orders") == 0
    })
    .await;
    // A malformed packet gets an error, and the connection stays.
    send(&mut ws, "4abc").await;
    assert!(text(&mut ws)
        .await
        .starts_with("42[\"error\",{\"code\":\"invalid_message\""));
    send(&mut ws, "41").await;
    assert!(closed(&mut ws).await);
}

#[tokio::test]
async fn a_long_polling_client_that_stops_polling_is_a_slow_consumer() {
    let server = TestServer::with(|c| {
        c.client_queue_capacity = 8;
        c.client_queue_bytes = 4 * 1024;
    })
    .await;
    let sid = polling_session_default(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(post(&server, &query, "40").await.0, 200);
    assert_eq!(
        post(&server, &query, "42[\"subscribe\",\"orders\"]")
            .await
            .0,
        200
    );
    common::eventually("subscribed", || server.hub.subscriber_count("orders") == 1).await;
    // Nobody polls: the session's queue for GETs fills, then its outbox.
    let padding = "x".repeat(1024);
    for n in 0..200 {
        server
            .publish(&json!({"type": "orders", "data": {"n": n, "pad": padding}}))
            .await;
    }
    common::eventually("closed as a slow consumer", || {
        server.hub.stats().clients == 0
    })
    .await;
    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(stats["closes"]["4000"], 1, "{stats}");
}

#[tokio::test]
async fn long_polling_sessions_take_places_like_sockets() {
    let server = TestServer::with(|c| {
        c.max_connections_per_ip = 2;
        c.ping_interval = PING_INTERVAL;
        c.pong_timeout = PING_TIMEOUT;
    })
    .await;
    // Each session keeps the place of the connection it started on.
    polling_session(&server).await;
    polling_session(&server).await;
    let (status, body) = get(&server, "EIO=4&transport=polling").await;
    assert_eq!(status, 429, "{body}");
    // Their places come back when they end (nobody polls: the keep-alive closes them).
    common::eventually("both sessions ended", || server.hub.stats().clients == 0).await;
    common::eventually_async("a place again", || async {
        get(&server, "EIO=4&transport=polling").await.0 == 200
    })
    .await;
}
