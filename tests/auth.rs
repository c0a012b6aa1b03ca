//! Authentication and permissions against a real server: JWTs (HS256 and RS256) by query,
//! header and message; refusals with their close codes; expiry while connected; channel
//! grants for subscribe and socket publish; publish keys; the origin allowlist; the idle
//! timeout; and the counters every refusal leaves in the stats.

mod common;

use std::time::{Duration, SystemTime};

use common::{Client, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "integration-test-secret-32-bytes!";
const KEY_OLD: &str = "publish-key-old-0123456789";
const KEY_NEW: &str = "publish-key-new-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn alice() -> String {
    hs256(json!({
        "sub": "alice", "exp": now() + 3600,
        "subscribe": ["notification", "orders.*"], "publish": ["orders.alice"],
    }))
}

async fn secured() -> TestServer {
    TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.publish_keys = vec![KEY_OLD.into(), KEY_NEW.into()];
        c.auth.leeway = Duration::ZERO;
    })
    .await
}

/// `GET /api/v1/stats` with a publish key (needed once keys are configured).
async fn stats(server: &TestServer) -> Value {
    let bearer = format!("Bearer {KEY_NEW}");
    let (status, body) = server
        .request_with(
            "GET",
            "/api/v1/stats",
            Vec::new(),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Reads `auth_response` then the welcome; returns the welcome's subscriptions.
async fn accepted(client: &mut Client) -> Value {
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth_response", "{reply}");
    assert_eq!(reply["data"]["success"], true, "{reply}");
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "notification", "{welcome}");
    welcome["data"]["subscriptions"].clone()
}

/// Reads the refusal and the close code that follows it.
async fn refused(client: &mut Client) -> (String, Option<u16>) {
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth_response", "{reply}");
    assert_eq!(reply["data"]["success"], false, "{reply}");
    let code = reply["data"]["error"]["code"].as_str().unwrap().to_owned();
    (code, client.closed().await)
}

#[tokio::test]
async fn a_token_in_the_query_the_header_or_a_message_authenticates() {
    let server = secured().await;
    let token = alice();
    let defaults = json!(["notification"]);

    let mut by_query = server
        .connect_with(&format!("?token={token}"), &[])
        .await
        .unwrap();
    assert_eq!(accepted(&mut by_query).await, defaults);

    let bearer = format!("Bearer {token}");
    let mut by_header = server
        .connect_with("", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(accepted(&mut by_header).await, defaults);

    let mut by_message = server.raw_client().await;
    by_message
        .send(&json!({"type": "subscribe", "data": {"channels": ["orders.eu"]}}))
        .await;
    assert_eq!(by_message.recv().await["data"]["code"], "auth_required");
    by_message
        .send(&json!({"type": "auth", "data": {"token": token}, "correlation_id": "a1"}))
        .await;
    let reply = by_message.recv().await;
    assert_eq!(reply["correlation_id"], "a1");
    assert_eq!(reply["data"]["subject"], "alice");
    assert_eq!(reply["data"]["publish"], json!(["orders.alice"]));
    assert_eq!(by_message.recv().await["data"]["subscriptions"], defaults);

    server
        .publish_with_key(KEY_NEW, &json!({"type": "notification", "data": {"n": 1}}))
        .await;
    for client in [&mut by_query, &mut by_header, &mut by_message] {
        assert_eq!(client.recv_type("notification").await["data"]["n"], 1);
    }
}

#[tokio::test]
async fn rs256_tokens_are_checked_against_the_public_key() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server = TestServer::with(|c| {
        c.auth.jwt_public_key_file = Some(fixtures.join("test-rsa-public.pem"));
        c.auth.issuer = Some("issuer.example".into());
    })
    .await;
    let private = std::fs::read(fixtures.join("test-rsa-private.pem")).unwrap();
    let claims =
        json!({"sub": "svc", "exp": now() + 60, "iss": "issuer.example", "subscribe": ["*"]});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let mut client = server
        .connect_with(&format!("?token={token}"), &[])
        .await
        .unwrap();
    assert_eq!(accepted(&mut client).await.as_array().unwrap().len(), 8);

    // An HS256 token is refused outright: no HMAC key is configured here, and the public
    // key is never used as one.
    let mut confused = server
        .connect_with(&format!("?token={}", hs256(claims)), &[])
        .await
        .unwrap();
    assert_eq!(
        refused(&mut confused).await,
        ("invalid_token".into(), Some(4003))
    );
}

// Paused time: the deadlines and the backoff run on the runtime clock.
#[tokio::test(start_paused = true)]
async fn bad_credentials_get_their_documented_close_codes() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.timeout = Duration::from_millis(300);
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    let mut bystander = server
        .connect_with(&format!("?token={}", alice()), &[])
        .await
        .unwrap();
    accepted(&mut bystander).await;

    let expired = hs256(json!({"sub": "a", "exp": now() - 60}));
    let mut client = server
        .connect_with(&format!("?token={expired}"), &[])
        .await
        .unwrap();
    assert_eq!(
        refused(&mut client).await,
        ("token_expired".into(), Some(4004))
    );

    let forged = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "admin", "exp": now() + 60, "subscribe": ["*"]}),
        &EncodingKey::from_secret(b"not-the-server-secret-not-at-all!"),
    )
    .unwrap();
    let mut client = server
        .connect_with(&format!("?token={forged}"), &[])
        .await
        .unwrap();
    assert_eq!(
        refused(&mut client).await,
        ("invalid_token".into(), Some(4003))
    );

    let mut client = server.raw_client().await;
    client
        .send(&json!({"type": "auth", "data": {"token": "x.y.z"}}))
        .await;
    assert_eq!(
        refused(&mut client).await,
        ("invalid_token".into(), Some(4003))
    );

    // Silence after connecting without a token: closed when `auth.timeout` passes.
    let mut silent = server.raw_client().await;
    assert_eq!(silent.closed().await, Some(4002));

    // A token that runs out while connected ends the connection.
    let short = hs256(json!({"sub": "a", "exp": now() + 4}));
    let mut client = server
        .connect_with(&format!("?token={short}"), &[])
        .await
        .unwrap();
    accepted(&mut client).await;
    assert_eq!(client.closed().await, Some(4004));

    // A refresh before expiry keeps it open.
    let short = hs256(json!({"sub": "a", "exp": now() + 5}));
    let mut client = server
        .connect_with(&format!("?token={short}"), &[])
        .await
        .unwrap();
    accepted(&mut client).await;
    let fresh = hs256(json!({"sub": "a", "exp": now() + 3600}));
    client
        .send(&json!({"type": "auth", "data": {"token": fresh}}))
        .await;
    assert_eq!(
        client.recv_type("auth_response").await["data"]["success"],
        true
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    client.send(&json!({"type": "ping"})).await;
    assert_eq!(client.recv_type("pong").await["type"], "pong");

    // The bystander saw none of it.
    bystander.send(&json!({"type": "ping"})).await;
    assert_eq!(bystander.recv_type("pong").await["type"], "pong");
    let stats = stats(&server).await;
    assert_eq!(stats["closes"]["4002"], 1, "{stats}");
    assert_eq!(stats["closes"]["4003"], 2, "{stats}");
    assert_eq!(stats["closes"]["4004"], 2, "{stats}");
}

