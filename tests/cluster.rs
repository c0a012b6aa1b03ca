//! Several sigmahub nodes on one real nats-server (with JetStream, on its own free port):
//! events cross nodes exactly once and in one order, and a node only receives the channels
//! it has subscribers for.

mod common;

use common::nats::NatsServer;
use common::TestServer;
use serde_json::{json, Value};

/// A node on `url` named `name`, whose clients get `defaults` on connect.
async fn node_on(url: String, name: &str, defaults: &[&str]) -> TestServer {
    let name = name.to_owned();
    let defaults: Vec<String> = defaults.iter().map(|d| d.to_string()).collect();
    TestServer::with(move |c| {
        c.cluster.nats_url = Some(url);
        c.cluster.node_name = Some(name);
        c.default_subscriptions = defaults;
    })
    .await
}

async fn node(nats: &NatsServer, name: &str) -> TestServer {
    node_on(nats.url(), name, &["notification"]).await
}

/// A node linked to NATS through `proxy`, whose clients also get `connection_error`.
async fn node_behind(proxy: &common::nats::Proxy, name: &str) -> TestServer {
    node_on(proxy.url(), name, &["notification", "connection_error"]).await
}

/// Waits for the notification that the client's node is linked to the cluster again.
async fn reconnected(client: &mut common::Client) -> Value {
    client
        .recv_until("the reconnection notice", |m| {
            m["type"] == "notification" && m["data"]["cluster"]["connected"] == true
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_node_reaches_subscribers_on_every_node_once() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["orders"]).await;
    on_b.subscribe(&["orders"]).await;

    let (status, reply) = a
        .publish(&json!((0..20)
            .map(|n| json!({"type": "orders", "data": {"n": n}}))
            .collect::<Vec<_>>()))
        .await;
    assert_eq!(status, 200, "{reply}");
    let offsets: Vec<u64> = reply["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets.len(), 20);

    for client in [&mut on_a, &mut on_b] {
        for (n, offset) in offsets.iter().enumerate() {
            let event = client.recv_type("orders").await;
            assert_eq!(event["data"]["n"], n, "{event}");
            assert_eq!(event["offset"], *offset);
        }
    }
    // Nothing twice: the next thing either sees is a fresh event.
    b.publish(&json!({"type": "orders", "data": {"n": "last"}}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_type("orders").await["data"]["n"], "last");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_give_every_subscriber_one_order() {
    const EACH: usize = 150;
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["orders"]).await;
    on_b.subscribe(&["orders"]).await;

    let publish_from = |server: &TestServer, who: &'static str| {
        let addr = server.addr;
        async move {
            for n in 0..EACH {
                let body = json!({"type": "orders", "data": {"from": who, "n": n}});
                let (status, reply) = common::http_post_json(addr, "/api/v1/publish", &body).await;
                assert_eq!(status, 200, "{reply}");
            }
        }
    };
    tokio::join!(publish_from(&a, "a"), publish_from(&b, "b"));

    let mut orders: Vec<Vec<(String, u64, u64)>> = Vec::new();
    for client in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        let mut next = std::collections::HashMap::from([("a", 0u64), ("b", 0u64)]);
        for _ in 0..2 * EACH {
            let event: Value = client.recv_type("orders").await;
            let from = event["data"]["from"].as_str().unwrap().to_owned();
            let n = event["data"]["n"].as_u64().unwrap();
            let expected = next.get_mut(from.as_str()).unwrap();
            assert_eq!(n, *expected, "each publisher's order is kept");
            *expected += 1;
            seen.push((from, n, event["offset"].as_u64().unwrap()));
        }
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1], "both nodes deliver one order");
    assert!(
        orders[0].windows(2).all(|w| w[0].2 < w[1].2),
        "offsets rise"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_only_to_channels_it_has_subscribers_for() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let live = "sigmahub.live.orders";
    let mut on_a = a.client().await;
    on_a.subscribe(&["orders"]).await;

    let subs_a = nats.subscriptions_of("sigmahub a").await;
    let subs_b = nats.subscriptions_of("sigmahub b").await;
    assert!(subs_a.iter().any(|s| s == live), "{subs_a:?}");
    assert!(!subs_b.iter().any(|s| s == live), "{subs_b:?}");
    // Both listen to their default channel.
    assert!(
        subs_b.iter().any(|s| s == "sigmahub.live.notification"),
        "{subs_b:?}"
    );

    // Published on b, which has no subscriber and so receives nothing of it, it still
    // reaches a's client.
    b.publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    assert_eq!(on_a.recv_type("orders").await["data"]["n"], 1);

    // When a's last subscriber leaves, a stops listening (after a short linger).
    on_a.close().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let subs = nats.subscriptions_of("sigmahub a").await;
        if !subs.iter().any(|s| s == live) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a still listens: {subs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_from_the_stream() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut on_a = a.client().await;
    let reply = on_a.subscribe(&["orders"]).await;
    let epoch = reply["data"]["epoch"].as_str().unwrap().to_owned();
    for n in 0..3 {
        a.publish(&json!({"type": "orders", "data": {"n": n}}))
            .await;
    }
    let mut seen = 0;
    for n in 0..3 {
        let event = on_a.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n);
        seen = event["offset"].as_u64().unwrap();
    }
    on_a.close().await;
    // Missed while away, some through each node; b follows no one on `orders`.
    for n in 3..7 {
        let via = if n % 2 == 0 { &a } else { &b };
        via.publish(&json!({"type": "orders", "data": {"n": n}}))
            .await;
    }

    let mut on_b = b.client().await;
    on_b.send(&json!({"type": "subscribe", "data": {
        "channels": ["orders"], "since": {"orders": seen}, "epoch": epoch}}))
        .await;
    let reply = on_b.recv_type("subscribe_response").await;
    assert_eq!(
        reply["data"]["recovery"]["orders"],
        json!({"recovered": true, "replayed": 4}),
        "{reply}"
    );
    assert_eq!(
        reply["data"]["epoch"],
        epoch.as_str(),
        "one epoch across nodes"
    );
    a.publish(&json!({"type": "orders", "data": {"n": 7}}))
        .await;
    let mut last = 0;
    for n in 3..8 {
        let event = on_b.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n);
        last = event["offset"].as_u64().unwrap();
    }

    // Up to date, on a third node that has never seen the channel: nothing to replay, and
    // that is a complete recovery.
    let c = node(&nats, "c").await;
    let mut on_c = c.client().await;
    on_c.send(&json!({"type": "subscribe", "data": {
        "channels": ["orders"], "since": {"orders": last}, "epoch": epoch}}))
        .await;
    let reply = on_c.recv_type("subscribe_response").await;
    assert_eq!(
        reply["data"]["recovery"]["orders"],
        json!({"recovered": true, "replayed": 0}),
        "{reply}"
    );
}

