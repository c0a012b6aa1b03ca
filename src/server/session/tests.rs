use bytes::Bytes;

use super::*;
use crate::config::Config;

const SECRET: &str = "a-test-secret-that-is-32-bytes!!";

fn json(frame: &Bytes) -> serde_json::Value {
    let start = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[start..]).unwrap()
}

fn replies(client: &Client) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    client.outbox().drain_into(&mut out, usize::MAX);
    out.iter().map(json).collect()
}

fn session(shared: &Arc<Shared>) -> Session {
    Session {
        shared: shared.clone(),
        address: [127, 0, 0, 1].into(),
        client: shared.hub.connect().unwrap(),
        identity: None,
        limit: TokenBucket::new(100, 10, std::time::Instant::now()),
        deadlines: Deadlines::default(),
        resume: None,
        presented: None,
    }
}

fn send(session: &mut Session, message: &str) -> Option<CloseCode> {
    match session.handle_message(&mut message.as_bytes().to_vec()) {
        Step::Done => None,
        Step::Close(code) => Some(code),
        Step::Subscribe(..) => unreachable!("no cluster in these tests"),
        Step::Presence(..) => unreachable!("these tests ask no presence"),
        Step::Publish(..) | Step::Identify(..) => unreachable!("these tests have no hooks"),
        Step::Leave => Some(CloseCode::NORMAL),
    }
}

fn token(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    unix_seconds(SystemTime::now()) + 3600
}

fn with_jwt() -> Arc<Shared> {
    let mut config = Config::default();
    config.auth.jwt_secret = Some(SECRET.to_owned());
    Arc::new(Shared::new(config).unwrap())
}

#[tokio::test]
async fn welcome_comes_first_and_lists_the_defaults() {
    let shared = Arc::new(Shared::new(Config::default()).unwrap());
    let mut s = session(&shared);
    assert_eq!(s.start(None, Default::default()).await, None);
    let got = replies(&s.client);
    assert_eq!(got[0]["type"], "notification");
    assert_eq!(got[0]["data"]["message"], WELCOME_MESSAGE);
    assert_eq!(got[0]["data"]["subscriptions"].as_array().unwrap().len(), 8);
    assert_eq!(s.client.subscriptions().len(), 8);
}

#[tokio::test]
async fn subscribe_reply_lists_changes_rejections_and_the_id() {
    let shared = Arc::new(Shared::new(Config::default()).unwrap());
    let mut s = session(&shared);
    s.identity = Some(Identity::anonymous());
    send(
        &mut s,
        r#"{"type":"subscribe","correlation_id":"c1","data":{"types":["a","b c"]}}"#,
    );
    let reply = &replies(&s.client)[0];
    assert_eq!(reply["type"], "subscribe_response");
    assert_eq!(reply["correlation_id"], "c1");
    assert_eq!(reply["data"]["success"], false);
    assert_eq!(reply["data"]["subscribed"], serde_json::json!(["a"]));
    assert_eq!(reply["data"]["subscriptions"], serde_json::json!(["a"]));
    assert_eq!(reply["data"]["rejected"][0]["channel"], "b c");
    assert_eq!(reply["data"]["rejected"][0]["code"], "invalid_channel");
}

#[tokio::test]
async fn a_huge_refused_subscribe_gets_a_small_summarised_reply() {
    // An operator's generous limit, so that the request is read rather than refused
    // whole (`too_many_channels`, below the default limit).
    let shared = Arc::new(
        Shared::new(Config {
            max_subscriptions_per_connection: 100_000,
            ..Config::default()
        })
        .unwrap(),
    );
    let mut s = session(&shared);
    s.identity = Some(Identity::anonymous());
    // 16,000 invalid names, and one as long as a whole message.
    let mut names: Vec<String> = (0..16_000).map(|i| format!("b{i}!")).collect();
    names.push("x!".repeat(30_000));
    let request = serde_json::json!({"type": "unsubscribe", "data": {"events": names}}).to_string();
    for kind in ["subscribe", "unsubscribe"] {
        let request = request.replace("unsubscribe", kind);
        send(&mut s, &request);
        let mut frames = Vec::new();
        s.client.outbox().drain_into(&mut frames, usize::MAX);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].len() < 4096,
            "a {} byte request got a {} byte reply",
            request.len(),
            frames[0].len()
        );
        let reply = json(&frames[0]);
        let rejected = reply["data"]["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), MAX_LISTED_REJECTIONS);
        assert_eq!(rejected[0]["channel"], "b0!");
        assert_eq!(reply["data"]["rejected_total"], 16_001);
    }
    assert_eq!(
        shared
            .counters
            .subscriptions_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        16_001
    );
    // A reply that lists every refusal says nothing more.
    send(&mut s, r#"{"type":"subscribe","data":{"events":["a b"]}}"#);
    let reply = &replies(&s.client)[0];
    assert_eq!(reply["data"]["rejected"].as_array().unwrap().len(), 1);
    assert!(reply["data"].get("rejected_total").is_none());
}

#[tokio::test]
async fn a_list_longer_than_the_allowance_is_refused_in_a_small_error() {
    let shared = Arc::new(Shared::new(Config::default()).unwrap());
    let mut s = session(&shared);
    s.identity = Some(Identity::anonymous());
    let request =
        serde_json::json!({"type": "subscribe", "data": {"events": vec!["!"; 16_000]}}).to_string();
    send(&mut s, &request);
    let mut frames = Vec::new();
    s.client.outbox().drain_into(&mut frames, usize::MAX);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].len() < 512, "{} bytes", frames[0].len());
    assert_eq!(json(&frames[0])["data"]["code"], "too_many_channels");
}

