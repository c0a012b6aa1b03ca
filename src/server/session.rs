//! One WebSocket connection: welcome, default subscriptions, then the reader and the writer.
//!
//! Both halves run as two futures inside one task. The writer drains the client's outbox;
//! the reader parses client messages and answers them by pushing replies into the same
//! outbox, so replies and events keep one order. The connection ends when either half
//! ends: the other gets [`CLOSE_LINGER`] to finish the close handshake (the writer sends its
//! close frame, the reader waits for the client's) before the socket is dropped.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::reader::{Incoming, MessageReader, ReadEnd};
use super::writer::{self, CLOSE_LINGER};
use super::Shared;
use crate::engine::hub::{Client, Rejection, SubscriptionChange};
use crate::engine::outbox::Closing;
use crate::event::{self, unix_seconds};
use crate::frame;
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;
use crate::protocol::message::{self, ChannelList, ClientMessage, CorrelationId, MessageError};
use crate::protocol::rate::{TokenBucket, Verdict};
use crate::upstream::snapshot::SnapshotCache;

/// The welcome text SigmaVault clients expect.
pub const WELCOME_MESSAGE: &str = "Welcome to SigmaVault WebSocket";

/// Serves one upgraded connection until it closes.
pub(crate) async fn run<R, W>(
    shared: Arc<Shared>,
    read: R,
    mut write: W,
    peer: std::net::SocketAddr,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let config = &shared.config;
    let Ok(mut client) = shared.hub.connect() else {
        tracing::warn!(%peer, "no free client slot; closing");
        let _ = writer::write_frames(
            &mut write,
            &mut [frame::close(CloseCode::INTERNAL_ERROR)],
            None,
        )
        .await;
        return;
    };
    let started = std::time::Instant::now();
    let client_id = client.id();
    tracing::debug!(client_id, %peer, "client connected");
    welcome(
        &mut client,
        &config.default_subscriptions,
        &shared.snapshots,
    );
    if shared.shutdown.is_cancelled() {
        // Upgraded while the server was shutting down, possibly after `close_all` ran.
        client
            .outbox()
            .close(Closing::AfterFlush(CloseCode::GOING_AWAY));
    }

    let outbox = client.outbox().clone();
    let mut reader = MessageReader::new(read, config.max_message_size);
    let limit = TokenBucket::new(
        config.max_inbound_per_minute,
        config.inbound_burst,
        tokio::time::Instant::now().into_std(),
    );
    let read_half = read_loop(&mut client, &mut reader, &shared.snapshots, limit);
    let write_half = writer::run(&outbox, &mut write);
    tokio::pin!(read_half, write_half);

    let reason = tokio::select! {
        written = &mut write_half => {
            // Our close frame is out (or the socket failed): give the client a moment to
            // answer it, so the socket is not reset under the close frame.
            let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut read_half)).await;
            match written {
                Ok(code) => format!("closed by server: {code}"),
                Err(e) => format!("write failed: {e}"),
            }
        }
        end = &mut read_half => {
            let code = match end {
                ReadEnd::Violation(code) => code,
                ReadEnd::Gone => CloseCode::NORMAL,
            };
            outbox.close(Closing::Now(code));
            let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut write_half)).await;
            match end {
                ReadEnd::Gone => "client went away".to_owned(),
                ReadEnd::Violation(code) => format!("closed: {code}"),
            }
        }
    };
    tracing::debug!(
        client_id,
        %peer,
        duration_ms = started.elapsed().as_millis() as u64,
        reason,
        "client disconnected"
    );
}

/// Queues the welcome notification and the defaults' snapshots, then subscribes to the
/// defaults, so that the welcome is the first message the client sees.
fn welcome(client: &mut Client, defaults: &[String], snapshots: &SnapshotCache) {
    #[derive(Serialize)]
    struct Welcome<'a> {
        message: &'static str,
        level: &'static str,
        client_id: String,
        subscriptions: &'a [String],
        server_time: u64,
    }
    let now = SystemTime::now();
    client.send(event::encode_serialize(
        "notification",
        now,
        None,
        &Welcome {
            message: WELCOME_MESSAGE,
            level: "info",
            client_id: client.id().to_string(),
            subscriptions: defaults,
            server_time: unix_seconds(now),
        },
    ));
    let change = client.plan_subscribe(defaults.iter().map(String::as_str));
    send_snapshots(client, &change, snapshots);
    client.apply_subscribe(&change);
}

/// Queues the current snapshot of every channel in `change` (before the subscription is
/// applied, so that nothing newer can arrive ahead of it).
fn send_snapshots(client: &Client, change: &SubscriptionChange, snapshots: &SnapshotCache) {
    for channel in &change.changed {
        if let Some(snapshot) = snapshots.get(channel) {
            for frame in snapshot.frames.iter() {
                client.send(frame.clone());
            }
        }
    }
}