/// What each node's subscriber gets when nats-server dies mid-stream and comes back:
/// everything published while it is up, once and in order, on every node; what is
/// published on a node during the outage, on that node only; and a `connection_error`,
/// then a `notification`, about the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_nats_outage_nodes_serve_local_publishes_and_resume_after() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let with_defaults = |name: &'static str| {
        let url = url.clone();
        move |c: &mut sigmahub::Config| {
            c.cluster.nats_url = Some(url);
            c.cluster.node_name = Some(name.into());
            c.default_subscriptions = vec!["notification".into(), "connection_error".into()];
        }
    };
    let a = TestServer::with(with_defaults("a")).await;
    let b = TestServer::with(with_defaults("b")).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["orders"]).await;
    on_b.subscribe(&["orders"]).await;
    let orders = |n: u64| json!({"type": "orders", "data": {"n": n}});

    // Up: through the cluster, to both.
    for n in 0..5 {
        let (_, reply) = a.publish(&orders(n)).await;
        assert!(reply["offsets"].is_array(), "{reply}");
    }
    for client in [&mut on_a, &mut on_b] {
        for n in 0..5 {
            assert_eq!(client.recv_type("orders").await["data"]["n"], n);
        }
    }

    // Down: each node says so, and serves what is published on it, to its own clients.
    nats.kill();
    for client in [&mut on_a, &mut on_b] {
        let error = client.recv_type("connection_error").await;
        assert_eq!(error["data"]["reason"], "cluster_disconnected", "{error}");
    }
    for n in 5..8 {
        let (status, reply) = a.publish(&orders(n)).await;
        assert_eq!(status, 200);
        assert_eq!(reply["delivered"], 1, "local only: {reply}");
        assert!(reply.get("offsets").is_none());
    }
    for n in 5..8 {
        let event = on_a.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n);
        assert!(event.get("offset").is_none(), "not in the stream: {event}");
    }

    // Back: both nodes reconnect by themselves and the cluster path resumes.
    nats.restart();
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(reconnected(client).await["data"]["level"], "info");
    }
    for n in 8..11 {
        let (_, reply) = b.publish(&orders(n)).await;
        assert!(reply["offsets"].is_array(), "{reply}");
    }
    // b never saw 5..8 (published on a during the outage); nothing is repeated.
    for (client, first) in [(&mut on_a, 8), (&mut on_b, 8)] {
        for n in first..11 {
            assert_eq!(client.recv_type("orders").await["data"]["n"], n);
        }
    }
    let (_, stats) = a.request("GET", "/api/v1/stats", Vec::new()).await;
    assert_eq!(stats["cluster"]["connected"], true, "{stats}");
}

