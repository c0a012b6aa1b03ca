//! One channel's live feed on this node, in stream order, with the gaps read back.

use std::time::SystemTime;

use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::engine::history::UNKNOWN;
use crate::engine::hub::Hub;
use crate::frame::{FrameBuf, OpCode};
use crate::protocol::channel::Channel;

/// One channel's live feed on this node.
pub(super) struct Receiver {
    pub(super) hub: Hub,
    pub(super) stream: stream::Stream,
    pub(super) channel: Channel,
    /// The channel's stream-side subject, for reading back.
    pub(super) subject: String,
    /// The offset of the last event delivered (or the channel's latest when the
    /// subscription was taken).
    pub(super) last: u64,
}

/// Delivers a channel's live events to the hub, in stream order. Events stored while this
/// node's link was down are read back from the stream: when a live event does not follow
/// the last one delivered, and after every reconnection (the events stored before the
/// subscription was renewed would otherwise wait for the next live one).
pub(super) async fn receive(
    mut feed: Receiver,
    mut subscriber: async_nats::Subscriber,
    mut reconnects: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        tokio::select! {
            message = subscriber.next() => {
                let Some(message) = message else { return };
                feed.live(message).await;
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                feed.catch_up().await;
            }
        }
    }
}

impl Receiver {
    async fn live(&mut self, message: async_nats::Message) {
        let Some((offset, prev)) = sequence(message.headers.as_ref()) else {
            tracing::warn!(channel = %self.channel, "a live message without stream sequence headers; dropped");
            return;
        };
        if offset <= self.last {
            return; // already read back
        }
        if prev != UNKNOWN && prev > self.last {
            self.read_back(offset).await;
        }
        deliver(
            &self.hub,
            &self.channel,
            offset,
            prev,
            (&message.payload, message.headers.as_ref()),
            SystemTime::now(),
        );
        self.last = offset;
    }

    /// After a reconnection: the stream's latest for the channel is asked on the renewed
    /// connection, after the renewed subscription, so everything up to it is read back
    /// here and everything after it comes live.
    async fn catch_up(&mut self) {
        let newest = match latest(&self.stream, &self.subject).await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "cannot check for missed events");
                return;
            }
        };
        if newest > self.last {
            self.read_back(newest + 1).await;
        }
    }

    /// Reads the channel's events after the last delivered and before `until` back from
    /// the stream and delivers them.
    async fn read_back(&mut self, until: u64) {
        let mut filled = 0;
        loop {
            match self
                .stream
                .direct_get_next_for_subject(self.subject.as_str(), Some(self.last + 1))
                .await
            {
                Ok(message) if message.sequence < until => {
                    let offset = message.sequence;
                    let at = SystemTime::from(message.time);
                    deliver(
                        &self.hub,
                        &self.channel,
                        offset,
                        self.last,
                        (&message.payload, Some(&message.headers)),
                        at,
                    );
                    self.last = offset;
                    filled += 1;
                }
                Ok(_) => break,
                Err(e) => {
                    if e.kind() != DirectGetErrorKind::NotFound {
                        tracing::warn!(channel = %self.channel, error = %e, "cannot read missed events from the stream");
                    }
                    break;
                }
            }
        }
        tracing::info!(channel = %self.channel, filled, "delivered events missed while the NATS link was down");
    }
}

/// The offset of the latest event stored on `subject` (0: none).
pub(super) async fn latest(
    stream: &stream::Stream,
    subject: &str,
) -> Result<u64, async_nats::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(last) => Ok(last.sequence),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Frames one event from the stream with its offset and fans it out.
fn deliver(
    hub: &Hub,
    channel: &Channel,
    offset: u64,
    prev: u64,
    (payload, headers): (&Bytes, Option<&HeaderMap>),
    at: SystemTime,
) {
    if !is_event(payload) {
        tracing::warn!(%channel, offset, "a message that is not a sigmahub event; dropped");
        return;
    }
    let (priority, conflate) = super::headers::degrade_meta(headers);
    hub.publish_sequenced(
        channel,
        (priority, conflate.as_ref()),
        offset,
        prev,
        at,
        |offset| with_offset(payload, offset),
    );
}

