//! The SigmaVault WebSocket Protocol v1.0 (seed 000): JSON envelopes on text frames.
//!
//! Every server message is `{"type": T, "timestamp": "<RFC 3339 UTC>", "data": {…}}`, with an
//! optional top-level `correlation_id` on replies and `offset` on events kept in history. One
//! function writes that envelope straight into a [`FrameBuf`], so an event becomes a
//! ready-to-send frame in one pass. Client messages are parsed by
//! [`crate::protocol::message`].
//!
//! This is also the hub's *canonical* encoding: history and the snapshot cache keep
//! SigmaVault frames, and a cluster sends their payloads between nodes.

use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::event::{write_timestamp, Event};
use crate::frame::{FrameBuf, OpCode};

impl Event {
    /// The event's SigmaVault frame, stamped with `now` (what a `/ws` client receives).
    pub fn to_frame(&self, now: SystemTime) -> Bytes {
        event_frame(self, now, None)
    }

    /// The event's SigmaVault JSON message alone (the payload of
    /// [`to_frame`](Self::to_frame), no frame header), stamped with `now`: what a cluster
    /// sends between nodes.
    pub fn to_json(&self, now: SystemTime) -> Bytes {
        event_json(self, now)
    }
}

/// The frame of `event` stamped `now`, with its `offset` in its channel's history if any.
pub(crate) fn event_frame(event: &Event, now: SystemTime, offset: Option<u64>) -> Bytes {
    event_envelope(event, now, offset).finish(OpCode::Text)
}

/// The JSON message of `event` alone (the payload of [`event_frame`], no frame header).
pub(crate) fn event_json(event: &Event, now: SystemTime) -> Bytes {
    event_envelope(event, now, None).into_payload()
}

fn event_envelope(event: &Event, now: SystemTime, offset: Option<u64>) -> FrameBuf {
    let data = event.data().get();
    envelope(event.channel(), now, None, offset, data.len(), |buf| {
        buf.extend_from_slice(data.as_bytes())
    })
}

/// Writes `{"type":kind,"timestamp":now[,"correlation_id":id],"data":…}` as a text frame.
///
/// `kind` must need no JSON escaping (channel names and sigmahub's own message types never
/// do); `write_data` must write one JSON value. `data_hint` sizes the buffer.
pub(crate) fn encode(
    kind: &str,
    now: SystemTime,
    correlation_id: Option<&RawValue>,
    data_hint: usize,
    write_data: impl FnOnce(&mut FrameBuf),
) -> Bytes {
    envelope(kind, now, correlation_id, None, data_hint, write_data).finish(OpCode::Text)
}

/// Writes a server message whose data is any serializable value.
pub(crate) fn encode_serialize(
    kind: &str,
    now: SystemTime,
    correlation_id: Option<&RawValue>,
    data: &impl Serialize,
) -> Bytes {
    encode(kind, now, correlation_id, 128, |buf| {
        serde_json::to_writer(buf.writer(), data).expect("serializing to memory cannot fail")
    })
}

/// [`encode`], with an optional top-level `"offset"` after `data`, not yet finished.
fn envelope(
    kind: &str,
    now: SystemTime,
    correlation_id: Option<&RawValue>,
    offset: Option<u64>,
    data_hint: usize,
    write_data: impl FnOnce(&mut FrameBuf),
) -> FrameBuf {
    let mut buf = FrameBuf::with_capacity(64 + kind.len() + data_hint);
    write_envelope(&mut buf, kind, now, correlation_id, offset, write_data);
    buf
}

/// Appends the envelope `{"type":kind,"timestamp":now[,"correlation_id":id],"data":…
/// [,"offset":N]}` to `buf` (another dialect may wrap it in its own packet).
pub(crate) fn write_envelope(
    buf: &mut FrameBuf,
    kind: &str,
    now: SystemTime,
    correlation_id: Option<&RawValue>,
    offset: Option<u64>,
    write_data: impl FnOnce(&mut FrameBuf),
) {
    debug_assert!(crate::protocol::channel::validate(kind).is_ok());
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"timestamp\":\"");
    write_timestamp(buf, now);
    buf.extend_from_slice(b"\"");
    if let Some(id) = correlation_id {
        buf.extend_from_slice(b",\"correlation_id\":");
        buf.extend_from_slice(id.get().as_bytes());
    }
    buf.extend_from_slice(b",\"data\":");
    write_data(buf);
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
        let header = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[header..]).unwrap()
    }

    #[test]
    fn event_frame_is_the_sigmavault_envelope() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        let event = Event::new("system.status", &serde_json::json!({"cpu_usage": 65.3})).unwrap();
        let frame = event_frame(&event, now, None);
        assert_eq!(frame[0], 0x81);
        assert_eq!(
            payload(&frame),
            serde_json::json!({
                "type": "system.status",
                "timestamp": "2023-12-23T13:21:57.123Z",
                "data": {"cpu_usage": 65.3}
            })
        );
        let kept = payload(&event_frame(&event, now, Some(42)));
        assert_eq!(kept["offset"], 42);
    }

    #[test]
    fn the_json_of_an_event_is_its_frame_payload() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        let event = Event::new("orders", &serde_json::json!({"id": 7})).unwrap();
        let json = event_json(&event, now);
        assert_eq!(
            json,
            crate::frame::payload_of(&event_frame(&event, now, None))
        );
        assert_eq!(json.first(), Some(&b'{'), "no header in front");
    }

    #[test]
    fn correlation_id_is_echoed_verbatim() {
        let id = RawValue::from_string("\"req-1\"".into()).unwrap();
        let frame = encode_serialize(
            "subscribe_response",
            SystemTime::UNIX_EPOCH,
            Some(&id),
            &serde_json::json!({"success": true}),
        );
        let v = payload(&frame);
        assert_eq!(v["correlation_id"], "req-1");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
