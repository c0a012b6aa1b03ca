//! The hooks into the application's backend (`[hooks]`), against a real HTTP backend
//! started in each test: who connects, what they may subscribe to and publish (and in
//! what form), the answers to their requests; slow, failing and refusing backends, and the
//! circuit breaker opening and closing.

mod common;

use std::time::{Duration, SystemTime};

use common::backend::{Backend, Call, Reply};
use common::scrape::{scrape, value};
use common::{eventually, TestServer};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sigmahub::hooks::FailurePolicy;

const SECRET: &str = "hooks-backend-secret";
const JWT_SECRET: &str = "hooks-test-jwt-secret-0123456789ab";

fn ok(result: Value) -> Reply {
    Reply::Json(json!({ "result": result }))
}

fn no(message: &str) -> Reply {
    Reply::Json(json!({ "error": { "message": message } }))
}

/// The backend of an application with two sessions, `alice-session` and `bob-session`:
/// `private.{user}` channels are their owner's (answers hold a minute), `chat.*`
/// publishes are stamped, `chat.blocked` is refused, and requests are echoed.
fn application(call: &Call) -> Reply {
    let body = &call.body;
    let user = body["user"].as_str().unwrap_or_default();
    match call.path.as_str() {
        "/connect" => match body["token"].as_str() {
            Some("alice-session") => ok(json!({
                "user": "alice",
                "publish": ["chat.*"],
                "channels": ["user:alice"],
                "info": {"name": "Alice"},
            })),
            Some("bob-session") => ok(json!({"user": "bob", "publish": ["chat.*"]})),
            _ => no("unknown session"),
        },
        "/subscribe" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            if channel == format!("private.{user}") {
                ok(json!({"cache_seconds": 60}))
            } else {
                Reply::Json(json!({"error": {"message": "not yours", "cache_seconds": 60}}))
            }
        }
        "/publish" => match body["channel"].as_str() {
            Some("chat.blocked") => no("this room is closed"),
            _ => ok(json!({"data": {"text": body["data"]["text"], "checked_by": "backend"}})),
        },
        "/request" => {
            ok(json!({"data": {"echo": body["data"], "method": body["method"], "user": user}}))
        }
        other => panic!("unexpected call to {other}"),
    }
}

async fn server_for(backend: &Backend, adjust: impl FnOnce(&mut sigmahub::Config)) -> TestServer {
    let (connect, subscribe, publish, request) = (
        backend.url("/connect"),
        backend.url("/subscribe"),
        backend.url("/publish"),
        backend.url("/request"),
    );
    TestServer::with(move |c| {
        c.hooks.connect_url = Some(connect);
        c.hooks.subscribe_url = Some(subscribe);
        c.hooks.subscribe_channels = vec!["private.*".into()];
        c.hooks.publish_url = Some(publish);
        c.hooks.request_url = Some(request);
        c.hooks.secret = Some(SECRET.into());
        adjust(c);
    })
    .await
}

/// Connects with `?token=` and reads up to the welcome; returns the client and the
/// `auth_response`.
async fn connect(server: &TestServer, token: &str) -> (common::Client, Value) {
    let mut client = server.raw_client_at(&format!("/ws?token={token}")).await;
    let answer = client.recv_type("auth_response").await;
    (client, answer)
}

/// Alice, connected: her `auth_response`, welcome and the join of `user:alice` read.
async fn connect_alice(server: &TestServer) -> common::Client {
    let (mut alice, answer) = connect(server, "alice-session").await;
    assert_eq!(answer["data"]["subject"], "alice", "{answer}");
    alice.recv_type("notification").await;
    let joined = alice.recv_type("subscribe_response").await;
    assert_eq!(
        joined["data"]["subscribed"],
        json!(["user:alice"]),
        "{joined}"
    );
    alice
}