/// One node cut off while NATS stays up and others publish: when it is back, it reads the
/// missed events back from the stream (on reconnection, and whenever a live event shows a
/// gap). Its subscriber misses nothing and sees nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_fills_the_gap_from_the_stream() {
    let nats = NatsServer::start();
    let proxy = common::nats::Proxy::start(nats.port).await;
    let a = node(&nats, "a").await;
    let b = node_behind(&proxy, "b").await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["orders"]).await;
    let orders = |n: u64| json!({"type": "orders", "data": {"n": n}});
    a.publish(&orders(0)).await;
    assert_eq!(on_b.recv_type("orders").await["data"]["n"], 0);

    proxy.cut();
    on_b.recv_type("connection_error").await;
    for n in 1..4 {
        let (_, reply) = a.publish(&orders(n)).await;
        assert!(reply["offsets"].is_array(), "a is still linked: {reply}");
    }
    proxy.restore();
    reconnected(&mut on_b).await;
    // Read back on reconnection, before any new event comes to show the gap.
    let mut last = 0;
    for n in 1..4 {
        let event = on_b.recv_type("orders").await;
        assert_eq!(event["data"]["n"], n, "{event}");
        let offset = event["offset"].as_u64().unwrap();
        assert!(offset > last);
        last = offset;
    }
    a.publish(&orders(4)).await;
    let event = on_b.recv_type("orders").await;
    assert_eq!(event["data"]["n"], 4, "nothing twice: {event}");
}

/// A silent cut (no reset, no FIN: the link just stops passing bytes) is noticed by the
/// node's pings; meanwhile a publish on it waits for its acknowledgement a bounded time and
/// is then delivered on that node, never lost; after the link is back, publishes go
/// through the stream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_is_noticed_and_publishes_on_the_cut_node_still_deliver() {
    let nats = NatsServer::start();
    let proxy = common::nats::Proxy::start(nats.port).await;
    let b = node_behind(&proxy, "b").await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["orders"]).await;

    proxy.stall();
    let (status, reply) = b
        .publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["delivered"], 1,
        "delivered here, without the stream: {reply}"
    );
    let event = on_b.recv_type("orders").await;
    assert_eq!(event["data"]["n"], 1);
    assert!(event.get("offset").is_none(), "not stored: {event}");
    on_b.recv_type("connection_error").await;

    proxy.restore();
    reconnected(&mut on_b).await;
    let (_, reply) = b
        .publish(&json!({"type": "orders", "data": {"n": 2}}))
        .await;
    assert!(
        reply["offsets"].is_array(),
        "through the stream again: {reply}"
    );
    let event = on_b.recv_type("orders").await;
    assert_eq!(event["data"]["n"], 2);
    assert!(event["offset"].is_u64(), "{event}");
}

/// A subscribe is in effect across the cluster when it is answered, even over a slow link
/// to NATS: an event published on another node right after the answer is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_over_a_slow_link_is_in_effect_when_answered() {
    let nats = NatsServer::start();
    let slow =
        common::nats::Proxy::with_latency(nats.port, std::time::Duration::from_millis(60)).await;
    let a = node(&nats, "a").await;
    let b = node_on(slow.url(), "b", &[]).await;
    let mut on_b = b.client().await;
    for round in 0..3 {
        let channel = format!("orders{round}");
        let reply = on_b.subscribe(&[channel.as_str()]).await;
        assert_eq!(reply["data"]["success"], true);
        a.publish(&json!({"type": channel, "data": {"round": round}}))
            .await;
        assert_eq!(on_b.recv_type(&channel).await["data"]["round"], round);
    }
}