/// What the audit broke: `iss`/`aud` configured but missing from a token; an `exp` in
/// milliseconds or past 2^63 (the task used to panic: no `auth_response`, no close code);
/// a token inside the leeway welcomed and then closed at once.
// Paused time: the deadlines and the backoff run on the runtime clock.
#[tokio::test(start_paused = true)]
async fn required_claims_huge_expiries_and_the_leeway() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.issuer = Some("sigmahub-tests".into());
        c.auth.audience = Some("sigmahub".into());
        c.auth.leeway = Duration::from_secs(30);
        // Ten refusals in a row from one address: no backoff here.
        c.auth.backoff_after = 0;
    })
    .await;
    let claims =
        |exp: Value| json!({"sub": "a", "exp": exp, "iss": "sigmahub-tests", "aud": "sigmahub"});
    let mut bystander = server
        .connect_with(
            &format!("?token={}", hs256(claims(json!(now() + 3600)))),
            &[],
        )
        .await
        .unwrap();
    accepted(&mut bystander).await;

    let mut without = Vec::new();
    for claim in ["iss", "aud"] {
        let mut c = claims(json!(now() + 3600));
        c.as_object_mut().unwrap().remove(claim);
        without.push((claim.to_owned(), c));
    }
    without.push((
        "exp in milliseconds".to_owned(),
        claims(json!(now() * 1000)),
    ));
    without.push(("exp 2^63".to_owned(), claims(json!(1u64 << 63))));
    without.push(("exp u64::MAX".to_owned(), claims(json!(u64::MAX))));
    for (what, c) in without {
        for by_message in [false, true] {
            let token = hs256(c.clone());
            let mut client = if by_message {
                let mut client = server.raw_client().await;
                client
                    .send(&json!({"type": "auth", "data": {"token": token}}))
                    .await;
                client
            } else {
                server
                    .connect_with(&format!("?token={token}"), &[])
                    .await
                    .unwrap()
            };
            assert_eq!(
                refused(&mut client).await,
                ("invalid_token".into(), Some(4003)),
                "{what}"
            );
        }
    }

    // Expired 10 s ago, inside the 30 s leeway: welcomed, and open until exp + 30 s.
    let exp = now() - 10;
    let mut late = server
        .connect_with(&format!("?token={}", hs256(claims(json!(exp)))), &[])
        .await
        .unwrap();
    let reply = late.recv().await;
    assert_eq!(reply["data"]["success"], true, "{reply}");
    let expected = sigmahub::event::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(exp + 30));
    assert_eq!(reply["data"]["expires_at"], expected.as_str());
    late.recv_type("notification").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    late.send(&json!({"type": "ping"})).await;
    late.recv_type("pong").await;

    bystander.send(&json!({"type": "ping"})).await;
    bystander.recv_type("pong").await;
    let stats = stats_without_key(&server).await;
    assert_eq!(stats["closes"]["4003"], 10, "{stats}");
    assert_eq!(stats["closes"]["4004"], 0, "{stats}");
}

