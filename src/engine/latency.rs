//! Publish-to-write latency: a timestamp that fits in an atomic, and a histogram that many
//! threads record into without a lock.
//!
//! A publish takes one [`Stamp`] for its event. The outbox keeps the stamp of the event that
//! found it empty, and the writer, once its batch is on the wire, records how long ago that
//! was: one observation per write batch, for the oldest event in it. Under light load every
//! batch is one event and the figure is exact per event; under heavy load it is each batch's
//! worst case. Either way a delivered frame costs no clock read and no shared write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::counter;

/// A moment, as nanoseconds since the process's first stamp, plus one (so that 0 can mean
/// "none" in an atomic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Stamp {
    /// Now.
    #[inline]
    pub(crate) fn now() -> Self {
        Self(epoch().elapsed().as_nanos() as u64 + 1)
    }

    /// The raw value for an atomic; never 0.
    #[inline]
    pub(crate) fn to_raw(self) -> u64 {
        self.0
    }

    /// A value stored by [`to_raw`](Self::to_raw); `None` for 0.
    #[inline]
    pub(crate) fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(Self(raw))
    }

    /// Time passed since this stamp (zero if the clock reads earlier).
    pub(crate) fn elapsed(self) -> Duration {
        Duration::from_nanos(Self::now().0.saturating_sub(self.0))
    }
}

/// Upper bounds of the histogram's buckets, in seconds: 50 µs to 10 s, roughly 1-2.5-5 per
/// decade. A last, unbounded bucket takes the rest.
pub(crate) const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, for recording without floating point.
const BUCKET_NANOS: [u64; BUCKETS.len()] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

#[derive(Debug, Default)]
struct Shard {
    /// Per-bucket counts (not cumulative); the last is the unbounded bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A fixed-bucket latency histogram, sharded by thread like
/// [`ShardedCounter`](super::counter::ShardedCounter): recording is two relaxed adds on the
/// calling thread's own cache line.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    shards: Box<[CachePadded<Shard>]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            shards: (0..counter::SHARDS)
                .map(|_| CachePadded::default())
                .collect(),
        }
    }
}

/// What a histogram holds, summed over its shards.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket)`, the last bound being
    /// `f64::MAX` (prometheus-client's `+Inf`). Counts are per bucket, not cumulative.
    pub(crate) buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub(crate) sum: f64,
    /// Number of observations.
    pub(crate) count: u64,
}

impl HistogramSnapshot {
    /// The smallest bucket bound below which at least `q` (0 to 1) of the observations fall;
    /// `None` without observations. An estimate to a bucket's width, for dashboards.
    pub(crate) fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.buckets.iter().find_map(|&(bound, n)| {
            seen += n;
            (seen >= want).then_some(bound)
        })
    }
}

impl LatencyHistogram {
    /// Records one observation.
    #[inline]
    pub(crate) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        let shard = &self.shards[counter::shard()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The observations so far.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum_nanos = 0u64;
        for shard in self.shards.iter() {
            for (total, bucket) in counts.iter_mut().zip(&shard.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let bounds = BUCKETS.iter().copied().chain([f64::MAX]);
        HistogramSnapshot {
            buckets: bounds.zip(counts).collect(),
            sum: sum_nanos as f64 / 1e9,
            count: counts.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree_in_both_units() {
        for (seconds, nanos) in BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert!(BUCKET_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(50)); // on a bound: that bucket (le is inclusive)
        h.record(Duration::from_micros(51));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (0.000_05, 2));
        assert_eq!(s.buckets[1], (0.000_1, 1));
        assert_eq!(s.buckets[6], (0.005, 1));
        assert_eq!(s.buckets[BUCKETS.len()], (f64::MAX, 1));
        assert!((s.sum - 60.003_111).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.quantile_bound(0.5), Some(0.000_1));
        assert_eq!(s.quantile_bound(0.8), Some(0.005));
        assert_eq!(s.quantile_bound(1.0), Some(f64::MAX));
        assert_eq!(
            LatencyHistogram::default().snapshot().quantile_bound(0.5),
            None
        );
    }

    #[test]
    fn threads_record_without_losing_counts() {
        let h = std::sync::Arc::new(LatencyHistogram::default());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        h.record(Duration::from_micros(i * 100));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count, 8000);
    }

    #[test]
    fn stamps_round_trip_and_measure_time() {
        let a = Stamp::now();
        assert_eq!(Stamp::from_raw(a.to_raw()), Some(a));
        assert_eq!(Stamp::from_raw(0), None);
        std::thread::sleep(Duration::from_millis(2));
        assert!(a.elapsed() >= Duration::from_millis(2));
        assert!(Stamp::now() > a);
    }
}
