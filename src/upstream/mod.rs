//! Status sources, the snapshot cache and circuit breakers: graceful degradation.
//!
//! sigmahub produces status events itself:
//! - from the host (always, the embedded default): `system.status` every 5 s and
//!   `storage.update` every 30 s, read with sysinfo;
//! - from SigmaVault's engine over JSON-RPC when `engine.url` is set: `system.status`
//!   (replacing the host's), `compression.update` (one event per running or pending job and
//!   a summary) and `agent.status` (one per agent), each polled every 5 s.
//!
//! Every engine method has its own [`breaker::Breaker`]. Each broadcast is kept in the
//! [`SnapshotCache`](crate::snapshot::SnapshotCache); when a call fails, the last good data goes out again on the
//! normal schedule with `stale: true`, an `error_code` and `last_update`, and an `rpc_error`
//! event reports the failure (on the first one, then at most every
//! `engine.error_report_interval`). New subscribers receive a type's snapshot at once.

pub mod breaker;
pub(crate) mod host;
pub(crate) mod poller;
pub(crate) mod probe;
pub(crate) mod rpc;
pub(crate) mod translate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::value::RawValue;

use self::breaker::{Breaker, BreakerState};
use self::host::HostProbe;
use self::poller::{Outlet, Policy, PollSpec};
use self::rpc::{RpcClient, UpstreamError};
use self::translate::Faults;
use crate::config::Config;
use crate::protocol::code::StaleCode;

/// Every poller's breaker, as the stats API shows it.
#[derive(Debug, Default)]
pub struct BreakerBoard {
    map: ArcSwap<BTreeMap<&'static str, BreakerStatus>>,
}

/// One breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BreakerStatus {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

impl BreakerBoard {
    fn record(&self, method: &'static str, breaker: &Breaker) {
        let status = BreakerStatus {
            state: breaker.state(),
            consecutive_failures: breaker.consecutive_failures(),
        };
        if self.map.load().get(method) == Some(&status) {
            return;
        }
        self.map.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.insert(method, status);
            map
        });
    }

    /// Every breaker's status, by method.
    pub fn all(&self) -> BTreeMap<&'static str, BreakerStatus> {
        BTreeMap::clone(&self.map.load())
    }
}

/// Starts every poller the configuration asks for, on `tasks` (dropping the set stops them).
pub(crate) fn start(config: &Config, outlet: Outlet, tasks: &mut tokio::task::JoinSet<()>) {
    let engine = &config.engine;
    let policy = Policy {
        breaker_threshold: engine.breaker_threshold,
        breaker_reset: engine.breaker_reset,
        error_report_interval: engine.error_report_interval,
    };
    let mut specs = Vec::new();
    if config.host.enabled {
        match HostProbe::new() {
            Ok(probe) => {
                let probe = Arc::new(Mutex::new(probe));
                if engine.url.is_none() {
                    let interval = config.host.status_interval;
                    specs.push(host_spec(
                        &probe,
                        "host.system_status",
                        "system.status",
                        interval,
                    ));
                }
                let interval = config.host.storage_interval;
                specs.push(host_spec(
                    &probe,
                    "host.storage",
                    "storage.update",
                    interval,
                ));
            }
            Err(e) => tracing::warn!(error = %e, "host metrics unavailable"),
        }
    }
    if let Some(url) = &engine.url {
        let client =
            Arc::new(RpcClient::new(url, engine.timeout).expect("validated with the config"));
        let health = client.clone();
        tasks.spawn(async move {
            match health.call("health.check", &serde_json::json!({})).await {
                Ok(result) => tracing::info!(result = %result, "engine health check passed"),
                Err(e) => tracing::warn!(error = %e, "engine health check failed"),
            }
        });
        if !engine.recovery_probe_interval.is_zero() {
            let (client, board, recovery) = (
                client.clone(),
                outlet.breakers.clone(),
                outlet.recovery.clone(),
            );
            let interval = engine.recovery_probe_interval;
            tasks.spawn(async move {
                let any_open = || {
                    board.all().iter().any(|(method, status)| {
                        !method.starts_with("host.") && status.state == BreakerState::Open
                    })
                };
                let check = || {
                    let client = client.clone();
                    async move {
                        client
                            .call("health.check", &serde_json::json!({}))
                            .await
                            .map(drop)
                    }
                };
                probe::run(interval, any_open, check, &recovery).await;
            });
        }
        let rpc = |method: &'static str, params: serde_json::Value| -> poller::Fetch {
            let client = client.clone();
            Box::new(move || {
                let (client, params) = (client.clone(), params.clone());
                Box::pin(async move { client.call(method, &params).await })
            })
        };
        specs.push(PollSpec {
            name: "system.status",
            error_code: StaleCode::SystemStatusFailed,
            channels: &["system.status"],
            interval: engine.poll_interval,
            fetch: rpc("system.status", serde_json::json!({})),
            shape: shape_system_status,
        });
        specs.push(PollSpec {
            name: "compression.queue.running",
            error_code: StaleCode::CompressionJobsFailed,
            channels: &["compression.update"],
            interval: engine.poll_interval,
            fetch: rpc(
                "compression.queue.running",
                serde_json::json!({"include_pending": true, "limit": 50}),
            ),
            shape: shape_compression,
        });
        specs.push(PollSpec {
            name: "agents.list",
            error_code: StaleCode::AgentStatusFailed,
            channels: &["agent.status", "agent.summary"],
            interval: engine.poll_interval,
            fetch: rpc("agents.list", serde_json::json!({})),
            shape: shape_agents,
        });
    }
    for spec in specs {
        tasks.spawn(poller::run(spec, outlet.clone(), policy));
    }
}

