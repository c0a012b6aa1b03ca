//! Skreaver's WebSocket protocol (seed 004, "Message Protocol"): JSON messages
//! `{"type", "data", "correlation_id", "metadata"}` on text frames.
//!
//! What differs from SigmaVault:
//! - a broadcast event is `{"type":"event","channel":C,"timestamp":T,"data":…}` (with
//!   `offset` when the hub keeps history), so that the guide's clients, which test
//!   `msg.type === 'event'`, see it;
//! - clients may also send `request` and `ack`, and a subscribe's `channels` at the top level
//!   ([`Grammar::Skreaver`]);
//! - no welcome `notification` (Skreaver's message types have none).
//!
//! Replies (`auth_response`, `subscribe_response`, `unsubscribe_response`, `pong`, `error`)
//! are SigmaVault's envelopes, which already have Skreaver's shape: `type`, `data`, and the
//! request's `correlation_id`.

use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{write_timestamp, Event};
use crate::frame::{self, FrameBuf, OpCode};
use crate::protocol::message::{self, ClientMessage, Grammar, MessageError};

/// Parses one client message in Skreaver's grammar.
pub(crate) fn decode(
    payload: &mut [u8],
    max_channels: usize,
) -> Result<ClientMessage, MessageError> {
    message::parse_as(Grammar::Skreaver, payload, max_channels)
}

/// The frame of `event` stamped `now`, with its `offset` if it has one.
pub(crate) fn event_frame(event: &Event, now: SystemTime, offset: Option<u64>) -> Bytes {
    let data = event.data().get();
    let mut buf = FrameBuf::with_capacity(80 + event.channel().len() + data.len());
    event_prefix(&mut buf, event.channel());
    write_timestamp(&mut buf, now);
    event_rest(&mut buf, data, offset);
    buf.finish(OpCode::Text)
}

/// A canonical (SigmaVault) event frame, `{"type":C,"timestamp":T,"data":…[,"offset":N]}`,
/// as a Skreaver event. A frame that is not a canonical event is passed on unchanged.
pub(crate) fn transcode(canonical: &Bytes) -> Bytes {
    #[derive(Deserialize)]
    struct Canonical<'a> {
        #[serde(rename = "type")]
        channel: &'a str,
        timestamp: &'a str,
        #[serde(borrow)]
        data: &'a RawValue,
        offset: Option<u64>,
    }
    let payload = frame::payload_of(canonical);
    let Ok(event) = serde_json::from_slice::<Canonical<'_>>(&payload) else {
        return canonical.clone();
    };
    let data = event.data.get();
    let mut buf = FrameBuf::with_capacity(80 + event.channel.len() + data.len());
    event_prefix(&mut buf, event.channel);
    buf.extend_from_slice(event.timestamp.as_bytes());
    event_rest(&mut buf, data, event.offset);
    buf.finish(OpCode::Text)
}

/// `{"type":"event","channel":"C","timestamp":"`; `channel` needs no escaping (a valid
/// channel name never does).
fn event_prefix(buf: &mut FrameBuf, channel: &str) {
    debug_assert!(crate::protocol::channel::validate(channel).is_ok());
    buf.extend_from_slice(b"{\"type\":\"event\",\"channel\":\"");
    buf.extend_from_slice(channel.as_bytes());
    buf.extend_from_slice(b"\",\"timestamp\":\"");
}

/// `","data":…[,"offset":N]}` after the timestamp.
fn event_rest(buf: &mut FrameBuf, data: &str, offset: Option<u64>) {
    buf.extend_from_slice(b"\",\"data\":");
    buf.extend_from_slice(data.as_bytes());
    if let Some(offset) = offset {
        buf.extend_from_slice(b",\"offset\":");
        buf.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
    }
    buf.extend_from_slice(b"}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn payload(frame: &Bytes) -> serde_json::Value {
        serde_json::from_slice(&frame::payload_of(frame)).unwrap()
    }

    fn event() -> Event {
        Event::new(
            "agent-updates",
            &serde_json::json!({"agent_id": "agent-123"}),
        )
        .unwrap()
    }

    #[test]
    fn an_event_has_the_type_the_guides_clients_test_for() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        let frame = event_frame(&event(), now, Some(7));
        assert_eq!(frame[0], 0x81, "a text frame");
        assert_eq!(
            payload(&frame),
            serde_json::json!({
                "type": "event",
                "channel": "agent-updates",
                "timestamp": "2023-12-23T13:21:57.123Z",
                "data": {"agent_id": "agent-123"},
                "offset": 7,
            })
        );
    }

    #[test]
    fn a_kept_frame_transcodes_to_the_same_event() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        for offset in [None, Some(3)] {
            let canonical = super::super::sigmavault::event_frame(&event(), now, offset);
            assert_eq!(transcode(&canonical), event_frame(&event(), now, offset));
        }
        let not_an_event = Bytes::from_static(b"\x81\x02{}");
        assert_eq!(transcode(&not_an_event), not_an_event);
    }

    #[test]
    fn both_subscribe_shapes_and_requests_are_read() {
        let parse = |s: &str| decode(&mut s.as_bytes().to_vec(), 50);
        let guide = r#"{"type":"subscribe","data":{"channels":["a","b"]},"correlation_id":"req-1","metadata":{"client_version":"1.0.0"}}"#;
        let top = r#"{"type":"subscribe","channels":["a","b"]}"#;
        for message in [guide, top] {
            match parse(message).unwrap() {
                ClientMessage::Subscribe(list) => assert_eq!(list.channels, ["a", "b"]),
                other => panic!("{message}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(r#"{"type":"request","data":{"q":1},"correlation_id":5}"#).unwrap(),
            ClientMessage::Request {
                correlation_id: Some(_),
                ..
            }
        ));
        assert_eq!(parse(r#"{"type":"ack"}"#).unwrap(), ClientMessage::Ack);
        // Not in SigmaVault's grammar.
        let sv = message::parse(&mut br#"{"type":"ack"}"#.to_vec(), 50).unwrap_err();
        assert_eq!(sv.code, crate::protocol::code::ErrorCode::UnknownType);
    }
}