/// Reads and answers client messages until the connection should end.
async fn read_loop<S: AsyncRead + Unpin>(
    client: &mut Client,
    reader: &mut MessageReader<S>,
    snapshots: &SnapshotCache,
    mut limit: TokenBucket,
) -> ReadEnd {
    loop {
        let incoming = match reader.next().await {
            Ok(incoming) => incoming,
            Err(end) => return end,
        };
        client.outbox().mark_alive();
        // Text messages and pings (each answered) count against the inbound limit.
        if matches!(incoming, Incoming::Text(_) | Incoming::Ping(_)) {
            match limit.take(tokio::time::Instant::now().into_std()) {
                Verdict::Allow => {}
                Verdict::Warn => {
                    client.send(rate_limited(limit.retry_after()));
                    continue;
                }
                Verdict::Close => return ReadEnd::Violation(CloseCode::POLICY_VIOLATION),
            }
        }
        match incoming {
            Incoming::Text(mut payload) => handle_message(client, &mut payload, snapshots),
            Incoming::Ping(payload) => {
                client.send(frame::pong(&payload));
            }
            Incoming::Pong => {}
            Incoming::Close => return ReadEnd::Violation(CloseCode::NORMAL),
        }
    }
}

/// The `error` sent for the first message over the inbound limit.
fn rate_limited(retry_after: std::time::Duration) -> Bytes {
    event::encode_serialize(
        "error",
        SystemTime::now(),
        None,
        &serde_json::json!({
            "code": "rate_limited",
            "message": "too many messages; this one was ignored, and more now close the connection (1008)",
            "retry_after_ms": retry_after.as_millis() as u64,
        }),
    )
}

fn handle_message(client: &mut Client, payload: &mut [u8], snapshots: &SnapshotCache) {
    let now = SystemTime::now();
    let reply = match message::parse(payload) {
        Ok(ClientMessage::Subscribe(list)) => {
            // Reply, then snapshots, then subscribe: the client sees the reply before any
            // event the subscription lets through.
            let change = client.plan_subscribe(list.channels.iter().map(String::as_str));
            let after: Vec<Channel> = client
                .subscriptions()
                .iter()
                .chain(&change.changed)
                .cloned()
                .collect();
            client.send(subscription_reply(
                "subscribe_response",
                "subscribed",
                &after,
                &list,
                &change,
                now,
            ));
            send_snapshots(client, &change, snapshots);
            client.apply_subscribe(&change);
            return;
        }
        Ok(ClientMessage::Unsubscribe(list)) => {
            let change = client.unsubscribe(list.channels.iter().map(String::as_str));
            subscription_reply(
                "unsubscribe_response",
                "unsubscribed",
                client.subscriptions(),
                &list,
                &change,
                now,
            )
        }
        Ok(ClientMessage::Ping { correlation_id }) => event::encode_serialize(
            "pong",
            now,
            correlation_id.as_ref().map(CorrelationId::as_raw),
            &serde_json::json!({ "server_time": unix_seconds(now) }),
        ),
        Ok(ClientMessage::Pong) => return,
        Err(e) => error_reply(&e, now),
    };
    client.send(reply);
}

fn subscription_reply(
    kind: &str,
    changed_key: &'static str,
    subscriptions: &[Channel],
    request: &ChannelList,
    change: &SubscriptionChange,
    now: SystemTime,
) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        success: bool,
        #[serde(flatten)]
        changed: std::collections::BTreeMap<&'static str, &'a [Channel]>,
        subscriptions: &'a [Channel],
        rejected: &'a [Rejection],
    }
    let id = request.correlation_id.as_ref().map(CorrelationId::as_raw);
    event::encode_serialize(
        kind,
        now,
        id,
        &Reply {
            success: change.rejected.is_empty(),
            changed: [(changed_key, change.changed.as_slice())].into(),
            subscriptions,
            rejected: &change.rejected,
        },
    )
}

fn error_reply(e: &MessageError, now: SystemTime) -> Bytes {
    event::encode_serialize(
        "error",
        now,
        e.correlation_id.as_ref().map(CorrelationId::as_raw),
        &serde_json::json!({ "code": e.code, "message": e.message }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::hub::Hub;

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

    #[test]
    fn welcome_comes_first_and_lists_the_defaults() {
        let hub = Hub::new(&Config::default());
        let mut client = hub.connect().unwrap();
        welcome(
            &mut client,
            &Config::default().default_subscriptions,
            &SnapshotCache::default(),
        );
        let got = replies(&client);
        assert_eq!(got[0]["type"], "notification");
        assert_eq!(got[0]["data"]["message"], WELCOME_MESSAGE);
        assert_eq!(got[0]["data"]["subscriptions"].as_array().unwrap().len(), 8);
        assert_eq!(client.subscriptions().len(), 8);
    }

    #[test]
    fn subscribe_reply_lists_changes_rejections_and_the_id() {
        let hub = Hub::new(&Config::default());
        let mut client = hub.connect().unwrap();
        let mut msg =
            br#"{"type":"subscribe","correlation_id":"c1","data":{"types":["a","b c"]}}"#.to_vec();
        handle_message(&mut client, &mut msg, &SnapshotCache::default());
        let reply = &replies(&client)[0];
        assert_eq!(reply["type"], "subscribe_response");
        assert_eq!(reply["correlation_id"], "c1");
        assert_eq!(reply["data"]["success"], false);
        assert_eq!(reply["data"]["subscribed"], serde_json::json!(["a"]));
        assert_eq!(reply["data"]["subscriptions"], serde_json::json!(["a"]));
        assert_eq!(reply["data"]["rejected"][0]["channel"], "b c");
        assert_eq!(reply["data"]["rejected"][0]["code"], "invalid_channel");
    }
}
