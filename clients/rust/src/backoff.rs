//! How long to wait before the next connection attempt: exponential, with full jitter.

use std::time::Duration;

/// Exponential backoff with full jitter: before attempt `n` (0 for the first retry) the
/// client waits a uniformly random time between `min` and `min · factorⁿ`, capped at `max`.
///
/// Jitter spreads the reconnects of many clients that lost one server at the same moment,
/// so the server is not hit by all of them at once when it comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The shortest wait, and the first ceiling (default 500 ms).
    pub min: Duration,
    /// The longest wait (default 20 s).
    pub max: Duration,
    /// How much the ceiling grows per failed attempt (default 2).
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(20),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The ceiling before attempt `attempt`: `min · factor^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let min = self.min.min(self.max);
        let grown = min.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        if grown.is_finite() && grown < self.max.as_secs_f64() {
            Duration::from_secs_f64(grown).max(min)
        } else {
            self.max
        }
    }

    /// The wait before attempt `attempt`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let min = self.min.min(self.max);
        let spread = self.ceiling(attempt) - min;
        min + spread.mul_f64(rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_grows_by_the_factor_up_to_the_maximum() {
        let b = Backoff {
            min: ms(100),
            max: ms(1_000),
            factor: 2.0,
        };
        let ceilings: Vec<Duration> = (0..7).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_000),
                ms(1_000),
                ms(1_000)
            ]
        );
        assert_eq!(b.ceiling(u32::MAX), ms(1_000), "no overflow");
    }

    #[test]
    fn every_delay_lies_between_the_minimum_and_the_ceiling_and_spreads_over_it() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..12 {
            let delays: Vec<Duration> = (0..2_000).map(|_| b.delay(attempt, &mut rng)).collect();
            let ceiling = b.ceiling(attempt);
            assert!(delays.iter().all(|d| *d >= b.min && *d <= ceiling));
            if ceiling > b.min {
                // Full jitter: the draws cover the range, not one point of it.
                let span = ceiling - b.min;
                let low = delays.iter().filter(|d| **d < b.min + span / 4).count();
                let high = delays.iter().filter(|d| **d > ceiling - span / 4).count();
                assert!(
                    low > 300 && high > 300,
                    "attempt {attempt}: {low} low, {high} high"
                );
            }
        }
    }

    #[test]
    fn odd_settings_stay_within_bounds() {
        let mut rng = fastrand::Rng::with_seed(1);
        // A minimum above the maximum, a factor below one, zero.
        let b = Backoff {
            min: ms(5_000),
            max: ms(1_000),
            factor: 0.5,
        };
        assert_eq!(b.delay(3, &mut rng), ms(1_000));
        let zero = Backoff {
            min: Duration::ZERO,
            max: Duration::ZERO,
            factor: 2.0,
        };
        assert_eq!(zero.delay(9, &mut rng), Duration::ZERO);
    }
}
