//! One WebSocket connection: authentication, welcome, default subscriptions, then the
//! reader and the writer.
//!
//! A client is known once it has authenticated: at once with the upgrade's token or as an
//! anonymous client of a server without token auth, or by its first `auth` message when a
//! token is required (until then only `auth` and `ping` are answered). Its grant decides
//! which channels it may subscribe to and publish on; a refreshed token replaces the grant.
//!
//! Both halves run as two futures inside one task. The writer drains the client's outbox;
//! the reader parses client messages and answers them by pushing replies into the same
//! outbox, so replies and events keep one order. The connection ends when either half
//! ends: the other gets [`CLOSE_LINGER`] to finish the close handshake (the writer sends its
//! close frame, the reader waits for the client's) before the socket is dropped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::analytics::ClientKey;
use super::counters::Limit;
use super::deadline::Deadlines;
use super::reader::{Incoming, MessageReader, ReadEnd};
use super::writer::{self, WriteFailed, CLOSE_LINGER};
use super::Shared;
use crate::auth::permissions::{Identity, Method};
use crate::cluster::{Cluster, Published};
use crate::engine::history::{Incomplete, Locked, Recovery};
use crate::engine::hub::{Client, Rejection, SubscriptionChange};
use crate::engine::outbox::Closing;
use crate::event::{self, unix_seconds};
use crate::frame;
use crate::protocol::channel::{self, Channel};
use crate::protocol::close::CloseCode;
use crate::protocol::message::{
    self, ChannelList, ClientMessage, CorrelationId, MessageError, Resume,
};
use crate::protocol::publish;
use crate::protocol::rate::{TokenBucket, Verdict};
use crate::upstream::snapshot::SnapshotCache;

/// Most refused channels a `subscribe_response` or `unsubscribe_response` lists; past it,
/// `rejected_total` gives the count. A reply stays small whatever the request named.
pub(crate) const MAX_LISTED_REJECTIONS: usize = 16;

/// The welcome text SigmaVault clients expect.
pub const WELCOME_MESSAGE: &str = "Welcome to SigmaVault WebSocket";

/// What a client gave with its upgrade request.
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    /// Its credential (`?token=` or `Authorization: Bearer`), if any.
    pub(crate) token: Option<Box<str>>,
    /// Where it left off on the channels it gets on connect (`?since=…&epoch=…`).
    pub(crate) resume: Option<Box<Resume>>,
}

/// Serves one upgraded connection from `address` (the client's, behind trusted proxies)
/// until it closes.
pub(crate) async fn run<R, W>(
    shared: Arc<Shared>,
    read: R,
    mut write: W,
    address: IpAddr,
    handshake: Handshake,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Ok(client) = shared.hub.connect() else {
        tracing::warn!(%address, "no free client slot; closing");
        shared.counters.closed(CloseCode::INTERNAL_ERROR);
        let _ = writer::write_frames(
            &mut write,
            &mut [frame::close(CloseCode::INTERNAL_ERROR)],
            None,
        )
        .await;
        return;
    };
    // A span over the connection's life: every line logged for it carries its id and peer.
    // It is a DEBUG span (target `sigmahub::conn`): an open span costs ~1.2 KB per
    // connection in the subscriber's registry (measured at 19,000 idle connections), so it
    // is kept only when asked for (`--log info,sigmahub::conn=debug`). The INFO connect and
    // disconnect lines carry the id and peer themselves.
    let span =
        tracing::debug_span!(target: "sigmahub::conn", "conn", id = client.id(), peer = %address);
    serve(&shared, client, read, write, address, handshake)
        .instrument(span)
        .await;
}

