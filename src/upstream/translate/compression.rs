//! `compression.queue.running` -> `compression.update` events: one per job, then the summary.

use std::time::SystemTime;

use serde_json::Value;

use super::{Faults, Field, Kind, Object, Source, Table};

/// The protocol's per-job progress fields (seed 000, "Progress Fields").
pub(crate) static JOB: Table = Table {
    method: "compression.queue.running",
    fields: &[
        Field::new("job_id", Kind::String, &[Source::At(&["job_id"])]),
        Field::new("status", Kind::String, &[Source::At(&["status"])]),
        Field::new("job_type", Kind::String, &[Source::At(&["job_type"])]),
        Field::new("priority", Kind::String, &[Source::At(&["priority"])]),
        Field::new("progress", Kind::Number, &[Source::At(&["progress"])]),
        Field::new("phase", Kind::String, &[Source::At(&["phase"])]),
        Field::new(
            "bytes_processed",
            Kind::Number,
            &[Source::At(&["bytes_processed"])],
        ),
        Field::new("bytes_total", Kind::Number, &[Source::At(&["bytes_total"])]),
        Field::new(
            "compression_ratio",
            Kind::Number,
            &[
                Source::At(&["current_ratio"]),
                Source::At(&["compression_ratio"]),
            ],
        ),
        Field::new(
            "elapsed_seconds",
            Kind::Number,
            &[Source::At(&["elapsed_seconds"])],
        ),
        Field::new("eta_seconds", Kind::Number, &[Source::At(&["eta_seconds"])]),
        Field::new(
            "input_path",
            Kind::OptionalString,
            &[Source::At(&["input_path"]), Source::Null],
        ),
        Field::new(
            "output_path",
            Kind::OptionalString,
            &[Source::At(&["output_path"]), Source::Null],
        ),
        Field::new("timestamp", Kind::Number, &[Source::Now]),
    ],
};

/// The summary's totals.
pub(crate) static SUMMARY: Table = Table {
    method: "compression.queue.running",
    fields: &[
        Field::new(
            "total_running",
            Kind::Number,
            &[Source::At(&["total_running"])],
        ),
        Field::new(
            "total_pending",
            Kind::Number,
            &[Source::At(&["total_pending"])],
        ),
        Field::new("total_jobs", Kind::Number, &[Source::At(&["total_jobs"])]),
        Field::new("timestamp", Kind::Number, &[Source::Now]),
    ],
};

/// The `compression.update` events of one answer: each job, then the summary (its `jobs`
/// translated the same way). `Err` if the answer is not an object with a `jobs` array of
/// objects (a missing `jobs` is an empty queue).
pub(crate) fn compression_events(
    answer: &Object,
    now: SystemTime,
    faults: &Faults,
) -> Result<Vec<Object>, String> {
    let jobs = match answer.get("jobs") {
        Some(Value::Array(jobs)) => jobs.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err("compression.queue.running: `jobs` is not an array".into()),
    };
    let jobs = jobs
        .iter()
        .map(|job| match job {
            Value::Object(job) => Ok(JOB.translate(job, now, faults)),
            _ => Err("compression.queue.running: a job is not an object".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut totals = answer.clone();
    totals.remove("jobs");
    let mut summary = SUMMARY.translate(&totals, now, faults);
    summary.insert(
        "jobs".into(),
        Value::Array(jobs.iter().cloned().map(Value::Object).collect()),
    );
    let mut events = jobs;
    events.push(summary);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn events(answer: Value) -> (Vec<Value>, Faults) {
        let faults = Faults::default();
        let Value::Object(answer) = answer else {
            panic!("not an object")
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_703_337_717);
        let events = compression_events(&answer, now, &faults).unwrap();
        (events.into_iter().map(Value::Object).collect(), faults)
    }

    #[test]
    fn each_job_and_the_summary_carry_the_protocols_fields() {
        let (events, faults) = events(fixtures::compression());
        assert_eq!(events.len(), 3);
        let job = &events[0];
        assert_eq!(job["job_id"], "2e877596-d8ef-4e14-9235-3e6d8d59df76");
        assert_eq!(job["status"], "pending");
        assert_eq!(job["job_type"], "compress_data");
        assert_eq!(job["priority"], "high");
        assert_eq!(job["progress"], 0.0);
        assert_eq!(job["phase"], "pending");
        assert_eq!(job["bytes_processed"], 0);
        assert_eq!(job["bytes_total"], 300_000);
        assert_eq!(job["compression_ratio"], 1.0);
        assert_eq!(job["elapsed_seconds"], 0.0);
        assert_eq!(job["eta_seconds"], 0.0);
        assert_eq!(job["input_path"], Value::Null);
        assert_eq!(job["output_path"], Value::Null);
        assert_eq!(job["timestamp"], 1_703_337_717);
        assert_eq!(job["created_at"], "2026-12-01T06:52:58.101163");
        let summary = &events[2];
        assert_eq!(summary["total_running"], 0);
        assert_eq!(summary["total_pending"], 2);
        assert_eq!(summary["total_jobs"], 2);
        assert_eq!(summary["timestamp"], 1_703_337_717);
        assert_eq!(summary["jobs"][1]["compression_ratio"], 1.0);
        assert_eq!(summary["jobs"][1]["job_id"], events[1]["job_id"]);
        assert!(faults.counts().is_empty(), "{:?}", faults.counts());
    }

    #[test]
    fn an_empty_queue_is_a_summary_alone_and_bad_shapes_are_errors() {
        let (events, _) = events(json!({"total_running": 0, "total_pending": 0, "total_jobs": 0}));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["jobs"], json!([]));
        let faults = Faults::default();
        let bad = |v: Value| {
            compression_events(v.as_object().unwrap(), SystemTime::now(), &faults).is_err()
        };
        assert!(bad(json!({"jobs": 5})));
        assert!(bad(json!({"jobs": [1]})));
    }

    #[test]
    fn a_job_without_a_ratio_is_counted() {
        let (events, faults) = events(json!({
            "jobs": [{"job_id": "j", "status": "running", "job_type": "compress_file",
                      "priority": "normal", "progress": 5, "phase": "compressing",
                      "bytes_processed": 1, "bytes_total": 2, "elapsed_seconds": 1,
                      "eta_seconds": 1, "input_path": "/a", "output_path": "/b"}],
            "total_running": 1, "total_pending": 0, "total_jobs": 1
        }));
        assert!(events[0].get("compression_ratio").is_none());
        assert_eq!(
            faults.counts()[&("compression.queue.running", "compression_ratio")],
            1
        );
    }
}