/// `GET /api/v1/stats` of a node run as a binary.
async fn stats_of(node: &common::binary::Binary) -> Value {
    let (status, _, body) =
        common::request_raw_at(node.addr, "GET", "/api/v1/stats", Vec::new(), &[]).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Waits until exactly one of `nodes` leads the pollers; returns its index.
async fn leader_among(nodes: &[&common::binary::Binary]) -> usize {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if stats_of(node).await["cluster"]["leader"] == true {
                leaders.push(i);
            }
        }
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// One node polls the upstreams (here: the host); the others get its snapshots, so a
/// subscriber anywhere gets the same status. When the leader is killed (SIGKILL, real
/// processes), another node takes over within seconds; when one is stopped cleanly it
/// hands over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_polls_and_another_takes_over_when_it_is_killed() {
    use common::binary::Binary;
    let nats = NatsServer::start();
    let url = nats.url();
    let spawn = |name: &str| {
        Binary::spawn(&[
            "--cluster-nats-url",
            &url,
            "--cluster-node-name",
            name,
            "--host-status-interval",
            "500ms",
            "--default-subscriptions",
            "system.status",
        ])
    };
    let mut nodes = vec![spawn("a"), spawn("b"), spawn("c")];

    let leader = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
    let follower = (leader + 1) % 3;
    let stats = stats_of(&nodes[follower]).await;
    assert_eq!(
        stats["upstream"]["breakers"],
        json!({}),
        "a follower polls: {stats}"
    );
    // The follower polls nothing itself, yet its cache and its subscribers get the status.
    let (status, _, _) = common::request_raw_at(
        nodes[follower].addr,
        "GET",
        "/api/v1/snapshot/system.status",
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", nodes[follower].addr))
        .await
        .unwrap();
    async fn next_status(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Value {
        use futures_util::StreamExt;
        loop {
            let message = tokio::time::timeout(common::DEADLINE, ws.next())
                .await
                .expect("a status in time")
                .unwrap()
                .unwrap();
            if let Ok(text) = message.to_text() {
                let value: Value = serde_json::from_str(text).unwrap();
                if value["type"] == "system.status" {
                    return value;
                }
            }
        }
    }
    next_status(&mut ws).await;

    // Killed: no resignation; its key expires and another node takes it.
    let killed_at = std::time::Instant::now();
    nodes.remove(leader).kill();
    let new_leader = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
    // leader_among waits at most 20 s; the key lives 5 s. The figure goes in the log.
    println!("takeover after SIGKILL: {:?}", killed_at.elapsed());
    // Status keeps coming to the same subscriber (whichever node now polls).
    let before = next_status(&mut ws).await["timestamp"].clone();
    loop {
        if next_status(&mut ws).await["timestamp"] != before {
            break;
        }
    }

    // Stopped cleanly: it resigns (without waiting for its key to expire), and the last
    // node takes over.
    let stopped_at = std::time::Instant::now();
    let logs = nodes.remove(new_leader).stop();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "resigned the poller leadership"),
        "no resignation in the logs"
    );
    leader_among(&nodes.iter().collect::<Vec<_>>()).await;
    println!("takeover after SIGTERM: {:?}", stopped_at.elapsed());
}

/// A client's own `publish` over the socket reaches every node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_publish_reaches_every_node() {
    const KEY: &str = "cluster-test-key-0123456789";
    let nats = NatsServer::start();
    let keyed = |name: &'static str| {
        let url = nats.url();
        move |c: &mut sigmahub::Config| {
            c.cluster.nats_url = Some(url);
            c.cluster.node_name = Some(name.into());
            c.default_subscriptions = vec![];
            c.auth.publish_keys = vec![KEY.into()];
        }
    };
    let a = TestServer::with(keyed("a")).await;
    let b = TestServer::with(keyed("b")).await;
    let mut on_b = b.connect_with(&format!("?token={KEY}"), &[]).await.unwrap();
    on_b.recv_type("notification").await;
    on_b.subscribe(&["orders"]).await;
    let mut publisher = a.connect_with(&format!("?token={KEY}"), &[]).await.unwrap();
    publisher.recv_type("notification").await;
    publisher
        .send(&json!({"type": "publish", "correlation_id": 7,
            "data": {"type": "orders", "data": {"from": "a's socket"}}}))
        .await;
    let reply = publisher.recv_type("publish_response").await;
    assert_eq!(reply["correlation_id"], 7);
    assert!(reply["data"]["offsets"].is_array(), "{reply}");
    let event = on_b.recv_type("orders").await;
    assert_eq!(event["data"]["from"], "a's socket");
    assert_eq!(event["offset"], reply["data"]["offsets"][0]);
}