/// [`run`] once the client has its slot.
async fn serve<R, W>(
    shared: &Shared,
    client: Client,
    read: R,
    mut write: W,
    address: IpAddr,
    handshake: Handshake,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let config = &shared.config;
    let started = Instant::now();
    let outbox = client.outbox().clone();
    let mut session = Session {
        shared,
        address,
        client,
        identity: None,
        limit: TokenBucket::new(
            config.max_inbound_per_minute,
            config.inbound_burst,
            tokio::time::Instant::now().into_std(),
        ),
        deadlines: Deadlines::new(config.idle_timeout),
        resume: handshake.resume,
    };
    if let (Some(cluster), Some(resume)) = (&shared.cluster, &session.resume) {
        // Resuming the channels it gets on connect: read back what this node lacks.
        let defaults = &config.default_subscriptions;
        Box::pin(backfill(cluster, resume, |name| {
            defaults.iter().any(|d| d == name)
        }))
        .await;
    }
    if let Some(code) = session.start(handshake.token) {
        // A refused token: the writer sends the `auth_response`, then closes.
        outbox.close(Closing::AfterFlush(code));
    }
    if shared.shutdown.is_cancelled() {
        // Upgraded while the server was shutting down, possibly after `close_all` ran.
        outbox.close(Closing::AfterFlush(CloseCode::GOING_AWAY));
    }

    let (code, reason) = {
        let mut reader = MessageReader::new(read, config.max_message_size);
        let read_half = session.read_loop(&mut reader);
        let write_half = writer::run(&outbox, &mut write, &shared.counters);
        tokio::pin!(read_half, write_half);
        tokio::select! {
            written = &mut write_half => {
                // Our close frame is out (or the socket failed): give the client a moment
                // to answer it, so the socket is not reset under the close frame.
                let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut read_half)).await;
                match written {
                    Ok(code) => (Some(code), Disconnect::ClosedByServer),
                    // Closed for a reason the client could not be told (it reads nothing):
                    // still a close for that reason, counted as such.
                    Err(WriteFailed { closing: Some(code), error }) => {
                        (Some(code), Disconnect::CloseUnsent(error.kind()))
                    }
                    Err(WriteFailed { closing: None, error }) => {
                        (None, Disconnect::WriteFailed(error.kind()))
                    }
                }
            }
            end = &mut read_half => {
                outbox.close(match end {
                    Ending::Read(ReadEnd::Gone) => Closing::Now(CloseCode::NORMAL),
                    Ending::Read(ReadEnd::Violation(code)) => Closing::Now(code),
                    Ending::Refused(code) => Closing::AfterFlush(code),
                });
                // Only `end` lives across this wait: every byte here is paid per connection.
                let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut write_half)).await;
                match end {
                    Ending::Read(ReadEnd::Gone) => (None, Disconnect::ConnectionLost),
                    Ending::Read(ReadEnd::Violation(code)) if code.code == CloseCode::NORMAL.code => {
                        (Some(code), Disconnect::ClientClosed)
                    }
                    Ending::Read(ReadEnd::Violation(code)) => (Some(code), Disconnect::Violation),
                    Ending::Refused(code) => (Some(code), Disconnect::Refused),
                }
            }
        }
    };
    if let Some(code) = code {
        shared.counters.closed(code);
    }
    let duration = started.elapsed();
    let key = session
        .identity
        .as_deref()
        .map(|identity| ClientKey::of(identity, address));
    shared.analytics.left(key, duration, Instant::now());
    tracing::info!(
        conn = session.client.id(),
        peer = %address,
        reason = reason.as_str(),
        code = code.map(|c| c.code),
        error = match reason {
            Disconnect::WriteFailed(kind) | Disconnect::CloseUnsent(kind) => {
                Some(tracing::field::display(kind))
            }
            _ => None,
        },
        duration_ms = duration.as_millis() as u64,
        "client disconnected"
    );
}

/// Why a connection ended, for the disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disconnect {
    /// The server closed it (shutdown, slow consumer, keep-alive, token expiry, …): `code`.
    ClosedByServer,
    /// The server closed it for `code`, but the socket did not take the close frame (a
    /// client that reads nothing); the socket was dropped.
    CloseUnsent(std::io::ErrorKind),
    /// Writing to the socket failed.
    WriteFailed(std::io::ErrorKind),
    /// The client sent a close frame.
    ClientClosed,
    /// The connection dropped without a close frame.
    ConnectionLost,
    /// The client broke a protocol rule or a deadline passed: `code`.
    Violation,
    /// The client's credentials were refused: `code`.
    Refused,
}

impl Disconnect {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClosedByServer => "closed_by_server",
            Self::CloseUnsent(_) => "closed_by_server",
            Self::WriteFailed(_) => "write_failed",
            Self::ClientClosed => "client_closed",
            Self::ConnectionLost => "connection_lost",
            Self::Violation => "violation",
            Self::Refused => "refused",
        }
    }
}

/// Reads back from the cluster's stream what a resuming client missed on the channels
/// `wanted` names, so that this node can replay it even if it was not following them.
async fn backfill(cluster: &Cluster, resume: &Resume, wanted: impl Fn(&str) -> bool) {
    if resume
        .epoch
        .as_deref()
        .is_some_and(|e| e != cluster.epoch())
    {
        return; // answered with epoch_changed
    }
    for (name, since) in &resume.since {
        if let (true, Ok(channel)) = (wanted(name), Channel::new(name)) {
            cluster.backfill(&channel, *since).await;
        }
    }
}

/// What is left to do after [`Session::handle_message`].
enum Step {
    /// Nothing: the message was answered.
    Done,
    /// Close the connection with this code once the reply is out (refused credentials).
    Close(CloseCode),
    /// A subscribe in a cluster: listen in NATS first (asynchronously), then subscribe.
    Subscribe(Arc<Identity>, ChannelList),
}

/// Why the reading side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The reader stopped: the peer left or broke a rule (or a deadline passed).
    Read(ReadEnd),
    /// Credentials were refused: close with this code once the reply has been sent.
    Refused(CloseCode),
}

/// One connection's state on the reading side.
struct Session<'a> {
    shared: &'a Shared,
    /// The client's address, for the failed-credentials backoff.
    address: IpAddr,
    client: Client,
    /// `None` until the client has authenticated (only when a token is required).
    identity: Option<Arc<Identity>>,
    limit: TokenBucket,
    deadlines: Deadlines,
    /// The upgrade's `since`, until the welcome uses it.
    resume: Option<Box<Resume>>,
}