#[tokio::test]
async fn a_required_token_holds_everything_back_until_auth() {
    let shared = with_jwt();
    let mut s = session(&shared);
    assert_eq!(s.start(None, Default::default()).await, None);
    assert!(replies(&s.client).is_empty(), "nothing before auth");
    send(
        &mut s,
        r#"{"type":"subscribe","data":{"events":["x"]},"correlation_id":3}"#,
    );
    let got = replies(&s.client);
    assert_eq!(got[0]["data"]["code"], "auth_required");
    assert_eq!(got[0]["correlation_id"], 3);
    assert!(s.client.subscriptions().is_empty());

    let t = token(serde_json::json!({
        "sub": "alice", "exp": in_an_hour(), "subscribe": ["notification", "agent.*"],
    }));
    let auth = format!(r#"{{"type":"auth","data":{{"token":"{t}"}},"correlation_id":"a"}}"#);
    assert_eq!(send(&mut s, &auth), None);
    let got = replies(&s.client);
    assert_eq!(got[0]["type"], "auth_response");
    assert_eq!(got[0]["correlation_id"], "a");
    assert_eq!(got[0]["data"]["success"], true);
    assert_eq!(got[0]["data"]["subject"], "alice");
    assert_eq!(got[1]["data"]["message"], WELCOME_MESSAGE);
    // Only the defaults the token allows.
    assert_eq!(
        got[1]["data"]["subscriptions"],
        serde_json::json!(["agent.status", "notification"])
    );
}

#[tokio::test]
async fn denied_channels_are_listed_and_the_rest_subscribed() {
    let shared = with_jwt();
    let mut s = session(&shared);
    let t = token(serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["orders.*"]}));
    assert_eq!(s.start(Some(t.into()), Default::default()).await, None);
    replies(&s.client);
    send(
        &mut s,
        r#"{"type":"subscribe","data":{"channels":["orders.eu","billing","bad name"]}}"#,
    );
    let reply = &replies(&s.client)[0];
    assert_eq!(
        reply["data"]["subscribed"],
        serde_json::json!(["orders.eu"])
    );
    let rejected = reply["data"]["rejected"].as_array().unwrap();
    let codes: Vec<_> = rejected
        .iter()
        .map(|r| (r["channel"].as_str().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [("bad name", "invalid_channel"), ("billing", "forbidden")]
    );
    assert_eq!(shared.counters.get(Limit::ForbiddenSubscribe), 1);
}

#[tokio::test]
async fn socket_publish_needs_the_grant_for_every_event() {
    let shared = with_jwt();
    let mut s = session(&shared);
    let t = token(
        serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["chat.*"], "publish": ["chat.a"]}),
    );
    s.start(Some(t.into()), Default::default()).await;
    send(
        &mut s,
        r#"{"type":"subscribe","data":{"channels":["chat.a","chat.b"]}}"#,
    );
    replies(&s.client);

    send(
        &mut s,
        r#"{"type":"publish","data":[{"type":"chat.a"},{"type":"chat.b"}],"correlation_id":9}"#,
    );
    let got = replies(&s.client);
    assert_eq!(got.len(), 1, "nothing was published: {got:?}");
    assert_eq!(got[0]["data"]["code"], "forbidden");
    assert_eq!(got[0]["correlation_id"], 9);

    send(
        &mut s,
        r#"{"type":"publish","data":{"type":"chat.a","data":{"text":"hi"}}}"#,
    );
    let got = replies(&s.client);
    assert_eq!(got[0]["type"], "chat.a");
    assert_eq!(got[0]["data"]["text"], "hi");
    assert_eq!(got[1]["type"], "publish_response");
    assert_eq!(got[1]["data"]["accepted"], 1);
}

#[tokio::test]
async fn bad_tokens_are_answered_then_closed_with_their_code() {
    let shared = with_jwt();
    let mut s = session(&shared);
    let expired = token(serde_json::json!({"sub": "a", "exp": 1_000_000_000}));
    assert_eq!(
        s.start(Some(expired.into()), Default::default()).await,
        Some(CloseCode::TOKEN_EXPIRED)
    );
    let got = replies(&s.client);
    assert_eq!(got[0]["data"]["error"]["code"], "token_expired");
    assert!(s.client.subscriptions().is_empty());

    let mut s = session(&shared);
    assert_eq!(
        s.start(Some("garbage".into()), Default::default()).await,
        Some(CloseCode::AUTH_FAILED)
    );
    assert_eq!(
        replies(&s.client)[0]["data"]["error"]["code"],
        "invalid_token"
    );
}

#[tokio::test]
async fn a_refresh_keeps_the_subject_and_drops_what_is_no_longer_allowed() {
    let shared = with_jwt();
    let mut s = session(&shared);
    let wide = token(serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["*"]}));
    s.start(Some(wide.into()), Default::default()).await;
    send(
        &mut s,
        r#"{"type":"subscribe","data":{"channels":["secret"]}}"#,
    );
    replies(&s.client);

    let other = token(serde_json::json!({"sub": "b", "exp": in_an_hour()}));
    send(
        &mut s,
        &format!(r#"{{"type":"auth","data":{{"token":"{other}"}}}}"#),
    );
    assert_eq!(
        replies(&s.client)[0]["data"]["code"],
        "auth_subject_changed"
    );

    let narrow =
        token(serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["notification"]}));
    send(
        &mut s,
        &format!(r#"{{"type":"auth","data":{{"token":"{narrow}"}}}}"#),
    );
    let got = replies(&s.client);
    assert_eq!(got[0]["data"]["success"], true);
    let dropped = got[0]["data"]["unsubscribed"].as_array().unwrap();
    assert!(dropped.contains(&"secret".into()));
    assert_eq!(s.client.subscriptions().len(), 1);
    assert_eq!(got.len(), 1, "no second welcome");
}
