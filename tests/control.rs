//! The control API against a real server: HTTP calls with a real hyper client, clients
//! over real WebSockets (tungstenite), and every answer checked against the committed
//! OpenAPI document by a validator we did not write (openapi-spec-validator, installed by
//! tests/openapi/setup.sh).

mod common;

use std::time::SystemTime;

use common::{Client, TestServer};
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "control-test-secret-of-32-bytes!!";
const KEY: &str = "control-test-publish-key";

/// A server with token auth and a publish key, whose clients get `notification` on connect.
async fn server() -> TestServer {
    TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.to_owned());
        c.auth.publish_keys = vec![KEY.to_owned()];
        c.default_subscriptions = vec!["notification".to_owned()];
    })
    .await
}

fn token(sub: &str) -> String {
    token_with(json!({"sub": sub, "subscribe": ["notification", "mine.*"]}))
}

/// A token with `claims`, valid for an hour.
fn token_with(mut claims: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    claims["exp"] = exp.into();
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A client of user `sub`, with its welcome read; returns it and its client id.
async fn client_of(server: &TestServer, sub: &str) -> (Client, u64) {
    let mut client = server
        .connect_with(&format!("?token={}", token(sub)), &[])
        .await
        .expect("connect");
    let welcome = client.recv_type("notification").await;
    let id = welcome["data"]["client_id"]
        .as_str()
        .expect("a client id")
        .parse()
        .unwrap();
    (client, id)
}

/// A control call with the publish key.
async fn call(server: &TestServer, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = match body {
        Value::Null => Vec::new(),
        body => body.to_string().into_bytes(),
    };
    server
        .request_with(method, path, body, &[("x-api-key", KEY)])
        .await
}

/// A control GET with the publish key.
async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    call(server, "GET", path, &Value::Null).await
}

/// The next close frame's code and reason.
async fn close_frame(client: &mut Client) -> (u16, String) {
    loop {
        match common::within(client.ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => panic!("no close frame"),
            Some(Ok(_)) => continue,
        }
    }
}

/// A client subscribed and unsubscribed server-side hears both, gets the channel's events
/// only in between, and its token's grant does not limit what the server subscribes it
/// to. It is dormant when told (it rests once its welcome is written), so this also
/// checks that a command wakes a resting connection.
#[tokio::test]
async fn a_client_subscribed_server_side_gets_the_channel_until_unsubscribed() {
    let server = server().await;
    let (mut client, id) = client_of(&server, "alice").await;

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/subscribe",
        &json!({"client": id.to_string(), "channels": ["orders", "mine.x"]}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"connections": 1, "nodes": 1}))
    );
    let reply = client.recv_type("subscribe_response").await;
    assert_eq!(reply["data"]["subscribed"], json!(["orders", "mine.x"]));
    assert!(reply.get("correlation_id").is_none(), "{reply}");
    assert_eq!(
        reply["data"]["subscriptions"],
        json!(["notification", "orders", "mine.x"])
    );

    server
        .publish_with_key(KEY, &json!({"type": "orders", "data": {"n": 1}}))
        .await;
    let event = client.recv_type("orders").await;
    assert_eq!(event["data"], json!({"n": 1}));

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/unsubscribe",
        &json!({"client": id, "channels": ["orders"]}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"connections": 1, "nodes": 1}))
    );
    let reply = client.recv_type("unsubscribe_response").await;
    assert_eq!(reply["data"]["unsubscribed"], json!(["orders"]));
    server
        .publish_with_key(
            KEY,
            &json!([{"type": "orders", "data": {"n": 2}}, {"type": "mine.x", "data": {}}]),
        )
        .await;
    let next = client.recv().await;
    assert_eq!(
        next["type"], "mine.x",
        "the orders event after leaving: {next}"
    );
}