impl Session<'_> {
    /// Authenticates with the upgrade's token, or starts waiting for an `auth` message,
    /// and welcomes the client once it is known. Returns the close code of a refused token.
    fn start(&mut self, token: Option<Box<str>>) -> Option<CloseCode> {
        let auth = &self.shared.auth;
        match token {
            Some(token) => return self.authenticate(&token, None),
            None if auth.requires_token() => {
                self.deadlines.await_auth(self.shared.config.auth.timeout);
            }
            None => {
                self.identity = Some(auth.anonymous());
                self.welcome();
            }
        }
        None
    }

    /// Checks `token`, answers with `auth_response`, and on success welcomes the client
    /// (first time) or applies the refreshed grant. Returns the close code of a refusal.
    fn authenticate(
        &mut self,
        token: &str,
        correlation_id: Option<&CorrelationId>,
    ) -> Option<CloseCode> {
        let now = SystemTime::now();
        let id = correlation_id.map(CorrelationId::as_raw);
        let identity = match self.shared.verify_token(self.address, token) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::debug!(client_id = self.client.id(), error = %e, "authentication refused");
                self.shared
                    .counters
                    .auth_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = serde_json::json!({
                    "success": false,
                    "error": { "code": e.code(), "message": e.to_string() },
                });
                self.client
                    .send(event::encode_serialize("auth_response", now, id, &body));
                return Some(e.close_code());
            }
        };
        let first = self.identity.is_none();
        if let Some(current) = &self.identity {
            if identity.subject != current.subject && current.method != Method::Anonymous {
                let e = MessageError {
                    code: "auth_subject_changed",
                    message: format!(
                        "a refreshed token must be for {:?}; connect again to change identity",
                        current.subject
                    ),
                    correlation_id: correlation_id.cloned(),
                };
                self.client.send(error_reply(&e, now));
                return None;
            }
        }
        // A refreshed grant may be narrower: leave what it no longer allows.
        let revoked: Vec<String> = self
            .client
            .subscriptions()
            .iter()
            .filter(|c| !identity.may_subscribe(c))
            .map(|c| c.to_string())
            .collect();
        let revoked = self.client.unsubscribe(revoked.iter().map(String::as_str));
        #[derive(Serialize)]
        struct Granted<'a> {
            success: bool,
            subject: &'a str,
            method: Method,
            expires_at: Option<String>,
            subscribe: Vec<String>,
            publish: Vec<String>,
            unsubscribed: &'a [Channel],
        }
        self.client.send(event::encode_serialize(
            "auth_response",
            now,
            id,
            &Granted {
                success: true,
                subject: &identity.subject,
                method: identity.method,
                expires_at: identity.expires_at.map(event::rfc3339),
                subscribe: identity.subscribe.to_strings(),
                publish: identity.publish.to_strings(),
                unsubscribed: &revoked.changed,
            },
        ));
        self.deadlines.authenticated(identity.expires_at);
        self.identity = Some(identity);
        if first {
            self.welcome();
        }
        None
    }

    /// Queues the welcome notification and the defaults' snapshots, then subscribes to the
    /// defaults the client may have, so that the welcome comes before any event.
    fn welcome(&mut self) {
        #[derive(Serialize)]
        struct Welcome<'a> {
            message: &'static str,
            level: &'static str,
            client_id: String,
            subscriptions: &'a [Channel],
            server_time: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            recovery: Option<&'a BTreeMap<String, Recovery>>,
        }
        let epoch = self.epoch();
        let identity = self
            .identity
            .clone()
            .expect("welcome follows authentication");
        let defaults = &self.shared.config.default_subscriptions;
        let change = self.client.plan_subscribe(
            defaults
                .iter()
                .map(String::as_str)
                .filter(|c| identity.may_subscribe(c)),
        );
        let reconnection = self
            .shared
            .analytics
            .arrived(&ClientKey::of(&identity, self.address), Instant::now());
        tracing::info!(
            conn = self.client.id(),
            peer = %self.address,
            subject = %identity.subject,
            method = ?identity.method,
            reconnection,
            "client connected"
        );
        let resume = self.resume.take();
        let resumption = self.plan_resume(resume.as_deref(), &change);
        let now = SystemTime::now();
        self.client.send(event::encode_serialize(
            "notification",
            now,
            None,
            &Welcome {
                message: WELCOME_MESSAGE,
                level: "info",
                client_id: self.client.id().to_string(),
                subscriptions: &change.changed,
                server_time: unix_seconds(now),
                epoch: epoch.as_deref().map(String::as_str),
                recovery: resume.is_some().then_some(&resumption.outcomes),
            },
        ));
        self.complete_subscribe(&change, resumption);
    }

    /// The epoch of this server's offsets, if it keeps history.
    fn epoch(&self) -> Option<Arc<String>> {
        self.shared.hub.history().map(|h| h.epoch())
    }

    /// Decides, with their logs locked, what each channel of `resume` that `change`
    /// subscribes gets replayed. The locks are held until [`Self::complete_subscribe`]
    /// has subscribed the client, so no event published meanwhile is missed or doubled.
    fn plan_resume(&self, resume: Option<&Resume>, change: &SubscriptionChange) -> Resumption {
        let mut plan = Resumption::default();
        let Some(resume) = resume else {
            return plan;
        };
        let failed = |reason| Recovery::failed(reason);
        let Some(history) = self.shared.hub.history() else {
            plan.outcomes = resume
                .since
                .iter()
                .map(|(name, _)| (name.clone(), failed(Incomplete::NoHistory)))
                .collect();
            return plan;
        };
        if resume
            .epoch
            .as_deref()
            .is_some_and(|e| e != history.epoch().as_str())
        {
            plan.outcomes = resume
                .since
                .iter()
                .map(|(name, _)| (name.clone(), failed(Incomplete::EpochChanged)))
                .collect();
            return plan;
        }
        let mut resumed = Vec::new();
        for (name, since) in &resume.since {
            match change.changed.iter().find(|c| c.as_str() == name) {
                Some(channel) => resumed.push((channel, *since)),
                None if self
                    .client
                    .subscriptions()
                    .iter()
                    .any(|c| c.as_str() == name) =>
                {
                    plan.outcomes
                        .insert(name.clone(), failed(Incomplete::AlreadySubscribed));
                }
                // Refused or not asked for: the reply's `rejected` says why.
                None => {}
            }
        }
        if resumed.is_empty() {
            return plan;
        }
        let locked = history.lock(resumed.iter().map(|(c, _)| *c));
        // Room in the queue for the replay, after the reply (snapshots widen the bounds by
        // their own size: they take none of it).
        let mut room = self.client.outbox().room().saturating_sub(1);
        for (channel, since) in resumed {
            let (recovery, frames) = locked
                .missed(channel, since)
                .expect("every resumed channel is locked");
            let recovery = if frames.len() > room {
                failed(Incomplete::TooMuchToReplay)
            } else {
                room -= frames.len();
                plan.replay.extend(frames);
                recovery
            };
            plan.outcomes.insert(channel.to_string(), recovery);
        }
        plan.locked = Some(locked);
        plan
    }

    /// Reads and answers client messages until the connection should end.
    async fn read_loop<S: AsyncRead + Unpin>(&mut self, reader: &mut MessageReader<S>) -> Ending {
        loop {
            let incoming = tokio::select! {
                next = reader.next() => match next {
                    Ok(incoming) => incoming,
                    Err(end) => return Ending::Read(end),
                },
                code = self.deadlines.passed() => return Ending::Read(ReadEnd::Violation(code)),
            };
            self.client.outbox().mark_alive();
            // Every message and control frame counts against the inbound limit (a message's
            // fragments are bounded by the reader); only the client's close does not.
            if !matches!(incoming, Incoming::Close) {
                match self.limit.take(tokio::time::Instant::now().into_std()) {
                    Verdict::Allow => {}
                    Verdict::Warn => {
                        self.shared.counters.hit(Limit::RateLimited);
                        self.client.send(rate_limited(self.limit.retry_after()));
                        continue;
                    }
                    Verdict::Close => {
                        return Ending::Read(ReadEnd::Violation(CloseCode::POLICY_VIOLATION))
                    }
                }
            }
            match incoming {
                // Closing (a refused token, shutdown): what the client says no longer matters.
                Incoming::Text(_) if self.client.outbox().is_closing() => {}
                Incoming::Text(mut payload) => {
                    self.shared.counters.messages_received.add(1);
                    self.deadlines.message_received();
                    match self.handle_message(&mut payload) {
                        Step::Done => {}
                        Step::Close(code) => return Ending::Refused(code),
                        Step::Subscribe(identity, list) => {
                            // Boxed: only cluster subscribes pay for this future's state.
                            Box::pin(self.listen_in_cluster(&identity, &list)).await;
                            self.subscribe(&identity, &list, SystemTime::now());
                        }
                    }
                }
                Incoming::Ping(payload) => {
                    self.client.send(frame::pong(&payload));
                }
                Incoming::Pong => {}
                Incoming::Close => return Ending::Read(ReadEnd::Violation(CloseCode::NORMAL)),
            }
        }
    }

    /// In a cluster, makes sure this node receives the channels a subscribe asks for before
    /// it subscribes the client: from then on nothing published anywhere is missed. A NATS
    /// failure is logged; the client is still subscribed to what this node publishes.
    async fn listen_in_cluster(&self, identity: &Identity, list: &ChannelList) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let wanted = list
            .channels
            .iter()
            .filter(|name| identity.may_subscribe(name))
            .filter_map(|name| Channel::new(name).ok());
        for channel in wanted {
            if let Err(e) = cluster.ensure_interest(&channel).await {
                tracing::warn!(conn = self.client.id(), %channel, error = %e, "cannot listen in the cluster");
            }
        }
        if let Some(resume) = &list.resume {
            backfill(cluster, resume, |name| {
                list.channels.iter().any(|c| c == name)
            })
            .await;
        }
    }

    /// Answers one text message, or says what is left to do.
    fn handle_message(&mut self, payload: &mut [u8]) -> Step {
        let now = SystemTime::now();
        let max_channels = self.shared.config.max_subscriptions_per_connection;
        let message = match message::parse(payload, max_channels) {
            Ok(message) => message,
            Err(e) => {
                self.client.send(error_reply(&e, now));
                return Step::Done;
            }
        };
        let Some(identity) = self.identity.clone() else {
            return self
                .before_auth(message, now)
                .map_or(Step::Done, Step::Close);
        };
        match message {
            ClientMessage::Subscribe(list) if self.shared.cluster.is_some() => {
                return Step::Subscribe(identity, list)
            }
            ClientMessage::Subscribe(list) => self.subscribe(&identity, &list, now),
            ClientMessage::Unsubscribe(list) => {
                let change = self
                    .client
                    .unsubscribe(list.channels.iter().map(String::as_str));
                self.client.send(subscription_reply(
                    "unsubscribe_response",
                    "unsubscribed",
                    self.client.subscriptions(),
                    &list,
                    &change,
                    Resumed::default(),
                    now,
                ));
            }
            ClientMessage::Ping { correlation_id } => self.pong(correlation_id.as_ref(), now),
            ClientMessage::Pong => {}
            ClientMessage::Auth {
                token,
                correlation_id,
            } => {
                return self
                    .authenticate(&token, correlation_id.as_ref())
                    .map_or(Step::Done, Step::Close)
            }
            ClientMessage::Publish {
                body,
                correlation_id,
            } => self.publish(&identity, &body, correlation_id.as_ref(), now),
        }
        Step::Done
    }

    /// Before authentication only `auth` and `ping` are answered.
    fn before_auth(&mut self, message: ClientMessage, now: SystemTime) -> Option<CloseCode> {
        let correlation_id = match message {
            ClientMessage::Auth {
                token,
                correlation_id,
            } => return self.authenticate(&token, correlation_id.as_ref()),
            ClientMessage::Ping { correlation_id } => {
                self.pong(correlation_id.as_ref(), now);
                return None;
            }
            ClientMessage::Pong => return None,
            ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list) => {
                list.correlation_id
            }
            ClientMessage::Publish { correlation_id, .. } => correlation_id,
        };
        let e = MessageError {
            code: "auth_required",
            message: "authenticate first: {\"type\":\"auth\",\"data\":{\"token\":…}}".to_owned(),
            correlation_id,
        };
        self.client.send(error_reply(&e, now));
        None
    }

    fn pong(&self, correlation_id: Option<&CorrelationId>, now: SystemTime) {
        self.client.send(event::encode_serialize(
            "pong",
            now,
            correlation_id.map(CorrelationId::as_raw),
            &serde_json::json!({ "server_time": unix_seconds(now) }),
        ));
    }

    /// Reply, then snapshots, then subscribe: the client sees the reply before any event
    /// the subscription lets through. Channels the grant does not allow are refused.
    fn subscribe(&mut self, identity: &Identity, list: &ChannelList, now: SystemTime) {
        let (allowed, forbidden): (Vec<&str>, Vec<&str>) = list
            .channels
            .iter()
            .map(String::as_str)
            .partition(|name| channel::validate(name).is_err() || identity.may_subscribe(name));
        let mut change = self.client.plan_subscribe(allowed);
        change.rejected.extend(forbidden.into_iter().map(|name| {
            Rejection::new(name, "forbidden", "your token does not allow this channel")
        }));
        let after: Vec<Channel> = self
            .client
            .subscriptions()
            .iter()
            .chain(&change.changed)
            .cloned()
            .collect();
        let resumption = self.plan_resume(list.resume.as_ref(), &change);
        let epoch = self.epoch();
        self.client.send(subscription_reply(
            "subscribe_response",
            "subscribed",
            &after,
            list,
            &change,
            Resumed {
                epoch: epoch.as_deref().map(String::as_str),
                recovery: list.resume.is_some().then_some(&resumption.outcomes),
            },
            now,
        ));
        self.complete_subscribe(&change, resumption);
    }

    /// The end of every subscribe, after its reply (or the welcome) is queued: the
    /// snapshots, the replay of what a resuming client missed, then the subscription
    /// itself, so nothing newer can arrive ahead of them. Releases the resumed logs.
    fn complete_subscribe(&mut self, change: &SubscriptionChange, resumption: Resumption) {
        self.count_rejections(&change.rejected);
        send_snapshots(&self.client, change, &self.shared.snapshots);
        for frame in resumption.replay {
            self.client.send(frame);
        }
        let late = self.client.apply_subscribe(change);
        drop(resumption.locked);
        self.report_late(late);
    }

    /// Publishes the client's events if its grant allows every one of them (all or none).
    fn publish(
        &mut self,
        identity: &Identity,
        body: &str,
        correlation_id: Option<&CorrelationId>,
        now: SystemTime,
    ) {
        let fail = |code: &'static str, message: String| MessageError {
            code,
            message,
            correlation_id: correlation_id.cloned(),
        };
        let events = match publish::parse(body.as_bytes()) {
            Ok(events) => events,
            Err(e) => {
                self.client.send(error_reply(&fail(e.code, e.message), now));
                return;
            }
        };
        if let Some((i, event)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| !identity.may_publish(e.channel()))
        {
            self.shared.counters.hit(Limit::ForbiddenPublish);
            let e = fail(
                "forbidden",
                format!(
                    "event {i}: your token does not allow publishing on {:?}; nothing was published",
                    event.channel().as_str()
                ),
            );
            self.client.send(error_reply(&e, now));
            return;
        }
        let Some(cluster) = &self.shared.cluster else {
            let delivery = self.shared.hub.publish_batch(&events, now);
            let reply = publish_reply(events.len(), &Published::Here(delivery));
            let id = correlation_id.map(CorrelationId::as_raw);
            self.client
                .send(event::encode_serialize("publish_response", now, id, &reply));
            return;
        };
        // To every node, through the stream; answered once it is stored. The client's own
        // subscriptions get the events the way every subscriber does.
        let cluster = cluster.clone();
        let outbox = self.client.outbox().clone();
        let correlation_id = correlation_id.cloned();
        tokio::spawn(async move {
            let published = cluster.publish_or_deliver_here(&events, now).await;
            let reply = publish_reply(events.len(), &published);
            let id = correlation_id.as_ref().map(CorrelationId::as_raw);
            outbox.push(event::encode_serialize("publish_response", now, id, &reply));
        });
    }

    fn count_rejections(&self, rejected: &[Rejection]) {
        self.shared
            .counters
            .subscriptions_failed
            .fetch_add(rejected.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for r in rejected {
            if let Some(limit) = Limit::of_rejection(r.code) {
                self.shared.counters.hit(limit);
            }
        }
    }

    /// Channels that filled up between the reply and the subscription (rare): an `error`
    /// for each, so the client knows the subscription did not take.
    fn report_late(&self, late: Vec<Rejection>) {
        self.count_rejections(&late);
        for r in late {
            let e = MessageError {
                code: r.code,
                message: format!("not subscribed to {:?}: {}", r.channel, r.reason),
                correlation_id: None,
            };
            self.client.send(error_reply(&e, SystemTime::now()));
        }
    }
}