/// `GET /api/v1/stats` on a server without publish keys.
async fn stats_without_key(server: &TestServer) -> Value {
    let (status, body) = server.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn grants_decide_subscriptions_and_socket_publishing() {
    let server = secured().await;
    let mut alice = server
        .connect_with(&format!("?token={}", alice()), &[])
        .await
        .unwrap();
    accepted(&mut alice).await;
    let bob = hs256(json!({"sub": "bob", "exp": now() + 3600, "subscribe": ["orders.*"]}));
    let mut bob = server
        .connect_with(&format!("?token={bob}"), &[])
        .await
        .unwrap();
    accepted(&mut bob).await;
    bob.subscribe(&["orders.alice"]).await;

    alice
        .send(&json!({"type": "subscribe", "data": {"channels": ["orders.eu", "billing", "system.status"]}}))
        .await;
    let reply = alice.recv_type("subscribe_response").await;
    assert_eq!(reply["data"]["subscribed"], json!(["orders.eu"]));
    let denied: Vec<_> = reply["data"]["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap().to_owned(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        denied,
        [
            ("billing".into(), "forbidden".into()),
            ("system.status".into(), "forbidden".into())
        ]
    );

    // Alice may publish on orders.alice only; bob on nothing.
    alice
        .send(&json!({"type": "publish", "data": {"type": "orders.bob", "data": {}}}))
        .await;
    assert_eq!(alice.recv_type("error").await["data"]["code"], "forbidden");
    alice
        .send(&json!({"type": "publish", "data": {"type": "orders.alice", "data": {"qty": 3}}, "correlation_id": 5}))
        .await;
    let done = alice.recv_type("publish_response").await;
    assert_eq!(done["correlation_id"], 5);
    assert_eq!(done["data"]["delivered"], 1);
    assert_eq!(bob.recv_type("orders.alice").await["data"]["qty"], 3);
    bob.send(&json!({"type": "publish", "data": {"type": "orders.alice"}}))
        .await;
    assert_eq!(bob.recv_type("error").await["data"]["code"], "forbidden");

    let stats = stats(&server).await;
    assert_eq!(stats["limits"]["forbidden_subscribe"], 2, "{stats}");
    assert_eq!(stats["limits"]["forbidden_publish"], 2, "{stats}");
}

#[tokio::test]
async fn publishing_over_http_needs_one_of_the_keys() {
    let server = secured().await;
    let mut client = server
        .connect_with("", &[("authorization", &format!("Bearer {KEY_OLD}"))])
        .await
        .unwrap();
    let reply = client.recv().await;
    assert_eq!(
        reply["data"]["method"], "api_key",
        "a key is a service token: {reply}"
    );
    client.recv_type("notification").await;

    let event = json!({"type": "notification", "data": {"k": 1}});
    let (status, body) = server.publish(&event).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = server
        .publish_with_key("publish-key-wrong-0123456789", &event)
        .await;
    assert_eq!(status, 401);
    // Both keys work during a rotation, as a bearer token or an X-API-Key.
    assert_eq!(server.publish_with_key(KEY_OLD, &event).await.0, 200);
    let (status, _) = server
        .request_with(
            "POST",
            "/api/v1/publish",
            event.to_string().into_bytes(),
            &[("x-api-key", KEY_NEW)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.recv_type("notification").await["data"]["k"], 1);
    assert_eq!(client.recv_type("notification").await["data"]["k"], 1);
    let stats = stats(&server).await;
    assert_eq!(stats["limits"]["unauthorized"], 2, "{stats}");
}

#[tokio::test]
async fn only_allowed_origins_may_upgrade() {
    let server = TestServer::with(|c| {
        c.auth.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    })
    .await;
    for origin in ["https://app.example.com", "https://eu.example.org"] {
        let mut client = server
            .connect_with("", &[("origin", origin)])
            .await
            .unwrap();
        assert_eq!(client.recv().await["type"], "notification", "{origin}");
    }
    match server
        .connect_with("", &[("origin", "https://evil.example")])
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an unlisted origin was upgraded"),
    }
    // Non-browser clients send no Origin.
    server.client().await;

    // The HTTP API answers CORS for listed origins only.
    let allowed = [("origin", "https://app.example.com")];
    let (status, headers, _) = server
        .request_full("OPTIONS", "/api/v1/publish", Vec::new(), &allowed)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let (_, headers, _) = server
        .request_full("GET", "/api/v1/snapshot", Vec::new(), &allowed)
        .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let evil = [("origin", "https://evil.example")];
    let (status, headers, _) = server
        .request_full("OPTIONS", "/api/v1/publish", Vec::new(), &evil)
        .await;
    assert_eq!(status, 403);
    assert!(!headers.contains_key("access-control-allow-origin"));
    let (status, headers, _) = server
        .request_full("GET", "/api/v1/snapshot", Vec::new(), &evil)
        .await;
    assert_eq!(status, 403, "another site's page may not read the API");
    assert!(!headers.contains_key("access-control-allow-origin"));
}

// Paused time: the deadlines and the backoff run on the runtime clock.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let server = TestServer::with(|c| c.idle_timeout = Duration::from_millis(800)).await;
    let mut chatty = server.client().await;
    let mut silent = server.client().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        chatty.send(&json!({"type": "ping"})).await;
        chatty.recv_type("pong").await;
    }
    assert_eq!(silent.closed().await, Some(4005));
    chatty.send(&json!({"type": "ping"})).await;
    assert_eq!(chatty.recv_type("pong").await["type"], "pong");
}