#[tokio::test]
async fn the_connect_hook_names_the_user_and_the_channels_it_joins() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |_| {}).await;

    let (mut alice, answer) = connect(&server, "alice-session").await;
    assert_eq!(answer["data"]["success"], true, "{answer}");
    assert_eq!(answer["data"]["subject"], "alice");
    assert_eq!(answer["data"]["method"], "application");
    assert_eq!(answer["data"]["publish"], json!(["chat.*"]));
    let welcome = alice.recv_type("notification").await;
    assert_eq!(
        welcome["data"]["message"],
        "Welcome to SigmaVault WebSocket"
    );
    // The channel the application named is joined server-side, after the welcome.
    let joined = alice.recv_type("subscribe_response").await;
    assert!(
        joined["data"]["subscriptions"]
            .as_array()
            .unwrap()
            .contains(&json!("user:alice")),
        "{joined}"
    );
    server
        .publish(&json!({"type": "user:alice", "data": {"n": 1}}))
        .await;
    let event = alice.recv_type("user:alice").await;
    assert_eq!(event["data"], json!({"n": 1}));

    // What the backend was asked: sigmahub's secret, the client, its address and token.
    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(call.body["token"], "alice-session");
    assert_eq!(call.body["address"], "127.0.0.1");
    assert_eq!(call.body["dialect"], "sigmavault");
    assert!(call.body["client"].is_u64(), "{}", call.body);

    // An unknown session is refused with the application's reason, and closed 4003.
    let (mut stranger, answer) = connect(&server, "forged").await;
    assert_eq!(answer["data"]["success"], false, "{answer}");
    assert_eq!(answer["data"]["error"]["code"], "invalid_token");
    assert_eq!(
        answer["data"]["error"]["message"],
        "refused by the application: unknown session"
    );
    assert_eq!(stranger.closed().await, Some(4003));

    // Without a token there is nothing to ask about: an `auth` message is awaited, and
    // its token goes to the backend.
    let mut late = server.raw_client().await;
    late.send(&json!({"type": "auth", "data": {"token": "bob-session"}, "correlation_id": "a1"}))
        .await;
    let answer = late.recv_type("auth_response").await;
    assert_eq!(answer["correlation_id"], "a1");
    assert_eq!(answer["data"]["subject"], "bob", "{answer}");
    late.recv_type("notification").await;
    assert_eq!(backend.calls("/connect").len(), 3);
    // The control API knows the application's users.
    let told = server
        .control
        .disconnect(
            &sigmahub::Target::User("bob".into()),
            &sigmahub::Farewell::default(),
        )
        .await;
    assert_eq!(told.connections, 1);
}

/// The backend of an application that knows its users by a session cookie.
fn cookie_application(call: &Call) -> Reply {
    let cookie = call.body["headers"]["cookie"].as_str().unwrap_or_default();
    if cookie.split("; ").any(|c| c == "session=alice-session") {
        ok(json!({"user": "alice", "subscribe": ["news"]}))
    } else if call.body["token"] == "bob-session" {
        ok(json!({"user": "bob"}))
    } else {
        no("log in first")
    }
}

/// A server whose connect hook is shown the `cookie` and `x-tenant` headers.
async fn cookie_server(backend: &Backend) -> TestServer {
    let connect = backend.url("/connect");
    TestServer::with(move |c| {
        c.hooks.connect_url = Some(connect);
        c.hooks.connect_headers = vec!["Cookie".into(), "x-tenant".into()];
    })
    .await
}

/// With `hooks.connect_headers`, a client that brings no token is asked about at once,
/// with the headers named (and only those): a frontend that knows its user by a session
/// cookie connects unchanged. A refusal is final, as for a token; a client that sends
/// none of the headers waits for an `auth` message as before, whose call carries none.
#[tokio::test]
async fn the_connect_hook_is_shown_the_headers_it_names() {
    let backend = Backend::start(cookie_application).await;
    let server = cookie_server(&backend).await;
    let headers = [
        ("cookie", "theme=dark; session=alice-session"),
        ("x-tenant", "acme"),
        ("user-agent", "not-forwarded/1.0"),
    ];
    let mut alice = server.connect_with("", &headers).await.unwrap();
    let answer = alice.recv_type("auth_response").await;
    assert_eq!(answer["data"]["subject"], "alice", "{answer}");
    alice.recv_type("notification").await;
    let call = backend.calls("/connect").pop().unwrap();
    assert_eq!(call.body["token"], Value::Null, "{}", call.body);
    assert_eq!(
        call.body["headers"],
        json!({"cookie": "theme=dark; session=alice-session", "x-tenant": "acme"})
    );
    let reply = alice.subscribe(&["news", "orders"]).await;
    assert_eq!(reply["data"]["subscribed"], json!(["news"]), "{reply}");

    // A cookie the application does not know: refused, closed 4003.
    let mut stranger = server
        .connect_with("", &[("cookie", "session=forged")])
        .await
        .unwrap();
    let answer = stranger.recv_type("auth_response").await;
    assert_eq!(answer["data"]["success"], false, "{answer}");
    assert_eq!(
        answer["data"]["error"]["message"],
        "refused by the application: log in first"
    );
    assert_eq!(stranger.closed().await, Some(4003));

    // None of the headers: nothing to ask about until an `auth` message.
    let asked = backend.calls("/connect").len();
    let mut late = server.raw_client().await;
    late.send(&json!({"type": "auth", "data": {"token": "bob-session"}}))
        .await;
    let answer = late.recv_type("auth_response").await;
    assert_eq!(answer["data"]["subject"], "bob", "{answer}");
    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), asked + 1);
    assert!(
        calls[asked].body.get("headers").is_none(),
        "{}",
        calls[asked].body
    );

    // The snapshot route takes the cookie too.
    let (status, _, _) = server
        .request_raw(
            "GET",
            "/api/v1/snapshot",
            Vec::new(),
            &[("cookie", "session=alice-session")],
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = server
        .request_raw(
            "GET",
            "/api/v1/snapshot",
            Vec::new(),
            &[("cookie", "session=forged")],
        )
        .await;
    assert_eq!(status, 401);
}

