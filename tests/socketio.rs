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
        Self::python_with_headers(server, transports, auth, json!({}))
    }

    /// The same, sending `headers` (a JSON object) with its requests.
    fn python_with_headers(
        server: &TestServer,
        transports: &str,
        auth: Value,
        headers: Value,
    ) -> Self {
        setup();
        let mut command = Command::new(dir().join(".venv/bin/python"));
        command
            .arg("-u")
            .arg(dir().join("driver.py"))
            .env("SIO_URL", format!("http://{}", server.addr))
            .env("SIO_TRANSPORTS", transports)
            .env("SIO_AUTH", auth.to_string())
            .env("SIO_HEADERS", headers.to_string());
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
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the client printed {line:?}: {e}"));
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

/// Seneca's server puts its clients in rooms (`join_room`); here the control API does:
/// the real socket.io-client, joined to a room server-side by its `sid`, gets the room's
/// events, and a server-side disconnect ends it as Socket.IO's own does ("io server
/// disconnect"), after which it does not reconnect.
#[tokio::test]
async fn a_client_joined_to_a_room_server_side_gets_its_events_until_disconnected() {
    let server = TestServer::with(|c| {
        let mut rooms = sigmahub::config::ChannelRule::new("room.*");
        rooms.presence = Some(true);
        c.channels.push(rooms);
    })
    .await;
    let mut client = Driver::node(&server, "", json!({"transports": ["websocket"]}));
    let connected = client.until("connect", None).await;
    let sid = connected["id"].as_str().unwrap().to_owned();
    client.event("connection_established").await;

    let (status, body) = common::http_post_json(
        server.addr,
        "/api/v1/subscribe",
        &json!({"client": sid, "channels": ["room.blue"]}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"connections": 1, "nodes": 1}))
    );
    let reply = client.event("subscribe_response").await;
    assert_eq!(reply["subscribed"], json!(["room.blue"]), "{reply}");
    server
        .publish(&json!({"type": "room.blue", "data": {"seat": 4}}))
        .await;
    assert_event(
        &client.event("room.blue").await,
        "room.blue",
        &json!({"seat": 4}),
    );
    // Who is in the room, asked with an ack.
    let presence = client.emit_ack("presence", json!(["room.blue"])).await;
    assert_eq!(presence["count"], 1, "{presence}");
    assert_eq!(presence["members"][0]["client"], sid.as_str(), "{presence}");

    let (status, _) = common::http_post_json(
        server.addr,
        "/api/v1/disconnect",
        &json!({"client": sid, "reason": "room closed"}),
    )
    .await;
    assert_eq!(status, 200);
    let gone = client.until("disconnect", None).await;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
    common::eventually("the client to leave", || server.hub.stats().clients == 0).await;
    // Socket.IO's client does not reconnect after a server disconnect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.hub.stats().connected_total, 1, "it came back");
    client.exit().await;
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
    // The operators see the transport.
    let (_, stats) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(stats["socketio_polling_sessions"], 1, "{stats}");
    assert_eq!(stats["connections_by_dialect"]["socketio"], 1, "{stats}");
    let (_, _, metrics) = server.request_raw("GET", "/metrics", Vec::new(), &[]).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("sigmahub_socketio_polling_sessions 1"),
        "{metrics}"
    );
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
        // The token's publish grant: `chat.*`, not `orders`.
        let ack = client
            .emit_ack("publish", json!([{"type": "chat.room", "data": {"hi": 1}}]))
            .await;
        assert_eq!(ack["accepted"], 1, "{ack}");
        let ack = client
            .emit_ack("publish", json!([{"type": "orders", "data": {}}]))
            .await;
        assert_eq!(ack["code"], "forbidden", "{ack}");
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