/// A node whose nats-server is gone still stops on SIGTERM within its shutdown timeout,
/// with exit 0 (the audit saw one log "shutting down", fail to resign its leadership, and
/// stay up for 38 minutes). Leader, clients and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_is_gone_still_stops_in_time() {
    use common::binary::Binary;
    let mut nats = NatsServer::start();
    let node = Binary::spawn(&[
        "--cluster-nats-url",
        &nats.url(),
        "--cluster-node-name",
        "lonely",
        "--shutdown-timeout",
        "2s",
    ]);
    leader_among(&[&node]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
        .await
        .unwrap();
    futures_util::StreamExt::next(&mut ws).await;
    nats.kill();
    common::eventually_async("the node to notice", || async {
        stats_of(&node).await["cluster"]["connected"] == false
    })
    .await;
    let (logs, took) =
        tokio::task::spawn_blocking(move || node.stop_within(std::time::Duration::from_secs(10)))
            .await
            .unwrap();
    println!("stopped in {took:?}");
    assert!(
        took < std::time::Duration::from_secs(4),
        "took {took:?} with a 2 s shutdown timeout"
    );
    assert!(logs
        .iter()
        .any(|l| l["fields"]["message"] == "shutting down: closing every client with 1001"));
    // The client was told, as on any shutdown.
    let code = loop {
        match futures_util::StreamExt::next(&mut ws).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| u16::from(f.code))
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
}

/// The same, before the node has noticed (a silent cut looks connected for a while): the
/// NATS requests give up at the shutdown deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_silently_still_stops_in_time() {
    use common::binary::Binary;
    let nats = NatsServer::start();
    let proxy = common::nats::Proxy::start(nats.port).await;
    let node = Binary::spawn(&[
        "--cluster-nats-url",
        &format!("nats://127.0.0.1:{}", proxy.port),
        "--cluster-node-name",
        "stalled",
        "--shutdown-timeout",
        "2s",
    ]);
    leader_among(&[&node]).await;
    proxy.stall();
    let (_, took) =
        tokio::task::spawn_blocking(move || node.stop_within(std::time::Duration::from_secs(10)))
            .await
            .unwrap();
    println!("stopped in {took:?}");
    assert!(
        took < std::time::Duration::from_secs(4),
        "took {took:?} with a 2 s shutdown timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_applies_where_published_and_every_node_sees_the_same_events() {
    let nats = NatsServer::start();
    let throttled = |name: &str| {
        let (url, name) = (nats.url(), name.to_owned());
        TestServer::with(move |c| {
            c.cluster.nats_url = Some(url);
            c.cluster.node_name = Some(name);
            let mut rule = sigmahub::ChannelRule::new("metrics.*");
            rule.throttle = Some(std::time::Duration::from_millis(300));
            c.channels = vec![rule];
        })
    };
    let a = throttled("a").await;
    let b = throttled("b").await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["metrics.cpu", "orders"]).await;
    on_b.subscribe(&["metrics.cpu", "orders"]).await;

    let batch: Vec<Value> = (1..=5)
        .map(|n| json!({"type": "metrics.cpu", "data": {"n": n}}))
        .collect();
    let (status, reply) = a.publish(&Value::Array(batch)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["throttled"], 4, "{reply}");
    assert_eq!(reply["offsets"].as_array().unwrap().len(), 1, "{reply}");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_type("metrics.cpu").await["data"]["n"], 1);
        assert_eq!(client.recv_type("metrics.cpu").await["data"]["n"], 5);
    }
    // Nothing else of the window: the next event either sees is a fresh one.
    b.publish(&json!({"type": "orders", "data": {"n": "last"}}))
        .await;
    for client in [&mut on_a, &mut on_b] {
        let next = client
            .recv_until("an event", |m| {
                m["type"] == "orders" || m["type"] == "metrics.cpu"
            })
            .await;
        assert_eq!(next["type"], "orders", "{next}");
    }
}

/// A node whose NATS answers but whose JetStream does not yet (nats-server restarted with
/// JetStream on, as when both start together) waits for it and joins once it answers,
/// instead of exiting; it says in its logs what it is waiting for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_jetstream_and_joins_once_it_answers() {
    use common::binary::Binary;
    let mut nats = NatsServer::reserve();
    nats.jetstream = false;
    nats.restart();
    let url = nats.url();
    let node = tokio::task::spawn_blocking(move || {
        Binary::spawn(&["--cluster-nats-url", &url, "--cluster-node-name", "early"])
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    nats.jetstream = true;
    nats.restart();
    let node = node
        .await
        .expect("the node started once JetStream answered");
    assert_eq!(stats_of(&node).await["cluster"]["connected"], true);
    let logs = node.stop();
    assert!(
        logs.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("JetStream did not answer the stream set-up"))),
        "no retry was logged"
    );
}

