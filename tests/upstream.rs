//! Pollers, circuit breakers and the snapshot cache against a real JSON-RPC engine (an HTTP
//! server started here), with real WebSocket clients: seed 003's scenarios and more.

mod common;

use std::time::Duration;

use common::engine::{default_answer, Behavior, Engine};
use common::{Client, TestServer};
use serde_json::Value;

async fn server_for(engine: &Engine, threshold: u32, reset: Duration) -> TestServer {
    let url = engine.url();
    TestServer::with(move |c| {
        c.engine.url = Some(url);
        c.engine.poll_interval = Duration::from_millis(100);
        c.engine.timeout = Duration::from_millis(500);
        c.engine.breaker_threshold = threshold;
        c.engine.breaker_reset = reset;
    })
    .await
}

/// The next `system.status` event.
async fn status(client: &mut Client) -> Value {
    client.recv_type("system.status").await
}

/// Reads until a `notification` about `method`'s breaker reaching `state`.
async fn breaker_event(client: &mut Client, method: &str, state: &str) -> Value {
    client
        .recv_until(&format!("{method}'s breaker to be {state}"), |n| {
            n["type"] == "notification"
                && n["data"]["breaker"]["method"] == method
                && n["data"]["breaker"]["state"] == state
        })
        .await
}

/// The next `system.status` event without stale fields.
async fn fresh_status(client: &mut Client) -> Value {
    client
        .recv_until("a fresh system.status", |s| {
            s["type"] == "system.status" && s["data"].get("stale").is_none()
        })
        .await
}