/// python-socketio (Seneca's own client library) is put in a room server-side and then
/// disconnected, over each transport: a long-polling session takes commands too.
#[tokio::test]
async fn python_socketio_is_put_in_a_room_and_disconnected_server_side() {
    let server = TestServer::start().await;
    for transports in ["polling", "websocket"] {
        let mut client = Driver::python(&server, transports, Value::Null);
        let sid = client.until("connect", None).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        client.event("connection_established").await;
        let (status, told) = common::http_post_json(
            server.addr,
            "/api/v1/subscribe",
            &json!({"client": sid, "channels": ["room.py"]}),
        )
        .await;
        assert_eq!(
            (status, &told),
            (200, &json!({"connections": 1, "nodes": 1}))
        );
        client.event("subscribe_response").await;
        server
            .publish(&json!({"type": "room.py", "data": {"via": transports}}))
            .await;
        assert_event(
            &client.event("room.py").await,
            "room.py",
            &json!({"via": transports}),
        );
        let (status, _) =
            common::http_post_json(server.addr, "/api/v1/disconnect", &json!({"client": sid}))
                .await;
        assert_eq!(status, 200);
        client.until("disconnect", None).await;
        common::eventually("the client to leave", || server.hub.stats().clients == 0).await;
        client.exit().await;
    }
}

/// Seneca's custom authentication provider and event bridge, as hooks: the application's
/// backend (a real HTTP server) says who a connecting client is from its `auth` payload,
/// and answers the events that are not sigmahub's own, through their acks.
#[tokio::test]
async fn the_applications_backend_authenticates_and_answers_acks() {
    use common::backend::{Backend, Reply};
    let backend = Backend::start(|call| match call.path.as_str() {
        "/connect" if call.body["token"] == "alice-session" => {
            Reply::Json(json!({"result": {"user": "alice"}}))
        }
        "/connect" => Reply::Json(json!({"error": {"message": "unknown session"}})),
        _ => Reply::Json(json!({"result": {"data": {
            "method": call.body["method"], "echo": call.body["data"], "user": call.body["user"],
        }}})),
    })
    .await;
    let (connect, request) = (backend.url("/connect"), backend.url("/request"));
    let server = TestServer::with(|c| {
        c.hooks.connect_url = Some(connect);
        c.hooks.request_url = Some(request);
    })
    .await;
    let alice = json!({"token": "alice-session"});
    let clients = [
        (
            "socket.io-client websocket",
            Driver::node(
                &server,
                "",
                json!({"transports": ["websocket"], "auth": alice}),
            ),
        ),
        (
            "socket.io-client polling",
            Driver::node(
                &server,
                "",
                json!({"transports": ["polling"], "auth": alice}),
            ),
        ),
        (
            "python-socketio websocket",
            Driver::python(&server, "websocket", alice.clone()),
        ),
        (
            "python-socketio polling",
            Driver::python(&server, "polling", alice.clone()),
        ),
    ];
    for (name, mut client) in clients {
        client.until("connect", None).await;
        client.event("connection_established").await;
        let answer = client.emit_ack("launch", json!([{"at": 1}])).await;
        assert_eq!(
            answer,
            json!({"method": "launch", "echo": {"at": 1}, "user": "alice"}),
            "{name}"
        );
        // Without an ack the event still reaches the backend; nothing comes back.
        let before = backend.calls("/request").len();
        client
            .send(json!({"emit": "note", "args": ["hello"]}))
            .await;
        common::eventually("the note to reach the backend", || {
            backend.calls("/request").len() == before + 1
        })
        .await;
        let note = backend.calls("/request").pop().unwrap();
        assert_eq!(note.body["method"], "note", "{name}");
        assert_eq!(note.body["data"], "hello", "{name}");
        client.exit().await;
    }
    // A session the backend does not know: the connect error carries its reason.
    let mut stranger = Driver::node(
        &server,
        "",
        json!({"transports": ["websocket"], "auth": {"token": "forged"}, "reconnection": false}),
    );
    let refused = stranger.until("connect_error", None).await;
    assert_eq!(
        refused["message"], "refused by the application: unknown session",
        "{refused}"
    );
    assert_eq!(refused["data"]["code"], "invalid_token");
    stranger.exit().await;
}