/// The same in a real browser: Chromium, holding the session cookie for the server's host,
/// sends it with the upgrade by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_session_cookie_identifies_it() {
    common::browser::setup();
    let backend = Backend::start(cookie_application).await;
    let server = cookie_server(&backend).await;
    let base = format!("http://{}/", server.addr);
    let args = |value: &str| vec![base.clone(), "session".to_owned(), value.to_owned()];
    let (ok, output) = common::browser::run("cookie_client.mjs", args("alice-session")).await;
    assert!(ok, "the browser failed:\n{output}");
    let seen: Value = serde_json::from_str(output.lines().last().unwrap()).unwrap();
    assert_eq!(seen[0]["type"], "auth_response", "{seen}");
    assert_eq!(seen[0]["data"]["subject"], "alice", "{seen}");
    assert_eq!(seen[1]["type"], "notification", "{seen}");
    let call = backend.calls("/connect").pop().unwrap();
    assert_eq!(call.body["headers"]["cookie"], "session=alice-session");

    let (ok, output) = common::browser::run("cookie_client.mjs", args("forged")).await;
    assert!(ok, "the browser failed:\n{output}");
    let seen: Value = serde_json::from_str(output.lines().last().unwrap()).unwrap();
    assert_eq!(seen[0]["data"]["success"], false, "{seen}");
    assert_eq!(seen[1]["closed"], 4003, "{seen}");
}

#[tokio::test]
async fn a_token_sigmahub_verifies_itself_is_not_sent_to_the_backend() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |c| c.auth.jwt_secret = Some(JWT_SECRET.into())).await;
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let jwt = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "carol", "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (_carol, answer) = connect(&server, &jwt).await;
    assert_eq!(answer["data"]["subject"], "carol", "{answer}");
    assert_eq!(answer["data"]["method"], "jwt");
    // An opaque session token is not a JWT: the backend decides.
    let (_alice, answer) = connect(&server, "alice-session").await;
    assert_eq!(answer["data"]["subject"], "alice", "{answer}");
    assert_eq!(backend.calls("/connect").len(), 1);
}

#[tokio::test]
async fn the_subscribe_hook_decides_private_channels_and_its_answers_are_cached() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |_| {}).await;
    let mut alice = connect_alice(&server).await;

    let reply = alice
        .subscribe(&["private.alice", "private.bob", "news"])
        .await;
    let data = &reply["data"];
    let subscribed = data["subscriptions"].as_array().unwrap();
    assert!(subscribed.contains(&json!("private.alice")), "{reply}");
    assert!(subscribed.contains(&json!("news")), "{reply}");
    assert!(!subscribed.contains(&json!("private.bob")), "{reply}");
    let rejected = data["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{reply}");
    assert_eq!(rejected[0]["channel"], "private.bob");
    assert_eq!(rejected[0]["code"], "forbidden");
    assert_eq!(rejected[0]["reason"], "not yours");
    // `news` is outside `subscribe_channels`: never asked about.
    let asked: Vec<Value> = backend
        .calls("/subscribe")
        .iter()
        .map(|c| c.body["channel"].clone())
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(!asked.contains(&json!("news")));

    server
        .publish(&json!({"type": "private.alice", "data": {"secret": 1}}))
        .await;
    assert_eq!(
        alice.recv_type("private.alice").await["data"],
        json!({"secret": 1})
    );

    // Alice's second tab: both answers come from the cache (they hold a minute).
    let mut tab = connect_alice(&server).await;
    let reply = tab.subscribe(&["private.alice", "private.bob"]).await;
    assert_eq!(
        reply["data"]["rejected"][0]["reason"], "not yours",
        "{reply}"
    );
    assert_eq!(backend.calls("/subscribe").len(), 2);
    // Another user is asked about on their own.
    let (mut bob, _) = connect(&server, "bob-session").await;
    bob.recv_type("notification").await;
    let reply = bob.subscribe(&["private.bob"]).await;
    assert!(
        reply["data"]["rejected"].as_array().unwrap().is_empty(),
        "{reply}"
    );
    assert_eq!(backend.calls("/subscribe").len(), 3);

    // The snapshot route asks the same: no way around the hook.
    let (status, body) = server
        .request_with(
            "GET",
            "/api/v1/snapshot/private.bob",
            Vec::new(),
            &[("authorization", "Bearer alice-session")],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["message"], "not yours");
}

