//! One poller: fetch a source on an interval, behind its circuit breaker, and turn each
//! result into snapshots and broadcasts, or, on failure, re-send the last good data stale.
//!
//! A poller awaits each call before the next tick (no overlapping calls), and every call is
//! bounded by a timeout, so a hung engine delays nothing but its own poller. A call that
//! outlasts the interval restarts it, so a method sends at most one round of frames per
//! interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::value::RawValue;

use super::breaker::{Breaker, BreakerState, Transition};
use super::probe::Recovery;
use super::rpc::UpstreamError;
use super::translate::Faults;
use super::BreakerBoard;
use crate::broker::{Broker, Completion};
// The runtime's clock (paused in tests): the breaker and the poll ticks read the same one.
use crate::clock::now;
use crate::event::{unix_seconds, Event};
use crate::protocol::channel::Channel;
use crate::protocol::code::StaleCode;
use crate::snapshot::{Snapshot, SnapshotCache};

/// A fetch's result: the raw JSON result, or why it failed.
pub(crate) type Fetched = Result<Box<RawValue>, UpstreamError>;

/// Starts one fetch.
pub(crate) type Fetch =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Fetched> + Send>> + Send + Sync>;

/// Turns a result into `(channel, items)` groups; an `Err` is an invalid result.
/// Fields the translation could not fill go to the [`Faults`].
pub(crate) type Shape =
    fn(&RawValue, &Faults) -> Result<Vec<(&'static str, Vec<Box<RawValue>>)>, String>;

/// What a poller polls.
pub(crate) struct PollSpec {
    /// The method (or host reading) name, for logs, events and the breaker board.
    pub(crate) name: &'static str,
    /// `error_code` of a failed call that is not a disconnect.
    pub(crate) error_code: StaleCode,
    /// The channels whose snapshots this poller writes (re-sent stale on failure).
    pub(crate) channels: &'static [&'static str],
    pub(crate) interval: Duration,
    pub(crate) fetch: Fetch,
    pub(crate) shape: Shape,
}

/// Where results go.
#[derive(Clone)]
pub(crate) struct Outlet {
    /// Snapshots and events go to every node's subscribers through it.
    pub(crate) broker: Arc<dyn Broker>,
    /// The latest snapshot of each channel, re-sent stale when a call fails.
    pub(crate) snapshots: Arc<SnapshotCache>,
    pub(crate) breakers: Arc<BreakerBoard>,
    /// Engine answers that did not fit the protocol.
    pub(crate) faults: Arc<Faults>,
    /// Recovery probes the engine answered.
    pub(crate) recovery: Arc<Recovery>,
}

/// Breaker and reporting settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_reset: Duration,
    pub(crate) error_report_interval: Duration,
}

