//! Counts of every limit hit, refusal and close, for the stats API and metrics.
//!
//! Admission refusals (HTTP 429/503) are counted by [`super::admission`]; everything after
//! the upgrade, and the other HTTP refusals, here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::compression::InflateError;
use crate::engine::counter::ShardedCounter;
use crate::engine::degrade::Missed;
use crate::engine::latency::LatencyHistogram;
use crate::protocol::close::CloseCode;
use crate::protocol::code::RejectReason;

/// One thing that can be refused or limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A message over the inbound rate limit answered with `rate_limited`.
    RateLimited,
    /// A channel refused: `max_subscriptions_per_connection` reached.
    TooManySubscriptions,
    /// A channel refused: `max_subscribers_per_channel` reached.
    ChannelFull,
    /// A subscribe to a channel the client's token does not allow.
    ForbiddenSubscribe,
    /// A socket publish on a channel the client's token does not allow.
    ForbiddenPublish,
    /// A WebSocket upgrade, or an HTTP API request, from an origin the server does not
    /// answer (HTTP 403).
    OriginRefused,
    /// An HTTP request without valid credentials (HTTP 401): publish or stats without a
    /// publish key, snapshots without a token.
    Unauthorized,
    /// A request from an address barred after failed credentials (HTTP 429).
    AuthBackoff,
    /// A `POST /api/v1/publish` body over `max_publish_body_size` (HTTP 413).
    PublishBodyTooLarge,
    /// A request naming a host the server does not answer to (HTTP 421).
    HostRefused,
    /// A `POST /api/v1/publish` whose body is not declared JSON (HTTP 415).
    NotJson,
    /// A `POST /api/v1/publish` whose body did not arrive within `body_timeout` (HTTP 408).
    BodyTimeout,
    /// A compressed client message that inflates past `max_message_size` (close 1009): a
    /// deflate bomb, or a message too big.
    InflatedTooBig,
    /// A compressed client message that is not valid deflate data (close 1007).
    BadCompression,
}

impl Limit {
    const ALL: [Self; 14] = [
        Self::RateLimited,
        Self::TooManySubscriptions,
        Self::ChannelFull,
        Self::ForbiddenSubscribe,
        Self::ForbiddenPublish,
        Self::OriginRefused,
        Self::Unauthorized,
        Self::AuthBackoff,
        Self::PublishBodyTooLarge,
        Self::HostRefused,
        Self::NotJson,
        Self::BodyTimeout,
        Self::InflatedTooBig,
        Self::BadCompression,
    ];

    /// The name in the stats and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::TooManySubscriptions => "subscription_limit",
            Self::ChannelFull => "channel_full",
            Self::ForbiddenSubscribe => "forbidden_subscribe",
            Self::ForbiddenPublish => "forbidden_publish",
            Self::OriginRefused => "origin_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::AuthBackoff => "auth_backoff",
            Self::PublishBodyTooLarge => "publish_body_too_large",
            Self::HostRefused => "host_not_allowed",
            Self::NotJson => "unsupported_media_type",
            Self::BodyTimeout => "body_timeout",
            Self::InflatedTooBig => "inflated_too_big",
            Self::BadCompression => "bad_compression",
        }
    }

    /// The limit a refused compressed message hit.
    pub(crate) fn refused_inflate(e: InflateError) -> Self {
        match e {
            InflateError::TooBig => Self::InflatedTooBig,
            InflateError::Corrupt => Self::BadCompression,
        }
    }

    /// The limit a subscribe rejection's code stands for, if it is one.
    pub(crate) fn of_rejection(reason: RejectReason) -> Option<Self> {
        match reason {
            RejectReason::SubscriptionLimit => Some(Self::TooManySubscriptions),
            RejectReason::ChannelFull => Some(Self::ChannelFull),
            RejectReason::Forbidden => Some(Self::ForbiddenSubscribe),
            RejectReason::EmptyChannel
            | RejectReason::ChannelTooLong
            | RejectReason::InvalidChannel
            | RejectReason::Unavailable => None,
        }
    }
}

