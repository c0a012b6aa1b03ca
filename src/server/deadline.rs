//! The moments a connection must end unless something happens first: the authentication
//! deadline, the token's expiry, and the idle timeout.
//!
//! One timer serves all three, set to the earliest; a connection with none of them holds no
//! timer at all (the common, anonymous case costs one `None`).

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Sleep};

use crate::protocol::close::CloseCode;

/// A connection's deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    auth: Option<Instant>,
    expiry: Option<Instant>,
    idle: Option<(Duration, Instant)>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadlines {
    /// Deadlines with the idle timeout `idle` (zero: none), counted from now.
    pub(crate) fn new(idle: Duration) -> Self {
        let mut deadlines = Self {
            idle: (!idle.is_zero()).then(|| (idle, Instant::now() + idle)),
            ..Self::default()
        };
        deadlines.rearm();
        deadlines
    }

    /// Credentials must arrive within `within`.
    pub(crate) fn await_auth(&mut self, within: Duration) {
        self.auth = Some(Instant::now() + within);
        self.rearm();
    }

    /// Credentials arrived and expire at `expires_at` (`None`: never).
    pub(crate) fn authenticated(&mut self, expires_at: Option<SystemTime>) {
        self.auth = None;
        self.expiry = expires_at.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        self.rearm();
    }

    /// The client sent a message: the idle timeout starts again.
    pub(crate) fn message_received(&mut self) {
        if let Some((idle, at)) = &mut self.idle {
            *at = Instant::now() + *idle;
            self.rearm();
        }
    }

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

    fn rearm(&mut self) {
        match (self.next(), &mut self.timer) {
            (None, timer) => *timer = None,
            (Some((at, _)), Some(timer)) => timer.as_mut().reset(at),
            (Some((at, _)), timer) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Completes when the earliest deadline passes, with its close code; never while there
    /// is none. Cancel-safe: dropping it loses nothing.
    pub(crate) async fn passed(&mut self) -> CloseCode {
        let next = self.next();
        match (&mut self.timer, next) {
            (Some(timer), Some((_, code))) => {
                timer.as_mut().await;
                code
            }
            _ => std::future::pending().await,
        }
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
        assert!(d.timer.is_none());
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