/// Runs `spec` until its source reports the method does not exist (JSON-RPC -32601).
pub(crate) async fn run(spec: PollSpec, outlet: Outlet, policy: Policy) {
    let mut breaker = Breaker::new(policy.breaker_threshold, policy.breaker_reset);
    outlet.breakers.record(spec.name, &breaker);
    let mut ticks = tokio::time::interval(spec.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report: Option<Instant> = None;
    // The recovery probes answered before this method's breaker last opened.
    let mut probes_seen = outlet.recovery.generation();
    loop {
        ticks.tick().await;
        if breaker.state() == BreakerState::Open && outlet.recovery.generation() > probes_seen {
            breaker.recovered();
        }
        let (allowed, transition) = breaker.permit(now());
        if let Some(t) = transition {
            outlet.breaker_changed(&spec, &breaker, t);
        }
        if !allowed {
            outlet.republish_stale(spec.channels, StaleCode::CircuitBreakerOpen);
            continue;
        }
        let started = tokio::time::Instant::now();
        let outcome = (spec.fetch)().await.and_then(|result| {
            (spec.shape)(&result, &outlet.faults).map_err(UpstreamError::InvalidResponse)
        });
        if started.elapsed() >= spec.interval {
            // A call that outlasted the interval: the next tick would be due at once and
            // send this method's (stale) frames twice in a row. Start the next interval now.
            ticks.reset();
        }
        match outcome {
            Ok(groups) => {
                let now = SystemTime::now();
                for (channel, items) in groups {
                    outlet.publish_fresh(channel, items, now);
                }
                if let Some(t) = breaker.on_success() {
                    outlet.breaker_changed(&spec, &breaker, t);
                }
                outlet.breakers.record(spec.name, &breaker);
                last_report = None;
            }
            Err(e) if e.is_method_not_found() => {
                tracing::warn!(method = spec.name, error = %e, "the engine has no such method; its poller stops");
                return;
            }
            Err(e) => {
                let now = now();
                let transition = breaker.on_failure(now);
                if transition.is_some_and(|t| t.to == BreakerState::Open) {
                    probes_seen = outlet.recovery.generation();
                }
                if let Some(t) = transition {
                    outlet.breaker_changed(&spec, &breaker, t);
                }
                outlet.breakers.record(spec.name, &breaker);
                let code = if e.is_disconnect() {
                    StaleCode::RpcDisconnect
                } else {
                    spec.error_code
                };
                let stale_code = if breaker.state() == BreakerState::Open {
                    StaleCode::CircuitBreakerOpen
                } else {
                    code
                };
                outlet.republish_stale(spec.channels, stale_code);
                let due = last_report
                    .is_none_or(|t| now.duration_since(t) >= policy.error_report_interval);
                if due || transition.is_some() {
                    tracing::warn!(method = spec.name, error = %e, failures = breaker.consecutive_failures(), "upstream call failed");
                    outlet.report_error(&spec, &e, code, breaker.consecutive_failures());
                    last_report = Some(now);
                }
            }
        }
    }
}

impl Outlet {
    fn publish_fresh(&self, channel: &'static str, items: Vec<Box<RawValue>>, now: SystemTime) {
        let channel = Channel::new(channel).expect("pollers use valid channel names");
        self.publish_snapshot(Snapshot::new(channel, items.into(), now, None, now));
    }

    fn republish_stale(&self, channels: &[&str], error_code: StaleCode) {
        let now = SystemTime::now();
        for channel in channels {
            if let Some(previous) = self.snapshots.get(channel) {
                self.publish_snapshot(previous.to_stale(error_code, now));
            }
        }
    }

    /// Makes `snapshot` its channel's latest on every node, each of which sends what
    /// changed since the one it replaces ([`Snapshot::to_broadcast`]).
    fn publish_snapshot(&self, snapshot: Snapshot) {
        self.broker.publish_snapshot(snapshot);
    }

    /// Publishes an event of the pollers' own (`rpc_error`, breaker notifications) to
    /// every node.
    fn publish(&self, event: Event, now: SystemTime) {
        if let Completion::Pending(published) = self.broker.publish(vec![event], now) {
            tokio::spawn(published);
        }
    }

    fn report_error(&self, spec: &PollSpec, e: &UpstreamError, code: StaleCode, failures: u32) {
        let now = SystemTime::now();
        let reason = if e.is_disconnect() {
            "rpc_disconnect"
        } else {
            "rpc_failed"
        };
        let data = serde_json::json!({
            "reason": reason,
            "error_code": code,
            "consecutive_failures": failures,
            "method": spec.name,
            "message": e.to_string(),
            "timestamp": unix_seconds(now),
        });
        if let Ok(event) = Event::new("rpc_error", &data) {
            self.publish(event, now);
        }
    }

    fn breaker_changed(&self, spec: &PollSpec, breaker: &Breaker, t: Transition) {
        self.breakers.record(spec.name, breaker);
        let cached = spec
            .channels
            .iter()
            .any(|c| self.snapshots.get(c).is_some());
        let (level, message) = match t.to {
            BreakerState::Open if cached => (
                "warning",
                format!(
                    "circuit breaker for {} opened; serving cached data",
                    spec.name
                ),
            ),
            BreakerState::Open => (
                "warning",
                format!(
                    "circuit breaker for {} opened; it has never answered, so there is no \
                     data to serve",
                    spec.name
                ),
            ),
            BreakerState::HalfOpen => (
                "info",
                format!(
                    "circuit breaker for {} half-open; trying one call",
                    spec.name
                ),
            ),
            BreakerState::Closed => (
                "info",
                format!("circuit breaker for {} closed; fresh data again", spec.name),
            ),
        };
        tracing::info!(method = spec.name, from = ?t.from, to = ?t.to, "circuit breaker changed");
        let now = SystemTime::now();
        let data = serde_json::json!({
            "message": message,
            "level": level,
            "breaker": {
                "method": spec.name,
                "state": t.to,
                "previous": t.from,
                "consecutive_failures": breaker.consecutive_failures(),
            },
        });
        if let Ok(event) = Event::new("notification", &data) {
            self.publish(event, now);
        }
    }
}
