//! Hostile input over real sockets, some of it impossible to produce with a well-behaved
//! client library (so the handshake and frames are written by hand here). Each gets its
//! documented answer, and a well-behaved client connected through the whole suite receives
//! every event published to it.

mod common;

use common::raw::{close_code, frame, raw_ws};
use common::TestServer;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_their_answer_and_a_bystander_gets_everything() {
    let server = TestServer::with(|c| c.max_message_size = 64 * 1024).await;
    let mut bystander = server.client().await;
    let mut published = 0u64;
    let mut publish = || {
        published += 1;
        json!({"type": "notification", "data": {"n": published}})
    };

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked text frame",
            frame(0x81, br#"{"type":"ping"}"#, false),
            1002,
        ),
        (
            "control frame over 125 bytes",
            frame(0x89, &[b'p'; 126], true),
            1002,
        ),
        ("fragmented control frame", frame(0x09, b"p", true), 1002),
        ("reserved bits set", frame(0xf1, b"{}", true), 1002),
        ("unknown opcode", frame(0x83, b"{}", true), 1002),
        (
            "fragment flood past the message limit",
            std::iter::once(frame(0x01, &[b' '; 1000], true))
                .chain((0..100).map(|_| frame(0x00, &[b' '; 1000], true)))
                .flatten()
                .collect(),
            1009,
        ),
        (
            "empty fragments of a message that never ends",
            std::iter::once(frame(0x01, b"{", true))
                .chain((0..10_000).map(|_| frame(0x00, b"", true)))
                .flatten()
                .collect(),
            1009,
        ),
        ("a one-byte close payload", frame(0x88, &[3], true), 1002),
        (
            "a close code no endpoint may send (1005)",
            frame(0x88, &1005u16.to_be_bytes(), true),
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            frame(0x88, &[0x03, 0xe8, 0xff, 0xfe], true),
            1007,
        ),
        (
            "one frame declaring 2^62 bytes",
            {
                let mut f = vec![0x81, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 62).to_be_bytes());
                f.extend_from_slice(&[0, 0, 0, 0]);
                f
            },
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut tcp = raw_ws(&server).await;
        // The server may close before everything is written.
        let _ = tcp.write_all(&bytes).await;
        assert_eq!(close_code(&mut tcp).await, Some(code), "{what}");
        server.publish(&publish()).await;
    }

    // JSON bombs and oversize subscribe requests are answered without closing.
    let mut client = server.client().await;
    client
        .send_text(&format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)))
        .await;
    assert_eq!(
        client.recv_type("error").await["data"]["code"],
        "invalid_json"
    );
    // 10,000 channels make a message over the 64 KiB limit: closed with 1009.
    let mut greedy = server.client().await;
    let ten_thousand: Vec<String> = (0..10_000).map(|i| format!("ch{i}")).collect();
    greedy
        .send(&json!({"type": "subscribe", "data": {"channels": ten_thousand}}))
        .await;
    assert_eq!(greedy.closed().await, Some(1009));
    // 2,000 fit in a message but not in a connection's 50 subscriptions: refused whole,
    // in an error far smaller than the request, and the connection stays.
    let two_thousand: Vec<String> = (0..2_000).map(|i| format!("ch{i}")).collect();
    client
        .send(&json!({"type": "subscribe", "data": {"channels": two_thousand}}))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["data"]["code"], "too_many_channels");
    assert!(error.to_string().len() < 512, "{error}");
    // 50: 8 defaults + 42 reach the limit; the other 8 are refused by name.
    let fifty: Vec<String> = (0..50).map(|i| format!("ch{i}")).collect();
    client
        .send(&json!({"type": "subscribe", "data": {"channels": fifty}}))
        .await;
    let reply = client.recv_type("subscribe_response").await;
    assert_eq!(reply["data"]["subscribed"].as_array().unwrap().len(), 42);
    assert_eq!(reply["data"]["rejected"].as_array().unwrap().len(), 8);
    assert_eq!(reply["data"]["rejected"][0]["code"], "subscription_limit");

    // Subscribe/unsubscribe churn leaves nothing behind. The client reads its replies every
    // 50 rounds: 600 unread replies can exceed its queue (256 frames) plus what the kernel
    // holds (`socket_unsent_limit`), and the server rightly closes such a client (4000).
    for i in 0..200 {
        let ch = format!("churn{}", i % 5);
        client
            .send(&json!({"type": "unsubscribe", "data": {"channels": ["ch0"]}}))
            .await;
        client
            .send(&json!({"type": "subscribe", "data": {"channels": [ch]}}))
            .await;
        client
            .send(&json!({"type": "unsubscribe", "data": {"channels": [ch]}}))
            .await;
        if i % 50 == 49 {
            client.send(&json!({"type": "ping"})).await;
            client.recv_type("pong").await;
        }
    }
    common::eventually("churned channels gone", || {
        (0..5).all(|i| server.hub.subscriber_count(&format!("churn{i}")) == 0)
    })
    .await;

    // The bystander received every event, in order.
    server.publish(&publish()).await;
    for n in 1..=published {
        let event = bystander.recv_type("notification").await;
        assert_eq!(event["data"]["n"], n);
    }
}