#[tokio::test]
async fn the_publish_hook_rewrites_events_and_refuses_them_all_or_none() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |_| {}).await;
    let mut alice = connect_alice(&server).await;
    alice.subscribe(&["chat.lobby"]).await;

    alice
        .send(&json!({"type": "publish", "correlation_id": "p1",
            "data": {"type": "chat.lobby", "data": {"text": "hi", "admin": true}}}))
        .await;
    // Its own subscription gets the event first, as every subscriber does, as rewritten.
    let event = alice.recv_type("chat.lobby").await;
    assert_eq!(
        event["data"],
        json!({"text": "hi", "checked_by": "backend"})
    );
    let reply = alice.recv_type("publish_response").await;
    assert_eq!(reply["correlation_id"], "p1");
    assert_eq!(reply["data"]["accepted"], 1, "{reply}");
    let call = &backend.calls("/publish")[0];
    assert_eq!(call.body["user"], "alice");
    assert_eq!(call.body["channel"], "chat.lobby");
    assert_eq!(call.body["data"], json!({"text": "hi", "admin": true}));

    // One refused event publishes none of the batch.
    alice
        .send(&json!({"type": "publish", "correlation_id": "p2", "data": [
            {"type": "chat.lobby", "data": {"text": "first"}},
            {"type": "chat.blocked", "data": {"text": "second"}},
        ]}))
        .await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["correlation_id"], "p2");
    assert_eq!(error["data"]["code"], "forbidden");
    assert_eq!(
        error["data"]["message"],
        "event 1: this room is closed; nothing was published"
    );
    // Its grant is checked first: `news` is not `chat.*`, and the backend is not asked.
    let before = backend.calls("/publish").len();
    alice
        .send(&json!({"type": "publish", "data": {"type": "news", "data": {}}}))
        .await;
    assert_eq!(alice.recv_type("error").await["data"]["code"], "forbidden");
    assert_eq!(backend.calls("/publish").len(), before);
    // Nothing of the refused batch arrived: the next event is the next one published.
    server
        .publish(&json!({"type": "chat.lobby", "data": {"text": "from the api"}}))
        .await;
    assert_eq!(
        alice.recv_type("chat.lobby").await["data"]["text"],
        "from the api"
    );
}

#[tokio::test]
async fn skreaver_requests_are_answered_by_the_backend() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |_| {}).await;
    let mut agent = server
        .raw_client_at("/skreaver/ws?token=alice-session")
        .await;
    agent.recv_type("auth_response").await;
    agent
        .send(&json!({"type": "request", "data": {"q": "status"}, "correlation_id": "r-7"}))
        .await;
    let response = agent.recv_type("response").await;
    assert_eq!(response["correlation_id"], "r-7", "{response}");
    assert_eq!(
        response["data"],
        json!({"echo": {"q": "status"}, "method": null, "user": "alice"})
    );
    // A refusal comes back as an error with the same correlation id.
    backend.set(|call| match call.path.as_str() {
        "/request" => no("not now"),
        _ => application(call),
    });
    agent
        .send(&json!({"type": "request", "data": {}, "correlation_id": "r-8"}))
        .await;
    let error = agent.recv_type("error").await;
    assert_eq!(error["correlation_id"], "r-8");
    assert_eq!(error["data"]["code"], "forbidden");
    assert_eq!(error["data"]["message"], "not now");
}

