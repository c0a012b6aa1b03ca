//! The recovery probe: while any engine breaker is open, a cheap `health.check` at a
//! bounded rate; when the engine answers, every open breaker tries its method at once
//! instead of serving cached data for the rest of `breaker_reset` (5 minutes by default,
//! the seed's rule, which still applies while the engine does not answer).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many times the engine answered a probe; pollers compare it with what they saw
/// when their breaker opened.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    answered: AtomicU64,
}

impl Recovery {
    /// The probes answered so far.
    pub(crate) fn generation(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    fn answered(&self) {
        self.answered.fetch_add(1, Ordering::AcqRel);
    }
}

/// Every `interval`, if `any_open()`, calls `check()`; on success, bumps `recovery`.
/// Never more than one call per interval, and none while every breaker is closed.
pub(crate) async fn run<F, Fut, E>(
    interval: Duration,
    any_open: impl Fn() -> bool,
    check: F,
    recovery: &Recovery,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: nothing is open yet
    loop {
        ticks.tick().await;
        if !any_open() {
            continue;
        }
        match check().await {
            Ok(()) => {
                tracing::info!("the engine answers its health check again; open breakers try now");
                recovery.answered();
            }
            Err(e) => tracing::debug!(error = %e, "recovery probe: the engine is still down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn probes_only_while_a_breaker_is_open_at_a_bounded_rate() {
        let open = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let recovery = Arc::new(Recovery::default());
        let task = {
            let (open, healthy, calls, recovery) = (
                open.clone(),
                healthy.clone(),
                calls.clone(),
                recovery.clone(),
            );
            tokio::spawn(async move {
                run(
                    Duration::from_secs(30),
                    || open.load(Ordering::SeqCst),
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let ok = healthy.load(Ordering::SeqCst);
                        async move {
                            if ok {
                                Ok(())
                            } else {
                                Err("down")
                            }
                        }
                    },
                    &recovery,
                )
                .await
            })
        };
        // Ten minutes with every breaker closed: no probe. (Steps end mid-interval, away
        // from the ticks.)
        tokio::time::sleep(Duration::from_secs(615)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // Open, engine down: one probe per 30 s, no recovery.
        open.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 10);
        assert_eq!(recovery.generation(), 0);
        // The engine answers: the next probe says so.
        healthy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(recovery.generation(), 1);
        task.abort();
    }
}
