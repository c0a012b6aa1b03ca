//! A circuit breaker for one upstream method. Sans-IO: every call takes `now`.
//!
//! ```text
//!            failure x threshold                 reset_after passed
//!  Closed ─────────────────────────> Open ───────────────────────────> HalfOpen
//!    ^  success                        ^            failure              │
//!    └─────────────────────────────────┼─────────────────────────────────┤
//!                                      └─────────────────────────────────┘
//!                                            (success closes it)
//! ```
//!
//! - **Closed**: calls go through; `threshold` consecutive failures open it.
//! - **Open**: no calls for `reset_after`, or until [`Breaker::recovered`] says the engine
//!   answers again (the recovery probe); then the next [`Breaker::permit`] half-opens it.
//! - **HalfOpen**: exactly one trial call is let through; its success closes the breaker,
//!   its failure re-opens it for another `reset_after`.
//!
//! Unlike SigmaVault's engine, each method has its own breaker and its own failure count,
//! so a failing method neither hides nor trips another.

use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the reset time.
    Open,
    /// One trial call is in flight or allowed.
    HalfOpen,
}

/// A state change, for events, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// One upstream method's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    reset_after: Duration,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
    /// The engine answered a probe since the breaker opened: try at once.
    recovered: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (at least 1) and
    /// half-opens `reset_after` later.
    pub fn new(threshold: u32, reset_after: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            reset_after,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            trial_in_flight: false,
            recovered: false,
        }
    }

    /// The current state (an open breaker past its reset time still reads `Open` until
    /// [`permit`](Self::permit) is asked).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an open breaker will let a trial call through.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open => self.opened_at.map(|t| t + self.reset_after),
            _ => None,
        }
    }

    /// Whether a call may be made now. Past the reset time an open breaker half-opens and
    /// permits exactly one trial call; the transition is returned with the answer.
    pub fn permit(&mut self, now: Instant) -> (bool, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (true, None),
            BreakerState::Open => {
                if self.recovered || self.retry_at().is_some_and(|at| now >= at) {
                    self.recovered = false;
                    self.trial_in_flight = true;
                    (true, Some(self.set(BreakerState::HalfOpen)))
                } else {
                    (false, None)
                }
            }
            BreakerState::HalfOpen => {
                if self.trial_in_flight {
                    (false, None)
                } else {
                    self.trial_in_flight = true;
                    (true, None)
                }
            }
        }
    }

    /// The engine answered a recovery probe: an open breaker lets its trial call through
    /// at the next [`permit`](Self::permit) instead of waiting out `reset_after`.
    pub fn recovered(&mut self) {
        if self.state == BreakerState::Open {
            self.recovered = true;
        }
    }

    /// Records a successful call.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.trial_in_flight = false;
        self.opened_at = None;
        (self.state != BreakerState::Closed).then(|| self.set(BreakerState::Closed))
    }

    /// Records a failed call at `now`.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.trial_in_flight = false;
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive_failures >= self.threshold,
            BreakerState::Open => false,
        };
        if open {
            self.opened_at = Some(now);
            self.recovered = false;
            Some(self.set(BreakerState::Open))
        } else {
            None
        }
    }

    fn set(&mut self, to: BreakerState) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Duration = Duration::from_secs(300);

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, RESET);
        for _ in 0..4 {
            assert_eq!(b.on_failure(t0), None);
        }
        b.on_success();
        for _ in 0..4 {
            assert_eq!(
                b.on_failure(t0),
                None,
                "the count restarted after the success"
            );
        }
        assert_eq!(
            b.on_failure(t0),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.permit(t0), (false, None));
        assert_eq!(
            b.permit(t0 + RESET - Duration::from_millis(1)),
            (false, None)
        );
    }

    #[test]
    fn half_opens_after_the_reset_and_lets_exactly_one_call_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, RESET);
        b.on_failure(t0);
        let (ok, t) = b.permit(t0 + RESET);
        assert!(ok);
        assert_eq!(
            t,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
        assert_eq!(b.permit(t0 + RESET), (false, None), "only one trial");
        // The trial fails: open again, for a new full reset period.
        let t1 = t0 + RESET + Duration::from_secs(1);
        assert_eq!(b.on_failure(t1).map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(b.retry_at(), Some(t1 + RESET));
        assert!(!b.permit(t1 + RESET - Duration::from_millis(1)).0);
        // The next trial succeeds: closed, counters cleared.
        assert!(b.permit(t1 + RESET).0);
        assert_eq!(b.on_success().map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.permit(t1 + RESET), (true, None));
    }

    #[test]
    fn a_recovery_half_opens_an_open_breaker_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, RESET);
        b.recovered(); // closed: nothing to do
        b.on_failure(t0);
        assert_eq!(b.permit(t0), (false, None));
        b.recovered();
        let (allowed, transition) = b.permit(t0);
        assert!(allowed);
        assert_eq!(transition.unwrap().to, BreakerState::HalfOpen);
        // The trial fails: open again, for the whole reset unless recovered again.
        b.on_failure(t0);
        assert_eq!(b.permit(t0 + Duration::from_secs(1)), (false, None));
    }
}