/// Queues the current snapshot of every channel in `change` (before the subscription is
/// applied, so that nothing newer can arrive ahead of it).
fn send_snapshots(client: &Client, change: &SubscriptionChange, snapshots: &SnapshotCache) {
    for channel in &change.changed {
        if let Some(snapshot) = snapshots.get(channel) {
            // Whole: hundreds of agents are more than the queue's frame bound.
            client.outbox().push_whole(&snapshot.frames);
        }
    }
}

/// The `error` sent for the first message over the inbound limit.
fn rate_limited(retry_after: std::time::Duration) -> Bytes {
    event::encode_serialize(
        "error",
        SystemTime::now(),
        None,
        &serde_json::json!({
            "code": "rate_limited",
            "message": "too many messages; this one was ignored, and more now close the connection (1008)",
            "retry_after_ms": retry_after.as_millis() as u64,
        }),
    )
}

/// A subscribe's resumed channels: what was decided and the locks held until it applies.
#[derive(Default)]
struct Resumption {
    /// Per channel named in `since`, how its recovery went.
    outcomes: BTreeMap<String, Recovery>,
    /// What the client missed, oldest first, channel by channel.
    replay: Vec<Bytes>,
    /// The resumed channels' logs, locked.
    locked: Option<Locked>,
}

/// The recovery part of a `subscribe_response`.
#[derive(Default, Serialize)]
struct Resumed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery: Option<&'a BTreeMap<String, Recovery>>,
}

