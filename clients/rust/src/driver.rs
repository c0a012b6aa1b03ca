//! The task behind a [`Client`](crate::Client): connects, reads, resubscribes and resumes
//! after every reconnect, refreshes the token, and hands each subscription its events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, http, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::ending::{Ending, Next};
use crate::error::{BoxError, Error};
use crate::event::{Gap, Notice, Presence, PublishAck, State};
use crate::options::Options;
use crate::position::{Admit, Position};
use crate::subscription::{Item, RawEvent};
use crate::wire::{self, Incoming};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// How long a closing client waits for the server's answer to its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long after a failed token refresh the source is asked again.
const REFRESH_RETRY: Duration = Duration::from_secs(5);
/// At most this many channels go in the upgrade URL's `since` (the server's limit).
const MAX_URL_SINCE: usize = 256;

/// What a [`Client`](crate::Client) asks of its driver.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        channel: String,
        id: u64,
        items: mpsc::Sender<Item>,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
        done: oneshot::Sender<Result<PublishAck, Error>>,
    },
    Presence {
        channel: String,
        done: oneshot::Sender<Result<Presence, Error>>,
    },
}

/// A channel the application subscribed to.
#[derive(Debug, Default)]
struct Channel {
    subscribers: Vec<(u64, mpsc::Sender<Item>)>,
    /// `subscribe` calls waiting for the server to confirm.
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    position: Position,
    /// Subscribed on the current connection.
    live: bool,
    /// A `subscribe` for it is on its way on the current connection.
    requested: bool,
    /// Subscribed on some connection before: a reconnect must account for the time
    /// between.
    was_live: bool,
}

/// A request waiting for the server's answer, by correlation id.
#[derive(Debug)]
enum Pending {
    Subscribe,
    Unsubscribe,
    Publish(oneshot::Sender<Result<PublishAck, Error>>),
    Presence(oneshot::Sender<Result<Presence, Error>>),
    Auth,
}

impl Pending {
    /// Tells a caller waiting for this answer that it will not come: `error`.
    fn fail(self, error: Error) {
        match self {
            Self::Publish(done) => {
                let _ = done.send(Err(error));
            }
            Self::Presence(done) => {
                let _ = done.send(Err(error));
            }
            Self::Subscribe | Self::Unsubscribe | Self::Auth => {}
        }
    }
}

/// The connection's end as the session saw it, and whether it had been welcomed.
struct SessionEnd {
    ending: Ending,
    welcomed: bool,
}

pub(crate) struct Driver {
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<State>,
    notices: broadcast::Sender<Notice>,
    cancel: CancellationToken,
    channels: BTreeMap<String, Channel>,
    /// The epoch of the offsets in `channels`.
    epoch: Option<String>,
    /// The channels the server subscribed this client to on connect, last time.
    defaults: BTreeSet<String>,
    /// The positions of default channels nobody here subscribed to (yet): the place
    /// a later `subscribe` to one of them starts from.
    unclaimed: BTreeMap<String, u64>,
    token: Option<String>,
    /// When to ask the token source for the next token.
    refresh_due: Option<Instant>,
    pending: HashMap<String, Pending>,
    next_correlation: u64,
    rng: fastrand::Rng,
    url_at: usize,
    /// The server refused the last `since` (HTTP 400 `invalid_since`): leave it out once.
    skip_since: bool,
}

impl Driver {
    pub(crate) fn new(
        options: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<State>,
        notices: broadcast::Sender<Notice>,
        cancel: CancellationToken,
    ) -> Self {
        let token = options.token.clone();
        Self {
            options,
            commands,
            state,
            notices,
            cancel,
            channels: BTreeMap::new(),
            epoch: None,
            defaults: BTreeSet::new(),
            unclaimed: BTreeMap::new(),
            token,
            refresh_due: None,
            pending: HashMap::new(),
            next_correlation: 0,
            rng: fastrand::Rng::new(),
            url_at: 0,
            skip_since: false,
        }
    }

