//! `GET /metrics`: the counters in the Prometheus/OpenMetrics text format, encoded by
//! prometheus-client.
//!
//! Nothing here is on the hot path: the hub, the writers and the readers keep their own
//! relaxed atomics (thread-sharded where they are hit per frame), and a scrape reads them
//! through a [`Collector`]. Names follow seed 004 (`websocket_*`) where it has one; the
//! rest are `sigmahub_*`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::dialect::Dialect;
use crate::engine::latency::HistogramSnapshot;
use crate::protocol::close::CloseCode;
use crate::upstream::breaker::BreakerState;

/// Channels shown by name in `sigmahub_channel_subscribers`; the rest are summed under
/// `channel="_other"`, so the series count stays bounded whatever clients subscribe to.
pub(crate) const TOP_CHANNELS: usize = 20;

/// The `Content-Type` of the answer.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes every metric of `shared`.
pub(crate) fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(shared.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

/// Reads the server's counters when scraped.
struct Scrape(Arc<Shared>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

/// One value without labels.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&(value as i64)),
    }
}

/// One value per label value.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    values: impl IntoIterator<Item = (String, f64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value.as_str())];
        let mut one = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => one.encode_counter::<NoLabelSet, _, u64>(&(n as u64), None)?,
            _ => one.encode_gauge(&n)?,
        }
    }
    Ok(())
}

/// A histogram read from a [`HistogramSnapshot`].
fn encoder_histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