/// The suite's second half: hostile credentials, forbidden publishing and a connection
/// flood from one address, against a server with authentication on and the default
/// admission limits. The bystander is an authenticated client on another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_and_floods_leave_an_authenticated_bystander_whole() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    const SECRET: &str = "hostile-suite-secret-of-32-bytes!";
    const KEY: &str = "hostile-suite-publish-key";
    let server = TestServer::with(|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.publish_keys = vec![KEY.into()];
        let defaults = sigmahub::Config::default();
        c.max_connections_per_ip = defaults.max_connections_per_ip;
        c.connection_rate_per_ip = defaults.connection_rate_per_ip;
        c.connection_burst_per_ip = defaults.connection_burst_per_ip;
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: serde_json::Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(
        json!({"sub": "bystander", "exp": now + 3600, "subscribe": ["*"]}),
        SECRET,
    );
    let mut bystander = server
        .connect_from([127, 0, 0, 2].into(), &format!("?token={good}"))
        .await
        .unwrap();
    assert_eq!(bystander.recv().await["type"], "auth_response");
    assert_eq!(bystander.recv().await["type"], "notification");

    let mut published = 0u64;
    let mut publish = || {
        published += 1;
        json!({"type": "notification", "data": {"n": published}})
    };

    let hostile_tokens = [
        (
            "expired",
            sign(json!({"sub": "x", "exp": now - 3600}), SECRET),
            4004,
        ),
        (
            "forged",
            sign(
                json!({"sub": "x", "exp": now + 3600, "subscribe": ["*"]}),
                "a-guessed-secret-a-guessed-secret",
            ),
            4003,
        ),
        // {"alg":"none"}: unsigned.
        (
            "unsigned",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo0MTAyNDQ0ODAwfQ."
                .to_owned(),
            4003,
        ),
        ("garbage", "%00%FF..".to_owned(), 4003),
    ];
    for (what, token, code) in hostile_tokens {
        let mut client = server
            .connect_from([127, 0, 0, 3].into(), &format!("?token={token}"))
            .await
            .unwrap();
        assert_eq!(client.recv().await["data"]["success"], false, "{what}");
        assert_eq!(client.closed().await, Some(code), "{what}");
        server.publish_with_key(KEY, &publish()).await;
    }

    // A client whose token allows no publishing tries anyway; so does an HTTP client
    // without the key. Neither reaches the bystander.
    let reader = sign(json!({"sub": "reader", "exp": now + 3600}), SECRET);
    let mut sneaky = server
        .connect_from([127, 0, 0, 3].into(), &format!("?token={reader}"))
        .await
        .unwrap();
    sneaky
        .send(
            &json!({"type": "publish", "data": {"type": "notification", "data": {"n": "forged"}}}),
        )
        .await;
    assert_eq!(sneaky.recv_type("error").await["data"]["code"], "forbidden");
    let (status, _) = server
        .publish(&json!({"type": "notification", "data": {"n": "forged"}}))
        .await;
    assert_eq!(status, 401);
    server.publish_with_key(KEY, &publish()).await;

    // A connection flood from one address at the default limits (10 at once, bursts of
    // 20): every attempt is upgraded or refused with 429 and Retry-After before the 101.
    let flooder = [127, 0, 0, 5].into();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match server
            .connect_from(flooder, &format!("?token={good}"))
            .await
        {
            Ok(client) => admitted.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 429);
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            Err(e) => panic!("the flood got {e} instead of a 429"),
        }
    }
    assert_eq!(admitted.len(), 10);
    assert_eq!(refused, 30);
    // The flooding address is full, plain HTTP included; other addresses are served.
    let bearer = format!("Bearer {KEY}");
    let refused_event = json!({"type": "notification", "data": {"n": "refused"}});
    let (status, _) = server
        .request_from(
            flooder,
            "POST",
            "/api/v1/publish",
            refused_event.to_string().into_bytes(),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 429);
    server.publish_with_key(KEY, &publish()).await;

    // The bystander received every event published to it, in order, and nothing else.
    server
        .publish_with_key(KEY, &json!({"type": "notification", "data": {"n": "end"}}))
        .await;
    for n in 1..=published {
        let event = bystander.recv_type("notification").await;
        assert_eq!(event["data"]["n"], n, "{event}");
    }
    assert_eq!(
        bystander.recv_type("notification").await["data"]["n"],
        "end"
    );
}
