//! `GET /api/v1/stats`: the server's counters and state, as one typed document.

use std::collections::BTreeMap;

use serde::Serialize;

use super::analytics::Summary;
use super::memory::Memory;
use super::Shared;
use crate::compression::DeflateStats;
use crate::dialect::Dialect;
use crate::engine::latency::HistogramSnapshot;
use crate::protocol::channel::Channel;
use crate::snapshot::SnapshotStatus;
use crate::upstream::BreakerStatus;

/// Everything `GET /api/v1/stats` answers.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    active_connections: usize,
    /// `active_connections` by the dialect they speak.
    connections_by_dialect: BTreeMap<&'static str, usize>,
    /// Socket.IO sessions on HTTP long-polling now (the rest are on WebSocket).
    socketio_polling_sessions: usize,
    total_connections: u64,
    peak_connections: usize,
    /// Frames written to sockets.
    messages_sent: u64,
    /// Client messages read.
    messages_received: u64,
    events_published: u64,
    /// Frames put in client queues by publishes.
    frames_delivered: u64,
    /// permessage-deflate: the connections that negotiated it, and what compressing each
    /// broadcast once for them did.
    compression: Compression,
    memory: Memory,
    analytics: Summary,
    /// The broker's own report (a cluster's link and stream); `null` on one node.
    cluster: Option<serde_json::Value>,
    latency: Latency,
    /// Subscribers per channel.
    channels: BTreeMap<Channel, usize>,
    /// Connections refused at admission, by reason.
    refused: BTreeMap<&'static str, u64>,
    /// Limits hit, by name.
    limits: BTreeMap<&'static str, u64>,
    /// Connections closed, by close code.
    closes: BTreeMap<u16, u64>,
    upstream: Upstream,
}

/// The upstream sources: their breakers and the freshness of their snapshots.
#[derive(Debug, Serialize)]
struct Upstream {
    breakers: BTreeMap<&'static str, BreakerStatus>,
    snapshots: BTreeMap<Channel, SnapshotStatus>,
}

/// What `compression` in the stats says.
#[derive(Debug, Serialize)]
struct Compression {
    /// Connections open now that negotiated permessage-deflate.
    connections: usize,
    #[serde(flatten)]
    totals: DeflateStats,
    /// `compressed / messages`: the share of those broadcasts sent compressed.
    compressed_share: f64,
    /// `1 - bytes_out / bytes_in`: the share of their payload bytes compression saved.
    bytes_saved_share: f64,
}

/// The publish-to-write histogram in brief.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    publish_to_write: Brief,
}

#[derive(Debug, Serialize)]
struct Brief {
    observations: u64,
    mean_ms: f64,
    /// Upper bounds of the buckets holding the quantile; `null` past the last bound.
    p50_ms_at_most: Option<f64>,
    p99_ms_at_most: Option<f64>,
}

impl Compression {
    fn of(connections: usize, totals: DeflateStats) -> Self {
        let share = |part: u64, whole: u64| match whole {
            0 => 0.0,
            whole => part as f64 / whole as f64,
        };
        Self {
            connections,
            totals,
            compressed_share: share(totals.compressed, totals.messages),
            bytes_saved_share: match totals.bytes_in {
                0 => 0.0,
                bytes_in => 1.0 - share(totals.bytes_out, bytes_in),
            },
        }
    }
}

impl Stats {
    /// The server's stats now.
    pub(crate) fn of(shared: &Shared) -> Self {
        let hub = shared.hub.stats();
        let counters = &shared.counters;
        Stats {
            active_connections: hub.clients,
            connections_by_dialect: Dialect::ALL
                .iter()
                .map(|d| (d.as_str(), hub.clients_by_dialect[d.index()]))
                .collect(),
            socketio_polling_sessions: shared.polling.polling(),
            total_connections: hub.connected_total,
            peak_connections: hub.peak_clients,
            messages_sent: counters.frames_sent.get(),
            messages_received: counters.messages_received.get(),
            events_published: hub.published,
            frames_delivered: hub.delivered,
            compression: Compression::of(hub.deflate_clients, shared.hub.compression()),
            memory: Memory::now(&shared.hub),
            analytics: shared.analytics.summary(hub.connected_total),
            cluster: shared.broker.status(),
            latency: Latency::of(&counters.publish_to_write.snapshot()),
            channels: shared.hub.channels().into_iter().collect(),
            refused: shared.admission.refused.by_code(),
            limits: counters.limits_by_name(),
            closes: counters.closes_by_code(),
            upstream: Upstream {
                breakers: shared.breakers.all(),
                snapshots: shared
                    .snapshots
                    .all()
                    .iter()
                    .map(|s| (s.channel.clone(), s.status()))
                    .collect(),
            },
        }
    }
}

impl Latency {
    /// The brief of a publish-to-write histogram.
    pub(crate) fn of(h: &HistogramSnapshot) -> Self {
        let bound_ms = |q| {
            h.quantile_bound(q)
                .and_then(|s| (s != f64::MAX).then_some(s * 1e3))
        };
        Latency {
            publish_to_write: Brief {
                observations: h.count,
                mean_ms: if h.count == 0 {
                    0.0
                } else {
                    h.sum * 1e3 / h.count as f64
                },
                p50_ms_at_most: bound_ms(0.5),
                p99_ms_at_most: bound_ms(0.99),
            },
        }
    }
}