#[allow(clippy::too_many_arguments)]
fn subscription_reply(
    kind: &str,
    changed_key: &'static str,
    subscriptions: &[Channel],
    request: &ChannelList,
    change: &SubscriptionChange,
    resumed: Resumed<'_>,
    now: SystemTime,
) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        success: bool,
        #[serde(flatten)]
        changed: BTreeMap<&'static str, &'a [Channel]>,
        subscriptions: &'a [Channel],
        rejected: &'a [Rejection],
        /// Present when `rejected` lists only the first of them.
        #[serde(skip_serializing_if = "Option::is_none")]
        rejected_total: Option<usize>,
        #[serde(flatten)]
        resumed: Resumed<'a>,
    }
    let id = request.correlation_id.as_ref().map(CorrelationId::as_raw);
    let rejected = &change.rejected;
    let listed = &rejected[..rejected.len().min(MAX_LISTED_REJECTIONS)];
    event::encode_serialize(
        kind,
        now,
        id,
        &Reply {
            success: rejected.is_empty(),
            changed: [(changed_key, change.changed.as_slice())].into(),
            subscriptions,
            rejected: listed,
            rejected_total: (listed.len() < rejected.len()).then_some(rejected.len()),
            resumed,
        },
    )
}

/// The `publish_response` data: with the offsets when the cluster's stream stored the
/// events (every node delivers them), else how many client queues they went to here.
fn publish_reply(accepted: usize, published: &Published) -> serde_json::Value {
    match published {
        Published::Stored(offsets) => serde_json::json!({
            "success": true,
            "accepted": accepted,
            "offsets": offsets,
            "delivered": null,
        }),
        Published::Here(delivery) => serde_json::json!({
            "success": true,
            "accepted": accepted,
            "delivered": delivery.queued,
        }),
    }
}