/// The control API is cluster-wide: a call on one node reaches the connections of every
/// node, client ids name one connection across the cluster, the answer counts the nodes
/// that answered, and the channel list sums every node's subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_on_one_node_reach_every_node() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    async fn client_with_id(node: &TestServer) -> (common::Client, String) {
        let mut client = node.raw_client().await;
        let welcome = client.recv_type("notification").await;
        let id = welcome["data"]["client_id"].as_str().unwrap().to_owned();
        (client, id)
    }
    let (mut on_a, id_on_a) = client_with_id(&a).await;
    let (mut on_b, id_on_b) = client_with_id(&b).await;
    for id in [&id_on_a, &id_on_b] {
        assert!(
            id.parse::<u64>().unwrap() > 1 << 32,
            "a cluster node numbers its clients from a random base: {id}"
        );
    }
    assert_ne!(id_on_a, id_on_b);

    // A client on b, subscribed through a.
    let (status, told) = common::http_post_json(
        a.addr,
        "/api/v1/subscribe",
        &json!({"client": id_on_b, "channels": ["orders"]}),
    )
    .await;
    assert_eq!(status, 200, "{told}");
    assert_eq!(told, json!({"connections": 1, "nodes": 2}));
    on_b.recv_type("subscribe_response").await;
    a.publish(&json!({"type": "orders", "data": {"n": 1}}))
        .await;
    assert_eq!(on_b.recv_type("orders").await["data"]["n"], 1);

    let (_, list) = common::http_get_json(b.addr, "/api/v1/channels").await;
    assert_eq!(
        list,
        json!({"channels": [
            {"channel": "notification", "subscribers": 2},
            {"channel": "orders", "subscribers": 1},
        ]})
    );

    // Anonymous connections are nobody's: a user disconnect finds none, on either node.
    let (_, told) =
        common::http_post_json(b.addr, "/api/v1/disconnect", &json!({"user": "anonymous"})).await;
    assert_eq!(told, json!({"connections": 0, "nodes": 2}));
    // A client on a, disconnected through b; the client on b stays.
    let (_, told) = common::http_post_json(
        b.addr,
        "/api/v1/disconnect",
        &json!({"client": id_on_a, "code": 4000, "reason": "moved"}),
    )
    .await;
    assert_eq!(told, json!({"connections": 1, "nodes": 2}));
    assert_eq!(on_a.closed().await, Some(4000));
    a.publish(&json!({"type": "orders", "data": {"n": 2}}))
        .await;
    assert_eq!(on_b.recv_type("orders").await["data"]["n"], 2);
}

