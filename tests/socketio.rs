//! Socket.IO clients written by others against a real server: the `socket.io-client` npm
//! package (pinned in tests/socketio/package-lock.json) and `python-socketio` (pinned in
//! tests/socketio/requirements.txt), each driven through a small script in tests/socketio/
//! that prints what the client sees as JSON lines. Both transports, the upgrade from
//! long-polling, acks, auth, namespaces, reconnection after a restart, and a thousand
//! clients at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use common::{within, TestServer};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SECRET: &str = "integration-test-secret-32-bytes!";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio")
}

/// Installs the clients once per test binary (tests/socketio/setup.sh).
fn setup() {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        let status = std::process::Command::new(dir().join("setup.sh"))
            .status()
            .expect("run tests/socketio/setup.sh");
        assert!(status.success(), "tests/socketio/setup.sh failed");
    });
}

/// One real client, driven by a script.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Driver {
    /// socket.io-client connecting to `path` of `server` with `options`.
    fn node(server: &TestServer, path: &str, options: Value) -> Self {
        setup();
        let mut command = Command::new("node");
        command
            .arg(dir().join("driver.mjs"))
            .env("SIO_URL", format!("http://{}{path}", server.addr))
            .env("SIO_OPTIONS", options.to_string());
        Self::spawn(command)
    }

    /// python-socketio over `transports` (comma-separated), with `auth`.
    fn python(server: &TestServer, transports: &str, auth: Value) -> Self {
        setup();
        let mut command = Command::new(dir().join(".venv/bin/python"));
        command
            .arg("-u")
            .arg(dir().join("driver.py"))
            .env("SIO_URL", format!("http://{}", server.addr))
            .env("SIO_TRANSPORTS", transports)
            .env("SIO_AUTH", auth.to_string());
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the client");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line the client prints.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(common::DEADLINE, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out; the client had printed {:#?}", self.seen))
            .unwrap()
            .unwrap_or_else(|| panic!("the client ended; it had printed {:#?}", self.seen));
        let value: Value = serde_json::from_str(&line).unwrap();
        self.seen.push(value.clone());
        value
    }

    /// Reads until a line with `"ev": ev` (and, for events, `"name": name`).
    async fn until(&mut self, ev: &str, name: Option<&str>) -> Value {
        loop {
            let value = self.next().await;
            if value["ev"] == ev && name.is_none_or(|n| value["name"] == n) {
                return value;
            }
        }
    }

    /// The first argument of the next event named `name`.
    async fn event(&mut self, name: &str) -> Value {
        self.until("event", Some(name)).await["args"][0].clone()
    }

    async fn send(&mut self, command: Value) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Emits `name` with `args` and an ack callback; returns the ack's first argument.
    async fn emit_ack(&mut self, name: &str, args: Value) -> Value {
        self.send(json!({"emit": name, "args": args, "ack": true}))
            .await;
        self.until("ack", None).await["args"][0].clone()
    }

    async fn exit(mut self) {
        self.send(json!({"exit": true})).await;
        let _ = within(self.child.wait()).await;
    }
}

