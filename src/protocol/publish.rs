//! `POST /api/v1/publish` bodies: one event `{"type", "data"}` or a JSON array of them.
//! An event may also carry `priority` (`critical`, `high`, `normal`, `low`) and a
//! `conflate` key (1 to 128 bytes); see [`crate::event::Priority`].
//!
//! The whole body is validated before anything is published: a request with one bad event
//! publishes nothing and names the bad event's index. `data` is kept as raw JSON (never
//! re-serialized); a missing or `null` `data` becomes `{}`.
//!
//! Numbers must fit a double (RFC 8259 §6's interoperable range): `1e999` is valid JSON
//! syntax, but forwarded as is it would be unreadable to every subscriber whose JSON parser
//! refuses it (serde_json does). Found by the `publish_body` fuzz target.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{ConflateKey, Event, Priority};
use crate::protocol::channel::Channel;
use crate::protocol::code::ErrorCode;

/// Why a publish body was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Stable machine-readable code: `invalid_json`, `invalid_body` or `invalid_event`.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The index of the offending event in an array body.
    pub index: Option<usize>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default, borrow)]
    conflate: Option<std::borrow::Cow<'a, str>>,
}

/// Parses and validates a publish body into events, in order.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, PublishError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(invalid_json)?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, raw)| event(raw.get().as_bytes(), Some(i)))
                .collect()
        }
        Some(b'{') => {
            // Validate the whole body as JSON first, so trailing garbage is an error.
            let raw: &RawValue = serde_json::from_slice(body).map_err(invalid_json)?;
            Ok(vec![event(raw.get().as_bytes(), None)?])
        }
        _ => Err(PublishError {
            code: ErrorCode::InvalidBody,
            message: "body must be an event object or a JSON array of event objects".into(),
            index: None,
        }),
    }
}

/// Most channels one broadcast names.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;

/// Parses and validates a broadcast body (`POST /api/v1/broadcast`): one event with
/// `"channels": [...]` instead of a `type`, which becomes one event per channel, in the
/// order named. An error in a channel's name gives that channel's index.
pub fn parse_broadcast(body: &[u8]) -> Result<Vec<Event>, PublishError> {
    #[derive(Deserialize)]
    struct Broadcast<'a> {
        #[serde(default)]
        channels: Option<Vec<String>>,
        #[serde(rename = "type", default, borrow)]
        kind: Option<&'a RawValue>,
        #[serde(default, borrow)]
        data: Option<&'a RawValue>,
        #[serde(default)]
        priority: Option<Priority>,
        #[serde(default, borrow)]
        conflate: Option<std::borrow::Cow<'a, str>>,
    }
    let invalid = |message: String| PublishError {
        code: ErrorCode::InvalidBody,
        message,
        index: None,
    };
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(invalid("a broadcast body is one JSON object".into()));
    }
    let broadcast: Broadcast<'_> =
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => invalid(e.to_string()),
            _ => invalid_json(e),
        })?;
    if broadcast.kind.is_some() {
        return Err(invalid(
            "a broadcast names its channels in `channels`, not `type`".into(),
        ));
    }
    let channels = broadcast.channels.unwrap_or_default();
    if channels.is_empty() || channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(invalid(format!(
            "`channels` must name 1 to {MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    for (i, name) in channels.iter().enumerate() {
        if channels[..i].contains(name) {
            return Err(invalid(format!("`channels` names {name:?} twice")));
        }
    }
    channels
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let incoming = Incoming {
                kind: name.into(),
                data: broadcast.data,
                priority: broadcast.priority,
                conflate: broadcast.conflate.clone(),
            };
            build(incoming, Some(i))
        })
        .collect()
}

fn event(json: &[u8], index: Option<usize>) -> Result<Event, PublishError> {
    let bad = |message: String| invalid_event(index, message);
    let incoming: Incoming<'_> = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    build(incoming, index)
}