/// Presence across nodes: a channel's members are every node's, each node's joins reach
/// the companion channel's subscribers on every node, and the members of a node that is
/// killed leave the list at once (a dead node answers nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_nodes_and_a_killed_nodes_clients_leave_with_their_events() {
    use common::binary::Binary;
    let nats = NatsServer::start();
    let url = nats.url();
    let spawn = |name: &str| {
        Binary::spawn(&[
            "--cluster-nats-url",
            &url,
            "--cluster-node-name",
            name,
            "--config",
            &presence_config(),
            "--log",
            "info,sigmahub::cluster=debug",
        ])
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let connect = |node: &Binary| format!("ws://{}/ws", node.addr);
    let (ws, _) = tokio_tungstenite::connect_async(connect(&a)).await.unwrap();
    let mut on_a = common::Client { ws };
    on_a.recv_type("notification").await;
    on_a.subscribe(&["presence:room.blue"]).await;
    let (ws, _) = tokio_tungstenite::connect_async(connect(&b)).await.unwrap();
    let mut on_b = common::Client { ws };
    let id_on_b = on_b.recv_type("notification").await["data"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    on_b.subscribe(&["room.blue"]).await;

    // b's join reaches a's watcher through the cluster.
    let join = on_a
        .recv_until("b's join", |m| {
            m["type"] == "presence:room.blue" && m["data"]["client"] == id_on_b.as_str()
        })
        .await;
    assert_eq!(join["data"]["action"], "join");
    // A member on a too.
    let (ws, _) = tokio_tungstenite::connect_async(connect(&a)).await.unwrap();
    let mut member_on_a = common::Client { ws };
    member_on_a.recv_type("notification").await;
    member_on_a.subscribe(&["room.blue"]).await;
    let presence = |node: &Binary| {
        let addr = node.addr;
        async move {
            common::http_get_json(addr, "/api/v1/channels/room.blue/presence")
                .await
                .1
        }
    };
    let list = presence(&a).await;
    assert_eq!(
        (list["count"].clone(), list["nodes"].clone()),
        (json!(2), json!(2)),
        "{list}"
    );
    // Both nodes say every second that they answer: once a has listened for a beat and a
    // half, its gatherings end when both have answered, not at the end of their window.
    let message = |line: &Value| line["fields"]["message"].as_str().unwrap_or("").to_owned();
    let ended_early = |nodes: u64| {
        let a = &a;
        move || async move {
            let list = presence(a).await;
            list["nodes"] == nodes
                && a.logs().iter().any(|l| {
                    message(l) == "every live node answered" && l["fields"]["nodes"] == nodes
                })
        }
    };
    common::eventually_async("a gathering ended by both nodes' answers", ended_early(2)).await;

    b.kill();
    let list = presence(&a).await;
    assert_eq!(
        (list["count"].clone(), list["nodes"].clone()),
        (json!(1), json!(1)),
        "{list}"
    );
    // Until b has been silent for 3 s it is waited for (the window ends the gathering);
    // then a alone is enough.
    let late = |l: &Value| message(l) == "nodes that did not answer within the window";
    let waited = a.wait_for_log("b waited for", late);
    assert!(
        waited["fields"]["waiting"]
            .as_str()
            .unwrap_or("")
            .contains('b'),
        "{waited}"
    );
    common::eventually_async("a gathering ended by a's answer alone", ended_early(1)).await;

    // b cannot say its member left; once b has been silent 3 s, a (the one live node)
    // says so for it, through the stream, to every watcher.
    let leave = on_a
        .recv_until("b's member leaving", |m| {
            m["type"] == "presence:room.blue"
                && m["data"]["action"] == "leave"
                && m["data"]["client"] == id_on_b.as_str()
        })
        .await;
    assert_eq!(leave["data"]["user"], "anonymous", "{leave}");
    let gone = a.wait_for_log("b's members announced", |l| {
        message(l) == "a node is gone; its presence members leave"
    });
    assert_eq!(gone["fields"]["members"], 1, "{gone}");
}

/// The other nodes hear of a member before any subscriber can see it join, and forget it
/// only once its leave is stored: a node that dies in between has its member announced
/// as leaving, never kept. Read on NATS itself, where one subscriber sees the roster's
/// messages and the stream's in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_hear_of_a_join_before_it_is_published_and_of_a_leave_after() {
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let node = presence_node(nats.url(), "a").await;
    let observer = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = observer.subscribe("sigmahub.>").await.unwrap();
    observer.flush().await.unwrap();

    let mut member = node.client().await;
    member.subscribe(&["room.blue"]).await;
    member
        .send(&json!({"type": "unsubscribe", "data": {"channels": ["room.blue"]}}))
        .await;
    let mut order = Vec::new();
    while order.len() < 4 {
        let message = common::within(seen.next()).await.unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        match message.subject.as_str() {
            "sigmahub.roster" => order.push(format!("told {}", body["change"]["action"])),
            "sigmahub.ev.presence:room.blue" => {
                order.push(format!("published {}", body["data"]["action"]));
            }
            _ => {}
        }
    }
    assert_eq!(
        order,
        [
            r#"told "join""#,
            r#"published "join""#,
            r#"published "leave""#,
            r#"told "leave""#
        ]
    );
}

/// A client that subscribes and at once unsubscribes has its join and leave published in
/// that order, so a watcher ends where the list is: without it. Ten times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_join_and_leave_are_published_in_order() {
    let nats = NatsServer::start();
    let node = presence_node(nats.url(), "a").await;
    let mut watcher = node.client().await;
    watcher.subscribe(&["presence:room.blue"]).await;
    let mut member = node.client().await;
    for _ in 0..10 {
        member
            .send(&json!({"type": "subscribe", "data": {"channels": ["room.blue"]}}))
            .await;
        member
            .send(&json!({"type": "unsubscribe", "data": {"channels": ["room.blue"]}}))
            .await;
    }
    let mut actions = Vec::new();
    while actions.len() < 20 {
        let change = watcher.recv_type("presence:room.blue").await;
        actions.push(change["data"]["action"].as_str().unwrap().to_owned());
    }
    let expected: Vec<&str> = ["join", "leave"].repeat(10);
    assert_eq!(actions, expected);
    let (_, list) = common::http_get_json(node.addr, "/api/v1/channels/room.blue/presence").await;
    assert_eq!(list["count"], 0, "{list}");
}