fn token(sub: &str, subscribe: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp, "subscribe": subscribe, "publish": ["chat.*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Checks a delivered event: the SigmaVault object, with its offset.
fn assert_event(event: &Value, channel: &str, data: &Value) {
    assert_eq!(event["type"], channel, "{event}");
    assert_eq!(&event["data"], data, "{event}");
    assert!(event["timestamp"].is_string(), "{event}");
    assert!(event["offset"].is_u64(), "{event}");
}

#[tokio::test]
async fn websocket_clients_get_the_welcome_defaults_room_and_events() {
    let server = TestServer::start().await;
    let mut client = Driver::node(&server, "", json!({"transports": ["websocket"]}));
    let connected = client.until("connect", None).await;
    assert_eq!(connected["transport"], "websocket");
    let welcome = client.event("connection_established").await;
    assert!(welcome["client_id"].is_string(), "{welcome}");
    assert!(welcome["server_time"].is_u64(), "{welcome}");
    let joined = welcome["subscriptions"].as_array().unwrap();
    assert!(
        joined.contains(&json!("general")),
        "the default room: {welcome}"
    );
    assert!(
        joined.contains(&json!("notification")),
        "the defaults: {welcome}"
    );

    let ack = client
        .emit_ack("subscribe", json!([{"events": ["orders", "agent_update"]}]))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["subscribed"], json!(["orders", "agent_update"]));
    server
        .publish(&json!([
            {"type": "orders", "data": {"n": 1}},
            {"type": "agent_update", "data": {"agent_id": "a-7"}},
            {"type": "general", "data": {"hello": true}},
        ]))
        .await;
    assert_event(&client.event("orders").await, "orders", &json!({"n": 1}));
    assert_event(
        &client.event("agent_update").await,
        "agent_update",
        &json!({"agent_id": "a-7"}),
    );
    assert_event(
        &client.event("general").await,
        "general",
        &json!({"hello": true}),
    );

    let ack = client.emit_ack("unsubscribe", json!([["orders"]])).await;
    assert_eq!(ack["unsubscribed"], json!(["orders"]), "{ack}");
    assert_eq!(server.hub.stats().clients, 1);
    client.exit().await;
    common::eventually("the client left", || server.hub.stats().clients == 0).await;
}

#[tokio::test]
async fn default_options_poll_then_upgrade_without_losing_an_event() {
    let server = TestServer::start().await;
    let mut client = Driver::node(&server, "", json!({}));
    // It may already have upgraded when the namespace connect comes back: the `upgrade`
    // below is what shows it started polling.
    client.until("connect", None).await;
    // Publish all through the upgrade: every event arrives once, in order.
    let publisher = {
        let addr = server.addr;
        tokio::spawn(async move {
            for n in 0..40 {
                let body = json!({"type": "general", "data": {"n": n}});
                let body = serde_json::to_vec(&body).unwrap();
                common::request_raw_at(
                    addr,
                    "POST",
                    "/api/v1/publish",
                    body,
                    &[("content-type", "application/json")],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut upgraded = false;
    let mut next = 0;
    while next < 40 {
        let line = client.next().await;
        if line["ev"] == "upgrade" {
            assert_eq!(line["transport"], "websocket");
            upgraded = true;
        } else if line["ev"] == "event" && line["name"] == "general" {
            assert_eq!(line["args"][0]["data"]["n"], next, "{:#?}", client.seen);
            next += 1;
        }
    }
    publisher.await.unwrap();
    let upgraded = upgraded || client.seen.iter().any(|line| line["ev"] == "upgrade");
    if !upgraded {
        client.until("upgrade", None).await;
    }
    // On the socket now, acks still work.
    let ack = client.emit_ack("ping", json!([])).await;
    assert!(ack["server_time"].is_u64(), "{ack}");
    client.exit().await;
}

#[tokio::test]
async fn long_polling_alone_keeps_alive_and_delivers() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(400);
    })
    .await;
    let mut client = Driver::node(&server, "", json!({"transports": ["polling"]}));
    assert_eq!(client.until("connect", None).await["transport"], "polling");
    let ack = client.emit_ack("subscribe", json!(["orders"])).await;
    assert_eq!(ack["success"], true, "{ack}");
    // Several keep-alive rounds: the client answers the pings by POST.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(server.hub.stats().clients, 1, "{:#?}", client.seen);
    for n in 0..3 {
        server
            .publish(&json!({"type": "orders", "data": {"n": n}}))
            .await;
    }
    for n in 0..3 {
        assert_eq!(client.event("orders").await["data"]["n"], n);
    }
    // Errors come back as the ack, with their code.
    let refused = client.emit_ack("launch", json!([1])).await;
    assert_eq!(refused["code"], "unknown_type", "{refused}");
    client.exit().await;
    common::eventually("the session ended", || server.hub.stats().clients == 0).await;
}

#[tokio::test]
async fn auth_payload_or_query_token_and_connect_errors() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
    })
    .await;
    let good = token("alice", &["orders", "general", "notification"]);

    for transports in [json!(["websocket"]), json!(["polling"])] {
        let mut client = Driver::node(
            &server,
            "",
            json!({"transports": transports, "auth": {"token": good}}),
        );
        client.until("connect", None).await;
        let welcome = client.event("connection_established").await;
        // The grant decides what the defaults become.
        let mut joined: Vec<&str> = welcome["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        joined.sort();
        assert_eq!(joined, ["general", "notification"], "{welcome}");
        let ack = client
            .emit_ack("subscribe", json!([{"events": ["orders", "secret"]}]))
            .await;
        assert_eq!(ack["subscribed"], json!(["orders"]), "{ack}");
        assert_eq!(ack["rejected"][0]["channel"], "secret", "{ack}");
        client.exit().await;
    }

    // The token in the query (`io(url, {query: {token}})`) works too.
    let mut client = Driver::node(
        &server,
        "",
        json!({"transports": ["websocket"], "query": {"token": good}}),
    );
    client.until("connect", None).await;
    client.exit().await;

    let bad = json!({"transports": ["websocket"], "auth": {"token": "not-a-jwt"}});
    let mut client = Driver::node(&server, "", bad);
    let refused = client.until("connect_error", None).await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("invalid token"),
        "{refused}"
    );
    assert_eq!(refused["data"]["code"], "invalid_token", "{refused}");
    client.exit().await;

    let mut client = Driver::node(&server, "", json!({"transports": ["polling"]}));
    let refused = client.until("connect_error", None).await;
    assert_eq!(refused["data"]["code"], "auth_required", "{refused}");
    client.exit().await;
    common::eventually("refused clients closed", || server.hub.stats().clients == 0).await;
}