#[tokio::test]
async fn a_slow_backend_times_out_and_the_failure_policy_decides() {
    let slow = |call: &Call| Reply::After(Duration::from_secs(5), Box::new(application(call)));
    for policy in [FailurePolicy::Refuse, FailurePolicy::Allow] {
        let backend = Backend::start(application).await;
        let server = server_for(&backend, |c| {
            c.hooks.timeout = Duration::from_millis(200);
            c.hooks.on_failure = policy;
        })
        .await;
        let mut alice = connect_alice(&server).await;
        backend.set(slow);
        let reply = alice.subscribe(&["private.alice"]).await;
        let rejected = reply["data"]["rejected"].as_array().unwrap();
        match policy {
            FailurePolicy::Refuse => {
                assert_eq!(rejected.len(), 1, "{reply}");
                assert_eq!(rejected[0]["code"], "unavailable");
                // A connect is closed with 1013: try again later.
                let (mut bob, answer) = connect(&server, "bob-session").await;
                assert_eq!(answer["data"]["error"]["code"], "unavailable", "{answer}");
                assert_eq!(bob.closed().await, Some(1013));
            }
            FailurePolicy::Allow => {
                assert!(rejected.is_empty(), "{reply}");
                // A connect goes on as the anonymous client.
                let (mut bob, answer) = connect(&server, "bob-session").await;
                assert_eq!(answer["data"]["method"], "anonymous", "{answer}");
                bob.recv_type("notification").await;
            }
        }
    }
}

#[tokio::test]
async fn a_failing_backend_opens_the_breaker_and_a_recovered_one_closes_it() {
    let backend = Backend::start(application).await;
    let server = server_for(&backend, |c| {
        c.hooks.breaker_threshold = 3;
        c.hooks.breaker_reset = Duration::from_secs(1);
    })
    .await;
    let mut alice = connect_alice(&server).await;
    backend.set(|call| match call.path.as_str() {
        "/subscribe" => Reply::Status(500),
        _ => application(call),
    });
    for _ in 0..5 {
        let reply = alice.subscribe(&["private.alice"]).await;
        assert_eq!(
            reply["data"]["rejected"][0]["code"], "unavailable",
            "{reply}"
        );
    }
    // Three failures opened it; the next two were refused without a call.
    assert_eq!(backend.calls("/subscribe").len(), 3);
    let metrics = scrape(&server).await;
    let breaker = Some(("hook", "subscribe"));
    assert_eq!(value(&metrics, "sigmahub_hook_breaker_state", breaker), 2.0);
    assert_eq!(answers(&metrics, "subscribe", "unavailable"), 5.0);
    assert_eq!(answers(&metrics, "connect", "allowed"), 1.0);

    backend.set(application);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = alice.subscribe(&["private.alice"]).await;
    assert!(
        reply["data"]["rejected"].as_array().unwrap().is_empty(),
        "{reply}"
    );
    assert_eq!(backend.calls("/subscribe").len(), 4);
    // Closed again: the backend is asked (its answer is then cached a minute).
    let reply = alice.subscribe(&["private.bob"]).await;
    assert_eq!(
        reply["data"]["rejected"][0]["reason"], "not yours",
        "{reply}"
    );
    eventually("five calls", || backend.calls("/subscribe").len() == 5).await;
    let metrics = scrape(&server).await;
    assert_eq!(value(&metrics, "sigmahub_hook_breaker_state", breaker), 0.0);
    assert_eq!(answers(&metrics, "subscribe", "allowed"), 1.0);
    assert_eq!(answers(&metrics, "subscribe", "refused"), 1.0);
}