/// An `invalid_event` error about the event at `index` (none: the body's only event).
fn invalid_event(index: Option<usize>, message: String) -> PublishError {
    PublishError {
        code: ErrorCode::InvalidEvent,
        message: match index {
            Some(i) => format!("event {i}: {message}"),
            None => message,
        },
        index,
    }
}

/// The event `incoming` describes, validated; `index` names it in errors.
fn build(incoming: Incoming<'_>, index: Option<usize>) -> Result<Event, PublishError> {
    let bad = |message: String| invalid_event(index, message);
    let channel = Channel::new(&incoming.kind).map_err(|e| bad(format!("`type`: {e}")))?;
    if let Some(data) = incoming.data {
        serde_json::from_str::<Interoperable>(data.get())
            .map_err(|e| bad(format!("`data`: {e}")))?;
    }
    let data = match incoming.data {
        Some(raw) if raw.get() != "null" => raw.to_owned(),
        _ => RawValue::from_string("{}".into()).expect("valid JSON"),
    };
    let conflate = match incoming.conflate {
        Some(key) => Some(ConflateKey::new(&key).map_err(|e| bad(format!("`conflate`: {e}")))?),
        None => None,
    };
    let event = Event::from_raw(channel, data).with_conflate(conflate);
    Ok(match incoming.priority {
        Some(priority) => event.with_priority(priority),
        None => event,
    })
}

/// Deserializes any JSON value, keeping nothing, and fails on numbers outside a double's
/// range (serde_json reads every number it is asked to visit).
struct Interoperable;