fn error_reply(e: &MessageError, now: SystemTime) -> Bytes {
    event::encode_serialize(
        "error",
        now,
        e.correlation_id.as_ref().map(CorrelationId::as_raw),
        &serde_json::json!({ "code": e.code, "message": e.message }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "a-test-secret-that-is-32-bytes!!";

    fn json(frame: &Bytes) -> serde_json::Value {
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    fn replies(client: &Client) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        client.outbox().drain_into(&mut out, usize::MAX);
        out.iter().map(json).collect()
    }

    fn session(shared: &Shared) -> Session<'_> {
        Session {
            shared,
            address: [127, 0, 0, 1].into(),
            client: shared.hub.connect().unwrap(),
            identity: None,
            limit: TokenBucket::new(100, 10, std::time::Instant::now()),
            deadlines: Deadlines::default(),
            resume: None,
        }
    }

    fn send(session: &mut Session<'_>, message: &str) -> Option<CloseCode> {
        match session.handle_message(&mut message.as_bytes().to_vec()) {
            Step::Done => None,
            Step::Close(code) => Some(code),
            Step::Subscribe(..) => unreachable!("no cluster in these tests"),
        }
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    fn in_an_hour() -> u64 {
        unix_seconds(SystemTime::now()) + 3600
    }

    fn with_jwt() -> Shared {
        let mut config = Config::default();
        config.auth.jwt_secret = Some(SECRET.to_owned());
        Shared::new(config).unwrap()
    }

    #[tokio::test]
    async fn welcome_comes_first_and_lists_the_defaults() {
        let shared = Shared::new(Config::default()).unwrap();
        let mut s = session(&shared);
        assert_eq!(s.start(None), None);
        let got = replies(&s.client);
        assert_eq!(got[0]["type"], "notification");
        assert_eq!(got[0]["data"]["message"], WELCOME_MESSAGE);
        assert_eq!(got[0]["data"]["subscriptions"].as_array().unwrap().len(), 8);
        assert_eq!(s.client.subscriptions().len(), 8);
    }

    #[tokio::test]
    async fn subscribe_reply_lists_changes_rejections_and_the_id() {
        let shared = Shared::new(Config::default()).unwrap();
        let mut s = session(&shared);
        s.identity = Some(Identity::anonymous());
        send(
            &mut s,
            r#"{"type":"subscribe","correlation_id":"c1","data":{"types":["a","b c"]}}"#,
        );
        let reply = &replies(&s.client)[0];
        assert_eq!(reply["type"], "subscribe_response");
        assert_eq!(reply["correlation_id"], "c1");
        assert_eq!(reply["data"]["success"], false);
        assert_eq!(reply["data"]["subscribed"], serde_json::json!(["a"]));
        assert_eq!(reply["data"]["subscriptions"], serde_json::json!(["a"]));
        assert_eq!(reply["data"]["rejected"][0]["channel"], "b c");
        assert_eq!(reply["data"]["rejected"][0]["code"], "invalid_channel");
    }

    #[tokio::test]
    async fn a_huge_refused_subscribe_gets_a_small_summarised_reply() {
        // An operator's generous limit, so that the request is read rather than refused
        // whole (`too_many_channels`, below the default limit).
        let shared = Shared::new(Config {
            max_subscriptions_per_connection: 100_000,
            ..Config::default()
        })
        .unwrap();
        let mut s = session(&shared);
        s.identity = Some(Identity::anonymous());
        // 16,000 invalid names, and one as long as a whole message.
        let mut names: Vec<String> = (0..16_000).map(|i| format!("b{i}!")).collect();
        names.push("x!".repeat(30_000));
        let request =
            serde_json::json!({"type": "unsubscribe", "data": {"events": names}}).to_string();
        for kind in ["subscribe", "unsubscribe"] {
            let request = request.replace("unsubscribe", kind);
            send(&mut s, &request);
            let mut frames = Vec::new();
            s.client.outbox().drain_into(&mut frames, usize::MAX);
            assert_eq!(frames.len(), 1);
            assert!(
                frames[0].len() < 4096,
                "a {} byte request got a {} byte reply",
                request.len(),
                frames[0].len()
            );
            let reply = json(&frames[0]);
            let rejected = reply["data"]["rejected"].as_array().unwrap();
            assert_eq!(rejected.len(), MAX_LISTED_REJECTIONS);
            assert_eq!(rejected[0]["channel"], "b0!");
            assert_eq!(reply["data"]["rejected_total"], 16_001);
        }
        assert_eq!(
            shared
                .counters
                .subscriptions_failed
                .load(std::sync::atomic::Ordering::Relaxed),
            16_001
        );
        // A reply that lists every refusal says nothing more.
        send(&mut s, r#"{"type":"subscribe","data":{"events":["a b"]}}"#);
        let reply = &replies(&s.client)[0];
        assert_eq!(reply["data"]["rejected"].as_array().unwrap().len(), 1);
        assert!(reply["data"].get("rejected_total").is_none());
    }

    #[tokio::test]
    async fn a_list_longer_than_the_allowance_is_refused_in_a_small_error() {
        let shared = Shared::new(Config::default()).unwrap();
        let mut s = session(&shared);
        s.identity = Some(Identity::anonymous());
        let request =
            serde_json::json!({"type": "subscribe", "data": {"events": vec!["!"; 16_000]}})
                .to_string();
        send(&mut s, &request);
        let mut frames = Vec::new();
        s.client.outbox().drain_into(&mut frames, usize::MAX);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].len() < 512, "{} bytes", frames[0].len());
        assert_eq!(json(&frames[0])["data"]["code"], "too_many_channels");
    }

    #[tokio::test]
    async fn a_required_token_holds_everything_back_until_auth() {
        let shared = with_jwt();
        let mut s = session(&shared);
        assert_eq!(s.start(None), None);
        assert!(replies(&s.client).is_empty(), "nothing before auth");
        send(
            &mut s,
            r#"{"type":"subscribe","data":{"events":["x"]},"correlation_id":3}"#,
        );
        let got = replies(&s.client);
        assert_eq!(got[0]["data"]["code"], "auth_required");
        assert_eq!(got[0]["correlation_id"], 3);
        assert!(s.client.subscriptions().is_empty());

        let t = token(serde_json::json!({
            "sub": "alice", "exp": in_an_hour(), "subscribe": ["notification", "agent.*"],
        }));
        let auth = format!(r#"{{"type":"auth","data":{{"token":"{t}"}},"correlation_id":"a"}}"#);
        assert_eq!(send(&mut s, &auth), None);
        let got = replies(&s.client);
        assert_eq!(got[0]["type"], "auth_response");
        assert_eq!(got[0]["correlation_id"], "a");
        assert_eq!(got[0]["data"]["success"], true);
        assert_eq!(got[0]["data"]["subject"], "alice");
        assert_eq!(got[1]["data"]["message"], WELCOME_MESSAGE);
        // Only the defaults the token allows.
        assert_eq!(
            got[1]["data"]["subscriptions"],
            serde_json::json!(["agent.status", "notification"])
        );
    }

    #[tokio::test]
    async fn denied_channels_are_listed_and_the_rest_subscribed() {
        let shared = with_jwt();
        let mut s = session(&shared);
        let t =
            token(serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["orders.*"]}));
        assert_eq!(s.start(Some(t.into())), None);
        replies(&s.client);
        send(
            &mut s,
            r#"{"type":"subscribe","data":{"channels":["orders.eu","billing","bad name"]}}"#,
        );
        let reply = &replies(&s.client)[0];
        assert_eq!(
            reply["data"]["subscribed"],
            serde_json::json!(["orders.eu"])
        );
        let rejected = reply["data"]["rejected"].as_array().unwrap();
        let codes: Vec<_> = rejected
            .iter()
            .map(|r| (r["channel"].as_str().unwrap(), r["code"].as_str().unwrap()))
            .collect();
        assert_eq!(
            codes,
            [("bad name", "invalid_channel"), ("billing", "forbidden")]
        );
        assert_eq!(shared.counters.get(Limit::ForbiddenSubscribe), 1);
    }

    #[tokio::test]
    async fn socket_publish_needs_the_grant_for_every_event() {
        let shared = with_jwt();
        let mut s = session(&shared);
        let t = token(
            serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["chat.*"], "publish": ["chat.a"]}),
        );
        s.start(Some(t.into()));
        send(
            &mut s,
            r#"{"type":"subscribe","data":{"channels":["chat.a","chat.b"]}}"#,
        );
        replies(&s.client);

        send(
            &mut s,
            r#"{"type":"publish","data":[{"type":"chat.a"},{"type":"chat.b"}],"correlation_id":9}"#,
        );
        let got = replies(&s.client);
        assert_eq!(got.len(), 1, "nothing was published: {got:?}");
        assert_eq!(got[0]["data"]["code"], "forbidden");
        assert_eq!(got[0]["correlation_id"], 9);

        send(
            &mut s,
            r#"{"type":"publish","data":{"type":"chat.a","data":{"text":"hi"}}}"#,
        );
        let got = replies(&s.client);
        assert_eq!(got[0]["type"], "chat.a");
        assert_eq!(got[0]["data"]["text"], "hi");
        assert_eq!(got[1]["type"], "publish_response");
        assert_eq!(got[1]["data"]["accepted"], 1);
    }

    #[tokio::test]
    async fn bad_tokens_are_answered_then_closed_with_their_code() {
        let shared = with_jwt();
        let mut s = session(&shared);
        let expired = token(serde_json::json!({"sub": "a", "exp": 1_000_000_000}));
        assert_eq!(
            s.start(Some(expired.into())),
            Some(CloseCode::TOKEN_EXPIRED)
        );
        let got = replies(&s.client);
        assert_eq!(got[0]["data"]["error"]["code"], "token_expired");
        assert!(s.client.subscriptions().is_empty());

        let mut s = session(&shared);
        assert_eq!(
            s.start(Some("garbage".into())),
            Some(CloseCode::AUTH_FAILED)
        );
        assert_eq!(
            replies(&s.client)[0]["data"]["error"]["code"],
            "invalid_token"
        );
    }

    #[tokio::test]
    async fn a_refresh_keeps_the_subject_and_drops_what_is_no_longer_allowed() {
        let shared = with_jwt();
        let mut s = session(&shared);
        let wide = token(serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["*"]}));
        s.start(Some(wide.into()));
        send(
            &mut s,
            r#"{"type":"subscribe","data":{"channels":["secret"]}}"#,
        );
        replies(&s.client);

        let other = token(serde_json::json!({"sub": "b", "exp": in_an_hour()}));
        send(
            &mut s,
            &format!(r#"{{"type":"auth","data":{{"token":"{other}"}}}}"#),
        );
        assert_eq!(
            replies(&s.client)[0]["data"]["code"],
            "auth_subject_changed"
        );

        let narrow = token(
            serde_json::json!({"sub": "a", "exp": in_an_hour(), "subscribe": ["notification"]}),
        );
        send(
            &mut s,
            &format!(r#"{{"type":"auth","data":{{"token":"{narrow}"}}}}"#),
        );
        let got = replies(&s.client);
        assert_eq!(got[0]["data"]["success"], true);
        let dropped = got[0]["data"]["unsubscribed"].as_array().unwrap();
        assert!(dropped.contains(&"secret".into()));
        assert_eq!(s.client.subscriptions().len(), 1);
        assert_eq!(got.len(), 1, "no second welcome");
    }
}