#[tokio::test]
async fn namespaces_are_channel_prefixes() {
    let server = TestServer::start().await;
    let mut client = Driver::node(&server, "/admin", json!({"transports": ["websocket"]}));
    client.until("connect", None).await;
    let ack = client.emit_ack("subscribe", json!([["orders"]])).await;
    assert_eq!(ack["subscribed"], json!(["/admin/orders"]), "{ack}");
    server
        .publish(&json!([
            {"type": "orders", "data": {"main": true}},
            {"type": "/admin/orders", "data": {"admin": true}},
        ]))
        .await;
    let event = client.event("orders").await;
    assert_event(&event, "/admin/orders", &json!({"admin": true}));
    let refused = client.emit_ack("subscribe", json!([["a/b"]])).await;
    assert_eq!(refused["code"], "invalid_channel", "{refused}");
    client.exit().await;
}

#[tokio::test]
async fn binary_attachments_are_refused_with_an_error() {
    let server = TestServer::start().await;
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let mut client = Driver::node(&server, "", json!({"transports": transports}));
        client.until("connect", None).await;
        // A Buffer makes socket.io-client send a binary event with an attachment.
        client
            .send(json!({"emit": "publish", "args": [], "binary": true, "ack": true}))
            .await;
        let refused = client.until("ack", None).await["args"][0].clone();
        assert_eq!(refused["code"], "not_supported", "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains("binary"),
            "{refused}"
        );
        // The connection stays up, and the next emit is answered.
        let ack = client.emit_ack("ping", json!([])).await;
        assert!(ack["server_time"].is_u64(), "{ack}");
        client.exit().await;
    }
}

#[tokio::test]
async fn python_socketio_connects_over_both_transports() {
    let server = TestServer::start().await;
    for transports in ["websocket", "polling"] {
        let mut client = Driver::python(&server, transports, Value::Null);
        let connected = client.until("connect", None).await;
        assert_eq!(connected["transport"], transports, "{connected}");
        client.event("connection_established").await;
        let ack = client
            .emit_ack("subscribe", json!([{"events": ["orders"]}]))
            .await;
        assert_eq!(ack["success"], true, "{ack}");
        server
            .publish(&json!({"type": "orders", "data": {"via": transports}}))
            .await;
        assert_event(
            &client.event("orders").await,
            "orders",
            &json!({"via": transports}),
        );
        client.exit().await;
    }
}
