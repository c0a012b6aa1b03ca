//! The handle an application holds: subscribe, publish, watch the connection, close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::driver::{Command, Driver};
use crate::error::Error;
use crate::event::{Notice, Presence, PublishAck, State};
use crate::options::Options;
use crate::subscription::Subscription;
use crate::wire::valid_channel;

/// A connection to sigmahub that keeps itself up: it reconnects with jittered backoff,
/// resubscribes, and resumes every channel from the last event it delivered, so that
/// subscriptions see each event once and in order, with a [`Gap`](crate::Gap) where the
/// server could not give back what was missed.
///
/// Cheap to clone; the connection closes when the last clone is dropped or
/// [`close`](Self::close) is called.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    notices: broadcast::Sender<Notice>,
    cancel: CancellationToken,
    next_subscription: AtomicU64,
    /// Events a subscription holds ([`Options::buffer`]).
    buffer: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Client {
    /// Starts a client for `ws://host:port/ws` with the default [`Options`]. It connects
    /// in the background (on the current tokio runtime); [`ready`](Self::ready) waits
    /// for the connection.
    pub fn connect(url: impl Into<String>) -> Self {
        Self::with_options(Options::new(url))
    }

    /// Starts a client with `options`.
    ///
    /// # Panics
    /// Outside a tokio runtime, or with no URL in `options`.
    pub fn with_options(options: Options) -> Self {
        assert!(!options.urls.is_empty(), "sigmahub client: no server URL");
        let (commands, receiver) = mpsc::unbounded_channel();
        let first = State::Connecting {
            url: options.urls[0].clone(),
            attempt: 0,
        };
        let (state_sender, state) = watch::channel(first);
        let (notices, _) = broadcast::channel(256);
        let cancel = CancellationToken::new();
        let buffer = options.buffer.max(1);
        let driver = Driver::new(
            options,
            receiver,
            state_sender,
            notices.clone(),
            cancel.clone(),
        );
        tokio::spawn(driver.run());
        Self {
            inner: Arc::new(Inner {
                commands,
                state,
                notices,
                cancel,
                next_subscription: AtomicU64::new(0),
                buffer,
            }),
        }
    }

    /// Waits until the client is connected and welcomed; an error if it closed instead.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut state = self.inner.state.clone();
        loop {
            match &*state.borrow_and_update() {
                State::Connected { .. } => return Ok(()),
                State::Closed { reason } => return Err(Error::Closed(reason.clone())),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(self.closed());
            }
        }
    }

    /// Subscribes to `channel`, with its events' data decoded as `T` (use
    /// `serde_json::Value` for any). Returns once the server has confirmed; an error if it
    /// refused the channel. The subscription survives reconnects.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        channel: &str,
    ) -> Result<Subscription<T>, Error> {
        check_channel(channel)?;
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let (items, receiver) = mpsc::channel(self.inner.buffer);
        let (done, answer) = oneshot::channel();
        // Created first, so that a refusal drops it and unsubscribes nothing.
        let subscription = Subscription::new(
            channel.to_owned(),
            id,
            receiver,
            self.inner.commands.clone(),
        );
        self.inner
            .commands
            .send(Command::Subscribe {
                channel: channel.to_owned(),
                id,
                items,
                done,
            })
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())??;
        Ok(subscription)
    }

    /// Publishes `data` on `channel` over the socket (the token needs the `publish`
    /// grant) and returns the server's acknowledgement. Waits for the connection first.
    /// A connection lost before the answer gives [`Error::Disconnected`]: the event may
    /// or may not have been published, and is not sent again by itself.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<PublishAck, Error> {
        check_channel(channel)?;
        let data = serde_json::value::to_raw_value(data)
            .map_err(|e| Error::Invalid(format!("the data is not JSON: {e}")))?;
        self.ready().await?;
        let (done, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Publish {
                channel: channel.to_owned(),
                data,
                done,
            })
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Who is subscribed to `channel`, a channel that keeps presence (a `[[channels]]`
    /// rule with `presence = true`), across every node of a cluster. Waits for the
    /// connection first. The server refuses a channel without presence (`no_presence`)
    /// or one the token may not subscribe to (`forbidden`): [`Error::Refused`].
    pub async fn presence(&self, channel: &str) -> Result<Presence, Error> {
        check_channel(channel)?;
        self.ready().await?;
        let (done, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Presence {
                channel: channel.to_owned(),
                done,
            })
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Where the connection stands now.
    pub fn state(&self) -> State {
        self.inner.state.borrow().clone()
    }

    /// Every state from now on, as a `watch` receiver.
    pub fn states(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// Notices from now on: state changes, gaps, slow handlers, errors. A receiver that
    /// falls 256 notices behind skips the oldest (`RecvError::Lagged`).
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// Closes the connection (with a close frame) and ends every subscription; waits
    /// until that is done.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        let mut state = self.inner.state.clone();
        while !matches!(*state.borrow_and_update(), State::Closed { .. }) {
            if state.changed().await.is_err() {
                break;
            }
        }
    }

    fn closed(&self) -> Error {
        match &*self.inner.state.borrow() {
            State::Closed { reason } => Error::Closed(reason.clone()),
            _ => Error::Closed("the client's task ended".into()),
        }
    }
}

fn check_channel(channel: &str) -> Result<(), Error> {
    if valid_channel(channel) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{channel:?} is not a channel name: 1 to 128 bytes of A-Z a-z 0-9 . _ - : /"
        )))
    }
}
