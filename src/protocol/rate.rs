//! A token bucket for one connection's inbound messages. Sans-IO: callers pass `now`.

use std::time::{Duration, Instant};

/// What to do with an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit: handle it.
    Allow,
    /// Over the limit for the first time since the client was last within it: refuse it
    /// with an `error` (`rate_limited`) and keep the connection.
    Warn,
    /// Still over the limit after the warning: close with 1008.
    Close,
}

/// `per_minute` messages a minute on average, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
    warned: bool,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: f64::from(per_minute) / 60.0,
            tokens: capacity,
            last: now,
            warned: false,
        }
    }

    /// Takes a token for one message at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            Verdict::Allow
        } else if self.warned {
            Verdict::Close
        } else {
            self.warned = true;
            Verdict::Warn
        }
    }

    /// How long until the next message would be allowed.
    pub(crate) fn retry_after(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_warning_then_a_close() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100, 10, t0);
        for _ in 0..10 {
            assert_eq!(bucket.take(t0), Verdict::Allow);
        }
        assert_eq!(bucket.take(t0), Verdict::Warn);
        assert_eq!(bucket.take(t0), Verdict::Close);
    }

    #[test]
    fn the_bucket_refills_at_the_average_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, 1, t0);
        assert_eq!(bucket.take(t0), Verdict::Allow);
        assert_eq!(bucket.take(t0), Verdict::Warn);
        assert!((bucket.retry_after().as_secs_f64() - 1.0).abs() < 0.01);
        // A second later one message is allowed again, and the warning is forgotten.
        assert_eq!(bucket.take(t0 + Duration::from_secs(1)), Verdict::Allow);
        assert_eq!(bucket.take(t0 + Duration::from_secs(1)), Verdict::Warn);
        // Bursts never exceed the capacity, however long the client was quiet.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.take(later), Verdict::Allow);
        assert_eq!(bucket.take(later), Verdict::Warn);
    }
}
