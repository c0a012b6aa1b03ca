//! Structured logs from the binary (`--log-format json`): one line per connect and
//! disconnect with the connection's id, peer, reason and duration, none per delivered frame,
//! and the per-connection span when it is asked for.

mod common;

use common::binary::Binary;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn connects_and_disconnects_are_logged_as_fields_and_frames_are_not() {
    let server = Binary::spawn(&["--host-enabled", "false"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    let welcome: Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    let id: u64 = welcome["data"]["client_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // 50 events delivered: no log line for any of them.
    let client = publish_notifications(&server, 50).await;
    for _ in 0..50 {
        ws.next().await.unwrap().unwrap();
    }
    ws.send(Message::Close(None)).await.unwrap();
    while ws.next().await.is_some() {}

    let disconnected = server.wait_for_log("client disconnected", |l| {
        message(l) == "client disconnected" && l["fields"]["conn"] == id
    });
    let logs = server.stop();
    let connected = logs
        .iter()
        .find(|l| message(l) == "client connected" && l["fields"]["conn"] == id)
        .expect("a connect line");
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["fields"]["peer"], "127.0.0.1");
    assert_eq!(connected["fields"]["subject"], "anonymous");
    assert_eq!(connected["fields"]["reconnection"], false);
    assert_eq!(disconnected["fields"]["peer"], "127.0.0.1");
    assert_eq!(disconnected["fields"]["reason"], "client_closed");
    assert_eq!(disconnected["fields"]["code"], 1000);
    assert!(disconnected["fields"]["duration_ms"].is_u64());
    // No span unless asked for: the connect line carries its own fields.
    assert!(connected.get("span").is_none(), "{connected}");

    let about_it = logs.iter().filter(|l| l["fields"]["conn"] == id).count();
    assert_eq!(
        about_it, 2,
        "only the connect and disconnect lines: {logs:#?}"
    );
    assert_eq!(client, 50);
}

#[tokio::test]
async fn the_connection_span_carries_id_and_peer_when_asked_for() {
    let server = Binary::spawn(&[
        "--host-enabled",
        "false",
        "--log",
        "info,sigmahub::conn=debug",
    ]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    while ws.next().await.is_some() {}
    let line = server.wait_for_log("client disconnected", |l| {
        message(l) == "client disconnected"
    });
    server.stop();
    assert_eq!(line["span"]["name"], "conn", "{line}");
    assert_eq!(line["span"]["peer"], "127.0.0.1");
    assert_eq!(line["span"]["id"], line["fields"]["conn"]);
}

/// Publishes `n` `notification` events through the HTTP API; returns how many were queued.
async fn publish_notifications(server: &Binary, n: usize) -> u64 {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "notification", "data": {"n": i}}))
        .collect();
    let (status, body) =
        common::http_post_json(server.addr, "/api/v1/publish", &json!(events)).await;
    assert_eq!(status, 200, "{body}");
    body["delivered"].as_u64().unwrap()
}