#[tokio::test]
async fn a_full_channel_refuses_further_subscribers() {
    let server = TestServer::with(|c| {
        c.max_subscribers_per_channel = 2;
        c.default_subscriptions = Vec::new();
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = client.subscribe(&["popular"]).await;
        let expected = if i < 2 { json!(["popular"]) } else { json!([]) };
        assert_eq!(reply["data"]["subscribed"], expected, "{reply}");
        if i == 2 {
            assert_eq!(reply["data"]["rejected"][0]["code"], "channel_full");
        }
    }
    let stats = stats(&server).await;
    assert_eq!(stats["limits"]["channel_full"], 1, "{stats}");
}

#[tokio::test]
async fn snapshots_and_stats_are_no_way_around_permissions() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.publish_keys = vec![KEY_NEW.into()];
        c.host.enabled = true;
    })
    .await;
    let get = |path: &'static str, auth: Option<String>| {
        let server = &server;
        async move {
            let headers: Vec<(&str, String)> =
                auth.into_iter().map(|a| ("authorization", a)).collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            server.request_with("GET", path, Vec::new(), &headers).await
        }
    };
    let key = Some(format!("Bearer {KEY_NEW}"));
    // The host source fills both snapshots shortly after start.
    for _ in 0..200 {
        let (_, all) = get("/api/v1/snapshot", key.clone()).await;
        if all["snapshots"].as_array().map_or(0, Vec::len) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status_only =
        hs256(json!({"sub": "ops", "exp": now() + 60, "subscribe": ["system.status"]}));
    let token = Some(format!("Bearer {status_only}"));

    assert_eq!(get("/api/v1/snapshot", None).await.0, 401);
    assert_eq!(get("/api/v1/snapshot/system.status", None).await.0, 401);
    let (status, all) = get("/api/v1/snapshot", token.clone()).await;
    assert_eq!(status, 200);
    let types: Vec<_> = all["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].clone())
        .collect();
    assert_eq!(types, [json!("system.status")]);
    assert_eq!(
        get("/api/v1/snapshot/system.status", token.clone()).await.0,
        200
    );
    assert_eq!(
        get("/api/v1/snapshot/storage.update", token.clone())
            .await
            .0,
        403
    );
    assert_eq!(
        get("/api/v1/snapshot/storage.update", key.clone()).await.0,
        200
    );

    // Stats are an operator's view: a publish key, not a client token.
    assert_eq!(get("/api/v1/stats", None).await.0, 401);
    assert_eq!(get("/api/v1/stats", token).await.0, 401);
    let (status, stats) = get("/api/v1/stats", key).await;
    assert_eq!(status, 200);
    assert_eq!(stats["limits"]["unauthorized"], 4, "{stats}");
    // Health stays open for load balancers.
    assert_eq!(get("/healthz", None).await.0, 200);
}

// Paused time: the deadlines and the backoff run on the runtime clock.
#[tokio::test(start_paused = true)]
async fn failed_credentials_back_off_exponentially_per_address() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.publish_keys = vec![KEY_NEW.into()];
        c.auth.backoff_after = 2;
    })
    .await;
    let event = json!({"type": "notification"});
    let wrong = "publish-key-guess-0123456789";
    // Two failures are free; the third bars the address for 1 s, then 2 s, ...
    for _ in 0..3 {
        assert_eq!(server.publish_with_key(wrong, &event).await.0, 401);
    }
    let (status, body) = server.publish_with_key(KEY_NEW, &event).await;
    assert_eq!(status, 429, "even the right key waits out the bar: {body}");
    assert_eq!(body["error"]["code"], "auth_backoff");
    match server
        .connect_with(&format!("?token={}", alice()), &[])
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a barred address was upgraded"),
    }
    // Another address is not affected.
    let mut other = server
        .connect_from([127, 0, 0, 2].into(), &format!("?token={}", alice()))
        .await
        .unwrap();
    accepted(&mut other).await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server.publish_with_key(wrong, &event).await.0, 401);
    let (status, _) = server.publish_with_key(KEY_NEW, &event).await;
    assert_eq!(status, 429, "the second bar is longer");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A success clears the record.
    assert_eq!(server.publish_with_key(KEY_NEW, &event).await.0, 200);
    assert_eq!(server.publish_with_key(wrong, &event).await.0, 401);
    assert_eq!(server.publish_with_key(KEY_NEW, &event).await.0, 200);
    let stats = stats(&server).await;
    assert_eq!(stats["limits"]["auth_backoff"], 3, "{stats}");
}

