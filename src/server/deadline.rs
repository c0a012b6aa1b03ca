//! The moments a connection must end unless something happens first: the authentication
//! deadline, the token's expiry, and the idle timeout.
//!
//! One timer serves all three, set to the earliest; a connection with none of them holds
//! nothing but a null pointer (the common, anonymous case), which keeps idle connections
//! small.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Sleep};

use crate::protocol::close::CloseCode;

/// A connection's deadlines; allocated only once there is one.
#[derive(Debug, Default)]
pub(crate) struct Deadlines(Option<Box<Inner>>);

#[derive(Debug)]
struct Inner {
    auth: Option<Instant>,
    expiry: Option<Instant>,
    idle: Option<(Duration, Instant)>,
    timer: Pin<Box<Sleep>>,
}

impl Deadlines {
    /// Deadlines with the idle timeout `idle` (zero: none), counted from now.
    pub(crate) fn new(idle: Duration) -> Self {
        let mut deadlines = Self::default();
        if !idle.is_zero() {
            deadlines.update(|d| d.idle = Some((idle, Instant::now() + idle)));
        }
        deadlines
    }

    /// Credentials must arrive within `within`.
    pub(crate) fn await_auth(&mut self, within: Duration) {
        self.update(|d| d.auth = Some(Instant::now() + within));
    }

    /// Credentials arrived and expire at `expires_at` (`None`: never).
    pub(crate) fn authenticated(&mut self, expires_at: Option<SystemTime>) {
        if self.0.is_none() && expires_at.is_none() {
            return;
        }
        self.update(|d| {
            d.auth = None;
            d.expiry = expires_at.and_then(|at| on_clock(at, SystemTime::now(), Instant::now()));
        });
    }

    /// The client sent a message: the idle timeout starts again.
    pub(crate) fn message_received(&mut self) {
        if self.0.as_ref().is_some_and(|d| d.idle.is_some()) {
            self.update(|d| {
                if let Some((idle, at)) = &mut d.idle {
                    *at = Instant::now() + *idle;
                }
            });
        }
    }

    /// Applies `change` and sets the timer to the earliest deadline; frees everything
    /// when none is left.
    fn update(&mut self, change: impl FnOnce(&mut Inner)) {
        let inner = self.0.get_or_insert_with(|| {
            Box::new(Inner {
                auth: None,
                expiry: None,
                idle: None,
                timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            })
        });
        change(inner);
        match inner.next() {
            Some((at, _)) => inner.timer.as_mut().reset(at),
            None => self.0 = None,
        }
    }

    /// Ready when the earliest deadline has passed, with its close code; never while there
    /// is none. A poll function rather than an `async fn` so that waiting on it adds no
    /// state to the connection's future.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<CloseCode> {
        let Some(inner) = &mut self.0 else {
            return Poll::Pending;
        };
        ready!(inner.timer.as_mut().poll(cx));
        // `update` keeps the timer at the earliest deadline, so there is one.
        Poll::Ready(
            inner
                .next()
                .map_or(CloseCode::INTERNAL_ERROR, |(_, code)| code),
        )
    }

    /// Whether the timer of a deadline that [`poll_passed`](Self::poll_passed) waited on
    /// has fired, without polling it: a wake-up from outside the connection's task may
    /// come while the runtime shuts down, when polling a timer panics.
    pub(crate) fn has_fired(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|inner| inner.timer.is_elapsed())
    }

    /// [`poll_passed`](Self::poll_passed) as a future.
    pub(crate) fn passed(&mut self) -> impl Future<Output = CloseCode> + '_ {
        std::future::poll_fn(|cx| self.poll_passed(cx))
    }
}

/// The wall-clock moment `at` on the runtime's clock, given that `now` on the wall clock is
/// `clock` on the runtime's; at once if it has passed, and `None` (no deadline at all) if
/// it is too far away to represent. Never a panic, whatever a token's `exp` says.
pub(crate) fn on_clock(at: SystemTime, now: SystemTime, clock: Instant) -> Option<Instant> {
    let left = at.duration_since(now).unwrap_or(Duration::ZERO);
    clock.checked_add(left)
}

impl Inner {
    /// The earliest deadline and the close code it ends the connection with.
    fn next(&self) -> Option<(Instant, CloseCode)> {
        [
            self.auth.map(|at| (at, CloseCode::AUTH_TIMEOUT)),
            self.expiry.map(|at| (at, CloseCode::TOKEN_EXPIRED)),
            self.idle.map(|(_, at)| (at, CloseCode::IDLE_TIMEOUT)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn passes_within(d: &mut Deadlines, limit: Duration) -> Option<CloseCode> {
        tokio::time::timeout(limit, d.passed()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_configured_never_passes() {
        let mut d = Deadlines::new(Duration::ZERO);
        d.authenticated(None);
        assert!(d.0.is_none(), "no deadline, no allocation");
        assert_eq!(passes_within(&mut d, Duration::from_secs(3600)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_auth_deadline_ends_with_4002_unless_credentials_arrive() {
        let mut d = Deadlines::new(Duration::ZERO);
        d.await_auth(Duration::from_secs(10));
        assert_eq!(
            passes_within(&mut d, Duration::from_secs(11)).await,
            Some(CloseCode::AUTH_TIMEOUT)
        );
        let mut d = Deadlines::new(Duration::ZERO);
        d.await_auth(Duration::from_secs(10));
        d.authenticated(None);
        assert_eq!(passes_within(&mut d, Duration::from_secs(3600)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiring_token_ends_with_4004() {
        let mut d = Deadlines::new(Duration::ZERO);
        d.authenticated(Some(SystemTime::now() + Duration::from_secs(60)));
        assert_eq!(passes_within(&mut d, Duration::from_secs(59)).await, None);
        assert_eq!(
            passes_within(&mut d, Duration::from_secs(2)).await,
            Some(CloseCode::TOKEN_EXPIRED)
        );
        // A refresh moves the expiry.
        let mut d = Deadlines::new(Duration::ZERO);
        d.authenticated(Some(SystemTime::now() + Duration::from_secs(60)));
        d.authenticated(Some(SystemTime::now() + Duration::from_secs(600)));
        assert_eq!(passes_within(&mut d, Duration::from_secs(599)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_at_the_end_of_time_is_no_deadline_and_no_panic() {
        let mut d = Deadlines::new(Duration::ZERO);
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(crate::auth::jwt::MAX_EXP);
        d.authenticated(Some(last));
        assert_eq!(passes_within(&mut d, Duration::from_secs(3600)).await, None);
        if let Some(far) = SystemTime::now().checked_add(Duration::from_secs(i64::MAX as u64 / 2)) {
            d.authenticated(Some(far));
            assert_eq!(passes_within(&mut d, Duration::from_secs(3600)).await, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_hold_off_the_idle_timeout() {
        let mut d = Deadlines::new(Duration::from_secs(30));
        for _ in 0..5 {
            assert_eq!(passes_within(&mut d, Duration::from_secs(20)).await, None);
            d.message_received();
        }
        assert_eq!(
            passes_within(&mut d, Duration::from_secs(31)).await,
            Some(CloseCode::IDLE_TIMEOUT)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_deadline_wins() {
        let mut d = Deadlines::new(Duration::from_secs(100));
        d.authenticated(Some(SystemTime::now() + Duration::from_secs(50)));
        assert_eq!(
            passes_within(&mut d, Duration::from_secs(60)).await,
            Some(CloseCode::TOKEN_EXPIRED)
        );
    }
}
