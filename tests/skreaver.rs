//! Skreaver's clients (seed 004) against a real server: the guide's Rust client sample,
//! both subscribe shapes, auth, JSON keep-alive pings, requests, and a channel shared with
//! SigmaVault clients.

mod common;

use std::time::{Duration, SystemTime};

use common::{within, TestServer, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sigmahub::Dialect;
use tokio_tungstenite::{connect_async, tungstenite::Message};

const SECRET: &str = "skreaver-test-secret-0123456789abcdef";

/// The guide's "Rust Client" sample ("Client Libraries"), with our URL and, instead of
/// `println!`, each event sent to the test. Everything else is as written there.
async fn guide_rust_client(
    url: String,
    events: tokio::sync::mpsc::UnboundedSender<Value>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (ws_stream, _) = connect_async(url).await?;
    let (mut write, mut read) = ws_stream.split();

    // Subscribe
    let sub_msg = serde_json::json!({
        "type": "subscribe",
        "data": {"channels": ["agent-updates"]}
    });
    write
        .send(Message::Text(sub_msg.to_string().into()))
        .await?;

    // Read messages
    while let Some(msg) = read.next().await {
        let msg = msg?;
        if let Message::Text(text) = msg {
            let data: serde_json::Value = serde_json::from_str(&text)?;
            if data["type"] == "ping" {
                let pong = serde_json::json!({"type": "pong"});
                write.send(Message::Text(pong.to_string().into())).await?;
            } else {
                let _ = events.send(data);
            }
        }
    }

    Ok(())
}

/// The next message of `kind` from the guide client's feed.
async fn next_of(feed: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, kind: &str) -> Value {
    let start = tokio::time::Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "no {kind} message");
        let message = within(feed.recv()).await.expect("the client ended");
        if message["type"] == kind {
            return message;
        }
    }
}

#[tokio::test]
async fn the_guides_rust_client_receives_events_as_events() {
    let server = TestServer::with(|c| {
        // The guide's flow: the server pings, the sample answers.
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(500);
    })
    .await;
    let (events, mut feed) = tokio::sync::mpsc::unbounded_channel();
    let url = format!("ws://{}/skreaver/ws", server.addr);
    let client = tokio::spawn(guide_rust_client(url, events));

    let reply = next_of(&mut feed, "subscribe_response").await;
    assert_eq!(reply["data"]["success"], true, "{reply}");
    assert_eq!(reply["data"]["subscribed"], json!(["agent-updates"]));
    for i in 0..3 {
        server
            .publish(&json!({"type": "agent-updates", "data": {"agent_id": "agent-123", "n": i}}))
            .await;
    }
    let mut offsets = Vec::new();
    for i in 0..3 {
        let event = next_of(&mut feed, "event").await;
        assert_eq!(event["channel"], "agent-updates", "{event}");
        assert_eq!(event["data"], json!({"agent_id": "agent-123", "n": i}));
        assert!(event["timestamp"].is_string(), "{event}");
        offsets.push(event["offset"].as_u64().expect("an offset"));
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    // Several keep-alive rounds pass: the sample's JSON pongs keep it connected.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!client.is_finished(), "the guide's client was disconnected");
    assert_eq!(server.hub.stats().clients, 1);
    client.abort();
}

#[tokio::test]
async fn a_client_that_never_answers_the_json_ping_is_closed() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = server.raw_client_at("/skreaver/ws").await;
    // The ping is a JSON message (not a WebSocket ping, which the client library would
    // answer by itself); this client reads it and does not answer.
    let ping = client.recv_type("ping").await;
    assert_eq!(ping["data"], json!({}));
    assert_eq!(client.closed().await, Some(4001));
}

#[tokio::test]
async fn both_subscribe_shapes_are_answered_with_the_correlation_id() {
    let server = TestServer::start().await;
    let mut client = server.raw_client_at("/skreaver/ws").await;
    client
        .send(&json!({
            "type": "subscribe",
            "data": {"channels": ["agent-updates", "notifications"]},
            "correlation_id": "req-12345",
            "metadata": {"client_version": "1.0.0"}
        }))
        .await;
    let reply = client.recv_type("subscribe_response").await;
    assert_eq!(reply["correlation_id"], "req-12345");
    assert_eq!(
        reply["data"]["subscribed"],
        json!(["agent-updates", "notifications"])
    );

    client
        .send(&json!({"type": "subscribe", "channels": ["metrics"], "correlation_id": 7}))
        .await;
    let reply = client.recv_type("subscribe_response").await;
    assert_eq!(reply["correlation_id"], 7);
    assert_eq!(reply["data"]["subscribed"], json!(["metrics"]));

    client
        .send(&json!({"type": "unsubscribe", "data": {"channels": ["metrics"]}}))
        .await;
    let reply = client.recv_type("unsubscribe_response").await;
    assert_eq!(
        reply["data"]["subscriptions"],
        json!(["agent-updates", "notifications"])
    );
}

