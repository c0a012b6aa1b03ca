//! Translation of the SigmaVault engine's JSON-RPC answers into the SigmaVault WebSocket
//! event shapes (seed 000, "Event Types"; docs/protocol.md).
//!
//! The engine and the WebSocket protocol name and shape the same facts differently: the
//! engine sends `memory_usage.used_percent`, the protocol `memory_pct`; the engine
//! `load_average.{load1,load5,load15}`, the protocol `[1, 5, 15]`; the engine an ISO 8601
//! `timestamp`, the protocol Unix seconds. Each method has one [`Table`] of the protocol's
//! fields, each with the engine fields it may come from, in order of preference (the
//! protocol's own name last, so an engine that already speaks the protocol passes through).
//!
//! Beside the protocol's fields, every engine field the protocol does not name is passed
//! on as an extra (`platform`, `disk_usage`, an agent's `tier`, …). An
//! engine field is never passed on under a protocol field's name unless it has the
//! protocol's type.
//!
//! A required field that no source can fill, or whose source has the wrong type, is left
//! out and recorded in [`Faults`]: logged once per method and field, and counted in
//! `/metrics` (`sigmahub_upstream_translation_faults_total`).

mod agents;
mod compression;
mod system_status;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};

pub(crate) use agents::{agent_events, agent_summary};
pub(crate) use compression::compression_events;
pub(crate) use system_status::system_status;

/// A JSON object: an engine record or a translated event's data.
pub(crate) type Object = Map<String, Value>;

/// Where a protocol field's value may come from in the engine's record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// The value at this path, if it has the field's type.
    At(&'static [&'static str]),
    /// `used / total * 100` from the values at these two paths.
    Percent(&'static [&'static str], &'static [&'static str]),
    /// `[load1, load5, load15]` from an object with those keys (or an array of three).
    LoadTriple(&'static [&'static str]),
    /// Unix seconds from an ISO 8601 string (UTC when it names no offset) or a number.
    UnixSeconds(&'static [&'static str]),
    /// The time of translation, in Unix seconds.
    Now,
    /// `null`: the engine has no such fact (an agent's current task).
    Null,
}

/// A protocol field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Number,
    String,
    /// A string or `null` (paths of jobs that are not file operations).
    OptionalString,
    /// An array of three numbers.
    Triple,
}

/// One protocol field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// Tried in order; the first that yields a value of `kind` wins.
    pub(crate) sources: &'static [Source],
}

impl Field {
    /// The protocol field `name` of type `kind`, filled from the first of `sources` that
    /// yields one.
    pub(crate) const fn new(name: &'static str, kind: Kind, sources: &'static [Source]) -> Self {
        Self {
            name,
            kind,
            sources,
        }
    }
}

/// The protocol fields of one event type, for one engine method.
#[derive(Debug)]
pub(crate) struct Table {
    /// The engine method, for logs and metrics.
    pub(crate) method: &'static str,
    pub(crate) fields: &'static [Field],
}

impl Table {
    /// Translates one engine record: the protocol's fields and the engine's extras.
    pub(crate) fn translate(&self, record: &Object, now: SystemTime, faults: &Faults) -> Object {
        let mut out = Object::new();
        for field in self.fields {
            match field
                .sources
                .iter()
                .find_map(|s| fill(s, field.kind, record, now))
            {
                Some(value) => {
                    out.insert(field.name.to_owned(), value);
                }
                None => faults.record(self.method, field.name),
            }
        }
        for (name, value) in record {
            if !self.fields.iter().any(|f| f.name == name) {
                out.insert(name.clone(), value.clone());
            }
        }
        out
    }
}

fn at<'a>(record: &'a Object, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(record.get(*first)?, |value, key| value.get(key))
}

fn fill(source: &Source, kind: Kind, record: &Object, now: SystemTime) -> Option<Value> {
    let value = match *source {
        Source::At(path) => at(record, path)?.clone(),
        Source::Percent(used, total) => {
            let used = at(record, used)?.as_f64()?;
            let total = at(record, total)?.as_f64()?;
            if total <= 0.0 {
                return None;
            }
            Value::from((used / total * 1000.0).round() / 10.0)
        }
        Source::LoadTriple(path) => match at(record, path)? {
            Value::Object(load) => Value::from(vec![
                load.get("load1")?.as_f64()?,
                load.get("load5")?.as_f64()?,
                load.get("load15")?.as_f64()?,
            ]),
            other => other.clone(),
        },
        Source::UnixSeconds(path) => match at(record, path)? {
            Value::String(text) => Value::from(unix_seconds(text)?),
            Value::Number(n) => Value::Number(n.clone()),
            _ => return None,
        },
        Source::Now => Value::from(crate::event::unix_seconds(now)),
        Source::Null => Value::Null,
    };
    has_kind(&value, kind).then_some(value)
}

fn has_kind(value: &Value, kind: Kind) -> bool {
    match kind {
        Kind::Number => value.is_number(),
        Kind::String => value.is_string(),
        Kind::OptionalString => value.is_string() || value.is_null(),
        Kind::Triple => {
            matches!(value, Value::Array(items) if items.len() == 3 && items.iter().all(Value::is_number))
        }
    }
}

/// Unix seconds of an ISO 8601 date and time; one without an offset is taken as UTC (the
/// engine writes `created_at` that way).
pub(crate) fn unix_seconds(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let naive = format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(text, naive)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// Engine answers that did not fit the protocol: per method and field, how many times a
/// required field could not be filled.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Faults {
    /// Records a field that could not be filled; logs the first time per method and field.
    pub(crate) fn record(&self, method: &'static str, field: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry((method, field)).or_default();
        if *count == 0 {
            tracing::warn!(
                method,
                field,
                "the engine's answer has no usable value for a protocol field; it is left out \
                 (logged once, counted in sigmahub_upstream_translation_faults_total)"
            );
        }
        *count += 1;
    }

    /// Every count so far, by method and field.
    pub(crate) fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! The engine's real answers (`../shared/fixtures/sigmavault-engine/`), kept in
    //! tests/fixtures so a clone has them.

    use serde_json::Value;

    fn result(text: &str) -> Value {
        let answer: Value = serde_json::from_str(text).expect("a fixture is JSON");
        answer["result"].clone()
    }

    pub(crate) fn system_status() -> Value {
        result(include_str!(
            "../../../tests/fixtures/sigmavault-engine/system.status.json"
        ))
    }

    pub(crate) fn compression() -> Value {
        result(include_str!(
            "../../../tests/fixtures/sigmavault-engine/compression.queue.running.json"
        ))
    }

    pub(crate) fn agents() -> Value {
        result(include_str!(
            "../../../tests/fixtures/sigmavault-engine/agents.list.json"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_with_and_without_offsets_become_unix_seconds() {
        assert_eq!(
            unix_seconds("2026-12-01T06:51:12.778134+00:00"),
            Some(1_796_107_872)
        );
        assert_eq!(
            unix_seconds("2026-12-01T06:52:58.101163"),
            Some(1_796_107_978)
        );
        assert_eq!(
            unix_seconds("2026-12-01T08:52:58+02:00"),
            Some(1_796_107_978)
        );
        assert_eq!(unix_seconds("yesterday"), None);
    }

    #[test]
    fn faults_are_counted_per_method_and_field() {
        let faults = Faults::default();
        faults.record("m", "a");
        faults.record("m", "a");
        faults.record("m", "b");
        assert_eq!(faults.counts()[&("m", "a")], 2);
        assert_eq!(faults.counts()[&("m", "b")], 1);
    }
}