#[tokio::test]
async fn normal_operation_sends_fresh_engine_data() {
    let engine = Engine::start().await;
    let server = server_for(&engine, 5, Duration::from_secs(300)).await;
    let mut client = server.client().await;

    // system.status: the engine's answer in seed 000's shape, field by field.
    let s = status(&mut client).await;
    let d = &s["data"];
    assert_eq!(d["hostname"], "vm", "{s}");
    assert_eq!(d["uptime"], 1014);
    assert_eq!(d["cpu_usage"], 21.9);
    assert_eq!(d["memory_used"], 1_248_985_088u64);
    assert_eq!(d["memory_total"], 25_276_059_648u64);
    assert_eq!(d["memory_pct"], 4.9);
    assert_eq!(
        d["load_average"],
        serde_json::json!([1.86669921875, 0.9345703125, 0.6357421875])
    );
    assert_eq!(
        d["timestamp"], 1_796_107_872,
        "Unix seconds of the engine's reading"
    );
    assert_eq!(d["platform"], "Linux", "extras ride along");
    assert!(d.get("stale").is_none(), "{s}");

    // compression.update: one event per job, then the summary; read one whole cycle.
    client
        .recv_until("a compression summary", |m| {
            m["type"] == "compression.update" && m["data"].get("jobs").is_some()
        })
        .await;
    let job1 = client.recv_type("compression.update").await;
    let job2 = client.recv_type("compression.update").await;
    let summary = client.recv_type("compression.update").await;
    let j = &job1["data"];
    assert_eq!(
        j["job_id"], "2e877596-d8ef-4e14-9235-3e6d8d59df76",
        "{job1}"
    );
    for field in [
        "status",
        "job_type",
        "priority",
        "progress",
        "phase",
        "bytes_processed",
        "bytes_total",
        "compression_ratio",
        "elapsed_seconds",
        "eta_seconds",
        "input_path",
        "output_path",
    ] {
        assert!(j.get(field).is_some(), "{field} missing: {job1}");
    }
    assert_eq!(j["compression_ratio"], 1.0);
    assert!(j["timestamp"].as_u64().unwrap() > 1_700_000_000, "{job1}");
    assert_eq!(
        job2["data"]["job_id"],
        "6945b61a-4dc2-4300-893a-ec3d189e582b"
    );
    assert_eq!(summary["data"]["total_pending"], 2);
    assert_eq!(summary["data"]["total_jobs"], 2);
    assert_eq!(summary["data"]["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(summary["data"]["jobs"][0]["compression_ratio"], 1.0);

    // agent.status: the engine's 40 agents, each in the protocol's shape (sent when they
    // change: a new client gets them all in its snapshot).
    let mut client = server.client().await;
    let mut agents = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    while agents.len() < 40 {
        assert!(start.elapsed() < common::DEADLINE, "agents: {agents:?}");
        let a = client.recv_type("agent.status").await;
        let d = &a["data"];
        assert!(d["status"].is_string(), "{a}");
        assert_eq!(d["current_task"], Value::Null, "{a}");
        assert!(d["memory_usage"].is_number(), "{a}");
        assert!(d["timestamp"].is_u64(), "{a}");
        agents.insert(d["agent_id"].as_str().unwrap().to_owned());
    }
    assert!(agents.contains("agent-001") && agents.contains("agent-040"));

    // agent.summary, for clients of SigmaVault's own hub.
    let mut client = server.client().await;
    client.subscribe(&["agent.summary"]).await;
    let summary = client.recv_type("agent.summary").await;
    assert_eq!(summary["data"]["total_agents"], 40, "{summary}");
    assert_eq!(summary["data"]["agents"]["agent-001"]["name"], "TENSOR");
    common::eventually("one health check", || engine.calls("health.check") == 1).await;
}

#[tokio::test]
async fn a_single_failure_sends_stale_data_then_fresh_again() {
    let engine = Engine::start().await;
    // A threshold out of reach: this test is about one failure, not the breaker.
    let server = server_for(&engine, 1_000, Duration::from_secs(300)).await;
    let mut client = server.client().await;
    let fresh = status(&mut client).await;
    assert!(fresh["data"].get("stale").is_none());

    engine.set("system.status", Behavior::HttpError(500));
    let mut stale = None;
    let mut report = None;
    let start = std::time::Instant::now();
    while stale.is_none() || report.is_none() {
        assert!(
            start.elapsed() < common::DEADLINE,
            "no stale event or no report"
        );
        let m = client.recv().await;
        match m["type"].as_str() {
            Some("system.status") if m["data"]["stale"] == true => stale = Some(m),
            Some("rpc_error") if m["data"]["method"] == "system.status" => report = Some(m),
            _ => {}
        }
    }
    engine.set(
        "system.status",
        Behavior::Answer(default_answer("system.status").unwrap()),
    );
    let (stale, report) = (stale.unwrap(), report.unwrap());
    assert_eq!(stale["data"]["error_code"], "SYSTEM_STATUS_FAILED");
    assert_eq!(stale["data"]["hostname"], "vm", "the cached data goes on");
    assert!(stale["data"]["last_update"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(report["data"]["reason"], "rpc_failed");
    assert_eq!(report["data"]["error_code"], "SYSTEM_STATUS_FAILED");
    assert_eq!(report["data"]["consecutive_failures"], 1);

    let s = fresh_status(&mut client).await;
    assert_eq!(s["data"]["hostname"], "vm");
}

/// Seed 003 scenarios 3 to 6: the breaker opens after 5 failures, serves cached data while
/// open without calling the engine, half-opens after the reset for exactly one call, and
/// closes when the engine is back.
#[tokio::test]
async fn the_breaker_opens_half_opens_and_closes() {
    let engine = Engine::start().await;
    let reset = Duration::from_secs(2);
    let server = server_for(&engine, 5, reset).await;
    let mut client = server.client().await;
    status(&mut client).await;

    engine.set("system.status", Behavior::HttpError(503));
    let opened = breaker_event(&mut client, "system.status", "open").await;
    let calls_when_open = engine.calls("system.status");
    assert_eq!(opened["data"]["level"], "warning");
    assert_eq!(opened["data"]["breaker"]["consecutive_failures"], 5);
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(
        stats["upstream"]["breakers"]["system.status"]["state"], "open",
        "{stats}"
    );
    // The other methods keep their own closed breakers.
    assert_eq!(
        stats["upstream"]["breakers"]["agents.list"]["state"],
        "closed"
    );

    // While open: cached data, CIRCUIT_BREAKER_OPEN, and no calls.
    for _ in 0..3 {
        let s = client
            .recv_until("a CIRCUIT_BREAKER_OPEN status", |s| {
                s["type"] == "system.status" && s["data"]["error_code"] == "CIRCUIT_BREAKER_OPEN"
            })
            .await;
        assert_eq!(s["data"]["stale"], true);
        assert_eq!(s["data"]["hostname"], "vm");
    }
    assert_eq!(
        engine.calls("system.status"),
        calls_when_open,
        "called while open"
    );

    // After the reset: one trial call, which fails and re-opens the breaker.
    breaker_event(&mut client, "system.status", "half_open").await;
    breaker_event(&mut client, "system.status", "open").await;
    assert_eq!(
        engine.calls("system.status"),
        calls_when_open + 1,
        "exactly one trial"
    );

    // The engine is back: the next trial closes the breaker, and fresh data flows.
    engine.set(
        "system.status",
        Behavior::Answer(default_answer("system.status").unwrap()),
    );
    let closed = breaker_event(&mut client, "system.status", "closed").await;
    assert_eq!(closed["data"]["level"], "info");
    fresh_status(&mut client).await;
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(
        stats["upstream"]["breakers"]["system.status"]["state"],
        "closed"
    );
    assert_eq!(
        stats["upstream"]["snapshots"]["system.status"]["stale"],
        false
    );
}

#[tokio::test]
async fn rpc_errors_are_reported_at_a_bounded_rate() {
    let engine = Engine::start().await;
    let server = server_for(&engine, 1_000, Duration::from_secs(300)).await;
    let mut client = server.client().await;
    client.recv_type("agent.status").await; // cached once before the outage
    engine.set("agents.list", Behavior::RpcError(-32000));
    let failing_from = engine.calls("agents.list");
    // Ten failed polls, then a marker: everything the outage sent is before it.
    common::eventually("ten failed polls", || {
        engine.calls("agents.list") >= failing_from + 11
    })
    .await;
    server
        .publish(&serde_json::json!({"type": "notification", "data": {"marker": true}}))
        .await;
    let mut stale_agents = std::collections::BTreeMap::<String, usize>::new();
    let mut reports = 0;
    loop {
        let m = client.recv().await;
        match m["type"].as_str() {
            Some("agent.status") if m["data"]["stale"] == true => {
                assert_eq!(m["data"]["error_code"], "AGENT_STATUS_FAILED");
                let id = m["data"]["agent_id"].as_str().unwrap().to_owned();
                *stale_agents.entry(id).or_default() += 1;
            }
            Some("rpc_error") => reports += 1,
            Some("notification") if m["data"]["marker"] == true => break,
            _ => {}
        }
    }
    // One report, not ten; each of the 40 agents marked stale once, not once per poll.
    assert_eq!(reports, 1);
    assert_eq!(stale_agents.len(), 40, "{stale_agents:?}");
    assert!(stale_agents.values().all(|n| *n == 1), "{stale_agents:?}");
}

/// An agent's event goes out when the agent changed, not on every poll.
#[tokio::test]
async fn agent_events_are_sent_when_the_agent_changes() {
    let engine = Engine::start().await;
    let server = server_for(&engine, 5, Duration::from_secs(300)).await;
    let mut client = server.client().await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 40 {
        let a = client.recv_type("agent.status").await;
        seen.insert(a["data"]["agent_id"].as_str().unwrap().to_owned());
    }
    let mut agents = default_answer("agents.list").unwrap();
    agents[6]["status"] = "busy".into();
    engine.set("agents.list", Behavior::Answer(agents));
    let from = engine.calls("agents.list");
    common::eventually("five more polls", || {
        engine.calls("agents.list") >= from + 6
    })
    .await;
    server
        .publish(&serde_json::json!({"type": "notification", "data": {"marker": true}}))
        .await;
    let mut sent = Vec::new();
    loop {
        let m = client.recv().await;
        if m["type"] == "agent.status" {
            sent.push((m["data"]["agent_id"].clone(), m["data"]["status"].clone()));
        }
        if m["type"] == "notification" && m["data"]["marker"] == true {
            break;
        }
    }
    // Five polls: the changed agent once, and nobody else (the first polls before the
    // change may still have been in flight: they repeat nothing either).
    assert_eq!(sent, [("agent-007".into(), "busy".into())], "{sent:?}");
}

#[tokio::test]
async fn a_hung_engine_delays_neither_heartbeats_nor_publishes() {
    let engine = Engine::start().await;
    for method in [
        "system.status",
        "compression.queue.running",
        "agents.list",
        "health.check",
    ] {
        engine.set(method, Behavior::Hang);
    }
    let url = engine.url();
    let server = TestServer::with(move |c| {
        c.engine.url = Some(url);
        c.engine.timeout = Duration::from_millis(300);
        c.engine.poll_interval = Duration::from_millis(100);
        c.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client.recv_type("heartbeat").await;
    }
    let (status, reply) = server
        .publish(&serde_json::json!({"type": "notification", "data": {"during": "outage"}}))
        .await;
    assert_eq!((status, reply["delivered"].as_u64()), (200, Some(1)));
    client
        .recv_until("the published notification", |n| {
            n["data"]["during"] == "outage"
        })
        .await;
    // The calls time out: reported as a disconnect.
    let report = client.recv_type("rpc_error").await;
    assert_eq!(report["data"]["reason"], "rpc_disconnect");
    assert_eq!(report["data"]["error_code"], "RPC_DISCONNECT");
}

#[tokio::test]
async fn a_subscriber_joining_during_an_outage_gets_the_stale_snapshot_at_once() {
    let engine = Engine::start().await;
    let server = server_for(&engine, 5, Duration::from_secs(300)).await;
    let mut first = server.client().await;
    status(&mut first).await;
    engine.set("system.status", Behavior::HttpError(500));
    breaker_event(&mut first, "system.status", "open").await;

    // The defaults start with system.status: its snapshot follows the welcome directly.
    let mut late = server.client().await;
    let s = late.recv().await;
    assert_eq!(s["type"], "system.status", "{s}");
    assert_eq!(s["data"]["stale"], true);
    assert_eq!(s["data"]["error_code"], "CIRCUIT_BREAKER_OPEN");

    // The REST API shows the same snapshot.
    let (code, snap) = server
        .request("GET", "/api/v1/snapshot/system.status", vec![])
        .await;
    assert_eq!(code, 200);
    assert_eq!(snap["stale"], true);
    assert_eq!(snap["error_code"], "CIRCUIT_BREAKER_OPEN");
    assert_eq!(snap["last_update"], s["data"]["last_update"]);
    for (key, value) in snap["items"][0].as_object().unwrap() {
        assert_eq!(&s["data"][key], value, "{key}");
    }
    let (_, all) = server.request("GET", "/api/v1/snapshot", vec![]).await;
    let types: Vec<_> = all["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].clone())
        .collect();
    assert!(types.contains(&"agent.status".into()) && types.contains(&"compression.update".into()));
    let (code, _) = server
        .request("GET", "/api/v1/snapshot/nothing.here", vec![])
        .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_method_the_engine_lacks_stops_its_poller_without_an_outage() {
    let engine = Engine::start().await;
    engine.set("agents.list", Behavior::RpcError(-32601));
    let server = server_for(&engine, 1, Duration::from_secs(300)).await;
    let _client = server.client().await;
    common::eventually("several polls", || engine.calls("system.status") >= 5).await;
    assert_eq!(engine.calls("agents.list"), 1, "polled again after -32601");
    let (_, stats) = server.request("GET", "/api/v1/stats", vec![]).await;
    assert_eq!(
        stats["upstream"]["breakers"]["agents.list"]["state"], "closed",
        "{stats}"
    );
    assert_eq!(
        stats["upstream"]["breakers"]["agents.list"]["consecutive_failures"],
        0
    );
}

#[tokio::test]
async fn the_host_source_gives_plausible_values() {
    let server = TestServer::with(|c| {
        c.host.enabled = true;
        c.host.status_interval = Duration::from_millis(100);
        c.host.storage_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = server.client().await;
    let s = status(&mut client).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(s["data"]["hostname"], hostname.trim());
    assert!(s["data"]["memory_total"].as_u64().unwrap() > 0);
    assert!(s["data"]["uptime"].as_u64().unwrap() > 0);
    assert_eq!(s["data"]["load_average"].as_array().unwrap().len(), 3);
    let storage = client.recv_type("storage.update").await;
    assert!(storage["data"]["disks"].is_array());
    let (_, snap) = server
        .request("GET", "/api/v1/snapshot/storage.update", vec![])
        .await;
    assert_eq!(snap["stale"], false);
}

/// The default breaker settings end to end, in paused time: an unreachable engine opens
/// each breaker after 5 polls (25 s); it stays open, untried, for 5 minutes; then one trial
/// call half-opens it, fails, and re-opens it.
#[tokio::test(start_paused = true)]
async fn the_default_five_minute_reset_in_paused_time() {
    // A port nothing listens on: every call fails (refused, or timed out).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v1", closed.local_addr().unwrap());
    drop(closed);
    let mut config = sigmahub::Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.host.enabled = false;
    config.engine.url = Some(url);
    let server = sigmahub::Server::bind(config).await.unwrap();
    let breakers = server.breakers();
    let hub = server.hub();
    let mut client = hub.connect().unwrap();
    client.subscribe(["notification"]);
    let _serving = tokio::spawn(server.run(std::future::pending()));

    let state = |b: &sigmahub::upstream::BreakerBoard| match b.all().get("system.status") {
        Some(s) => (format!("{:?}", s.state), s.consecutive_failures),
        None => ("not started".to_string(), 0),
    };
    // Step through paused time a second at a time, answering keep-alive pings as a live
    // client would (else the sweep closes it with 4001 after 40 s).
    let mut elapsed = 0u64;
    let outbox = client.outbox().clone();
    let step = || {
        outbox.mark_alive();
        tokio::time::sleep(Duration::from_secs(1))
    };
    while state(&breakers).0 != "Open" {
        assert!(
            elapsed < 60,
            "not open after {elapsed} s: {:?}",
            state(&breakers)
        );
        assert!(state(&breakers).1 < 5, "5 failures without opening");
        step().await;
        elapsed += 1;
    }
    assert_eq!(state(&breakers), ("Open".into(), 5));
    let opened_at = elapsed;
    // Open, untried, until the 5 minutes are over: the failure count does not move.
    while elapsed < opened_at + 299 {
        assert_eq!(state(&breakers), ("Open".into(), 5), "at {elapsed} s");
        step().await;
        elapsed += 1;
    }
    // The reset passes: one trial, which fails, and the breaker is open again.
    while state(&breakers).1 < 6 {
        assert!(elapsed < opened_at + 320, "no trial by {elapsed} s");
        step().await;
        elapsed += 1;
    }
    assert_eq!(state(&breakers), ("Open".into(), 6));

    // The notifications told clients every step.
    let mut frames = Vec::new();
    client.outbox().drain_into(&mut frames, usize::MAX);
    let states: Vec<String> = frames
        .iter()
        .filter(|f| f[0] == 0x81) // text frames; keep-alive pings are also queued
        .map(|f| {
            let start = if f[1] == 126 { 4 } else { 2 };
            let v: Value = serde_json::from_slice(&f[start..]).unwrap();
            format!(
                "{}:{}",
                v["data"]["breaker"]["method"].as_str().unwrap_or(""),
                v["data"]["breaker"]["state"].as_str().unwrap_or("")
            )
        })
        .filter(|s| s.starts_with("system.status:"))
        .collect();
    assert_eq!(
        states,
        [
            "system.status:open",
            "system.status:half_open",
            "system.status:open"
        ]
    );
}

/// An engine answer that lacks protocol fields, or has them with the wrong type, is not
/// passed on silently: what can be filled is, the rest is left out and counted.
#[tokio::test]
async fn an_engine_answer_that_lacks_fields_is_counted_not_passed_on() {
    let engine = Engine::start().await;
    let mut answer = default_answer("system.status").unwrap();
    answer.as_object_mut().unwrap().remove("memory_usage");
    answer["load_average"] = serde_json::json!("high");
    engine.set("system.status", Behavior::Answer(answer));
    let server = server_for(&engine, 5, Duration::from_secs(300)).await;
    let mut client = server.client().await;
    let s = status(&mut client).await;
    let d = &s["data"];
    assert_eq!(d["hostname"], "vm");
    for field in ["memory_used", "memory_total", "memory_pct", "load_average"] {
        assert!(d.get(field).is_none(), "{field} passed on: {s}");
    }
    let samples = common::scrape::scrape(&server).await;
    for field in ["memory_used", "memory_total", "memory_pct", "load_average"] {
        let fault = samples.iter().find(|s| {
            s.metric == "sigmahub_upstream_translation_faults_total"
                && s.labels.get("method") == Some("system.status")
                && s.labels.get("field") == Some(field)
        });
        let Some(fault) = fault else {
            panic!("no translation fault counted for {field}");
        };
        assert!(
            matches!(fault.value, prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) if n >= 1.0),
            "{fault:?}"
        );
    }
}

/// The engine's first agent, `n` times over with distinct ids.
fn agents(n: usize) -> Value {
    let first = default_answer("agents.list").unwrap()[0].clone();
    Value::Array(
        (0..n)
            .map(|i| {
                let mut agent = first.clone();
                agent["agent_id"] = format!("agent-{i:04}").into();
                agent
            })
            .collect(),
    )
}

/// Reads until every one of 500 agents was seen with `status`.
async fn read_all_agents(client: &mut Client, status: &str) {
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 500 {
        let m = client.recv().await;
        if m["type"] == "agent.status" && m["data"]["status"] == status {
            seen.insert(m["data"]["agent_id"].as_str().unwrap().to_owned());
        }
    }
}

/// 500 agents are more than a client's 256-frame queue bound: the snapshot at connect and
/// a poll that changes every agent still reach clients that read, whole, and close nobody.
#[tokio::test]
async fn five_hundred_agents_never_close_a_client_that_reads() {
    let engine = Engine::start().await;
    engine.set("agents.list", Behavior::Answer(agents(500)));
    let server = server_for(&engine, 5, Duration::from_secs(300)).await;
    common::eventually("the first agents poll", || engine.calls("agents.list") >= 2).await;
    // The snapshot at connect.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        read_all_agents(&mut client, "idle").await;
        clients.push(client);
    }
    // Every agent changes: one poll sends 500 events to each.
    let mut busy = agents(500);
    for agent in busy.as_array_mut().unwrap() {
        agent["status"] = "busy".into();
    }
    engine.set("agents.list", Behavior::Answer(busy));
    for client in &mut clients {
        read_all_agents(client, "busy").await;
    }
    let (_, stats) = common::http_get_json(server.addr, "/api/v1/stats").await;
    assert_eq!(stats["closes"]["4000"], 0, "{stats}");
}

/// `engine.url` without the `/api/v1` base: the engine answers 404 to every call. The
/// error says so, with the URL it called, and a breaker that opens on an engine that never
/// answered does not claim to serve cached data.
#[tokio::test]
async fn an_engine_url_without_its_api_base_is_named_in_the_error() {
    let engine = Engine::start().await;
    let url = format!("http://{}", engine.addr);
    let server = TestServer::with(move |c| {
        c.engine.url = Some(url);
        c.engine.poll_interval = Duration::from_millis(100);
        c.engine.breaker_threshold = 2;
    })
    .await;
    let mut client = server.client().await;
    let error = client.recv_type("rpc_error").await;
    let message = error["data"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP 404"), "{error}");
    assert!(
        message.contains(&format!("http://{}/rpc", engine.addr)),
        "{error}"
    );
    assert!(message.contains("/api/v1"), "{error}");
    let opened = breaker_event(&mut client, "system.status", "open").await;
    let text = opened["data"]["message"].as_str().unwrap();
    assert!(!text.contains("serving cached data"), "{opened}");
    assert!(text.contains("never answered"), "{opened}");
}

/// A call slower than the poll interval must not make the next tick fire at once: that
/// sent the same stale frame twice in one millisecond.
#[tokio::test]
async fn a_slow_call_sends_one_stale_frame_per_tick() {
    let engine = Engine::start().await;
    let url = engine.url();
    let server = TestServer::with(move |c| {
        c.engine.url = Some(url);
        c.engine.poll_interval = Duration::from_millis(100);
        c.engine.timeout = Duration::from_millis(250);
        // The second slow failure opens the breaker; the tick due at once then found it
        // open and re-sent the stale frame just sent.
        c.engine.breaker_threshold = 2;
    })
    .await;
    let mut client = server.client().await;
    fresh_status(&mut client).await;
    engine.set("system.status", Behavior::Hang);
    let mut stale = Vec::new();
    while stale.len() < 6 {
        let s = status(&mut client).await;
        if s["data"]["stale"] == true {
            stale.push(s);
        }
    }
    for pair in stale.windows(2) {
        assert_ne!(pair[0], pair[1], "the same stale frame twice");
    }
}

/// After an outage the engine is back within seconds: the recovery probe's health.check
/// answers, and the open breaker tries at once instead of serving cached data for the
/// 5-minute reset.
#[tokio::test]
async fn the_recovery_probe_ends_an_outage_before_the_reset() {
    let engine = Engine::start().await;
    let url = engine.url();
    let server = TestServer::with(move |c| {
        c.engine.url = Some(url);
        c.engine.poll_interval = Duration::from_millis(100);
        c.engine.breaker_threshold = 1;
        c.engine.breaker_reset = Duration::from_secs(300);
        c.engine.recovery_probe_interval = Duration::from_millis(300);
    })
    .await;
    let mut client = server.client().await;
    fresh_status(&mut client).await;
    engine.set("system.status", Behavior::HttpError(500));
    breaker_event(&mut client, "system.status", "open").await;
    let probes_before = engine.calls("health.check");
    engine.set(
        "system.status",
        Behavior::Answer(default_answer("system.status").unwrap()),
    );
    breaker_event(&mut client, "system.status", "half_open").await;
    breaker_event(&mut client, "system.status", "closed").await;
    fresh_status(&mut client).await;
    assert!(engine.calls("health.check") > probes_before);
}