#[tokio::test]
async fn no_welcome_and_no_default_subscriptions() {
    let server = TestServer::start().await;
    let mut client = server.raw_client_at("/skreaver/ws").await;
    // The first message is the answer to the first request, not a welcome.
    client
        .send(&json!({"type": "ping", "correlation_id": "p"}))
        .await;
    let first = client.recv().await;
    assert_eq!(first["type"], "pong", "{first}");
    assert_eq!(first["correlation_id"], "p");
    // SigmaVault's status channels are not pushed on it unasked.
    server
        .publish(&json!({"type": "notification", "data": {"to": "sigmavault only"}}))
        .await;
    client
        .send(&json!({"type": "ping", "correlation_id": "q"}))
        .await;
    assert_eq!(client.recv().await["correlation_id"], "q");
}

#[tokio::test]
async fn requests_get_an_error_with_their_id_and_acks_are_accepted() {
    let server = TestServer::start().await;
    let mut client = server.raw_client_at("/skreaver/ws").await;
    client
        .send(&json!({"type": "ack", "data": {"id": 1}}))
        .await;
    client
        .send(&json!({"type": "request", "data": {"op": "status"}, "correlation_id": "r-1"}))
        .await;
    let error = client.recv().await;
    assert_eq!(error["type"], "error", "an ack has no answer: {error}");
    assert_eq!(error["correlation_id"], "r-1");
    assert_eq!(error["data"]["code"], "not_supported");
}