    /// Connects and reconnects until the client is closed or retrying cannot succeed.
    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        let reason = loop {
            if self.cancel.is_cancelled() {
                break "closed by the application".to_owned();
            }
            let url = self.options.urls[self.url_at % self.options.urls.len()].clone();
            self.set_state(State::Connecting {
                url: url.clone(),
                attempt,
            });
            let end = match self.attempt(&url).await {
                Ok(socket) => self.session(socket, &url).await,
                Err(ending) => SessionEnd {
                    ending,
                    welcomed: false,
                },
            };
            self.disconnected();
            if self.cancel.is_cancelled() {
                break "closed by the application".to_owned();
            }
            if end.welcomed {
                attempt = 0;
            } else {
                // Nothing good came of this server: try the next one first.
                self.url_at += 1;
            }
            tracing::debug!(%url, ending = %end.ending, "sigmahub connection ended");
            let mut delay = self.options.backoff.delay(attempt, &mut self.rng);
            match end.ending.next(self.options.backoff.max) {
                Next::Stop => break end.ending.to_string(),
                Next::Retry { at_least } => delay = delay.max(at_least),
                Next::RetryWithoutSince => self.skip_since = true,
                Next::RefreshToken if self.options.token_source.is_some() => {
                    self.token = None;
                    delay = Duration::ZERO;
                }
                Next::RefreshToken => {
                    break format!("{}; no token source to refresh it", end.ending)
                }
            }
            if matches!(end.ending, Ending::Closed { code: 4002, .. })
                && self.token.is_none()
                && self.options.token_source.is_none()
            {
                break format!("{}: the server requires a token", end.ending);
            }
            attempt = attempt.saturating_add(1);
            self.set_state(State::Reconnecting {
                reason: end.ending.to_string(),
                delay,
            });
            if !self.wait(delay).await {
                break "closed by the application".to_owned();
            }
        };
        self.finish(reason);
    }

    /// One connection attempt: a token if one is needed, TCP, the upgrade.
    async fn attempt(&mut self, url: &str) -> Result<Socket, Ending> {
        if self.token.is_none() {
            if let Some(source) = self.options.token_source.clone() {
                let token = tokio::select! {
                    token = source() => token,
                    _ = self.cancel.cancelled() => return Err(Ending::Lost("closed".into())),
                };
                match token {
                    Ok(token) => self.token = Some(token),
                    Err(e) => {
                        self.notice_error("token_refresh_failed", e.to_string());
                        return Err(Ending::Lost(format!("no token: {e}")));
                    }
                }
            }
        }
        let request = self.request(url).map_err(invalid_url)?;
        let connect = timeout(
            self.options.connect_timeout,
            tokio_tungstenite::connect_async(request),
        );
        let result = tokio::select! {
            result = connect => result,
            _ = self.cancel.cancelled() => return Err(Ending::Lost("closed".into())),
        };
        match result {
            Err(_) => Err(Ending::Lost(format!(
                "no connection within {:?}",
                self.options.connect_timeout
            ))),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => Err(refusal(&response)),
            Ok(Err(tungstenite::Error::Url(e))) => Err(invalid_url(e.to_string())),
            Ok(Err(e)) => Err(Ending::Lost(e.to_string())),
        }
    }

    /// The upgrade request: the URL with `since` and `epoch` for the channels the server
    /// subscribes on connect, and the token as a bearer header.
    fn request(&mut self, url: &str) -> Result<http::Request<()>, String> {
        let mut url = url.to_owned();
        let since: Vec<String> = self
            .channels
            .iter()
            .filter(|(name, _)| self.defaults.contains(*name))
            .filter_map(|(name, c)| c.position.offset.map(|o| format!("{name}:{o}")))
            .take(MAX_URL_SINCE)
            .collect();
        if let (Some(epoch), false, false) = (&self.epoch, since.is_empty(), self.skip_since) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("since={}&epoch={epoch}", since.join(",")));
        }
        self.skip_since = false;
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(token) = &self.token {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token is not a valid header value".to_owned())?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// Serves one connection until it ends.
    async fn session(&mut self, mut socket: Socket, url: &str) -> SessionEnd {
        let resume_epoch = self.epoch.clone();
        let mut welcomed = false;
        let mut heard = Instant::now();
        let mut refreshing: Option<TokenFuture> = None;
        let ending = loop {
            let dead_at = heard + self.options.dead_after;
            let refresh_at = self.refresh_due.filter(|_| refreshing.is_none());
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = timeout(CLOSE_WAIT, close(&mut socket)).await;
                    break Ending::Closed { code: 1000, reason: String::new() };
                }
                message = socket.next() => {
                    heard = Instant::now();
                    let text = match message {
                        None => break Ending::Lost("the server went away without a close".into()),
                        Some(Err(e)) => break Ending::Lost(e.to_string()),
                        Some(Ok(Message::Close(frame))) => break match frame {
                            Some(f) => Ending::Closed { code: f.code.into(), reason: f.reason.to_string() },
                            None => Ending::Closed { code: 1005, reason: String::new() },
                        },
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(_)) => continue,
                    };
                    if let Err(ending) = self.on_text(&mut socket, &text, &mut welcomed, &resume_epoch, url).await {
                        break ending;
                    }
                }
                command = self.commands.recv(), if welcomed => match command {
                    Some(command) => if let Err(e) = self.command(&mut socket, command).await {
                        break Ending::Lost(e.to_string());
                    },
                    // Every handle is gone: nobody can read what comes.
                    None => self.cancel.cancel(),
                },
                _ = sleep_until(dead_at) => break Ending::Silent,
                _ = sleep_until(refresh_at.unwrap_or(dead_at)), if refresh_at.is_some() => {
                    self.refresh_due = None;
                    if let Some(source) = &self.options.token_source {
                        refreshing = Some(source());
                    }
                }
                token = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                    refreshing = None;
                    match token {
                        Ok(token) => {
                            let id = self.correlation(Pending::Auth);
                            let sent = send(&mut socket, "auth", &id, wire::Auth { token: &token }).await;
                            self.token = Some(token);
                            if let Err(e) = sent {
                                break Ending::Lost(e.to_string());
                            }
                        }
                        Err(e) => {
                            self.notice_error("token_refresh_failed", e.to_string());
                            self.refresh_due = Some(Instant::now() + REFRESH_RETRY);
                        }
                    }
                }
            }
        };
        SessionEnd { ending, welcomed }
    }

    /// Handles one message from the server.
    async fn on_text(
        &mut self,
        socket: &mut Socket,
        text: &str,
        welcomed: &mut bool,
        resume_epoch: &Option<String>,
        url: &str,
    ) -> Result<(), Ending> {
        let message: Incoming<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "sigmahub sent a message this client cannot read");
                return Ok(());
            }
        };
        match message.kind {
            "notification" if !*welcomed => {
                let welcome: wire::Welcome = message
                    .data()
                    .map_err(|e| Ending::Lost(format!("the server's welcome is not one: {e}")))?;
                *welcomed = true;
                self.on_welcome(socket, welcome, resume_epoch, url).await?;
            }
            "auth_response" => {
                if let Some(id) = message.correlation() {
                    self.pending.remove(id);
                }
                match message.data::<wire::AuthResponse>() {
                    Ok(auth) if auth.success => self.schedule_refresh(auth.expires_at.as_deref()),
                    Ok(auth) => {
                        let error = auth.error.unwrap_or(wire::ErrorBody {
                            code: "auth_failed".into(),
                            message: String::new(),
                        });
                        self.notice_error(&error.code, error.message);
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable auth_response"),
                }
            }
            "subscribe_response" => {
                let reply: wire::Subscribed = message
                    .data()
                    .map_err(|e| Ending::Lost(format!("unreadable subscribe_response: {e}")))?;
                if let Some(id) = message.correlation() {
                    self.pending.remove(id);
                }
                self.on_subscribed(reply).await;
            }
            "unsubscribe_response" | "pong" => {
                if let Some(id) = message.correlation() {
                    self.pending.remove(id);
                }
            }
            "publish_response" => {
                let pending = message.correlation().and_then(|id| self.pending.remove(id));
                if let Some(Pending::Publish(done)) = pending {
                    let ack = message.data::<PublishAck>().map_err(|e| Error::Refused {
                        code: "invalid_reply".into(),
                        message: e.to_string(),
                    });
                    let _ = done.send(ack);
                }
            }
            "presence_response" => {
                let pending = message.correlation().and_then(|id| self.pending.remove(id));
                if let Some(Pending::Presence(done)) = pending {
                    let presence = message.data::<Presence>().map_err(|e| Error::Refused {
                        code: "invalid_reply".into(),
                        message: e.to_string(),
                    });
                    let _ = done.send(presence);
                }
            }
            "error" => {
                let body: wire::ErrorBody = message.data().unwrap_or(wire::ErrorBody {
                    code: "unknown".into(),
                    message: text.to_owned(),
                });
                let pending = message.correlation().and_then(|id| self.pending.remove(id));
                match pending {
                    Some(pending @ (Pending::Publish(_) | Pending::Presence(_))) => {
                        pending.fail(Error::Refused {
                            code: body.code,
                            message: body.message,
                        })
                    }
                    _ => self.notice_error(&body.code, body.message),
                }
            }
            channel => self.deliver(channel, &message).await,
        }
        Ok(())
    }

    /// The welcome: the channels resumed through the URL, the positions of the default
    /// channels, then one `subscribe` for every other channel the application wants.
    async fn on_welcome(
        &mut self,
        socket: &mut Socket,
        welcome: wire::Welcome,
        resume_epoch: &Option<String>,
        url: &str,
    ) -> Result<(), Ending> {
        self.defaults = welcome.subscriptions.iter().cloned().collect();
        for (name, recovery) in &welcome.resumed.recovery {
            if let Some(channel) = self.channels.get_mut(name) {
                if let Some(gap) = channel.position.recovered(name, recovery) {
                    self.gap(gap).await;
                }
            }
        }
        self.epoch = welcome.resumed.epoch.clone();
        self.unclaimed.clear();
        let mut untracked = Vec::new();
        for name in &welcome.subscriptions {
            let Some(channel) = self.channels.get_mut(name) else {
                if let Some(at) = welcome.resumed.offsets.get(name) {
                    self.unclaimed.insert(name.clone(), *at);
                }
                continue;
            };
            if let Some(at) = welcome.resumed.offsets.get(name) {
                channel.position.start_at(*at);
            }
            if channel.was_live && !welcome.resumed.recovery.contains_key(name) {
                untracked.push(channel.position.not_resumed(name));
            }
            channel.live = true;
            channel.was_live = true;
            for done in channel.waiters.drain(..) {
                let _ = done.send(Ok(()));
            }
        }
        for gap in untracked {
            self.gap(gap).await;
        }
        self.set_state(State::Connected {
            url: url.to_owned(),
            client_id: welcome.client_id,
        });
        let rest: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.live)
            .map(|(name, _)| name.clone())
            .collect();
        self.request_subscribe(socket, &rest, resume_epoch.as_deref())
            .await
            .map_err(|e| Ending::Lost(e.to_string()))
    }

    /// Sends a `subscribe` for `names`, resuming those with a position.
    async fn request_subscribe(
        &mut self,
        socket: &mut Socket,
        names: &[String],
        epoch: Option<&str>,
    ) -> Result<(), tungstenite::Error> {
        if names.is_empty() {
            return Ok(());
        }
        let mut untracked = Vec::new();
        let mut since = BTreeMap::new();
        for name in names {
            let channel = self.channels.get_mut(name).expect("wanted");
            channel.requested = true;
            match channel.position.offset {
                Some(offset) => {
                    since.insert(name.as_str(), offset);
                }
                None if channel.was_live => untracked.extend(channel.position.untracked(name)),
                None => {}
            }
        }
        let epoch = epoch.filter(|_| !since.is_empty());
        let id = self.correlation(Pending::Subscribe);
        let list = wire::ChannelList {
            channels: names.iter().map(String::as_str).collect(),
            since,
            epoch,
        };
        let sent = send(socket, "subscribe", &id, list).await;
        for gap in untracked {
            self.gap(gap).await;
        }
        sent
    }

    async fn on_subscribed(&mut self, reply: wire::Subscribed) {
        for rejected in &reply.rejected {
            if let Some(channel) = self.channels.remove(&rejected.channel) {
                // Its subscriptions end; a pending `subscribe` call gets the reason.
                let error = Error::Refused {
                    code: rejected.code.clone(),
                    message: rejected.reason.clone(),
                };
                for done in channel.waiters {
                    let _ = done.send(Err(error.clone()));
                }
                if channel.was_live {
                    self.notice_error(
                        &rejected.code,
                        format!(
                            "{} is no longer subscribed: {}",
                            rejected.channel, rejected.reason
                        ),
                    );
                }
            }
        }
        for (name, recovery) in &reply.resumed.recovery {
            if let Some(channel) = self.channels.get_mut(name) {
                if let Some(gap) = channel.position.recovered(name, recovery) {
                    self.gap(gap).await;
                }
            }
        }
        if reply.resumed.epoch.is_some() {
            self.epoch = reply.resumed.epoch;
        }
        for name in &reply.subscriptions {
            let Some(channel) = self.channels.get_mut(name) else {
                continue;
            };
            // A default channel is not in `offsets` (the reply changed nothing): it starts
            // where its last event here was.
            if let Some(at) = reply.resumed.offsets.get(name).or(self.unclaimed.get(name)) {
                channel.position.start_at(*at);
            }
            self.unclaimed.remove(name);
            channel.live = true;
            channel.was_live = true;
            channel.requested = false;
            for done in channel.waiters.drain(..) {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// Hands an event to the channel's subscriptions, in order, once.
    async fn deliver(&mut self, name: &str, message: &Incoming<'_>) {
        let channel = match self.channels.get_mut(name) {
            Some(channel) if channel.live => channel,
            // A default channel nobody here has subscribed to yet (or whose `subscribe` is
            // not answered yet: what came before the answer is not the subscription's).
            _ => {
                if let (Some(offset), Some(at)) = (message.offset, self.unclaimed.get_mut(name)) {
                    *at = offset;
                }
                return;
            }
        };
        let gap = match channel.position.admit(message.offset) {
            Admit::Duplicate => return,
            Admit::Deliver(gap) => gap,
        };
        if let Some(gap) = gap {
            self.gap(gap).await;
        }
        let data = message
            .data
            .map_or_else(|| RawValue::from_string("{}".into()), |d| Ok(d.to_owned()))
            .expect("`{}` is JSON");
        let event = Arc::new(RawEvent {
            channel: name.to_owned(),
            timestamp: message.timestamp.clone(),
            offset: message.offset,
            data,
        });
        self.hand(name, Item::Event(event)).await;
    }

    /// Reports a gap to the application and, in place, to the channel's subscriptions.
    async fn gap(&mut self, gap: Gap) {
        let _ = self.notices.send(Notice::Gap(gap.clone()));
        let name = gap.channel.clone();
        self.hand(&name, Item::Gap(gap)).await;
    }

    /// Gives `item` to every subscription of `name`, waiting for room (so memory stays
    /// bounded), and reporting a subscription that makes it wait long.
    async fn hand(&mut self, name: &str, item: Item) {
        let Some(channel) = self.channels.get_mut(name) else {
            return;
        };
        let mut gone = Vec::new();
        for (id, subscriber) in &channel.subscribers {
            let sent = match subscriber.try_send(item.clone()) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                Err(mpsc::error::TrySendError::Full(item)) => {
                    match timeout(self.options.slow_handler_after, subscriber.reserve()).await {
                        Ok(Ok(permit)) => {
                            permit.send(item);
                            Ok(())
                        }
                        Ok(Err(_)) => Err(()),
                        Err(_) => {
                            let _ = self.notices.send(Notice::SlowHandler {
                                channel: name.to_owned(),
                            });
                            subscriber.send(item).await.map_err(|_| ())
                        }
                    }
                }
            };
            if sent.is_err() {
                gone.push(*id);
            }
        }
        channel.subscribers.retain(|(id, _)| !gone.contains(id));
    }

    /// A command while connected and welcomed.
    async fn command(
        &mut self,
        socket: &mut Socket,
        command: Command,
    ) -> Result<(), tungstenite::Error> {
        match command {
            Command::Subscribe {
                channel: name,
                id,
                items,
                done,
            } => {
                let channel = self.channels.entry(name.clone()).or_default();
                channel.subscribers.push((id, items));
                if channel.live {
                    let _ = done.send(Ok(()));
                } else {
                    channel.waiters.push(done);
                    if !channel.requested {
                        let epoch = self.epoch.clone();
                        self.request_subscribe(socket, &[name], epoch.as_deref())
                            .await?;
                    }
                }
            }
            Command::Unsubscribe { channel: name, id } => {
                if self.unsubscribed(&name, id) {
                    let id = self.correlation(Pending::Unsubscribe);
                    let list = wire::ChannelList {
                        channels: vec![&name],
                        since: BTreeMap::new(),
                        epoch: None,
                    };
                    send(socket, "unsubscribe", &id, list).await?;
                }
            }
            Command::Publish {
                channel,
                data,
                done,
            } => {
                let id = self.correlation(Pending::Publish(done));
                let event = wire::Publish {
                    channel: &channel,
                    data: &data,
                };
                send(socket, "publish", &id, event).await?;
            }
            Command::Presence { channel, done } => {
                let id = self.correlation(Pending::Presence(done));
                let ask = wire::PresenceAsk { channel: &channel };
                send(socket, "presence", &id, ask).await?;
            }
        }
        Ok(())
    }

    /// Removes subscription `id` of `name`; true if that was the channel's last one and
    /// the server should be told.
    fn unsubscribed(&mut self, name: &str, id: u64) -> bool {
        let Some(channel) = self.channels.get_mut(name) else {
            return false;
        };
        channel.subscribers.retain(|(i, _)| *i != id);
        if !channel.subscribers.is_empty() || !channel.waiters.is_empty() {
            return false;
        }
        let channel = self.channels.remove(name).expect("present");
        channel.live || channel.requested
    }

    /// Waits `delay` before the next attempt, taking commands meanwhile. False if the
    /// client was closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return true,
                _ = self.cancel.cancelled() => return false,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Subscribe { channel, id, items, done }) => {
                        let channel = self.channels.entry(channel).or_default();
                        channel.subscribers.push((id, items));
                        channel.waiters.push(done);
                    }
                    Some(Command::Unsubscribe { channel, id }) => {
                        self.unsubscribed(&channel, id);
                    }
                    Some(Command::Publish { done, .. }) => {
                        let _ = done.send(Err(Error::Disconnected));
                    }
                    Some(Command::Presence { done, .. }) => {
                        let _ = done.send(Err(Error::Disconnected));
                    }
                },
            }
        }
    }

    /// After a connection ends: unanswered publishes fail, subscriptions wait for the
    /// next connection.
    fn disconnected(&mut self) {
        for (_, pending) in self.pending.drain() {
            pending.fail(Error::Disconnected);
        }
        for channel in self.channels.values_mut() {
            channel.live = false;
            channel.requested = false;
        }
        self.refresh_due = None;
    }

    /// Closed for good: every waiting call gets the reason, every subscription ends.
    fn finish(&mut self, reason: String) {
        for (_, channel) in std::mem::take(&mut self.channels) {
            for done in channel.waiters {
                let _ = done.send(Err(Error::Closed(reason.clone())));
            }
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Subscribe { done, .. } => {
                    let _ = done.send(Err(Error::Closed(reason.clone())));
                }
                Command::Publish { done, .. } => {
                    let _ = done.send(Err(Error::Closed(reason.clone())));
                }
                Command::Presence { done, .. } => {
                    let _ = done.send(Err(Error::Closed(reason.clone())));
                }
                Command::Unsubscribe { .. } => {}
            }
        }
        self.set_state(State::Closed { reason });
    }

    /// When the server will close with 4004: ask for a fresh token `refresh_before`
    /// ahead (or halfway, for a short-lived token).
    fn schedule_refresh(&mut self, expires_at: Option<&str>) {
        self.refresh_due = None;
        if self.options.token_source.is_none() {
            return;
        }
        let Some(expires) = expires_at.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
            return;
        };
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let ahead = self.options.refresh_before.min(left / 2);
        self.refresh_due = Some(Instant::now() + (left - ahead));
    }

    fn correlation(&mut self, pending: Pending) -> String {
        self.next_correlation += 1;
        let id = format!("c{}", self.next_correlation);
        self.pending.insert(id.clone(), pending);
        id
    }

    fn set_state(&self, state: State) {
        let _ = self.notices.send(Notice::State(state.clone()));
        self.state.send_replace(state);
    }

    fn notice_error(&self, code: &str, message: String) {
        tracing::warn!(code, message, "sigmahub client");
        let _ = self.notices.send(Notice::Error {
            code: code.to_owned(),
            message,
        });
    }
}

