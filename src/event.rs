//! Events, and the timestamps every dialect writes.
//!
//! An [`Event`] is what a publisher hands the hub: a channel and its JSON data. How it looks
//! on the wire is each dialect's business ([`crate::dialect`]).

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::frame::FrameBuf;
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
    priority: Option<Priority>,
    conflate: Option<ConflateKey>,
}

/// How much an event matters to a client that cannot keep up (seed 002's levels). Under
/// `slow_consumer = "degrade"` a client that falls behind loses `low` events first, then
/// `normal`, then `high`; `critical` events are never dropped (a client that cannot take
/// them is closed). See docs/protocol.md, "Slow consumers".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Dropped first.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Dropped only when the client's queue is full.
    High,
    /// Never dropped.
    Critical,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [Self::Low, Self::Normal, Self::High, Self::Critical];

    /// The name used on the wire and in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The priority named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A conflation key (for example `agent.status:agent-7`): a newer event with the same key on
/// the same channel makes an older one that a slow client has not received yet obsolete.
/// 1 to [`ConflateKey::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConflateKey(Box<str>);

impl ConflateKey {
    /// The longest key, in bytes.
    pub const MAX_LEN: usize = 128;

    /// `key` as a conflation key, if it is 1 to [`MAX_LEN`](Self::MAX_LEN) bytes.
    pub fn new(key: &str) -> Result<Self, EventError> {
        match key.len() {
            1..=Self::MAX_LEN => Ok(Self(key.into())),
            _ => Err(EventError::ConflateKey),
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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
    /// A conflation key that is empty or longer than [`ConflateKey::MAX_LEN`] bytes.
    #[error("a conflation key is 1 to 128 bytes")]
    ConflateKey,
}

impl Event {
    /// An event on `channel` whose data is `data` serialized as JSON.
    ///
    /// ```
    /// let event = sigmahub::Event::new("orders", &serde_json::json!({"id": 7})).unwrap();
    /// assert_eq!(event.channel().as_str(), "orders");
    /// ```
    pub fn new(channel: &str, data: &impl Serialize) -> Result<Self, EventError> {
        Ok(Self::from_raw(
            Channel::new(channel)?,
            serde_json::value::to_raw_value(data)?,
        ))
    }

    /// An event from an already validated channel and raw JSON data, without a priority
    /// (its channel's default applies) or a conflation key.
    pub fn from_raw(channel: Channel, data: Box<RawValue>) -> Self {
        Self {
            channel,
            data,
            priority: None,
            conflate: None,
        }
    }

    /// This event with `priority`.
    ///
    /// ```
    /// use sigmahub::event::{ConflateKey, Event, Priority};
    /// let event = Event::new("agent.status", &serde_json::json!({"agent_id": "a7"}))
    ///     .unwrap()
    ///     .with_priority(Priority::Low)
    ///     .with_conflate(Some(ConflateKey::new("agent-7").unwrap()));
    /// assert_eq!(event.priority(), Some(Priority::Low));
    /// assert_eq!(event.conflate().map(ConflateKey::as_str), Some("agent-7"));
    /// ```
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// This event with `data` in place of its own (an application's rewrite of a client's
    /// publish), its channel, priority and conflation key kept.
    pub fn with_data(mut self, data: Box<RawValue>) -> Self {
        self.data = data;
        self
    }

    /// This event with a conflation key (or none).
    pub fn with_conflate(mut self, key: Option<ConflateKey>) -> Self {
        self.conflate = key;
        self
    }

    /// How much the event matters to a client that cannot keep up, as its publisher said;
    /// `None`: its channel's default (a `[[channels]]` rule's `priority`, else `normal`).
    pub fn priority(&self) -> Option<Priority> {
        self.priority
    }

    /// The event's conflation key, if it has one.
    pub fn conflate(&self) -> Option<&ConflateKey> {
        self.conflate.as_ref()
    }

    /// The channel (event type) this event is published on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The event's data as raw JSON.
    pub fn data(&self) -> &RawValue {
        &self.data
    }
}

/// Formats `now` as RFC 3339 UTC with milliseconds, e.g. `2025-12-23T13:08:37.123Z`.
/// Times outside RFC 3339's years (0000 to 9999) are written as the nearest end of that
/// range, never a panic: a token's `exp` is the client's to choose.
pub fn rfc3339(now: SystemTime) -> String {
    utc(now)
        .format(RFC3339_MILLIS)
        .expect("a date within years 0000-9999 always formats")
}

/// Writes `now` as [`rfc3339`] does, into a frame being built.
pub(crate) fn write_timestamp(buf: &mut FrameBuf, now: SystemTime) {
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
