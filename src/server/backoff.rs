//! Exponential backoff for addresses whose credentials keep failing (seed 003's security
//! audit): guessing publish keys or tokens gets slower with every miss.
//!
//! An address may fail `auth.backoff_after` times in a row for free; each further failure
//! bars it for twice as long as the last (1 s, 2 s, 4 s, … up to `auth.max_backoff`).
//! While barred, its upgrades and authenticated HTTP requests get 429 with `Retry-After`
//! before any credential is looked at. Records left alone for ten minutes are forgotten.
//! Sans-IO: callers pass `now`.
//!
//! Failures are counted per [`Credential`] kind, and a success clears only its own kind:
//! a valid low-privilege token proves nothing about the publish keys an address keeps
//! guessing, so it must not reset that count (the audit kept an address from ever being
//! barred by using one after every fourth wrong key). A bar, once earned, holds for every
//! route.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failure record not touched for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Past this many records, forgotten ones are swept out on the next failure.
const SWEEP_AT: usize = 10_000;

/// A kind of credential whose failures are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// A client token (JWT) on the socket or the snapshot API.
    Token,
    /// A publish key, on the HTTP API or given as a socket token.
    PublishKey,
}

impl Credential {
    fn index(self) -> usize {
        match self {
            Self::Token => 0,
            Self::PublishKey => 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures in a row, per [`Credential`].
    counts: [u32; 2],
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

    /// Records a failure of a `kind` credential; returns how long the address is now
    /// barred (zero: not yet).
    pub(crate) fn failed(&self, address: IpAddr, kind: Credential, now: Instant) -> Duration {
        if self.free == 0 {
            return Duration::ZERO;
        }
        let mut failures = self.lock();
        if failures.len() >= SWEEP_AT {
            failures.retain(|_, f| f.barred_until > now || now - f.last < FORGET_AFTER);
        }
        let f = failures.entry(address).or_insert(Failures {
            counts: [0; 2],
            barred_until: now,
            last: now,
        });
        if now - f.last >= FORGET_AFTER {
            f.counts = [0; 2];
        }
        let count = &mut f.counts[kind.index()];
        *count = count.saturating_add(1);
        f.last = now;
        let over = count.saturating_sub(self.free);
        if over == 0 {
            return Duration::ZERO;
        }
        let bar = Duration::from_secs(1)
            .saturating_mul(1u32 << (over - 1).min(30))
            .min(self.max);
        f.barred_until = f.barred_until.max(now + bar);
        bar
    }

    /// Records a success of a `kind` credential: that kind starts afresh; failures of the
    /// other kind stand.
    pub(crate) fn succeeded(&self, address: IpAddr, kind: Credential) {
        if self.free == 0 {
            return;
        }
        let mut failures = self.lock();
        if let Some(f) = failures.get_mut(&address) {
            f.counts[kind.index()] = 0;
            if f.counts == [0; 2] {
                failures.remove(&address);
            }
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
            assert_eq!(b.failed(a, Credential::PublishKey, now), Duration::ZERO);
            assert!(b.check(a, now).is_ok());
        }
        let bars: Vec<u64> = (0..6)
            .map(|_| b.failed(a, Credential::PublishKey, now).as_secs())
            .collect();
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
        b.failed(a, Credential::PublishKey, now);
        assert_eq!(
            b.failed(a, Credential::PublishKey, now),
            Duration::from_secs(1)
        );
        b.succeeded(a, Credential::PublishKey);
        assert!(b.check(a, now).is_ok());
        assert_eq!(b.failed(a, Credential::PublishKey, now), Duration::ZERO);

        let later = now + FORGET_AFTER;
        assert_eq!(
            b.failed(a, Credential::PublishKey, later),
            Duration::ZERO,
            "the old failure was forgotten"
        );
    }

    #[test]
    fn a_success_clears_only_its_own_kind() {
        let b = AuthBackoff::new(4, Duration::from_secs(300));
        let a = ip("198.51.100.7");
        let now = Instant::now();
        // The audit's pattern: four wrong keys, a good token, again and again.
        let mut barred = None;
        for round in 0..3 {
            for _ in 0..4 {
                if b.failed(a, Credential::PublishKey, now) > Duration::ZERO {
                    barred.get_or_insert(round);
                }
            }
            b.succeeded(a, Credential::Token);
        }
        assert_eq!(
            barred,
            Some(1),
            "the second round's first wrong key bars it"
        );
        assert!(b.check(a, now).is_err());
        // And the other way round: token failures survive a good key.
        let c = ip("198.51.100.8");
        for _ in 0..4 {
            b.failed(c, Credential::Token, now);
        }
        b.succeeded(c, Credential::PublishKey);
        assert_eq!(b.failed(c, Credential::Token, now), Duration::from_secs(1));
        // A good key after key failures clears the record.
        let d = ip("198.51.100.9");
        b.failed(d, Credential::PublishKey, now);
        b.succeeded(d, Credential::PublishKey);
        assert!(b.lock().get(&d).is_none());
    }

    #[test]
    fn zero_free_failures_turns_it_off() {
        let b = AuthBackoff::new(0, Duration::from_secs(300));
        let a = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.failed(a, Credential::PublishKey, now), Duration::ZERO);
        }
        assert!(b.check(a, now).is_ok());
    }

    #[test]
    fn many_addresses_do_not_grow_it_without_bound() {
        let b = AuthBackoff::new(5, Duration::from_secs(300));
        let now = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            b.failed(IpAddr::from(i.to_be_bytes()), Credential::Token, now);
        }
        let later = now + FORGET_AFTER;
        b.failed(ip("10.0.0.1"), Credential::Token, later);
        assert_eq!(b.lock().len(), 1);
    }
}