/// A URL (or token) the upgrade cannot be made with: a refusal nothing will change.
fn invalid_url(why: String) -> Ending {
    tracing::warn!(why, "sigmahub client: cannot connect");
    Ending::Refused {
        status: 400,
        code: Some("invalid_url".into()),
        retry_after: None,
    }
}

/// The HTTP refusal of an upgrade: its status, the JSON body's `code`, `Retry-After`.
fn refusal(response: &http::Response<Option<Vec<u8>>>) -> Ending {
    let code = response
        .body()
        .as_deref()
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
        .and_then(|body| {
            body.get("code")
                .or_else(|| body.get("error").and_then(|e| e.get("code")))
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        });
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Ending::Refused {
        status: response.status().as_u16(),
        code,
        retry_after,
    }
}

async fn send<D: Serialize>(
    socket: &mut Socket,
    kind: &'static str,
    correlation_id: &str,
    data: D,
) -> Result<(), tungstenite::Error> {
    let text = serde_json::to_string(&wire::Outgoing {
        kind,
        correlation_id,
        data,
    })
    .expect("messages serialise");
    socket.send(Message::text(text)).await
}

/// Sends a close frame and reads until the server's answer (or the end).
async fn close(socket: &mut Socket) {
    let _ = socket.close(None).await;
    while let Some(Ok(_)) = socket.next().await {}
}