/// A disconnect by client id closes that connection alone with the code and reason
/// given; one by user closes every connection of that user with 4010 and the default
/// reason, and no one else's. Both are counted under 4010.
#[tokio::test]
async fn disconnects_close_a_client_or_every_connection_of_a_user() {
    let server = server().await;
    let (mut first, first_id) = client_of(&server, "alice").await;
    let (mut second, _) = client_of(&server, "alice").await;
    let (mut third, _) = client_of(&server, "alice").await;
    let (mut bob, _) = client_of(&server, "bob").await;

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/disconnect",
        &json!({"client": first_id, "code": 4403, "reason": "banned: spam"}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"connections": 1, "nodes": 1}))
    );
    assert_eq!(
        close_frame(&mut first).await,
        (4403, "banned: spam".to_owned())
    );

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/disconnect",
        &json!({"user": "alice"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The first may still be listed while it closes: 2 or 3.
    let told = body["connections"].as_u64().unwrap();
    assert!((2..=3).contains(&told), "{body}");
    for client in [&mut second, &mut third] {
        assert_eq!(
            close_frame(client).await,
            (4010, "disconnected by the server".to_owned())
        );
    }
    common::eventually("alice's connections to end", || {
        server.hub.stats().clients == 1
    })
    .await;

    let (_, body) = call(
        &server,
        "POST",
        "/api/v1/disconnect",
        &json!({"user": "alice"}),
    )
    .await;
    assert_eq!(
        body,
        json!({"connections": 0, "nodes": 1}),
        "alice has no connection left"
    );
    server
        .publish_with_key(
            KEY,
            &json!({"type": "notification", "data": {"still": "here"}}),
        )
        .await;
    assert_eq!(bob.recv_type("notification").await["data"]["still"], "here");

    let metrics = server
        .request_raw("GET", "/metrics", Vec::new(), &[("x-api-key", KEY)])
        .await
        .2;
    let metrics = String::from_utf8_lossy(&metrics);
    let line = metrics
        .lines()
        .find(|l| l.contains("code=\"4010\"") && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("no 4010 close counter:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
}

/// The Rust API an embedding program gets does what the HTTP routes do.
#[tokio::test]
async fn an_embedding_program_commands_connections_through_control() {
    let server = server().await;
    let (mut client, id) = client_of(&server, "carol").await;
    let orders = sigmahub::Channel::new("orders").unwrap();
    let target = sigmahub::Target::User("carol".to_owned());
    let told = server
        .control
        .subscribe(&target, std::slice::from_ref(&orders))
        .await;
    assert_eq!((told.connections, told.nodes), (1, 1));
    client.recv_type("subscribe_response").await;
    common::eventually("the subscription to apply", || {
        server.hub.subscriber_count("orders") == 1
    })
    .await;
    assert_eq!(
        server.control.channels().await,
        [
            (orders.clone(), 1),
            (sigmahub::Channel::new("notification").unwrap(), 1)
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    let farewell = sigmahub::Farewell::new(4001, "go").unwrap();
    assert_eq!(
        server
            .control
            .disconnect(&sigmahub::Target::Client(id + 1000), &farewell)
            .await
            .connections,
        0,
        "no such client"
    );
    assert_eq!(
        server
            .control
            .disconnect(&sigmahub::Target::Client(id), &farewell)
            .await
            .connections,
        1
    );
    assert_eq!(close_frame(&mut client).await, (4001, "go".to_owned()));
}

/// A broadcast is one event on each channel named, as a publish of each would be.
#[tokio::test]
async fn a_broadcast_reaches_every_channel_named() {
    let server = server().await;
    let (mut client, id) = client_of(&server, "dave").await;
    call(
        &server,
        "POST",
        "/api/v1/subscribe",
        &json!({"client": id, "channels": ["a", "b"]}),
    )
    .await;
    client.recv_type("subscribe_response").await;
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/broadcast",
        &json!({"channels": ["a", "b", "c"], "data": {"x": 1}, "priority": "high"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["delivered"], 2, "{body}");
    let (a, b) = (client.recv().await, client.recv().await);
    assert_eq!(
        (a["type"].as_str(), b["type"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(a["data"], json!({"x": 1}));
    assert_eq!(b["data"], json!({"x": 1}));
}

/// History comes in pages of `limit`, oldest first, with `more` until the end; `since`
/// takes the next page. The channel list counts subscribers.
#[tokio::test]
async fn history_pages_and_the_channel_list() {
    let server = server().await;
    let events: Vec<Value> = (1..=5)
        .map(|n| json!({"type": "audit.log", "data": {"n": n}}))
        .collect();
    server.publish_with_key(KEY, &Value::from(events)).await;

    let (status, page) = get(&server, "/api/v1/channels/audit.log/history?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let ns = |page: &Value| -> Vec<u64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ns(&page), [1, 2]);
    assert_eq!(
        (page["more"].clone(), page["recovered"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(page["last"], 5);
    let since = page["events"][1]["offset"].as_u64().unwrap();
    let (_, page) = get(
        &server,
        &format!("/api/v1/channels/audit%2Elog/history?since={since}&limit=10"),
    )
    .await;
    assert_eq!(ns(&page), [3, 4, 5]);
    assert_eq!(page["more"], false);
    let (status, page) = get(&server, "/api/v1/channels/never.used/history").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (page["events"].clone(), page["last"].clone()),
        (json!([]), json!(0))
    );

    let (_client, _) = client_of(&server, "erin").await;
    let (status, list) = get(&server, "/api/v1/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"channels": [{"channel": "notification", "subscribers": 1}]})
    );
}

/// Every malformed or unauthorised call gets a clear error, and changes nothing.
#[tokio::test]
async fn bad_control_calls_get_clear_errors() {
    let server = server().await;
    let (_client, id) = client_of(&server, "frank").await;
    for (path, body, wanted) in [
        ("/api/v1/disconnect", json!({}), "exactly one of"),
        (
            "/api/v1/disconnect",
            json!({"client": id, "user": "frank"}),
            "exactly one of",
        ),
        (
            "/api/v1/disconnect",
            json!({"client": "seven"}),
            "client id",
        ),
        (
            "/api/v1/disconnect",
            json!({"client": id, "code": 1005}),
            "close code 1005",
        ),
        (
            "/api/v1/disconnect",
            json!({"client": id, "reason": "x".repeat(124)}),
            "123",
        ),
        (
            "/api/v1/disconnect",
            json!({"client": id, "channels": ["a"]}),
            "no `channels`",
        ),
        (
            "/api/v1/disconnect",
            json!({"client": id, "nope": 1}),
            "unknown field",
        ),
        (
            "/api/v1/subscribe",
            json!({"client": id}),
            "name the channels",
        ),
        (
            "/api/v1/subscribe",
            json!({"client": id, "channels": []}),
            "name the channels",
        ),
        (
            "/api/v1/subscribe",
            json!({"client": id, "channels": ["bad name!"]}),
            "bad name!",
        ),
        (
            "/api/v1/unsubscribe",
            json!({"user": "frank", "channels": ["a"], "code": 4000}),
            "belong to a disconnect",
        ),
        ("/api/v1/broadcast", json!({"data": {}}), "channels"),
    ] {
        let (status, answer) = call(&server, "POST", path, &body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(wanted), "{path} {body}: {message}");
    }
    let (status, _) = server
        .request_with(
            "POST",
            "/api/v1/disconnect",
            json!({"client": id}).to_string().into_bytes(),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 401, "no key");
    // (Bodies not declared JSON get 415 as publishes do: tests/publish.rs.)
    let (status, _) = get(&server, "/api/v1/disconnect").await;
    assert_eq!(status, 405);
    let (status, _) = call(&server, "POST", "/api/v1/channels", &json!({})).await;
    assert_eq!(status, 405);
    for query in ["limit=0", "limit=1001", "since=-1", "limit=ten"] {
        let (status, answer) = get(&server, &format!("/api/v1/channels/a/history?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
    }
    assert_eq!(server.hub.stats().clients, 1, "nobody was disconnected");
}

/// The committed OpenAPI document is valid, is what the server serves, and describes
/// the answers the server really gives (checked by openapi-spec-validator's own schema
/// validator).
#[tokio::test]
async fn the_openapi_document_is_valid_served_and_true_to_the_answers() {
    let spec = common::openapi::spec();

    let server = server().await;
    let (status, served) = server
        .request("GET", "/api/v1/openapi.json", Vec::new())
        .await;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    assert_eq!(served, committed);

    let (mut client, id) = client_of(&server, "gina").await;
    let mut answers = Vec::new();
    let mut record = |method: &str, template: &str, (status, body): (u16, Value)| {
        answers.push(json!({"method": method, "path": template, "status": status, "body": body}));
    };
    record(
        "POST",
        "/api/v1/subscribe",
        call(
            &server,
            "POST",
            "/api/v1/subscribe",
            &json!({"client": id, "channels": ["h"]}),
        )
        .await,
    );
    client.recv_type("subscribe_response").await;
    record(
        "POST",
        "/api/v1/publish",
        call(
            &server,
            "POST",
            "/api/v1/publish",
            &json!({"type": "h", "data": {"n": 1}}),
        )
        .await,
    );
    record(
        "POST",
        "/api/v1/broadcast",
        call(
            &server,
            "POST",
            "/api/v1/broadcast",
            &json!({"channels": ["h", "i"]}),
        )
        .await,
    );
    record(
        "POST",
        "/api/v1/broadcast",
        call(
            &server,
            "POST",
            "/api/v1/broadcast",
            &json!({"channels": "h"}),
        )
        .await,
    );
    record(
        "GET",
        "/api/v1/channels",
        get(&server, "/api/v1/channels").await,
    );
    record(
        "GET",
        "/api/v1/channels/{channel}/history",
        get(&server, "/api/v1/channels/h/history").await,
    );
    record(
        "GET",
        "/api/v1/channels/{channel}/history",
        get(&server, "/api/v1/channels/h/history?since=99").await,
    );
    record(
        "POST",
        "/api/v1/unsubscribe",
        call(
            &server,
            "POST",
            "/api/v1/unsubscribe",
            &json!({"user": "gina", "channels": ["h"]}),
        )
        .await,
    );
    record(
        "POST",
        "/api/v1/disconnect",
        call(
            &server,
            "POST",
            "/api/v1/disconnect",
            &json!({"client": id, "code": 2}),
        )
        .await,
    );
    record(
        "POST",
        "/api/v1/disconnect",
        server
            .request_with("POST", "/api/v1/disconnect", b"{}".to_vec(), &[])
            .await,
    );
    record(
        "POST",
        "/api/v1/disconnect",
        call(
            &server,
            "POST",
            "/api/v1/disconnect",
            &json!({"client": id}),
        )
        .await,
    );
    record(
        "GET",
        "/healthz",
        server.request("GET", "/healthz", Vec::new()).await,
    );
    assert!(answers.iter().all(|a| a["status"] != 404), "{answers:?}");

    let stderr = common::openapi::check(&answers).await;
    assert!(stderr.contains("checked 12 answers"), "{stderr}");
}

/// A channel that keeps presence lists its subscribers with their user and the token's
/// `info`, and its companion channel carries a `join` and a `leave` for each; a channel
/// without presence has none to list.
#[tokio::test]
async fn presence_lists_members_and_announces_joins_and_leaves() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.to_owned());
        c.auth.publish_keys = vec![KEY.to_owned()];
        c.default_subscriptions = vec!["notification".to_owned()];
        let mut rooms = sigmahub::config::ChannelRule::new("room.*");
        rooms.presence = Some(true);
        c.channels.push(rooms);
    })
    .await;
    let info_token =
        |sub: &str, info: Value| token_with(json!({"sub": sub, "subscribe": ["*"], "info": info}));
    let mut watcher = server
        .connect_with(
            &format!("?token={}", info_token("watcher", Value::Null)),
            &[],
        )
        .await
        .unwrap();
    watcher.recv_type("notification").await;
    watcher.subscribe(&["presence:room.blue"]).await;

    let mut alice = server
        .connect_with(
            &format!("?token={}", info_token("alice", json!({"name": "Alice"}))),
            &[],
        )
        .await
        .unwrap();
    let welcome = alice.recv_type("notification").await;
    let alice_id = welcome["data"]["client_id"].as_str().unwrap().to_owned();
    alice.subscribe(&["room.blue", "orders"]).await;

    let join = watcher.recv_type("presence:room.blue").await;
    assert_eq!(
        join["data"],
        json!({"action": "join", "channel": "room.blue", "client": alice_id,
               "user": "alice", "info": {"name": "Alice"}})
    );
    let (status, list) = get(&server, "/api/v1/channels/room.blue/presence").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list,
        json!({"channel": "room.blue", "count": 1, "nodes": 1, "members": [
            {"client": alice_id, "user": "alice", "info": {"name": "Alice"}}
        ]})
    );
    // Over the socket too, for a channel the token allows.
    watcher
        .send(
            &json!({"type": "presence", "data": {"channel": "room.blue"}, "correlation_id": "p1"}),
        )
        .await;
    let reply = watcher.recv_type("presence_response").await;
    assert_eq!(reply["correlation_id"], "p1");
    assert_eq!(reply["data"]["members"][0]["user"], "alice", "{reply}");
    watcher
        .send(&json!({"type": "presence", "data": {"channel": "orders"}, "correlation_id": "p2"}))
        .await;
    let refused = watcher.recv_type("error").await;
    assert_eq!(
        (
            refused["data"]["code"].as_str(),
            refused["correlation_id"].as_str()
        ),
        (Some("no_presence"), Some("p2")),
        "{refused}"
    );
    let (status, answer) = get(&server, "/api/v1/channels/orders/presence").await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("presence = true"));

    // Leaving by closing: the session's end takes it off and announces it.
    alice.close().await;
    let leave = watcher.recv_type("presence:room.blue").await;
    assert_eq!(leave["data"]["action"], "leave");
    assert_eq!(leave["data"]["client"], alice_id.as_str());
    let (_, list) = get(&server, "/api/v1/channels/room.blue/presence").await;
    assert_eq!(list["count"], 0, "{list}");
}