impl<'de> Deserialize<'de> for Interoperable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Interoperable;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Interoperable, E> {
                Ok(Interoperable)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Interoperable, E> {
                Ok(Interoperable)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Interoperable, E> {
                Ok(Interoperable)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Interoperable, E> {
                if v.is_finite() {
                    Ok(Interoperable)
                } else {
                    Err(E::custom("number out of range"))
                }
            }
            fn visit_str<E>(self, _: &str) -> Result<Interoperable, E> {
                Ok(Interoperable)
            }
            fn visit_unit<E>(self) -> Result<Interoperable, E> {
                Ok(Interoperable)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Interoperable, A::Error> {
                while seq.next_element::<Interoperable>()?.is_some() {}
                Ok(Interoperable)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Interoperable, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, Interoperable>()?
                    .is_some()
                {}
                Ok(Interoperable)
            }
        }
        d.deserialize_any(Visit)
    }
}

fn invalid_json(e: serde_json::Error) -> PublishError {
    PublishError {
        code: ErrorCode::InvalidJson,
        message: format!("body is not valid JSON: {e}"),
        index: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broadcast_is_one_event_per_channel_with_the_same_data() {
        let events = super::parse_broadcast(
            br#"{"channels": ["a", "b.c"], "data": {"z": 1, "a": 2}, "priority": "high"}"#,
        )
        .unwrap();
        let names: Vec<&str> = events.iter().map(|e| e.channel().as_str()).collect();
        assert_eq!(names, ["a", "b.c"]);
        for event in &events {
            assert_eq!(
                event.data().get(),
                r#"{"z": 1, "a": 2}"#,
                "data is kept as sent"
            );
            assert_eq!(event.priority(), Some(crate::event::Priority::High));
        }
    }

    #[test]
    fn a_broadcast_without_channels_or_with_bad_ones_is_refused() {
        for body in [
            r#"{"data": {}}"#,
            r#"{"channels": [], "data": {}}"#,
            r#"{"channels": "a", "data": {}}"#,
            r#"{"channels": ["a", "a"]}"#,
            r#"{"type": "a", "channels": ["b"]}"#,
            r#"[{"channels": ["a"]}]"#,
        ] {
            let e = super::parse_broadcast(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidBody, "{body}: {e}");
        }
        let e = super::parse_broadcast(br#"{"channels": ["ok", "bad name!"]}"#).unwrap_err();
        assert_eq!((e.code, e.index), (ErrorCode::InvalidEvent, Some(1)));
        let e = super::parse_broadcast(b"{nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }

    use super::*;

    #[test]
    fn priority_and_conflation_key_are_read_and_checked() {
        let events = parse(
            br#"[{"type":"a","data":{},"priority":"critical"},{"type":"b","conflate":"agent-7","priority":"low"},{"type":"c"}]"#,
        )
        .unwrap();
        assert_eq!(events[0].priority(), Some(Priority::Critical));
        assert_eq!(events[0].conflate(), None);
        assert_eq!(events[1].priority(), Some(Priority::Low));
        assert_eq!(events[1].conflate().unwrap().as_str(), "agent-7");
        assert_eq!(events[2].priority(), None, "the channel's default");

        let e = parse(br#"{"type":"a","priority":"urgent"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEvent);
        assert!(e.message.contains("urgent"), "{}", e.message);
        let long = format!(r#"{{"type":"a","conflate":"{}"}}"#, "k".repeat(129));
        let e = parse(long.as_bytes()).unwrap_err();
        assert!(e.message.contains("`conflate`"), "{}", e.message);
        assert!(parse(br#"{"type":"a","conflate":""}"#).is_err());
        assert!(parse(br#"{"type":"a","conflate":7}"#).is_err());
    }

    #[test]
    fn one_event_or_an_array() {
        let one = parse(br#" {"type":"a","data":{"x":1}} "#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].data().get(), r#"{"x":1}"#);
        let many =
            parse(br#"[{"type":"a"},{"type":"b","data":null},{"type":"c","data":[1]}]"#).unwrap();
        let names: Vec<_> = many.iter().map(|e| e.channel().to_string()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(many[0].data().get(), "{}");
        assert_eq!(many[1].data().get(), "{}");
        assert!(parse(b"[]").unwrap().is_empty());
    }

    #[test]
    fn bad_bodies_are_named() {
        let cases: [(&[u8], &str, Option<usize>); 8] = [
            (b"", "invalid_body", None),
            (b"42", "invalid_body", None),
            (b"{\"type\":\"a\"} trailing", "invalid_json", None),
            (b"[{\"type\":\"a\"},", "invalid_json", None),
            (b"{\"data\":{}}", "invalid_event", None),
            (b"{\"type\":7}", "invalid_event", None),
            (
                b"[{\"type\":\"ok\"},{\"type\":\"not ok\"}]",
                "invalid_event",
                Some(1),
            ),
            (b"[{\"type\":\"ok\"},5]", "invalid_event", Some(1)),
        ];
        for (body, code, index) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(
                (e.code.as_str(), e.index),
                (code, index),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Regression: fuzz/artifacts/publish_body/crash-317d5095…, a number that overflows a
    /// double, was forwarded and broke serde_json subscribers.
    #[test]
    fn numbers_outside_a_double_are_refused() {
        let crash = b"{\"type\":\"o\",\"data\":{\"id[\"\n\n:  \n [\t8e95990\n \t]\n }}";
        let e = parse(crash).unwrap_err();
        assert_eq!(e.code, "invalid_event");
        assert!(e.message.contains("out of range"), "{}", e.message);
        for bad in [
            &b"{\"type\":\"a\",\"data\":{\"x\":1e999}}"[..],
            b"[{\"type\":\"a\",\"data\":[-1e400]}]",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Big, small and precise numbers that a double holds are fine, and stay verbatim.
        let ok = parse(
            br#"{"type":"a","data":{"x":1e308,"y":-1e-400,"z":12345678901234567890,"w":0.1}}"#,
        )
        .unwrap();
        assert_eq!(
            ok[0].data().get(),
            r#"{"x":1e308,"y":-1e-400,"z":12345678901234567890,"w":0.1}"#
        );
    }

    #[test]
    fn escaped_type_names_are_unescaped_then_validated() {
        assert_eq!(
            parse(br#"{"type":"a\u002eb"}"#).unwrap()[0]
                .channel()
                .as_str(),
            "a.b"
        );
        assert!(parse(br#"{"type":"a\"b"}"#).is_err());
    }
}