/// A counter of seconds (a float).
fn seconds_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    seconds: f64,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    metric.encode_counter::<NoLabelSet, _, u64>(&seconds, None)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let shared = &*self.0;
        let hub = shared.hub.stats();
        let counters = &shared.counters;
        let origin = super::counters::Limit::OriginRefused;
        let mut refused_by_reason = shared.admission.refused.by_reason().to_vec();
        refused_by_reason.push((origin.name(), counters.get(origin)));
        let refused_total: u64 = refused_by_reason.iter().map(|(_, n)| n).sum();

        // Seed 004's names. Counter names get their `_total` suffix from the encoder.
        single(
            &mut e,
            "websocket_connections",
            "WebSocket connections accepted",
            Counter,
            hub.connected_total,
        )?;
        single(
            &mut e,
            "websocket_connections_active",
            "WebSocket connections open now",
            Gauge,
            hub.clients as u64,
        )?;
        family(
            &mut e,
            "sigmahub_connections_active",
            "WebSocket connections open now, by the dialect they speak",
            Gauge,
            "dialect",
            Dialect::ALL.iter().map(|d| {
                (
                    d.as_str().to_owned(),
                    hub.clients_by_dialect[d.index()] as f64,
                )
            }),
        )?;
        single(
            &mut e,
            "sigmahub_socketio_polling_sessions",
            "Socket.IO sessions on HTTP long-polling now (counted in sigmahub_connections_active{dialect=\"socketio\"})",
            Gauge,
            shared.polling.polling() as u64,
        )?;
        single(
            &mut e,
            "sigmahub_deflate_connections",
            "Connections open now that negotiated permessage-deflate (their broadcast frames are compressed)",
            Gauge,
            hub.deflate_clients as u64,
        )?;
        let compression = shared.hub.compression();
        single(
            &mut e,
            "sigmahub_deflate_messages",
            "Broadcast messages with permessage-deflate subscribers, each compressed once for all of them (or sent plain under the threshold or when not smaller)",
            Counter,
            compression.messages,
        )?;
        single(
            &mut e,
            "sigmahub_deflate_compressed",
            "Of sigmahub_deflate_messages_total, those sent compressed",
            Counter,
            compression.compressed,
        )?;
        single(
            &mut e,
            "sigmahub_deflate_bytes_in",
            "Payload bytes of sigmahub_deflate_messages_total before compression",
            Counter,
            compression.bytes_in,
        )?;
        single(
            &mut e,
            "sigmahub_deflate_bytes_out",
            "Payload bytes of sigmahub_deflate_messages_total as sent, compressed or not",
            Counter,
            compression.bytes_out,
        )?;
        single(
            &mut e,
            "websocket_connections_failed",
            "Connection attempts that failed: upgrades refused before the 101, credentials refused, no credentials in time",
            Counter,
            refused_total
                + counters.auth_refused.load(Ordering::Relaxed)
                + counters.closes_with(CloseCode::AUTH_TIMEOUT),
        )?;
        single(
            &mut e,
            "websocket_messages_sent",
            "Frames written to clients: events, replies and notices",
            Counter,
            counters.frames_sent.get(),
        )?;
        single(
            &mut e,
            "websocket_messages_received",
            "Text messages received from clients",
            Counter,
            counters.messages_received.get(),
        )?;
        single(
            &mut e,
            "websocket_broadcast_delivered",
            "Event frames queued for subscribers by publishes",
            Counter,
            hub.delivered,
        )?;
        family(
            &mut e,
            "websocket_errors",
            "Limits hit and requests refused, by type",
            Counter,
            "type",
            counters
                .limits()
                .map(|(l, n)| (l.name().to_owned(), n as f64)),
        )?;
        single(
            &mut e,
            "websocket_subscriptions_failed",
            "Channels refused in subscribe requests",
            Counter,
            counters.subscriptions_failed.load(Ordering::Relaxed),
        )?;

        // sigmahub's own.
        single(
            &mut e,
            "sigmahub_events_published",
            "Events published",
            Counter,
            hub.published,
        )?;
        single(
            &mut e,
            "sigmahub_connections_dormant",
            "Idle connections dormant now: they hold no task until their client sends or is sent something",
            Gauge,
            counters.dormant_now(),
        )?;
        single(
            &mut e,
            "sigmahub_connections_awoken",
            "Times a dormant connection woke to read or write",
            Counter,
            counters.awoken.get(),
        )?;
        single(
            &mut e,
            "sigmahub_low_priority_wakes",
            "Writers woken by the low_priority_delay ticker: their queue held only low events, written together",
            Counter,
            hub.deferred_wakes,
        )?;
        family(
            &mut e,
            "sigmahub_connections_refused",
            "Connections and WebSocket upgrades refused (HTTP 429/503) and upgrades from refused origins, by reason",
            Counter,
            "reason",
            refused_by_reason
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n as f64)),
        )?;
        family(
            &mut e,
            "sigmahub_closes",
            "Connections the server closed, by close code",
            Counter,
            "code",
            counters
                .closes()
                .map(|(c, n)| (c.code.to_string(), n as f64)),
        )?;
        single(
            &mut e,
            "sigmahub_slow_consumer_closes",
            "Clients closed because their queue overflowed (4000)",
            Counter,
            counters.closes_with(CloseCode::SLOW_CONSUMER),
        )?;
        single(
            &mut e,
            "sigmahub_frames_dropped",
            "Frames dropped for slow consumers under the drop policy",
            Counter,
            counters.frames_dropped.get(),
        )?;
        let degraded = &counters.degraded;
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let reasons = ["shed_low", "shed_normal", "shed_high"]
            .into_iter()
            .zip(&degraded.shed)
            .map(|(reason, c)| (reason, count(c)))
            .chain([("conflated", count(&degraded.conflated))]);
        family(
            &mut e,
            "sigmahub_degraded_events",
            "Events held back from slow clients under the degrade policy, by reason (counted when the client catches up)",
            Counter,
            "reason",
            reasons.map(|(reason, n)| (reason.to_string(), n as f64)),
        )?;
        single(
            &mut e,
            "sigmahub_degraded_parked_sent",
            "Events parked as the newest of their conflation key and sent when the client caught up",
            Counter,
            count(&degraded.parked_sent),
        )?;
        single(
            &mut e,
            "sigmahub_gap_markers",
            "gap markers sent to clients that caught up after events were held back",
            Counter,
            count(&degraded.gaps),
        )?;
        single(
            &mut e,
            "sigmahub_degrade_catch_ups",
            "Times a slow client caught up after events were held back from it",
            Counter,
            count(&degraded.catch_ups),
        )?;

        let (throttled, superseded) = shared.throttle.counts();
        single(
            &mut e,
            "sigmahub_throttled_events",
            "Events held by a [[channels]] throttle until their key's window ended",
            Counter,
            throttled,
        )?;
        single(
            &mut e,
            "sigmahub_throttle_superseded_events",
            "Throttled events replaced by a newer one of their key and never published",
            Counter,
            superseded,
        )?;

        let latency = counters.publish_to_write.snapshot();
        encoder_histogram(
            &mut e,
            "sigmahub_publish_to_write_seconds",
            "Time from publish to the completed socket write of the oldest event in each write batch",
            &latency,
        )?;
        single(
            &mut e,
            "sigmahub_connections_closed",
            "Connections that have ended",
            Counter,
            shared.analytics.closed(),
        )?;
        seconds_counter(
            &mut e,
            "sigmahub_connection_duration_seconds",
            "Summed duration of ended connections (divide by sigmahub_connections_closed_total for the mean)",
            shared.analytics.connected_seconds(),
        )?;
        single(
            &mut e,
            "sigmahub_reconnections",
            "Connections from a client (token subject, else address) that ended another within 60 s",
            Counter,
            shared.analytics.reconnections(),
        )?;

        let memory = super::memory::Memory::now(&shared.hub);
        if let Some(resident) = memory.resident_bytes {
            single(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size of the sigmahub process in bytes",
                Gauge,
                resident,
            )?;
        }
        single(
            &mut e,
            "sigmahub_queued_frames",
            "Frames waiting in client queues, over every client",
            Gauge,
            memory.queued_frames,
        )?;
        single(
            &mut e,
            "sigmahub_queued_bytes",
            "Bytes waiting in client queues, over every client (a broadcast frame counted per client holding it; each client holds at most client_queue_bytes plus one frame)",
            Gauge,
            memory.queued_bytes,
        )?;

        let mut channels = shared.hub.channels();
        channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other: usize = channels.iter().skip(TOP_CHANNELS).map(|(_, n)| n).sum();
        let shown = channels
            .iter()
            .take(TOP_CHANNELS)
            .map(|(c, n)| (c.to_string(), *n as f64))
            .chain((channels.len() > TOP_CHANNELS).then(|| ("_other".to_owned(), other as f64)));
        family(
            &mut e,
            "sigmahub_channel_subscribers",
            "Subscribers of the busiest channels; the rest summed as _other",
            Gauge,
            "channel",
            shown,
        )?;
        single(
            &mut e,
            "sigmahub_channels",
            "Channels with at least one subscriber",
            Gauge,
            channels.len() as u64,
        )?;

        family(
            &mut e,
            "sigmahub_breaker_state",
            "Circuit breaker of each upstream method: 0 closed, 1 half-open, 2 open",
            Gauge,
            "method",
            shared.breakers.all().into_iter().map(|(method, status)| {
                let state = match status.state {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    BreakerState::Open => 2.0,
                };
                (method.to_owned(), state)
            }),
        )?;
        family(
            &mut e,
            "sigmahub_hook_breaker_state",
            "Circuit breaker of each HTTP hook: 0 closed, 1 half-open, 2 open",
            Gauge,
            "hook",
            shared.hooks.breakers().into_iter().map(|(hook, state)| {
                let state = match state {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    BreakerState::Open => 2.0,
                };
                (hook.as_str().to_owned(), state)
            }),
        )?;
        hook_answers(&mut e, &shared.hooks)?;
        if let Some(webhook) = &shared.webhook {
            let counts = webhook.counts();
            family(
                &mut e,
                "sigmahub_webhook_notices",
                "Webhook notices the backend took (delivered) or that were dropped (the queue \
                 was full, or their batch ran out of retries)",
                Counter,
                "outcome",
                [
                    ("delivered", &counts.delivered),
                    ("dropped", &counts.dropped),
                ]
                .map(|(outcome, n)| (outcome.to_owned(), n.load(Ordering::Relaxed) as f64)),
            )?;
            single(
                &mut e,
                "sigmahub_webhook_failed_tries",
                "Webhook POSTs the backend did not take (each batch is retried for webhook_retry_for)",
                Counter,
                counts.failed_tries.load(Ordering::Relaxed),
            )?;
        }
        let mut faults = e.encode_descriptor(
            "sigmahub_upstream_translation_faults",
            "Engine answers with no usable value for a protocol field, by method and field",
            None,
            MetricType::Counter,
        )?;
        for ((method, field), n) in shared.translation_faults.counts() {
            faults
                .encode_family(&[("method", method), ("field", field)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let now = SystemTime::now();
        family(
            &mut e,
            "sigmahub_snapshot_age_seconds",
            "Seconds since each status type's snapshot was last fresh",
            Gauge,
            "type",
            shared.snapshots.all().iter().map(|s| {
                let age = now.duration_since(s.last_update).unwrap_or_default();
                (s.channel.to_string(), age.as_secs_f64())
            }),
        )?;
        Ok(())
    }
}

/// `sigmahub_hook_answers_total{hook, answer}`, on a server with hooks.
fn hook_answers(e: &mut DescriptorEncoder<'_>, hooks: &crate::hooks::Hooks) -> std::fmt::Result {
    let Some(tally) = hooks.tally() else {
        return Ok(());
    };
    let mut answers = e.encode_descriptor(
        "sigmahub_hook_answers",
        "What the application's hooks answered: allowed, rewritten, refused, \
         unavailable (no answer), or cached (not asked)",
        None,
        MetricType::Counter,
    )?;
    for (hook, answer, n) in tally.counts() {
        answers
            .encode_family(&[("hook", hook.as_str()), ("answer", answer.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}