/// `sigmahub_hook_answers_total` for one hook and answer.
fn answers(metrics: &[prometheus_parse::Sample], hook: &str, answer: &str) -> f64 {
    let sample = metrics
        .iter()
        .find(|s| {
            s.metric == "sigmahub_hook_answers_total"
                && s.labels.get("hook") == Some(hook)
                && s.labels.get("answer") == Some(answer)
        })
        .unwrap_or_else(|| panic!("no answers of {hook} {answer}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn answers_that_are_not_the_protocol_count_as_failures() {
    let backend = Backend::start(|call| match call.path.as_str() {
        "/connect" => Reply::Json(json!({"result": {"user": "x", "admin": true}})),
        "/subscribe" => Reply::Json(json!({"result": {}, "error": {"message": "both"}})),
        _ => Reply::Json(json!("not an object")),
    })
    .await;
    let server = server_for(&backend, |_| {}).await;
    let (mut client, answer) = connect(&server, "whatever").await;
    assert_eq!(answer["data"]["error"]["code"], "unavailable", "{answer}");
    let message = answer["data"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown field `admin`"), "{message}");
    assert_eq!(client.closed().await, Some(1013));
}

/// [`application`], which also takes every webhook batch.
fn application_taking_events(call: &Call) -> Reply {
    match call.path.as_str() {
        "/events" => Reply::Json(json!({})),
        _ => application(call),
    }
}

/// Every notice the backend was sent, refused tries included, in order.
fn notices(backend: &Backend) -> Vec<Value> {
    backend
        .calls("/events")
        .into_iter()
        .flat_map(|c| c.body["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn webhooks_report_connects_disconnects_and_occupancy_in_batches_retried_until_taken() {
    // The events endpoint refuses the first two POSTs: their notices must come again.
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    let backend = Backend::start(move |call| match call.path.as_str() {
        "/events" if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 => {
            Reply::Status(503)
        }
        "/events" => Reply::Json(json!({})),
        _ => application(call),
    })
    .await;
    let events = backend.url("/events");
    let server = server_for(&backend, |c| {
        c.default_subscriptions = vec!["lobby".into()];
        c.hooks.webhook_url = Some(events);
        c.hooks.webhook_interval = Duration::from_millis(50);
    })
    .await;
    let mut alice = connect_alice(&server).await;
    alice.subscribe(&["room.x"]).await;
    alice.close().await;
    eventually("the notices of alice's visit", || {
        notices(&backend)
            .iter()
            .any(|n| n["event"] == "channel_vacated" && n["channel"] == "room.x")
            && tries.load(std::sync::atomic::Ordering::SeqCst) > 2
    })
    .await;
    // The refused tries' notices are the first ones taken: nothing lost, nothing twice.
    let taken: Vec<Value> = backend.calls("/events")[2..]
        .iter()
        .flat_map(|c| c.body["events"].as_array().cloned().unwrap())
        .collect();
    let summary: Vec<String> = taken
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["event"].as_str().unwrap(),
                n["channel"].as_str().or(n["user"].as_str()).unwrap()
            )
        })
        .collect();
    let at = |s: &str| {
        summary
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("no {s:?} in {summary:?}"))
    };
    assert!(
        at("channel_occupied lobby") < at("channel_occupied room.x"),
        "{summary:?}"
    );
    assert!(
        at("connect alice") < at("channel_occupied room.x"),
        "{summary:?}"
    );
    assert!(
        at("channel_occupied room.x") < at("disconnect alice"),
        "{summary:?}"
    );
    assert!(at("channel_vacated room.x") < summary.len(), "{summary:?}");
    assert_eq!(
        summary.len(),
        summary
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        "each notice once: {summary:?}"
    );
    let connect = &taken[at("connect alice")];
    assert_eq!(connect["dialect"], "sigmavault");
    assert_eq!(connect["address"], "127.0.0.1");
    assert!(
        connect["client"].is_u64() && connect["time_ms"].is_u64(),
        "{connect}"
    );
    let left = &taken[at("disconnect alice")];
    assert_eq!(left["reason"], "client_closed", "{left}");
    assert_eq!(left["code"], 1000);
    // Batched: the retried batch held several notices.
    assert!(
        backend.calls("/events")[0].body["events"]
            .as_array()
            .unwrap()
            .len()
            > 1
    );
    // Sent with the hooks' secret.
    assert_eq!(
        backend.calls("/events")[0].authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let metrics = scrape(&server).await;
    assert_eq!(
        value(&metrics, "sigmahub_webhook_failed_tries_total", None),
        2.0
    );
    assert_eq!(
        value(
            &metrics,
            "sigmahub_webhook_notices_total",
            Some(("outcome", "delivered"))
        ),
        taken.len() as f64
    );
}

#[tokio::test]
async fn a_webhook_batch_the_backend_never_takes_is_dropped_and_counted() {
    let backend = Backend::start(|call| match call.path.as_str() {
        "/events" => Reply::Status(500),
        _ => application(call),
    })
    .await;
    let events = backend.url("/events");
    let server = server_for(&backend, |c| {
        c.default_subscriptions.clear();
        c.hooks.webhook_url = Some(events);
        c.hooks.webhook_interval = Duration::from_millis(10);
        c.hooks.webhook_retry_for = Duration::from_millis(600);
        c.hooks.webhook_events = vec![sigmahub::hooks::webhook::Notice::Connect];
    })
    .await;
    let (_bob, _) = connect(&server, "bob-session").await;
    eventually_dropped(&server).await;
    // 0.25 s, then 0.5 s would pass 0.6 s: two tries.
    assert_eq!(backend.calls("/events").len(), 2);
    let only = &backend.calls("/events")[0].body["events"];
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only[0]["event"], "connect");
}

async fn eventually_dropped(server: &TestServer) {
    for _ in 0..200 {
        let metrics = scrape(server).await;
        if value(
            &metrics,
            "sigmahub_webhook_notices_total",
            Some(("outcome", "dropped")),
        ) == 1.0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the notice was never dropped");
}

/// Every call sigmahub makes to the backend, and every answer the test's backend gives,
/// is as docs/openapi.json's `webhooks` say (checked by openapi-schema-validator).
#[tokio::test]
async fn the_calls_and_answers_are_as_the_openapi_document_says() {
    let backend = Backend::start(application_taking_events).await;
    let events = backend.url("/events");
    let server = server_for(&backend, |c| {
        c.hooks.webhook_url = Some(events);
        c.hooks.webhook_interval = Duration::from_millis(10);
        c.hooks.connect_headers = vec!["cookie".into()];
    })
    .await;
    let mut alice = connect_alice(&server).await;
    alice.subscribe(&["private.alice", "private.bob"]).await;
    // A connect call with headers.
    let mut by_cookie = server
        .connect_with("", &[("cookie", "session=unknown")])
        .await
        .unwrap();
    by_cookie.closed().await;
    alice
        .send(&json!({"type": "publish", "data": {"type": "chat.blocked", "data": {"text": "x"}}}))
        .await;
    alice.recv_type("error").await;
    alice
        .send(&json!({"type": "publish", "data": {"type": "chat.lobby", "data": {"text": "y"}}}))
        .await;
    alice.recv_type("publish_response").await;
    let (mut stranger, _) = connect(&server, "forged").await;
    stranger.closed().await;
    let mut agent = server.raw_client_at("/skreaver/ws?token=bob-session").await;
    agent.recv_type("auth_response").await;
    agent
        .send(&json!({"type": "request", "data": {"q": 1}, "correlation_id": "r"}))
        .await;
    agent.recv_type("response").await;
    alice.close().await;
    eventually("alice's disconnect notice", || {
        notices(&backend).iter().any(|n| n["event"] == "disconnect")
    })
    .await;

    let mut lines = Vec::new();
    for (path, webhook) in [
        ("/connect", "connect"),
        ("/subscribe", "subscribe"),
        ("/publish", "publish"),
        ("/request", "request"),
        ("/events", "events"),
    ] {
        let calls = backend.calls(path);
        assert!(!calls.is_empty(), "no call to {path}");
        for call in calls {
            lines.push(json!({"webhook": webhook, "body": call.body}));
            if path == "/events" {
                continue;
            }
            if let Reply::Json(answer) = application(&call) {
                lines.push(json!({"webhook": webhook, "answer": answer}));
            }
        }
    }
    let report = common::openapi::check(&lines).await;
    assert!(
        report.contains(&format!("checked {} answers", lines.len())),
        "{report}"
    );
}

/// At shutdown, the clients' disconnects (1001) still reach the backend: the sender
/// finishes once they are in.
#[tokio::test]
async fn a_stopping_server_sends_its_clients_disconnects_before_it_returns() {
    let backend = Backend::start(application_taking_events).await;
    let events = backend.url("/events");
    let server = server_for(&backend, |c| {
        c.hooks.webhook_url = Some(events);
        c.hooks.webhook_events = vec![sigmahub::hooks::webhook::Notice::Disconnect];
        // Long enough that only the finish can have sent it.
        c.hooks.webhook_interval = Duration::from_secs(600);
    })
    .await;
    let _alice = connect_alice(&server).await;
    server.shutdown().await;
    let notices = notices(&backend);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["event"], "disconnect");
    assert_eq!(notices[0]["user"], "alice");
    assert_eq!(notices[0]["code"], 1001, "{}", notices[0]);
}