/// The audit's pattern: four wrong publish keys (one under the bar), then a valid
/// low-privilege token, again and again. A token proves nothing about the keys: the key
/// failures keep counting and the address is barred.
#[tokio::test]
async fn a_good_token_does_not_clear_wrong_publish_keys() {
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.publish_keys = vec![KEY_NEW.into()];
        c.auth.backoff_after = 4;
    })
    .await;
    let event = json!({"type": "notification"});
    let wrong = "publish-key-guess-0123456789";
    let reader = hs256(json!({"sub": "reader", "exp": now() + 3600, "subscribe": []}));
    for _ in 0..4 {
        assert_eq!(server.publish_with_key(wrong, &event).await.0, 401);
    }
    let mut client = server
        .connect_with(&format!("?token={reader}"), &[])
        .await
        .unwrap();
    accepted(&mut client).await;
    // The fifth wrong key in a row bars the address, good token or not.
    assert_eq!(server.publish_with_key(wrong, &event).await.0, 401);
    let (status, body) = server.publish_with_key(wrong, &event).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "auth_backoff");
}

/// Sends `request` (a whole HTTP/1.1 request, `{addr}` replaced) over a fresh socket and
/// returns the response's status code.
async fn raw_status(server: &TestServer, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = request.replace("{addr}", &server.addr.to_string());
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    common::within(tcp.read_exact(&mut head)).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// The audit's cross-site publish and DNS rebinding: a page elsewhere may neither publish
/// (a `text/plain` POST needs no preflight) nor read operator data, and a request naming
/// a host the server does not answer to (a rebound name) is refused, WebSocket included.
#[tokio::test]
async fn pages_elsewhere_cannot_publish_or_read_and_rebound_names_are_refused() {
    let server = TestServer::with(|c| {
        c.auth.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let mut subscriber = server.client().await;
    let own = format!("http://{}", server.addr);
    let post = |origin: Option<&str>, content_type: &str, n: u64| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let body = json!({"type": "notification", "data": {"n": n}}).to_string();
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {{addr}}\r\n{origin}Content-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // Refused: another site's page, with or without a preflight-free content type; and a
    // body not declared JSON from anywhere.
    assert_eq!(
        raw_status(
            &server,
            &post(Some("https://evil.example"), "text/plain", 1)
        )
        .await,
        403
    );
    assert_eq!(
        raw_status(
            &server,
            &post(Some("https://evil.example"), "application/json", 2)
        )
        .await,
        403
    );
    assert_eq!(
        raw_status(&server, &post(Some("null"), "application/json", 3)).await,
        403
    );
    assert_eq!(raw_status(&server, &post(None, "text/plain", 4)).await, 415);
    assert_eq!(
        raw_status(&server, &post(None, "application/x-www-form-urlencoded", 5)).await,
        415
    );
    // Answered: no origin (a service), the listed origin, the server's own pages.
    assert_eq!(
        raw_status(&server, &post(None, "application/json", 10)).await,
        200
    );
    assert_eq!(
        raw_status(
            &server,
            &post(
                Some("https://app.example.com"),
                "application/json; charset=utf-8",
                11
            )
        )
        .await,
        200
    );
    assert_eq!(
        raw_status(&server, &post(Some(&own), "application/json", 12)).await,
        200
    );
    for n in 10..=12 {
        assert_eq!(subscriber.recv_type("notification").await["data"]["n"], n);
    }

    // Operator data: not to another site's page.
    let get = |path: &str, host: &str, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n")
    };
    for path in ["/api/v1/stats", "/api/v1/snapshot", "/metrics"] {
        assert_eq!(
            raw_status(&server, &get(path, "{addr}", Some("https://evil.example"))).await,
            403,
            "{path}"
        );
        assert_eq!(
            raw_status(&server, &get(path, "{addr}", None)).await,
            200,
            "{path}"
        );
    }

    // DNS rebinding: the page's name, pointed at us, shows in Host. Refused everywhere.
    let port = server.addr.port();
    let rebound = format!("evil.example:{port}");
    for path in ["/api/v1/stats", "/metrics", "/", "/healthz"] {
        assert_eq!(
            raw_status(&server, &get(path, &rebound, None)).await,
            421,
            "{path}"
        );
        // Same origin as far as the browser knows: still refused.
        let origin = format!("http://{rebound}");
        assert_eq!(
            raw_status(&server, &get(path, &rebound, Some(&origin))).await,
            421,
            "{path}"
        );
    }
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {rebound}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(raw_status(&server, &upgrade).await, 421);
    // The loopback names and addresses are answered.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "app.localhost".to_owned(),
    ] {
        assert_eq!(
            raw_status(&server, &get("/api/v1/stats", &host, None)).await,
            200,
            "{host}"
        );
    }

    let stats = stats_without_key(&server).await;
    assert_eq!(stats["limits"]["origin_not_allowed"], 6, "{stats}");
    assert_eq!(stats["limits"]["unsupported_media_type"], 2, "{stats}");
    assert_eq!(stats["limits"]["host_not_allowed"], 9, "{stats}");
}
