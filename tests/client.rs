//! The Rust client (`clients/rust`, crate `sigmahub-client`) against the real `sigmahub`
//! binary on a free port: subscribe, receive, publish with an ack; connections cut,
//! servers killed and restarted, a cluster node stopped: no event lost, repeated or
//! reordered within the history window, and a gap reported where the history ends; token
//! refresh; `Retry-After`; the close codes after which it stops.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::binary::Binary;
use common::nats::{NatsServer, Proxy};
use common::{http_get_json, http_post_json, within};
use jsonwebtoken::{EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use sigmahub_client::{
    Backoff, Client, Error, Event, Gap, GapReason, Interruption, Notice, Options, State,
    Subscription,
};

const SECRET: &str = "client-test-secret-0123456789abcd";

#[derive(Debug, Deserialize, PartialEq)]
struct Numbered {
    n: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` valid for `seconds`, allowed every channel and to publish on
/// `orders.*`.
fn token(sub: &str, seconds: u64) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": now() + seconds, "subscribe": ["*"], "publish": ["orders.*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Quick retries, so that the tests spend their time on what they check.
fn quick(url: String) -> Options {
    Options::new(url).backoff(Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
    })
}

/// The binary with `args`, without the per-address limits (every test client and the
/// proxy come from 127.0.0.1); `retry_after_is_honoured` sets its own.
fn spawn(args: &[&str]) -> Binary {
    let mut all = vec![
        "--max-connections-per-ip",
        "0",
        "--connection-rate-per-ip",
        "0",
    ];
    all.extend_from_slice(args);
    Binary::spawn(&all)
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

async fn publish(addr: SocketAddr, channel: &str, n: u64) {
    let (status, reply) = http_post_json(
        addr,
        "/api/v1/publish",
        &json!({"type": channel, "data": {"n": n}}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

/// The next event, failing on a gap or anything else.
async fn next(subscription: &mut Subscription<Numbered>) -> Event<Numbered> {
    match within(subscription.recv()).await {
        Some(Ok(event)) => event,
        other => panic!(
            "expected an event on {}, got {other:?}",
            subscription.channel()
        ),
    }
}

/// The next item: an event's number, or the gap.
async fn next_item(subscription: &mut Subscription<Numbered>) -> Result<u64, Gap> {
    match within(subscription.recv()).await {
        Some(Ok(event)) => Ok(event.data.n),
        Some(Err(Interruption::Gap(gap))) => Err(gap),
        other => panic!("expected an event or a gap, got {other:?}"),
    }
}

/// Waits for a state that satisfies `check`.
async fn state(client: &Client, what: &str, check: impl Fn(&State) -> bool) -> State {
    let mut states = client.states();
    within(async {
        loop {
            let now = states.borrow_and_update().clone();
            if check(&now) {
                return now;
            }
            states
                .changed()
                .await
                .unwrap_or_else(|_| panic!("no state: {what}"));
        }
    })
    .await
}

fn connected(s: &State) -> bool {
    matches!(s, State::Connected { .. })
}

#[tokio::test]
async fn subscribes_receives_and_publishes_with_an_ack() {
    let server = spawn(&["--auth-jwt-secret", SECRET]);
    let client = Client::with_options(quick(ws_url(server.addr)).token(token("alice", 3600)));
    within(client.ready()).await.unwrap();
    let mut orders = client.subscribe::<Numbered>("orders.alice").await.unwrap();
    let mut any = client.subscribe::<Value>("orders.alice").await.unwrap();

    publish(server.addr, "orders.alice", 1).await;
    let event = next(&mut orders).await;
    assert_eq!(event.channel, "orders.alice");
    assert_eq!(event.data, Numbered { n: 1 });
    assert!(event.offset.is_some(), "{event:?}");
    assert_eq!(
        within(any.recv()).await.unwrap().unwrap().data,
        json!({"n": 1})
    );

    let ack = client
        .publish("orders.alice", &json!({"n": 2}))
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);
    assert_eq!(ack.delivered, Some(1), "one connection, subscribed twice");
    assert_eq!(next(&mut orders).await.data, Numbered { n: 2 });

    // What the token does not allow is refused, with the server's code.
    match client.publish("billing", &json!({})).await {
        Err(Error::Refused { code, .. }) => assert_eq!(code, "forbidden"),
        other => panic!("publish on billing: {other:?}"),
    }
    match client.subscribe::<Value>("bad name").await {
        Err(Error::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
    // Undecodable data is reported, and the subscription goes on.
    publish_raw(
        server.addr,
        json!({"type": "orders.alice", "data": {"n": "three"}}),
    )
    .await;
    publish(server.addr, "orders.alice", 4).await;
    assert!(matches!(
        within(orders.recv()).await,
        Some(Err(Interruption::Undecodable { .. }))
    ));
    assert_eq!(next(&mut orders).await.data, Numbered { n: 4 });

    client.close().await;
    assert!(matches!(client.state(), State::Closed { .. }));
    assert!(
        within(orders.recv()).await.is_none(),
        "closing ends subscriptions"
    );
    server.stop();
}

async fn publish_raw(addr: SocketAddr, body: Value) {
    let (status, reply) = http_post_json(addr, "/api/v1/publish", &body).await;
    assert_eq!(status, 200, "{reply}");
}

/// The connection is cut again and again while events flow, on a channel the client
/// subscribed and on a default one (resumed through the upgrade URL): every event arrives
/// once, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_resume_without_loss_repetition_or_reordering() {
    let server = spawn(&["--default-subscriptions", "notification"]);
    let proxy = Proxy::start(server.addr.port()).await;
    let url = format!("ws://127.0.0.1:{}/ws", proxy.port);
    let client = Client::with_options(quick(url));
    let mut orders = client.subscribe::<Numbered>("orders").await.unwrap();
    let mut notices = client.subscribe::<Numbered>("notification").await.unwrap();

    const EVENTS: u64 = 300;
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        for n in 1..=EVENTS {
            publish(addr, "orders", n).await;
            publish(addr, "notification", n).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let cutter = tokio::spawn({
        let client = client.clone();
        async move {
            for _ in 0..4 {
                state(&client, "connected", connected).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(50)).await;
                proxy.restore();
            }
            proxy
        }
    });
    for n in 1..=EVENTS {
        assert_eq!(next_item(&mut orders).await, Ok(n), "orders");
        assert_eq!(next_item(&mut notices).await, Ok(n), "notification");
    }
    publisher.await.unwrap();
    let _proxy = cutter.await.unwrap();
    client.close().await;
}

/// A default channel (subscribed by the server on connect) that the application
/// subscribes to later starts from its last event, and resumes from there.
#[tokio::test]
async fn a_default_channel_subscribed_later_resumes_from_its_last_event() {
    let server = spawn(&["--default-subscriptions", "notification"]);
    let proxy = Proxy::start(server.addr.port()).await;
    let client = Client::with_options(quick(format!("ws://127.0.0.1:{}/ws", proxy.port)));
    within(client.ready()).await.unwrap();
    publish(server.addr, "notification", 0).await;
    let mut notices = client.subscribe::<Numbered>("notification").await.unwrap();
    proxy.cut();
    state(&client, "disconnected", |s| !connected(s)).await;
    publish(server.addr, "notification", 1).await;
    publish(server.addr, "notification", 2).await;
    proxy.restore();
    assert_eq!(
        next_item(&mut notices).await,
        Ok(1),
        "not 0: it came before"
    );
    assert_eq!(next_item(&mut notices).await, Ok(2));
    client.close().await;
}

/// What the history no longer holds is a gap with its range, in place; what it holds
/// follows.
#[tokio::test]
async fn a_gap_beyond_the_history_is_reported_with_its_range() {
    let server = spawn(&["--history-size", "3"]);
    let proxy = Proxy::start(server.addr.port()).await;
    let client = Client::with_options(quick(format!("ws://127.0.0.1:{}/ws", proxy.port)));
    let mut orders = client.subscribe::<Numbered>("orders").await.unwrap();
    publish(server.addr, "orders", 1).await;
    let first = next(&mut orders).await;

    proxy.cut();
    state(&client, "disconnected", |s| !connected(s)).await;
    for n in 2..=10 {
        publish(server.addr, "orders", n).await;
    }
    proxy.restore();
    let gap = match next_item(&mut orders).await {
        Err(gap) => gap,
        Ok(n) => panic!("event {n} before the gap"),
    };
    assert_eq!(gap.reason, GapReason::HistoryTruncated);
    assert_eq!(gap.after, first.offset);
    let replayed = next(&mut orders).await;
    assert_eq!(replayed.data.n, 8, "the history keeps 8, 9, 10");
    assert_eq!(gap.before, replayed.offset, "{gap:?}");
    assert_eq!(next(&mut orders).await.data.n, 9);
    assert_eq!(next(&mut orders).await.data.n, 10);
    client.close().await;
}

/// A server killed and started again on the same port has a new epoch: nothing can be
/// replayed, the client says so and goes on with the new server's events.
#[tokio::test]
async fn a_restarted_server_is_an_epoch_change() {
    let server = spawn(&[]);
    let addr = server.addr;
    let client = Client::with_options(quick(ws_url(addr)));
    let mut orders = client.subscribe::<Numbered>("orders").await.unwrap();
    let mut gaps = client.notices();
    publish(addr, "orders", 1).await;
    let seen = next(&mut orders).await;
    server.kill();
    let server = Binary::spawn_on(
        addr,
        &[
            "--max-connections-per-ip",
            "0",
            "--connection-rate-per-ip",
            "0",
        ],
    );
    let gap = next_item(&mut orders).await.unwrap_err();
    assert_eq!(gap.reason, GapReason::EpochChanged);
    assert_eq!((gap.after, gap.before), (seen.offset, None));
    publish(addr, "orders", 2).await;
    assert_eq!(next(&mut orders).await.data.n, 2);
    // The same gap went to the notices.
    let noticed = within(async {
        loop {
            if let Notice::Gap(gap) = gaps.recv().await.unwrap() {
                return gap;
            }
        }
    })
    .await;
    assert_eq!(noticed, gap);
    client.close().await;
    server.stop();
}

/// The client's node stops; it moves to the next node of the cluster and resumes from
/// the shared stream: nothing lost, repeated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_node_is_replaced_by_another_without_loss() {
    let nats = NatsServer::start();
    let node = |name: &str| {
        spawn(&[
            "--cluster-nats-url",
            &nats.url(),
            "--cluster-node-name",
            name,
        ])
    };
    let a = node("a");
    let b = node("b");
    let client = Client::with_options(quick(ws_url(a.addr)).fallback(ws_url(b.addr)));
    let mut orders = client.subscribe::<Numbered>("orders").await.unwrap();
    let first_url = match state(&client, "connected", connected).await {
        State::Connected { url, .. } => url,
        _ => unreachable!(),
    };
    assert_eq!(first_url, ws_url(a.addr));

    const EVENTS: u64 = 200;
    let publish_to = b.addr;
    let publisher = tokio::spawn(async move {
        for n in 1..=EVENTS {
            publish(publish_to, "orders", n).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    for n in 1..=EVENTS / 4 {
        assert_eq!(next_item(&mut orders).await, Ok(n));
    }
    a.kill();
    for n in EVENTS / 4 + 1..=EVENTS {
        assert_eq!(next_item(&mut orders).await, Ok(n));
    }
    publisher.await.unwrap();
    match client.state() {
        State::Connected { url, .. } => assert_eq!(url, ws_url(b.addr)),
        other => panic!("{other:?}"),
    }
    client.close().await;
    b.stop();
}

/// A short-lived token is replaced before it expires, on the same connection; an expired
/// one (close 4004) is replaced and the client reconnects.
#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_after_4004() {
    let server = spawn(&["--auth-jwt-secret", SECRET, "--auth-leeway", "0s"]);
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    let client = Client::with_options(
        quick(ws_url(server.addr))
            // Already expired: the server closes with 4004, the source gives a fresh one.
            .token(token_expired())
            .token_source(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(token("alice", 3))
                }
            }),
    );
    let mut orders = client.subscribe::<Numbered>("orders.x").await.unwrap();
    let id = match state(&client, "connected", connected).await {
        State::Connected { client_id, .. } => client_id,
        _ => unreachable!(),
    };
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Each 3-second token is refreshed halfway through: four tokens in six seconds, on
    // one connection, with events flowing.
    for n in 1..=6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        publish(server.addr, "orders.x", n).await;
        assert_eq!(next(&mut orders).await.data.n, n);
    }
    assert!(
        issued.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "refreshed: {issued:?}"
    );
    match client.state() {
        State::Connected { client_id, .. } => assert_eq!(client_id, id, "one connection"),
        other => panic!("{other:?}"),
    }
    client.close().await;
    server.stop();
}

fn token_expired() -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "alice", "exp": now() - 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// An invalid token (4003) and a refused origin are not retried: the client closes and
/// says why.
#[tokio::test]
async fn what_retrying_cannot_fix_closes_the_client() {
    let server = spawn(&["--auth-jwt-secret", SECRET]);
    let client = Client::with_options(quick(ws_url(server.addr)).token("not-a-jwt"));
    match within(client.ready()).await {
        Err(Error::Closed(reason)) => assert!(reason.contains("4003"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match client.subscribe::<Value>("orders").await {
        Err(Error::Closed(_)) => {}
        other => panic!("{other:?}"),
    }
    server.stop();
}

/// Refused with 429 and `Retry-After` (connection rate), the client waits that long:
/// one refusal, where its own backoff alone would have made dozens of attempts.
#[tokio::test]
async fn retry_after_is_honoured() {
    let server = Binary::spawn(&[
        "--connection-rate-per-ip",
        "30",
        "--connection-burst-per-ip",
        "1",
    ]);
    let proxy = Proxy::start(server.addr.port()).await;
    let client = Client::with_options(quick(format!("ws://127.0.0.1:{}/ws", proxy.port)));
    let mut states = client.notices();
    within(client.ready()).await.unwrap();
    proxy.cut();
    proxy.restore();
    state(
        &client,
        "refused, waiting",
        |s| matches!(s, State::Reconnecting { reason, .. } if reason.contains("429")),
    )
    .await;
    state(&client, "connected again", connected).await;
    let mut delays = Vec::new();
    while let Ok(notice) = states.try_recv() {
        if let Notice::State(State::Reconnecting { reason, delay }) = notice {
            delays.push((reason, delay));
        }
    }
    let refused: Vec<_> = delays.iter().filter(|(r, _)| r.contains("429")).collect();
    assert_eq!(refused.len(), 1, "{delays:?}");
    assert!(refused[0].1 >= Duration::from_secs(1), "{delays:?}");
    let stats = http_get_json(server.addr, "/api/v1/stats").await.1;
    assert_eq!(stats["refused"]["connection_rate_exceeded"], 1, "{stats}");
    client.close().await;
}

/// The waits between attempts follow the configured backoff: each drawn between the
/// minimum and the attempt's ceiling, growing by the factor up to the maximum (the delays
/// the client chose, as it reports them; nothing is timed).
#[tokio::test]
async fn reconnect_delays_follow_the_backoff() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nothing listens: every attempt is refused at once
    let backoff = Backoff {
        min: Duration::from_millis(1),
        max: Duration::from_millis(16),
        factor: 2.0,
    };
    let client = Client::with_options(Options::new(ws_url(addr)).backoff(backoff));
    let mut notices = client.notices();
    let mut delays = Vec::new();
    within(async {
        while delays.len() < 16 {
            if let Notice::State(State::Reconnecting { delay, .. }) = notices.recv().await.unwrap()
            {
                delays.push(delay);
            }
        }
    })
    .await;
    client.close().await;
    for (attempt, delay) in delays.iter().enumerate() {
        let ceiling = backoff.ceiling(attempt as u32);
        assert!(
            *delay >= backoff.min && *delay <= ceiling,
            "attempt {attempt}: {delay:?} outside {:?}..={ceiling:?}",
            backoff.min
        );
    }
    // Full jitter over a grown ceiling: some of the later waits exceed an early ceiling.
    assert!(
        delays[5..].iter().any(|d| *d > backoff.ceiling(2)),
        "{delays:?}"
    );
}

/// A handler that stops reading: the client stops reading too (its memory stays
/// bounded), says so, the server closes the connection as a slow consumer (4000), and the
/// client resumes where the handler is. The handler gets events in order, each once, and
/// whatever the server could not replay is covered by a gap reported in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_is_reported_and_loses_nothing_unreported() {
    let server = spawn(&["--history-size", "1000"]);
    let client = Client::with_options(quick(ws_url(server.addr)).buffer(4));
    let mut notices = client.notices();
    let mut orders = client.subscribe::<Numbered>("orders").await.unwrap();
    // 16 MB in 16 KB events: more than the socket buffers and the server's 256 KiB
    // queue hold.
    const EVENTS: u64 = 1_000;
    let pad = "x".repeat(16 * 1024);
    for batch in 0..EVENTS / 20 {
        let events: Vec<Value> = (1..=20)
            .map(|i| json!({"type": "orders", "data": {"n": batch * 20 + i, "pad": pad}}))
            .collect();
        publish_raw(server.addr, Value::Array(events)).await;
    }
    // Then small events until the handler has seen one: what ends the run, whatever
    // the server could not replay of the large ones.
    let addr = server.addr;
    let trickle = tokio::spawn(async move {
        for n in EVENTS + 1.. {
            publish(addr, "orders", n).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The handler has been away for a while (long enough to be reported); now it reads.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut last = 0;
    let mut gap_before = false;
    let mut gaps = 0;
    while last <= EVENTS {
        match next_item(&mut orders).await {
            Ok(n) => {
                assert!(n > last, "{n} after {last}");
                assert!(
                    n == last + 1 || gap_before,
                    "{} events missing before {n} with no gap",
                    n - last - 1
                );
                last = n;
                gap_before = false;
            }
            Err(gap) => {
                assert_eq!(gap.channel, "orders");
                gaps += 1;
                gap_before = true;
            }
        }
    }
    let mut slow = false;
    let mut closed_4000 = false;
    while let Ok(notice) = notices.try_recv() {
        match notice {
            Notice::SlowHandler { channel } => slow |= channel == "orders",
            Notice::State(State::Reconnecting { reason, .. }) => {
                closed_4000 |= reason.contains("4000")
            }
            _ => {}
        }
    }
    assert!(slow, "the slow handler was reported");
    assert!(closed_4000, "the server closed it as a slow consumer");
    trickle.abort();
    eprintln!("slow handler: {gaps} gaps");
    client.close().await;
    server.stop();
}

#[tokio::test]
async fn presence_lists_who_is_subscribed_and_refuses_a_channel_without_it() {
    let dir = std::env::temp_dir().join(format!("sigmahub-client-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("presence.toml");
    std::fs::write(
        &config,
        "[[channels]]\npattern = \"room.*\"\npresence = true\n",
    )
    .unwrap();
    let server = spawn(&[
        "--auth-jwt-secret",
        SECRET,
        "--config",
        config.to_str().unwrap(),
    ]);
    let alice = Client::with_options(quick(ws_url(server.addr)).token(token("alice", 3600)));
    let bob = Client::with_options(quick(ws_url(server.addr)).token(token("bob", 3600)));
    let _a = alice.subscribe::<Value>("room.blue").await.unwrap();
    let _b = bob.subscribe::<Value>("room.blue").await.unwrap();

    let presence = within(alice.presence("room.blue")).await.unwrap();
    assert_eq!(presence.channel, "room.blue");
    assert_eq!((presence.count, presence.nodes), (2, 1));
    let mut users: Vec<&str> = presence.members.iter().map(|m| m.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);
    match within(bob.presence("orders.x")).await {
        Err(Error::Refused { code, .. }) => assert_eq!(code, "no_presence"),
        other => panic!("{other:?}"),
    }
    alice.close().await;
    bob.close().await;
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