/// Flask-SocketIO applications know their users by the session cookie, which a browser
/// sends by itself. With `hooks.connect_headers = ["cookie"]` the connect hook is shown it,
/// so those clients connect unchanged, without a token: socket.io-client (sending the
/// cookie as a browser would) and python-socketio, over both transports.
#[tokio::test]
async fn a_session_cookie_identifies_socketio_clients_without_a_token() {
    use common::backend::{Backend, Reply};
    let backend = Backend::start(|call| {
        let cookie = call.body["headers"]["cookie"].as_str().unwrap_or_default();
        if cookie.split("; ").any(|c| c == "session=alice-session") {
            Reply::Json(json!({"result": {"user": "alice", "subscribe": ["news"]}}))
        } else {
            Reply::Json(json!({"error": {"message": "log in first"}}))
        }
    })
    .await;
    let connect = backend.url("/connect");
    let server = TestServer::with(|c| {
        c.hooks.connect_url = Some(connect);
        c.hooks.connect_headers = vec!["Cookie".into()];
    })
    .await;
    let cookie = json!({"cookie": "theme=dark; session=alice-session"});
    let clients = [
        (
            "socket.io-client websocket",
            Driver::node(
                &server,
                "",
                json!({"transports": ["websocket"], "extraHeaders": cookie}),
            ),
        ),
        (
            "socket.io-client polling",
            Driver::node(
                &server,
                "",
                json!({"transports": ["polling"], "extraHeaders": cookie}),
            ),
        ),
        (
            "python-socketio websocket",
            Driver::python_with_headers(&server, "websocket", Value::Null, cookie.clone()),
        ),
        (
            "python-socketio polling",
            Driver::python_with_headers(&server, "polling", Value::Null, cookie.clone()),
        ),
    ];
    for (name, mut client) in clients {
        client.until("connect", None).await;
        client.event("connection_established").await;
        let call = backend.calls("/connect").pop().unwrap();
        assert_eq!(call.body["token"], Value::Null, "{name}: {}", call.body);
        assert_eq!(call.body["dialect"], "socketio", "{name}");
        assert_eq!(
            call.body["headers"]["cookie"], "theme=dark; session=alice-session",
            "{name}: {}",
            call.body
        );
        // Only the headers named are shown.
        assert_eq!(
            call.body["headers"].as_object().unwrap().len(),
            1,
            "{name}: {}",
            call.body
        );
        // The grant is the application's.
        let answer = client
            .emit_ack("subscribe", json!([{"events": ["news", "orders"]}]))
            .await;
        assert_eq!(answer["subscribed"], json!(["news"]), "{name}: {answer}");
        assert_eq!(
            answer["rejected"][0]["channel"], "orders",
            "{name}: {answer}"
        );
        client.exit().await;
    }
    // Without the session cookie, the application's refusal is the connect error.
    let mut stranger = Driver::node(
        &server,
        "",
        json!({"transports": ["websocket"], "extraHeaders": {"cookie": "theme=dark"},
               "reconnection": false}),
    );
    let refused = stranger.until("connect_error", None).await;
    assert_eq!(
        refused["message"], "refused by the application: log in first",
        "{refused}"
    );
    stranger.exit().await;
}

#[tokio::test]
async fn clients_reconnect_after_a_server_restart() {
    for options in [
        json!({"transports": ["websocket"], "reconnectionDelay": 100, "reconnectionDelayMax": 300}),
        json!({"reconnectionDelay": 100, "reconnectionDelayMax": 300}),
    ] {
        let server = TestServer::start().await;
        let addr = server.addr;
        let mut client = Driver::node(&server, "", options.clone());
        client.until("connect", None).await;
        client.event("connection_established").await;
        server.shutdown().await;
        // "transport close" on a socket, "transport error" for a poll cut short.
        let gone = client.until("disconnect", None).await;
        assert!(
            gone["reason"].as_str().unwrap().starts_with("transport"),
            "{options}: {gone}"
        );
        let server = TestServer::with(|c| c.listen = addr).await;
        client.until("connect", None).await;
        client.event("connection_established").await;
        server
            .publish(&json!({"type": "general", "data": {"after": "restart"}}))
            .await;
        assert_eq!(
            client.event("general").await["data"]["after"],
            "restart",
            "{options}"
        );
        client.exit().await;
    }
}

