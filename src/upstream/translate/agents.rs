//! `agents.list` -> one `agent.status` event per agent, and the `agent.summary` aggregate
//! that SigmaVault's own hub sent as one frame.

use std::time::SystemTime;

use serde_json::Value;

use super::{Faults, Field, Kind, Object, Source, Table};

/// The protocol's `agent.status` fields.
pub(crate) static AGENT: Table = Table {
    method: "agents.list",
    fields: &[
        Field::new("agent_id", Kind::String, &[Source::At(&["agent_id"])]),
        Field::new("status", Kind::String, &[Source::At(&["status"])]),
        // The engine reports no current task; the protocol's field is then null.
        Field::new(
            "current_task",
            Kind::OptionalString,
            &[Source::At(&["current_task"]), Source::Null],
        ),
        // In MB, as the protocol's example.
        Field::new(
            "memory_usage",
            Kind::Number,
            &[
                Source::At(&["memory_usage_mb"]),
                Source::At(&["memory_usage"]),
            ],
        ),
        Field::new("timestamp", Kind::Number, &[Source::Now]),
    ],
};

/// The agents of an `agents.list` answer (an array, or an object with `agents`), each
/// translated to `agent.status` data, in the engine's order.
pub(crate) fn agent_events(
    answer: &Value,
    now: SystemTime,
    faults: &Faults,
) -> Result<Vec<Object>, String> {
    let agents = match answer {
        Value::Array(agents) => agents,
        Value::Object(map) => match map.get("agents") {
            Some(Value::Array(agents)) => agents,
            _ => return Err("agents.list: no `agents` array".into()),
        },
        _ => return Err("agents.list: result is neither an array nor an object".into()),
    };
    agents
        .iter()
        .map(|agent| match agent {
            Value::Object(agent) => Ok(AGENT.translate(agent, now, faults)),
            _ => Err("agents.list: an agent is not an object".to_string()),
        })
        .collect()
}

/// The `agent.summary` data: every agent by id (as in its `agent.status`), and the counts
/// by status that SigmaVault's hub sent (`active_agents` counts `active` and `busy`).
pub(crate) fn agent_summary(agents: &[Object], now: SystemTime) -> Object {
    let count = |wanted: &[&str]| {
        agents
            .iter()
            .filter(|a| matches!(a.get("status"), Some(Value::String(s)) if wanted.contains(&s.as_str())))
            .count()
    };
    let by_id: Object = agents
        .iter()
        .filter_map(|a| {
            Some((
                a.get("agent_id")?.as_str()?.to_owned(),
                Value::Object(a.clone()),
            ))
        })
        .collect();
    let mut summary = Object::new();
    summary.insert("agents".into(), Value::Object(by_id));
    summary.insert("total_agents".into(), agents.len().into());
    summary.insert("active_agents".into(), count(&["active", "busy"]).into());
    summary.insert("idle_agents".into(), count(&["idle"]).into());
    summary.insert("error_agents".into(), count(&["error", "failed"]).into());
    summary.insert("timestamp".into(), crate::event::unix_seconds(now).into());
    summary
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use serde_json::json;

    #[test]
    fn each_engine_agent_becomes_the_protocols_agent_status() {
        let faults = Faults::default();
        let agents = agent_events(&fixtures::agents(), SystemTime::UNIX_EPOCH, &faults).unwrap();
        assert_eq!(agents.len(), 40);
        let tensor = Value::Object(agents[0].clone());
        assert_eq!(tensor["agent_id"], "agent-001");
        assert_eq!(tensor["status"], "idle");
        assert_eq!(tensor["current_task"], Value::Null);
        assert_eq!(tensor["memory_usage"], 128.0);
        assert_eq!(tensor["timestamp"], 0);
        // The engine's own facts beside them.
        assert_eq!(tensor["name"], "TENSOR");
        assert_eq!(tensor["tier"], "core");
        assert_eq!(tensor["specialty"], "Deep learning compression models");
        assert_eq!(tensor["tasks_completed"], 0);
        assert_eq!(tensor["success_rate"], 1.0);
        assert!(faults.counts().is_empty(), "{:?}", faults.counts());
    }

    #[test]
    fn the_summary_counts_agents_by_status() {
        let faults = Faults::default();
        let answer = json!({"agents": [
            {"agent_id": "a", "status": "active", "memory_usage_mb": 1.0},
            {"agent_id": "b", "status": "idle", "memory_usage_mb": 1.0},
            {"agent_id": "c", "status": "error", "memory_usage_mb": 1.0},
            {"agent_id": "d", "status": "busy", "memory_usage_mb": 1.0}
        ]});
        let agents = agent_events(&answer, SystemTime::UNIX_EPOCH, &faults).unwrap();
        let summary = Value::Object(agent_summary(&agents, SystemTime::UNIX_EPOCH));
        assert_eq!(summary["total_agents"], 4);
        assert_eq!(summary["active_agents"], 2);
        assert_eq!(summary["idle_agents"], 1);
        assert_eq!(summary["error_agents"], 1);
        assert_eq!(summary["agents"]["c"]["status"], "error");
    }

    #[test]
    fn bad_shapes_are_errors_and_missing_fields_are_counted() {
        let faults = Faults::default();
        assert!(agent_events(&json!(7), SystemTime::now(), &faults).is_err());
        assert!(agent_events(&json!([1]), SystemTime::now(), &faults).is_err());
        let agents = agent_events(&json!([{"agent_id": "x"}]), SystemTime::now(), &faults).unwrap();
        assert_eq!(agents[0]["current_task"], Value::Null);
        let counts = faults.counts();
        assert_eq!(counts[&("agents.list", "status")], 1);
        assert_eq!(counts[&("agents.list", "memory_usage")], 1);
    }
}