/// Whether a payload from NATS is a JSON object, as sigmahub nodes publish (anything else
/// on our subjects came from elsewhere and is not passed to clients).
pub(super) fn is_event(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
        && payload.last() == Some(&b'}')
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// `Nats-Sequence` and `Nats-Last-Sequence` of a republished message.
fn sequence(headers: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let headers = headers?;
    let offset = headers.get("Nats-Sequence")?.as_str().parse().ok()?;
    let prev = headers
        .get("Nats-Last-Sequence")
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(UNKNOWN);
    Some((offset, prev))
}

/// The frame of an event's JSON (`{…}`) with `,"offset":N` added before its last brace.
pub(super) fn with_offset(payload: &Bytes, offset: u64) -> Bytes {
    let body = &payload[..payload.len() - 1];
    let mut buf = FrameBuf::with_capacity(body.len() + 32);
    buf.extend_from_slice(body);
    buf.extend_from_slice(b",\"offset\":");
    buf.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
    buf.extend_from_slice(b"}");
    buf.finish(OpCode::Text)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::{subject, Cluster};
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::config::Config;
    use crate::event::Event;
    use crate::frame;

    #[test]
    fn the_offset_goes_in_before_the_last_brace() {
        let payload = Bytes::from_static(br#"{"type":"a","timestamp":"t","data":{}}"#);
        let frame = with_offset(&payload, 42);
        assert_eq!(
            &frame::payload_of(&frame)[..],
            br#"{"type":"a","timestamp":"t","data":{},"offset":42}"#
        );
    }

    #[test]
    fn sequence_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Sequence", "7");
        h.insert("Nats-Last-Sequence", "3");
        assert_eq!(sequence(Some(&h)), Some((7, 3)));
        assert_eq!(sequence(None), None);
    }

    /// A real nats-server with JetStream on a free port and its own store, killed on drop.
    struct Nats {
        child: std::process::Child,
        port: u16,
        store: std::path::PathBuf,
    }

    impl Nats {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let store = std::env::temp_dir().join(format!("sigmahub-unit-nats-{port}"));
            let child = std::process::Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(&store)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server is not installed (scripts/test-all.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Self { child, port, store }
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }

    /// Live messages can be lost without the connection dropping (NATS drops messages to a
    /// slow subscriber). A live event that does not follow the last one delivered makes
    /// the receiver read the missing ones back from the stream first: the node's clients
    /// get every event, in order, once.
    #[tokio::test]
    async fn a_gap_before_a_live_event_is_read_back_from_the_stream_first() {
        let nats = Nats::start();
        let url = format!("nats://127.0.0.1:{}", nats.port);
        let mut config = Config::default();
        config.cluster.nats_url = Some(url);
        let hub = Hub::new(&config);
        let cluster = Cluster::connect(&config, MemoryBroker::new(hub.clone(), Arc::default()))
            .await
            .expect("joins the cluster");
        let channel = Channel::new("gappy").unwrap();
        let subjects = subject::of(&cluster.prefix, &channel);

        // What the stream republishes, caught on the node's connection with the same
        // barrier as `listen` (a flush alone does not wait for the server to take the SUB).
        let mut live = cluster.client.subscribe(subjects.live).await.unwrap();
        latest(&cluster.stream, &subjects.publish).await.unwrap();
        let events: Vec<Event> = (0..5)
            .map(|i| Event::new("gappy", &serde_json::json!({ "i": i })).unwrap())
            .collect();
        let offsets = cluster.publish(&events, SystemTime::now()).await.unwrap();
        let mut messages = Vec::new();
        while messages.len() < events.len() {
            let next = tokio::time::timeout(Duration::from_secs(10), live.next()).await;
            messages.push(next.expect("republished in time").expect("subscribed"));
        }

        let mut client = hub.connect().unwrap();
        client.subscribe(["gappy"]);
        let mut feed = Receiver {
            hub: hub.clone(),
            stream: cluster.stream.clone(),
            channel: channel.clone(),
            subject: subjects.publish,
            last: 0,
        };
        // The second, third and fourth live messages never arrive.
        let mut messages = messages.into_iter();
        feed.live(messages.next().unwrap()).await;
        feed.live(messages.next_back().unwrap()).await;

        let mut frames = Vec::new();
        client.outbox().drain_into(&mut frames, usize::MAX);
        let received: Vec<(u64, u64)> = frames
            .iter()
            .map(|frame| {
                let event: serde_json::Value =
                    serde_json::from_slice(&frame::payload_of(frame)).unwrap();
                (
                    event["offset"].as_u64().unwrap(),
                    event["data"]["i"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(u64, u64)> = offsets.iter().copied().zip(0..).collect();
        assert_eq!(received, expected);
        assert_eq!(feed.last, offsets[4]);
        cluster
            .close(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
    }
}
