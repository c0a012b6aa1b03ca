//! How a client connects: servers, credentials, backoff and timeouts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::BoxError;

/// A source of fresh tokens, called before the current one expires and when the server
/// closes with 4004 (token expired).
pub type TokenSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>> + Send + Sync>;

/// Options for a [`Client`](crate::Client). `Options::new(url)` has sensible defaults;
/// the other methods change one setting each.
#[derive(Clone)]
pub struct Options {
    /// The servers' WebSocket URLs (`ws://host:12080/ws`). The client connects to the
    /// first and moves to the next when a connection fails or is lost.
    pub urls: Vec<String>,
    /// A JWT or publish key, sent as `Authorization: Bearer` on the upgrade.
    pub token: Option<String>,
    /// Where fresh tokens come from (see [`TokenSource`]).
    pub token_source: Option<TokenSource>,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// How long an attempt may take, TCP and upgrade together (default 10 s).
    pub connect_timeout: Duration,
    /// A connection on which nothing at all arrives for this long is taken as dead and
    /// replaced (default 75 s: the server pings every 30 s and sends a heartbeat event on
    /// the `heartbeat` channel as often).
    pub dead_after: Duration,
    /// How long before the token's `expires_at` to ask the token source for a fresh one
    /// (default 60 s; half the token's remaining life if that is shorter).
    pub refresh_before: Duration,
    /// Events a subscription holds for its handler (default 1,024). When it is full the
    /// client stops reading from the server until the handler catches up: memory stays
    /// bounded, and a handler slow for long makes the server close the connection as a
    /// slow consumer, after which the client reconnects and resumes where it was.
    pub buffer: usize,
    /// After how long a full subscription is reported as [`Notice::SlowHandler`](crate::Notice::SlowHandler)
    /// (default 1 s).
    pub slow_handler_after: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("token_source", &self.token_source.as_ref().map(|_| "…"))
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("dead_after", &self.dead_after)
            .field("refresh_before", &self.refresh_before)
            .field("buffer", &self.buffer)
            .field("slow_handler_after", &self.slow_handler_after)
            .finish()
    }
}

impl Options {
    /// Connects to `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            token: None,
            token_source: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            dead_after: Duration::from_secs(75),
            refresh_before: Duration::from_secs(60),
            buffer: 1_024,
            slow_handler_after: Duration::from_secs(1),
        }
    }

    /// Adds a server to move to when the others fail (another node of a cluster).
    pub fn fallback(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Authenticates with `token`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Gets tokens from `source`: for the first connection when no [`token`](Self::token)
    /// is set, before each token expires, and after a 4004 close.
    pub fn token_source<F, Fut>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        self.token_source = Some(Arc::new(move || Box::pin(source())));
        self
    }

    /// Waits between attempts as `backoff` says.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`dead_after`](Self::dead_after).
    pub fn dead_after(mut self, silence: Duration) -> Self {
        self.dead_after = silence;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`refresh_before`](Self::refresh_before).
    pub fn refresh_before(mut self, ahead: Duration) -> Self {
        self.refresh_before = ahead;
        self
    }

    /// Sets [`buffer`](Self::buffer) (at least 1).
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }
}