#[tokio::test]
async fn auth_by_message_then_subscribe() {
    let server = TestServer::with(|c| c.auth.jwt_secret = Some(SECRET.into())).await;
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "agent-7", "exp": exp, "subscribe": ["agent-*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut client = server.raw_client_at("/skreaver/ws").await;
    client
        .send(&json!({"type": "auth", "data": {"token": token}}))
        .await;
    let reply = client.recv_type("auth_response").await;
    assert_eq!(reply["data"]["success"], true, "{reply}");
    assert_eq!(reply["data"]["subject"], "agent-7");
    let reply = client.subscribe(&["agent-updates", "billing"]).await;
    assert_eq!(reply["data"]["subscribed"], json!(["agent-updates"]));
    assert_eq!(reply["data"]["rejected"][0]["code"], "forbidden");

    // A wrong token is refused and closes the connection, as on /ws.
    let mut other = server.raw_client_at("/skreaver/ws").await;
    other
        .send(&json!({"type": "auth", "data": {"token": "not-a-token"}}))
        .await;
    let reply = other.recv_type("auth_response").await;
    assert_eq!(reply["data"]["success"], false);
    assert_eq!(other.closed().await, Some(4003));
}

#[tokio::test]
async fn every_dialect_gets_every_event_of_a_burst_once_in_order() {
    let server = TestServer::start().await;
    let mut sigmavault = server.client().await;
    sigmavault.subscribe(&["orders"]).await;
    let mut skreaver = server.raw_client_at("/skreaver/ws").await;
    skreaver.subscribe(&["orders"]).await;

    // The operators see who speaks what.
    let (_, _, metrics) = server.request_raw("GET", "/metrics", Vec::new(), &[]).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for dialect in ["sigmavault", "skreaver"] {
        let line = format!("sigmahub_connections_active{{dialect=\"{dialect}\"}} 1");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(
        stats["connections_by_dialect"],
        json!({"sigmavault": 1, "skreaver": 1, "socketio": 0})
    );

    let burst: Vec<Value> = (0..50)
        .map(|i| json!({"type": "orders", "data": {"n": i}}))
        .collect();
    let (status, reply) = server.publish(&Value::Array(burst)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["delivered"], 100,
        "one frame per subscriber per event"
    );
    for i in 0..50 {
        let a = sigmavault.recv_type("orders").await;
        let b = skreaver.recv_type("event").await;
        assert_eq!(a["data"]["n"], i);
        assert_eq!(b["data"]["n"], i);
        assert_eq!(b["channel"], "orders");
        assert_eq!(a["offset"], b["offset"], "one event, one offset");
        assert_eq!(a["timestamp"], b["timestamp"]);
    }
}

#[tokio::test]
async fn ws_dialect_makes_ws_itself_speak_skreaver() {
    let server = TestServer::with(|c| c.ws_dialect = Dialect::Skreaver).await;
    let mut client = server.raw_client().await;
    client.subscribe(&["agent-updates"]).await;
    server
        .publish(&json!({"type": "agent-updates", "data": {"ok": true}}))
        .await;
    let event = client.recv_type("event").await;
    assert_eq!(event["channel"], "agent-updates");

    // Plain GETs on both paths are told to upgrade.
    let (status, body) = server.request("GET", "/skreaver/ws", Vec::new()).await;
    assert_eq!(status, 426, "{body}");
}

#[tokio::test]
async fn a_resuming_skreaver_client_is_replayed_events_in_its_dialect() {
    let server = TestServer::start().await;
    let mut first = server.raw_client_at("/skreaver/ws").await;
    first.subscribe(&["orders"]).await;
    server
        .publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    let seen = first.recv_type("event").await["offset"].as_u64().unwrap();
    server
        .publish(&json!({"type": "orders", "data": {"n": 2}}))
        .await;

    let mut again = server.raw_client_at("/skreaver/ws").await;
    again
        .send(&json!({"type": "subscribe", "data": {"channels": ["orders"], "since": {"orders": seen}}}))
        .await;
    let reply = again.recv_type("subscribe_response").await;
    assert_eq!(
        reply["data"]["recovery"]["orders"]["recovered"], true,
        "{reply}"
    );
    let replayed = again.recv_type("event").await;
    assert_eq!(replayed["channel"], "orders");
    assert_eq!(replayed["data"]["n"], 2);
    // Then live events follow, with nothing replayed twice.
    server
        .publish(&json!({"type": "orders", "data": {"n": 3}}))
        .await;
    assert_eq!(again.recv_type("event").await["data"]["n"], 3);
}

/// The URL the guide's samples connect to, replaced by the test server's.
const GUIDE_URL: &str = "ws://localhost:8080/ws?token=abc123";

/// Runs a sample of the guide from `tests/skreaver/` with the test server's URL, its
/// output piped.
fn run_sample(
    server: &TestServer,
    file: &str,
    program: &str,
    args: &[&str],
) -> tokio::process::Child {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/skreaver");
    let sample = std::fs::read_to_string(dir.join(file)).unwrap();
    assert!(
        sample.contains(GUIDE_URL),
        "{file} no longer has the guide's URL"
    );
    let url = format!("ws://{}/skreaver/ws", server.addr);
    let copy = std::env::temp_dir().join(format!("sigmahub-{}-{file}", std::process::id()));
    std::fs::write(&copy, sample.replace(GUIDE_URL, &url)).unwrap();
    tokio::process::Command::new(program)
        .args(args)
        .arg(&copy)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// The lines `child` prints that start with `prefix`, until it has printed `n` of them.
async fn printed(child: &mut tokio::process::Child, prefix: &str, n: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = Vec::new();
    while found.len() < n {
        let line = within(lines.next_line())
            .await
            .unwrap()
            .expect("the sample ended");
        if let Some(rest) = line.strip_prefix(prefix) {
            found.push(rest.trim().to_owned());
        }
    }
    found
}

#[tokio::test]
async fn the_guides_python_and_javascript_samples_receive_events() {
    let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/skreaver/setup.sh");
    let status = std::process::Command::new(&setup)
        .status()
        .expect("run setup.sh");
    assert!(status.success(), "tests/skreaver/setup.sh failed");
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(300);
        c.pong_timeout = Duration::from_millis(700);
    })
    .await;
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/skreaver/.venv/bin/python");
    // `-u`: print unbuffered, so the test sees each line as it is printed.
    let mut py = run_sample(
        &server,
        "guide_client.py",
        python.to_str().unwrap(),
        &["-u"],
    );
    // Node 20 has the browsers' WebSocket behind this flag (22 has it by default).
    let mut js = run_sample(
        &server,
        "guide_client.js",
        "node",
        &["--experimental-websocket"],
    );
    common::eventually("both samples subscribed", || {
        server.hub.subscriber_count("agent-updates") == 2
    })
    .await;
    // Keep-alive rounds pass while they wait: they answer the JSON pings.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(server.hub.stats().clients, 2, "a sample was disconnected");
    for i in 0..3 {
        server
            .publish(&json!({"type": "agent-updates", "data": {"agent_id": "agent-123", "n": i}}))
            .await;
    }
    let from_python = printed(&mut py, "Event: ", 3).await;
    let from_js = printed(&mut js, "Event received: ", 3).await;
    for i in 0..3 {
        assert_eq!(
            from_python[i],
            format!("{{'agent_id': 'agent-123', 'n': {i}}}")
        );
        assert_eq!(from_js[i], format!("{{ agent_id: 'agent-123', n: {i} }}"));
    }
}