/// A node on NATS at `url` named `name`, with presence on `room.*`.
async fn presence_node(url: String, name: &str) -> TestServer {
    let name = name.to_owned();
    TestServer::with(move |c| {
        c.cluster.nats_url = Some(url);
        c.cluster.node_name = Some(name);
        let mut rule = sigmahub::ChannelRule::new("room.*");
        rule.presence = Some(true);
        c.channels = vec![rule];
    })
    .await
}

/// A config file with presence on `room.*`, written once per test binary.
fn presence_config() -> String {
    let path = std::env::temp_dir().join(format!("sigmahub-presence-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[channels]]\npattern = \"room.*\"\npresence = true\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A node cut off from NATS for longer than the silence is taken for gone: its members
/// are announced as leaving. When its link is back it announces them joining again, so a
/// watcher that follows presence by its events ends where the list is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_has_its_members_leave_then_join_again() {
    taken_for_gone_then_back(|proxy| proxy.cut()).await;
}

/// A link that only stalls makes the others take the node for gone all the same; once it
/// passes bytes again, the node's members are announced joining again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_has_its_members_leave_then_join_again() {
    taken_for_gone_then_back(|proxy| proxy.stall()).await;
}

/// A node told on `{prefix}.gone` that it was taken for gone (its beats were late, say)
/// while it is still here announces its members joining again. Here the test says so
/// itself, through NATS, naming b as its beats name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_it_was_taken_for_gone_announces_its_members_again() {
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let a = presence_node(nats.url(), "a").await;
    let b = presence_node(nats.url(), "b").await;
    let (mut watcher, _member, id) = watched_member(&a, &b).await;
    let joined = change(&id, "join");

    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let mut beats = nats_client.subscribe("sigmahub.alive").await.unwrap();
    let b_instance = loop {
        let beat = common::within(beats.next()).await.unwrap();
        let instance = String::from_utf8(beat.payload.to_vec()).unwrap();
        if instance.starts_with("b#") {
            break instance;
        }
    };
    nats_client
        .publish("sigmahub.gone", b_instance.into())
        .await
        .unwrap();
    let again = watcher.recv_until("the member joining again", joined).await;
    assert_eq!(again["data"]["user"], "anonymous", "{again}");
}

/// A watcher of `presence:room.blue` on `a`, and a member of `room.blue` on `b` whose
/// join the watcher has seen; with the member's client id.
async fn watched_member(
    a: &TestServer,
    b: &TestServer,
) -> (common::Client, common::Client, String) {
    let mut watcher = a.client().await;
    watcher.subscribe(&["presence:room.blue"]).await;
    let mut member = b.raw_client().await;
    let id = member.recv_type("notification").await["data"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    member.subscribe(&["room.blue"]).await;
    watcher
        .recv_until("the member's join", change(&id, "join"))
        .await;
    (watcher, member, id)
}

/// Whether a message is client `id`'s `action` on `presence:room.blue`.
fn change(id: &str, action: &'static str) -> impl Fn(&Value) -> bool {
    let id = id.to_owned();
    move |m: &Value| {
        m["type"] == "presence:room.blue"
            && m["data"]["action"] == action
            && m["data"]["client"] == id.as_str()
    }
}

/// b behind a proxy that `interrupt` breaks, then restored: a's watcher sees b's member
/// join, leave, and join again; the list counts it.
async fn taken_for_gone_then_back(interrupt: impl FnOnce(&common::nats::Proxy)) {
    let nats = NatsServer::start();
    let proxy = common::nats::Proxy::start(nats.port).await;
    let a = presence_node(nats.url(), "a").await;
    let b = presence_node(proxy.url(), "b").await;
    let (mut watcher, _member, id) = watched_member(&a, &b).await;

    interrupt(&proxy);
    watcher
        .recv_until("the cut-off node's member leaving", change(&id, "leave"))
        .await;
    proxy.restore();
    watcher
        .recv_until("the member joining again", change(&id, "join"))
        .await;
    common::eventually_async("the member listed again", || async {
        let (_, list) = common::http_get_json(a.addr, "/api/v1/channels/room.blue/presence").await;
        list["count"] == 1
    })
    .await;
}