fn host_spec(
    probe: &Arc<Mutex<HostProbe>>,
    name: &'static str,
    channel: &'static str,
    interval: Duration,
) -> PollSpec {
    let probe = probe.clone();
    let storage = channel == "storage.update";
    PollSpec {
        name,
        error_code: if storage {
            StaleCode::StorageStatusFailed
        } else {
            StaleCode::SystemStatusFailed
        },
        channels: if storage {
            &["storage.update"]
        } else {
            &["system.status"]
        },
        interval,
        fetch: Box::new(move || {
            let probe = probe.clone();
            Box::pin(async move {
                // sysinfo reads /proc and stats file systems: keep it off the runtime's threads.
                let reading = tokio::task::spawn_blocking(move || {
                    let mut probe = probe.lock().unwrap_or_else(|e| e.into_inner());
                    let now = SystemTime::now();
                    if storage {
                        probe
                            .storage(now)
                            .map(|s| serde_json::value::to_raw_value(&s))
                    } else {
                        probe
                            .system_status(now)
                            .map(|s| serde_json::value::to_raw_value(&s))
                    }
                })
                .await
                .map_err(|e| UpstreamError::Host(e.to_string()))?;
                reading
                    .map_err(|e| UpstreamError::Host(e.to_string()))?
                    .map_err(|e| UpstreamError::Host(e.to_string()))
            })
        }),
        shape: if storage {
            shape_storage
        } else {
            shape_host_status
        },
    }
}

fn object(
    result: &RawValue,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(result.get()) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{what}: result is not an object")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn raw(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON values serialize")
}

type Groups = Vec<(&'static str, Vec<Box<RawValue>>)>;

fn shape_host_status(result: &RawValue, _: &Faults) -> Result<Groups, String> {
    Ok(vec![("system.status", vec![result.to_owned()])])
}

fn shape_storage(result: &RawValue, _: &Faults) -> Result<Groups, String> {
    Ok(vec![("storage.update", vec![result.to_owned()])])
}

/// `system.status`: the engine's answer translated to the protocol's fields.
fn shape_system_status(result: &RawValue, faults: &Faults) -> Result<Groups, String> {
    let record = object(result, "system.status")?;
    let data = translate::system_status(&record, SystemTime::now(), faults);
    Ok(vec![("system.status", vec![raw(&data)])])
}

/// `compression.queue.running` -> one `compression.update` per running or pending job, then
/// the summary (`jobs` and the totals).
fn shape_compression(result: &RawValue, faults: &Faults) -> Result<Groups, String> {
    let answer = object(result, "compression.queue.running")?;
    let events = translate::compression_events(&answer, SystemTime::now(), faults)?;
    Ok(vec![(
        "compression.update",
        events.iter().map(raw).collect(),
    )])
}

/// `agents.list` (an array, or an object with `agents`) -> one `agent.status` per agent, and
/// the `agent.summary` of them all.
fn shape_agents(result: &RawValue, faults: &Faults) -> Result<Groups, String> {
    let answer: serde_json::Value =
        serde_json::from_str(result.get()).map_err(|e| format!("agents.list: {e}"))?;
    let now = SystemTime::now();
    let agents = translate::agent_events(&answer, now, faults)?;
    let summary = translate::agent_summary(&agents, now);
    Ok(vec![
        ("agent.status", agents.iter().map(raw).collect()),
        ("agent.summary", vec![raw(&summary)]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    fn shape_compression_test(result: &RawValue) -> Result<Groups, String> {
        shape_compression(result, &Faults::default())
    }

    fn shape_agents_test(result: &RawValue) -> Result<Groups, String> {
        shape_agents(result, &Faults::default())
    }

    #[test]
    fn compression_becomes_one_event_per_job_and_a_summary() {
        let groups = shape_compression_test(&rv(
            r#"{"jobs":[{"job_id":"a","status":"running","progress":45.2},{"job_id":"b","status":"pending"}],
                "total_running":1,"total_pending":1,"total_jobs":15}"#,
        ))
        .unwrap();
        let (channel, items) = &groups[0];
        assert_eq!(*channel, "compression.update");
        assert_eq!(items.len(), 3);
        let summary: serde_json::Value = serde_json::from_str(items[2].get()).unwrap();
        assert_eq!(summary["total_jobs"], 15);
        assert_eq!(summary["jobs"].as_array().unwrap().len(), 2);
        let job: serde_json::Value = serde_json::from_str(items[0].get()).unwrap();
        assert_eq!(job["progress"], 45.2);
        assert!(shape_compression_test(&rv(r#"{"jobs":5}"#)).is_err());
        assert!(shape_compression_test(&rv("[]")).is_err());
    }

    #[test]
    fn agents_come_as_an_array_or_inside_an_object() {
        for body in [
            r#"[{"agent_id":"TENSOR-07"}]"#,
            r#"{"agents":[{"agent_id":"TENSOR-07"}]}"#,
        ] {
            let groups = shape_agents_test(&rv(body)).unwrap();
            assert_eq!(groups[0].1.len(), 1);
        }
        assert!(shape_agents_test(&rv("[1]")).is_err());
        assert!(shape_agents_test(&rv("7")).is_err());
    }
}