/// The counters; all relaxed atomics, sharded by thread where they are hit per frame.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Whether the per-frame figures (`frames_sent`, `publish_to_write`) are kept
    /// (`config.metrics`).
    pub(crate) per_frame: bool,
    limits: [AtomicU64; Limit::ALL.len()],
    closes: [AtomicU64; CloseCode::ALL.len()],
    /// Frames written to client sockets (events, replies, notices).
    pub(crate) frames_sent: ShardedCounter,
    /// Publish to completed write, once per write batch; see [`crate::engine::latency`].
    pub(crate) publish_to_write: LatencyHistogram,
    /// Frames dropped for slow consumers under the `drop` policy.
    pub(crate) frames_dropped: ShardedCounter,
    /// Under the `degrade` policy: events held back from clients that caught up again,
    /// by reason (`Missed`), and the `gap` markers and catch-ups that told them.
    pub(crate) degraded: DegradeCounters,
    /// Text messages received from clients.
    pub(crate) messages_received: ShardedCounter,
    /// Channels refused in subscribe requests, for any reason.
    pub(crate) subscriptions_failed: AtomicU64,
    /// Credentials refused (invalid or expired), at connect or in an `auth` message.
    pub(crate) auth_refused: AtomicU64,
    /// Times an idle connection went dormant (gave its task up).
    pub(crate) dormant: ShardedCounter,
    /// Times a dormant connection woke (was given a task again).
    pub(crate) awoken: ShardedCounter,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Counters {
    /// Zeroed counters; `per_frame` keeps the per-frame figures.
    pub(crate) fn new(per_frame: bool) -> Self {
        Self {
            per_frame,
            limits: Default::default(),
            closes: Default::default(),
            frames_sent: ShardedCounter::default(),
            publish_to_write: LatencyHistogram::default(),
            frames_dropped: ShardedCounter::default(),
            degraded: DegradeCounters::default(),
            messages_received: ShardedCounter::default(),
            subscriptions_failed: AtomicU64::new(0),
            auth_refused: AtomicU64::new(0),
            dormant: ShardedCounter::default(),
            awoken: ShardedCounter::default(),
        }
    }

    /// Counts a write of `frames` to a client socket and, if given, the publish stamp of
    /// the oldest event in it (`publish_to_write`); nothing without the per-frame figures.
    pub(crate) fn wrote(&self, frames: usize, since: Option<crate::engine::latency::Stamp>) {
        if self.per_frame {
            self.frames_sent.add(frames as u64);
            if let Some(since) = since {
                self.publish_to_write.record(since.elapsed());
            }
        }
    }

    /// Connections dormant now.
    pub(crate) fn dormant_now(&self) -> u64 {
        // Read in this order, a connection that woke in between is not counted twice.
        let awoken = self.awoken.get();
        self.dormant.get().saturating_sub(awoken)
    }

    /// Counts one hit of `limit`.
    pub(crate) fn hit(&self, limit: Limit) {
        self.hit_n(limit, 1);
    }

    /// Counts `n` hits of `limit`.
    pub(crate) fn hit_n(&self, limit: Limit, n: u64) {
        self.limits[limit as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a connection the server closed with `code`.
    pub(crate) fn closed(&self, code: CloseCode) {
        if let Some(counter) = self.close_counter(code) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn close_counter(&self, code: CloseCode) -> Option<&AtomicU64> {
        let i = CloseCode::ALL.iter().position(|c| c.code == code.code)?;
        Some(&self.closes[i])
    }

    /// How many connections the server closed with `code`.
    pub(crate) fn closes_with(&self, code: CloseCode) -> u64 {
        self.close_counter(code)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every counted close code with its count.
    pub(crate) fn closes(&self) -> impl Iterator<Item = (CloseCode, u64)> + '_ {
        CloseCode::ALL
            .iter()
            .zip(&self.closes)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
    }

    /// Every limit with its count.
    pub(crate) fn limits(&self) -> impl Iterator<Item = (Limit, u64)> + '_ {
        Limit::ALL.iter().map(|l| (*l, self.get(*l)))
    }

    /// How often `limit` was hit.
    pub(crate) fn get(&self, limit: Limit) -> u64 {
        self.limits[limit as usize].load(Ordering::Relaxed)
    }

    /// How often each limit was hit, by name, for the stats API.
    pub(crate) fn limits_by_name(&self) -> BTreeMap<&'static str, u64> {
        self.limits().map(|(l, n)| (l.name(), n)).collect()
    }

    /// How many connections were closed with each close code, for the stats API.
    pub(crate) fn closes_by_code(&self) -> BTreeMap<u16, u64> {
        self.closes().map(|(c, n)| (c.code, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_counter() {
        let c = Counters::default();
        for (i, limit) in Limit::ALL.iter().enumerate() {
            c.hit_n(*limit, i as u64 + 1);
        }
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(c.get(*limit), i as u64 + 1, "{limit:?}");
        }
        c.closed(CloseCode::TOKEN_EXPIRED);
        assert_eq!(c.closes_by_code()[&4004], 1);
        assert_eq!(c.limits_by_name()["forbidden_publish"], 5);
    }
}

/// What the `degrade` policy did, counted when a client catches up and is told (its book:
/// [`crate::engine::degrade`]).
#[derive(Debug, Default)]
pub(crate) struct DegradeCounters {
    /// Events held back and missed for good, by priority: low, normal, high.
    pub(crate) shed: [AtomicU64; 3],
    /// Events made obsolete by a newer event with the same conflation key.
    pub(crate) conflated: AtomicU64,
    /// Parked events (the newest of their key) sent at a catch-up.
    pub(crate) parked_sent: AtomicU64,
    /// `gap` markers sent.
    pub(crate) gaps: AtomicU64,
    /// Times a client caught up after events were held back from it.
    pub(crate) catch_ups: AtomicU64,
}

impl DegradeCounters {
    /// Counts one catch-up: what its book held back, the gaps and parked events sent.
    pub(crate) fn caught_up(&self, missed: Missed, gaps: u64, parked: u64) {
        for (counter, n) in self.shed.iter().zip(missed.shed) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        self.conflated
            .fetch_add(missed.conflated, Ordering::Relaxed);
        self.gaps.fetch_add(gaps, Ordering::Relaxed);
        self.parked_sent.fetch_add(parked, Ordering::Relaxed);
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
    }
}
