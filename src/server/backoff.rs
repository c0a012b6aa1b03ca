//! Exponential backoff for addresses whose credentials keep failing (seed 003's security
//! audit): guessing publish keys or tokens gets slower with every miss.
//!
//! An address may fail `auth.backoff_after` times in a row for free; each further failure
//! bars it for twice as long as the last (1 s, 2 s, 4 s, … up to `auth.max_backoff`).
//! While barred, its upgrades and authenticated HTTP requests get 429 with `Retry-After`
//! before any credential is looked at. A success clears the address's record, and records
//! left alone for ten minutes are forgotten. Sans-IO: callers pass `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failure record not touched for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Past this many records, forgotten ones are swept out on the next failure.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    barred_until: Instant,
    last: Instant,
}

/// Failed-credential records per client address.
#[derive(Debug)]
pub(crate) struct AuthBackoff {
    free: u32,
    max: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthBackoff {
    /// `free` failures in a row are allowed before the first bar; bars last at most `max`.
    /// `free == 0` turns the backoff off.
    pub(crate) fn new(free: u32, max: Duration) -> Self {
        Self {
            free,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` while `address` is barred.
    pub(crate) fn check(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.free == 0 {
            return Ok(());
        }
        match self.lock().get(&address) {
            Some(f) if f.barred_until > now => Err(f.barred_until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure; returns how long the address is now barred (zero: not yet).
    pub(crate) fn failed(&self, address: IpAddr, now: Instant) -> Duration {
        if self.free == 0 {
            return Duration::ZERO;
        }
        let mut failures = self.lock();
        if failures.len() >= SWEEP_AT {
            failures.retain(|_, f| f.barred_until > now || now - f.last < FORGET_AFTER);
        }
        let f = failures.entry(address).or_insert(Failures {
            count: 0,
            barred_until: now,
            last: now,
        });
        if now - f.last >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        let over = f.count.saturating_sub(self.free);
        if over == 0 {
            return Duration::ZERO;
        }
        let bar = Duration::from_secs(1)
            .saturating_mul(1u32 << (over - 1).min(30))
            .min(self.max);
        f.barred_until = now + bar;
        bar
    }

    /// Records a success: the address starts afresh.
    pub(crate) fn succeeded(&self, address: IpAddr) {
        if self.free > 0 {
            self.lock().remove(&address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bars_double_after_the_free_failures_up_to_the_cap() {
        let b = AuthBackoff::new(3, Duration::from_secs(10));
        let a = ip("203.0.113.9");
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.failed(a, now), Duration::ZERO);
            assert!(b.check(a, now).is_ok());
        }
        let bars: Vec<u64> = (0..6).map(|_| b.failed(a, now).as_secs()).collect();
        assert_eq!(bars, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.check(a, now), Err(Duration::from_secs(10)));
        assert!(
            b.check(ip("203.0.113.10"), now).is_ok(),
            "others unaffected"
        );
        assert!(b.check(a, now + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_success_or_ten_quiet_minutes_start_afresh() {
        let b = AuthBackoff::new(1, Duration::from_secs(300));
        let a = ip("198.51.100.1");
        let now = Instant::now();
        b.failed(a, now);
        assert_eq!(b.failed(a, now), Duration::from_secs(1));
        b.succeeded(a);
        assert!(b.check(a, now).is_ok());
        assert_eq!(b.failed(a, now), Duration::ZERO);

        let later = now + FORGET_AFTER;
        assert_eq!(
            b.failed(a, later),
            Duration::ZERO,
            "the old failure was forgotten"
        );
    }

    #[test]
    fn zero_free_failures_turns_it_off() {
        let b = AuthBackoff::new(0, Duration::from_secs(300));
        let a = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.failed(a, now), Duration::ZERO);
        }
        assert!(b.check(a, now).is_ok());
    }

    #[test]
    fn many_addresses_do_not_grow_it_without_bound() {
        let b = AuthBackoff::new(5, Duration::from_secs(300));
        let now = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            b.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        let later = now + FORGET_AFTER;
        b.failed(ip("10.0.0.1"), later);
        assert_eq!(b.lock().len(), 1);
    }
}