/// `many.mjs`: `clients` sockets with `options`, each subscribed to `channel`.
fn many(
    server: &TestServer,
    clients: usize,
    events: usize,
    channel: &str,
    options: Value,
) -> Driver {
    setup();
    let mut command = Command::new("node");
    command
        .arg(dir().join("many.mjs"))
        .env("SIO_URL", format!("http://{}", server.addr))
        .env("SIO_CLIENTS", clients.to_string())
        .env("SIO_EVENTS", events.to_string())
        .env("SIO_CHANNEL", channel)
        .env("SIO_OPTIONS", options.to_string());
    Driver::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_receive_every_event_once_in_order() {
    let server = TestServer::start().await;
    // Half start on WebSocket, half poll and upgrade (io(url)'s default).
    let mut direct = many(
        &server,
        500,
        100,
        "burst",
        json!({"transports": ["websocket"]}),
    );
    let mut upgrading = many(&server, 500, 100, "burst", json!({}));
    for group in [&mut direct, &mut upgrading] {
        let ready = group.next().await;
        assert_eq!(ready["ready"], 500, "{ready}");
    }
    assert_eq!(server.hub.subscriber_count("burst"), 1_000);
    for n in 0..100 {
        let (status, reply) = server
            .publish(&json!({"type": "burst", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    for group in [&mut direct, &mut upgrading] {
        let result = group.next().await;
        assert_eq!(result["done"], 500, "{result}");
        assert_eq!(result["bad"], json!([]), "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_on_two_nodes_gets_every_event_of_a_burst_once_in_order() {
    let nats = common::nats::NatsServer::start();
    let node = |name: &'static str| {
        let url = nats.url();
        TestServer::with(move |c| {
            c.cluster.nats_url = Some(url);
            c.cluster.node_name = Some(name.to_owned());
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    let mut sigmavault = a.client().await;
    sigmavault.subscribe(&["orders"]).await;
    let mut skreaver = b.raw_client_at("/skreaver/ws").await;
    skreaver.subscribe(&["orders"]).await;
    let mut socketio_a = Driver::node(&a, "", json!({}));
    let mut socketio_b = Driver::python(&b, "websocket", Value::Null);
    for client in [&mut socketio_a, &mut socketio_b] {
        client.until("connect", None).await;
        let ack = client.emit_ack("subscribe", json!([["orders"]])).await;
        assert_eq!(ack["success"], true, "{ack}");
    }
    let (_, stats) = a.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(
        stats["connections_by_dialect"],
        json!({"sigmavault": 1, "skreaver": 0, "socketio": 1})
    );

    let burst: Vec<Value> = (0..50)
        .map(|n| json!({"type": "orders", "data": {"n": n}}))
        .collect();
    let (status, reply) = a.publish(&Value::Array(burst)).await;
    assert_eq!(status, 200, "{reply}");
    let mut offsets = Vec::new();
    for n in 0..50 {
        let sv = sigmavault.recv_type("orders").await;
        let sk = skreaver.recv_type("event").await;
        let io_a = socketio_a.event("orders").await;
        for event in [&sv, &sk, &io_a] {
            assert_eq!(event["data"]["n"], n, "{event}");
            assert_eq!(
                event["offset"], sv["offset"],
                "one event, one offset: {event}"
            );
        }
        offsets.push(sv["offset"].clone());
    }
    // python-engineio hands each message to a handler thread of its own
    // (`_trigger_event('message', …, run_async=True)`), so its application sees them in
    // the order its threads run: every event once, with its offset, in any order.
    let mut from_python = Vec::new();
    for _ in 0..50 {
        let event = socketio_b.event("orders").await;
        let n = event["data"]["n"].as_u64().unwrap() as usize;
        assert_eq!(event["offset"], offsets[n], "{event}");
        from_python.push(n);
    }
    from_python.sort();
    assert_eq!(from_python, (0..50).collect::<Vec<_>>());
    socketio_a.exit().await;
    socketio_b.exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002s_vue_client_receives_its_events_in_chromium() {
    setup();
    common::browser::setup();
    // Seneca's frontend subscribes to nothing: its server put it in the rooms. Here the
    // defaults do.
    let server = TestServer::with(|c| {
        c.default_subscriptions
            .extend(["agent_update", "project_update", "health_update"].map(String::from));
    })
    .await;
    let base = format!("http://{}/", server.addr);
    let (ok, output) = common::browser::run("seneca_client.mjs", vec![base]).await;
    assert!(ok, "{output}");
}
