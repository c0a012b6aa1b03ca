//! `baseline`: the idiomatic broadcast server sigmahub is measured against (DESIGN.md: "at
//! least 3x the deliveries per CPU-second of an idiomatic axum + tokio-tungstenite
//! server").
//!
//! Written the way the axum and tokio examples teach it: axum's WebSocket upgrade (which is
//! tokio-tungstenite underneath), one `tokio::sync::broadcast` channel per event type in a
//! mutex-guarded map, one task per connection that selects over its socket and its
//! receivers, and each event serialized once into an `Utf8Bytes` shared by every send. It
//! speaks just enough of sigmahub's protocol for `sigmahub-perf`: `subscribe` (answered
//! with `subscribe_response`) and `POST /api/v1/publish` with an event or an array of
//! events. A receiver that falls more than the channel's capacity (256, sigmahub's queue)
//! behind is closed with code 4000, as sigmahub closes a slow consumer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures_util::stream::{SelectAll, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

/// Frames a receiver may fall behind before it is closed, as sigmahub's queue.
const CAPACITY: usize = 256;

#[derive(Debug, Parser)]
#[command(
    about = "The idiomatic axum + tokio-tungstenite broadcast server sigmahub is compared with"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12090")]
    listen: SocketAddr,
    /// Accepted and ignored: sigmahub-perf passes sigmahub's admission flags to what it spawns.
    #[arg(long, hide = true)]
    max_connections_per_ip: Option<String>,
    #[arg(long, hide = true)]
    connection_rate_per_ip: Option<String>,
}

/// Every event type's broadcast channel.
#[derive(Clone, Default)]
struct Channels(Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>);

impl Channels {
    fn sender(&self, name: &str) -> broadcast::Sender<Utf8Bytes> {
        let mut map = self.0.lock().unwrap();
        map.entry(name.to_owned())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .clone()
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/api/v1/publish", post(publish))
        .with_state(Channels::default());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(channels): State<Channels>,
) -> axum::response::Response {
    ws.on_upgrade(move |socket| connection(socket, channels))
}

/// One client: subscribe requests in, its channels' events out.
async fn connection(mut socket: WebSocket, channels: Channels) {
    let mut feeds: SelectAll<BroadcastStream<Utf8Bytes>> = SelectAll::new();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { return };
                let Message::Text(text) = message else { continue };
                let Ok(request) = serde_json::from_str::<Incoming>(&text) else { continue };
                if request.kind != "subscribe" {
                    continue;
                }
                let names: Vec<String> = request.data["channels"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                for name in &names {
                    feeds.push(BroadcastStream::new(channels.sender(name).subscribe()));
                }
                let reply = json!({"type": "subscribe_response", "data": {"success": true, "subscribed": names}});
                if socket.send(Message::text(reply.to_string())).await.is_err() {
                    return;
                }
            }
            Some(event) = feeds.next(), if !feeds.is_empty() => match event {
                Ok(frame) => {
                    if socket.send(Message::Text(frame)).await.is_err() {
                        return;
                    }
                }
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    let close = CloseFrame { code: 4000, reason: "slow consumer".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
            },
        }
    }
}

/// `POST /api/v1/publish`: an event or an array of events, each serialized once.
async fn publish(State(channels): State<Channels>, Json(body): Json<Value>) -> Json<Value> {
    let events = match body {
        Value::Array(events) => events,
        event => vec![event],
    };
    let mut delivered = 0;
    for event in &events {
        let Some(kind) = event["type"].as_str() else {
            continue;
        };
        // `type` first, as sigmahub writes it (a `json!` object would sort its keys).
        let frame = format!(
            r#"{{"type":{},"data":{}}}"#,
            Value::from(kind),
            event["data"]
        );
        delivered += channels
            .sender(kind)
            .send(Utf8Bytes::from(frame))
            .unwrap_or(0);
    }
    Json(json!({"accepted": events.len(), "delivered": delivered}))
}
