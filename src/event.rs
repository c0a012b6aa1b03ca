//! Events and the one function that writes sigmahub's message envelope.
//!
//! Every server message is `{"type": T, "timestamp": "<RFC 3339 UTC>", "data": {…}}`, with an
//! optional top-level `correlation_id` on replies and `offset` on events kept in history. One function writes that envelope straight
//! into a [`FrameBuf`], so an event becomes a ready-to-send frame in one pass.

use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::frame::{FrameBuf, OpCode};
use crate::protocol::channel::{Channel, ChannelError};

/// RFC 3339 in UTC with millisecond precision, e.g. `2025-12-23T13:08:37.123Z`.
const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// An event to publish: a channel (the event's `type`) and its JSON `data`.
///
/// The data is held as raw JSON, so publishing a body received over HTTP never re-parses or
/// re-serializes it.
#[derive(Debug, Clone)]
pub struct Event {
    channel: Channel,
    data: Box<RawValue>,
}

/// Why an event could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The event type is not a valid channel name.
    #[error("invalid event type: {0}")]
    Channel(#[from] ChannelError),
    /// The data could not be serialized as JSON.
    #[error("event data is not serializable as JSON: {0}")]
    Data(#[from] serde_json::Error),
}

impl Event {
    /// An event on `channel` whose data is `data` serialized as JSON.
    ///
    /// ```
    /// let event = sigmahub::Event::new("orders", &serde_json::json!({"id": 7})).unwrap();
    /// assert_eq!(event.channel().as_str(), "orders");
    /// ```
    pub fn new(channel: &str, data: &impl Serialize) -> Result<Self, EventError> {
        Ok(Self {
            channel: Channel::new(channel)?,
            data: serde_json::value::to_raw_value(data)?,
        })
    }

    /// An event from an already validated channel and raw JSON data.
    pub fn from_raw(channel: Channel, data: Box<RawValue>) -> Self {
        Self { channel, data }
    }

    /// The channel (event type) this event is published on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The event's data as raw JSON.
    pub fn data(&self) -> &RawValue {
        &self.data
    }

    /// The complete WebSocket frame for this event, stamped with `now`.
    pub fn to_frame(&self, now: SystemTime) -> Bytes {
        self.to_frame_at(now, None)
    }

    /// The frame for this event at `offset` in its channel's history (a top-level
    /// `"offset"` field after `data`), stamped with `now`.
    pub fn to_frame_at(&self, now: SystemTime, offset: Option<u64>) -> Bytes {
        self.envelope(now, offset).finish(OpCode::Text)
    }

    /// The event's JSON message alone (the payload of [`to_frame`](Self::to_frame), no
    /// frame header), stamped with `now`: what a cluster sends between nodes.
    pub fn to_json(&self, now: SystemTime) -> Bytes {
        self.envelope(now, None).into_payload()
    }

    fn envelope(&self, now: SystemTime, offset: Option<u64>) -> FrameBuf {
        let data = self.data.get();
        envelope(&self.channel, now, None, offset, data.len(), |buf| {
            buf.extend_from_slice(data.as_bytes())
        })
    }
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

/// [`encode`], with an optional top-level `"offset"` after `data`, not yet finished.
fn envelope(
    kind: &str,
    now: SystemTime,
    correlation_id: Option<&RawValue>,
    offset: Option<u64>,
    data_hint: usize,
    write_data: impl FnOnce(&mut FrameBuf),
) -> FrameBuf {
    debug_assert!(crate::protocol::channel::validate(kind).is_ok());
    let mut buf = FrameBuf::with_capacity(64 + kind.len() + data_hint);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"timestamp\":\"");
    write_timestamp(&mut buf, now);
    buf.extend_from_slice(b"\"");
    if let Some(id) = correlation_id {
        buf.extend_from_slice(b",\"correlation_id\":");
        buf.extend_from_slice(id.get().as_bytes());
    }
    buf.extend_from_slice(b",\"data\":");
    write_data(&mut buf);
    if let Some(offset) = offset {
        buf.extend_from_slice(b",\"offset\":");
        buf.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
    }
    buf.extend_from_slice(b"}");
    buf
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

/// Formats `now` as RFC 3339 UTC with milliseconds, e.g. `2025-12-23T13:08:37.123Z`.
/// Times outside RFC 3339's years (0000 to 9999) are written as the nearest end of that
/// range, never a panic: a token's `exp` is the client's to choose.
pub fn rfc3339(now: SystemTime) -> String {
    utc(now)
        .format(RFC3339_MILLIS)
        .expect("a date within years 0000-9999 always formats")
}

fn write_timestamp(buf: &mut FrameBuf, now: SystemTime) {
    utc(now)
        .format_into(&mut buf.writer(), RFC3339_MILLIS)
        .expect("a date within years 0000-9999 always formats");
}

/// `now` in UTC, clamped to years 0000 to 9999.
fn utc(now: SystemTime) -> OffsetDateTime {
    const FIRST: OffsetDateTime = time::macros::datetime!(0000-01-01 00:00:00 UTC);
    const LAST: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999 UTC);
    let nanos = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(if nanos < 0 { FIRST } else { LAST })
        .clamp(FIRST, LAST)
}

/// Seconds since the Unix epoch, as SigmaVault's `server_time` and `timestamp` data fields.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        let frame = event.to_frame(now);
        assert_eq!(frame[0], 0x81);
        assert_eq!(
            payload(&frame),
            serde_json::json!({
                "type": "system.status",
                "timestamp": "2023-12-23T13:21:57.123Z",
                "data": {"cpu_usage": 65.3}
            })
        );
    }

    #[test]
    fn the_json_of_an_event_is_its_frame_payload() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        let event = Event::new("orders", &serde_json::json!({"id": 7})).unwrap();
        let json = event.to_json(now);
        assert_eq!(json, crate::frame::payload_of(&event.to_frame(now)));
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

    #[test]
    fn times_outside_rfc3339_are_clamped_not_a_panic() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        if let Some(huge) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64))
        {
            assert_eq!(rfc3339(huge), "9999-12-31T23:59:59.999Z");
        }
        let early = SystemTime::UNIX_EPOCH - Duration::from_secs(1 << 40);
        assert_eq!(rfc3339(early), "0000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn invalid_type_is_refused() {
        assert!(matches!(
            Event::new("bad type", &1),
            Err(EventError::Channel(ChannelError::InvalidCharacter))
        ));
    }
}
