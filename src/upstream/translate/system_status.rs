//! `system.status` (engine method `system.status`) -> the `system.status` event.

use std::time::SystemTime;

use super::{Faults, Field, Kind, Object, Source, Table};

/// The protocol's `system.status` fields and where the engine keeps them.
pub(crate) static SYSTEM_STATUS: Table = Table {
    method: "system.status",
    fields: &[
        Field::new("hostname", Kind::String, &[Source::At(&["hostname"])]),
        Field::new("uptime", Kind::Number, &[Source::At(&["uptime"])]),
        Field::new("cpu_usage", Kind::Number, &[Source::At(&["cpu_usage"])]),
        Field::new(
            "memory_used",
            Kind::Number,
            &[
                Source::At(&["memory_usage", "used"]),
                Source::At(&["memory_used"]),
            ],
        ),
        Field::new(
            "memory_total",
            Kind::Number,
            &[
                Source::At(&["memory_usage", "total"]),
                Source::At(&["memory_total"]),
            ],
        ),
        Field::new(
            "memory_pct",
            Kind::Number,
            &[
                Source::At(&["memory_usage", "used_percent"]),
                Source::At(&["memory_pct"]),
                Source::Percent(&["memory_usage", "used"], &["memory_usage", "total"]),
                Source::Percent(&["memory_used"], &["memory_total"]),
            ],
        ),
        Field::new(
            "load_average",
            Kind::Triple,
            &[Source::LoadTriple(&["load_average"])],
        ),
        Field::new(
            "timestamp",
            Kind::Number,
            &[Source::UnixSeconds(&["timestamp"]), Source::Now],
        ),
    ],
};

/// The event data for one `system.status` answer.
pub(crate) fn system_status(record: &Object, now: SystemTime, faults: &Faults) -> Object {
    SYSTEM_STATUS.translate(record, now, faults)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use serde_json::{json, Value};

    fn translate(answer: Value) -> (Value, Faults) {
        let faults = Faults::default();
        let Value::Object(record) = answer else {
            panic!("not an object")
        };
        let data = system_status(&record, SystemTime::UNIX_EPOCH, &faults);
        (Value::Object(data), faults)
    }

    #[test]
    fn the_engines_answer_becomes_the_protocols_fields() {
        let (data, faults) = translate(fixtures::system_status());
        assert_eq!(data["hostname"], "vm");
        assert_eq!(data["uptime"], 1014);
        assert_eq!(data["cpu_usage"], 21.9);
        assert_eq!(data["memory_used"], 1_248_985_088u64);
        assert_eq!(data["memory_total"], 25_276_059_648u64);
        assert_eq!(data["memory_pct"], 4.9);
        assert_eq!(
            data["load_average"],
            json!([1.86669921875, 0.9345703125, 0.6357421875])
        );
        assert_eq!(data["timestamp"], 1_796_107_872);
        // The engine's other facts ride along as extras.
        assert_eq!(data["platform"], "Linux");
        assert_eq!(data["memory_usage"]["available"], 24_027_074_560u64);
        assert!(faults.counts().is_empty(), "{:?}", faults.counts());
    }

    #[test]
    fn an_answer_already_in_the_protocols_shape_passes_through() {
        let seed = json!({
            "hostname": "The_Plug", "uptime": 123456.78, "cpu_usage": 65.3,
            "memory_used": 4294967296u64, "memory_total": 17179869184u64, "memory_pct": 25.0,
            "load_average": [1.5, 1.2, 0.9], "timestamp": 1703337717
        });
        let (data, faults) = translate(seed.clone());
        assert_eq!(data, seed);
        assert!(faults.counts().is_empty());
    }

    #[test]
    fn missing_and_mistyped_fields_are_filled_where_possible_and_counted() {
        let (data, faults) = translate(json!({
            "hostname": 7,
            "uptime": "long",
            "cpu_usage": 3.0,
            "memory_usage": {"used": 1, "total": 4},
            "load_average": {"load1": 1.0, "load5": "x", "load15": 2.0},
            "timestamp": "not a date"
        }));
        // memory_pct computed from used and total; timestamp falls back to now.
        assert_eq!(data["memory_pct"], 25.0);
        assert_eq!(data["timestamp"], 0);
        // Never an engine value of the wrong type under a protocol name.
        assert!(data.get("hostname").is_none());
        assert!(data.get("uptime").is_none());
        assert!(data.get("load_average").is_none());
        let counts = faults.counts();
        assert_eq!(
            counts.keys().map(|(_, f)| *f).collect::<Vec<_>>(),
            ["hostname", "load_average", "uptime"]
        );
    }
}
