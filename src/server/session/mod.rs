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

mod auth;
mod command;
mod dormant;
mod presence;
mod publish;
mod reply;
mod request;
mod subscribe;
pub(crate) use subscribe::snapshot_frames;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::SystemTime;

use futures_util::future::{BoxFuture, Either};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use self::reply::rate_limited;
use super::admission::Ticket;
use super::analytics::ClientKey;
use super::counters::Limit;
use super::deadline::Deadlines;
use super::reader::{Incoming, MessageReader, ReadEnd, Readiness};
use super::writer::{self, WriteFailed, CLOSE_LINGER};
use super::Shared;
use crate::auth::permissions::Identity;
use crate::broker::Completion;
use crate::compression::negotiate::Window;
use crate::dialect::{Dialect, Encoding, ServerMessage};
use crate::engine::client::Client;
use crate::engine::outbox::Closing;
use crate::event::unix_seconds;
use crate::frame;
use crate::hooks::Identified;
use crate::hooks::{CheckedPublish, Headers, Refused};
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{ChannelList, ClientMessage, CorrelationId, MessageError, Resume};
use crate::protocol::rate::{TokenBucket, Verdict};

/// Most refused channels a `subscribe_response` or `unsubscribe_response` lists; past it,
/// `rejected_total` gives the count. A reply stays small whatever the request named.
pub(crate) const MAX_LISTED_REJECTIONS: usize = 16;

/// The welcome text SigmaVault clients expect.
pub const WELCOME_MESSAGE: &str = "Welcome to SigmaVault WebSocket";

/// What a client gave with its upgrade request.
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    /// The wire protocol it speaks, from the path it upgraded on.
    pub(crate) dialect: Dialect,
    /// Whether it negotiated permessage-deflate, and with which window: its broadcast
    /// frames are sent compressed, and its compressed messages are inflated.
    pub(crate) deflate: Option<Window>,
    /// Its credential (`?token=` or `Authorization: Bearer`), if any.
    pub(crate) token: Option<Box<str>>,
    /// The headers the connect hook is shown (`hooks.connect_headers`), those it sent.
    pub(crate) headers: Headers,
    /// Where it left off on the channels it gets on connect (`?since=…&epoch=…`).
    pub(crate) resume: Option<Box<Resume>>,
    /// What the server says first, before anything else (Socket.IO's Engine.IO open
    /// packet), if the dialect says anything first.
    pub(crate) greeting: Option<bytes::Bytes>,
    /// Its place among the admitted connections, held until it ends, if the caller does
    /// not hold it.
    pub(crate) place: Option<Ticket>,
}

/// Serves one upgraded connection from `address` (the client's, behind trusted proxies)
/// until it closes.
///
/// Not an `async fn`: the client's slot is taken here, at once, and the future returned is
/// [`serve`]'s alone. An `async fn` would keep its own arguments beside `serve`'s for the
/// connection's life, and every byte of this future is paid per connection.
pub(crate) fn run<R, W>(
    shared: Arc<Shared>,
    read: R,
    mut write: W,
    address: IpAddr,
    mut handshake: Box<Handshake>,
) -> impl Future<Output = ()>
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let encoding = Encoding {
        dialect: handshake.dialect,
        deflate: handshake.deflate,
    };
    let Ok(client) = shared.hub.connect_with(encoding) else {
        tracing::warn!(%address, "no free client slot; closing");
        shared.counters.closed(CloseCode::INTERNAL_ERROR);
        // Boxed: this rare path's state would otherwise be part of every connection's.
        return Either::Left(Box::pin(async move {
            let _ = writer::write_frames(
                &mut write,
                &mut [frame::close(CloseCode::INTERNAL_ERROR)],
                None,
            )
            .await;
        }));
    };
    let span = conn_span(client.id(), address);
    let config = &shared.config;
    let session = Session {
        limit: TokenBucket::new(
            config.max_inbound_per_minute,
            config.inbound_burst,
            crate::clock::now(),
        ),
        deadlines: Deadlines::new(config.idle_timeout),
        resume: handshake.resume.take(),
        shared: shared.clone(),
        address,
        client,
        identity: None,
        presented: None,
    };
    let reader = MessageReader::new(read, config.max_message_size, encoding.is_deflated());
    let conn = Conn {
        session,
        reader,
        write,
        unsent: Vec::new(),
        started: crate::clock::now(),
        dormant_writes: dormant::Writes::default(),
        _place: handshake.place.take(),
    };
    Either::Right(serve(conn, handshake).instrument(span))
}

/// A span over the connection's life: every line logged for it carries its id and peer.
/// It is a DEBUG span (target `sigmahub::conn`): an open span costs ~1.2 KB per
/// connection in the subscriber's registry (measured at 19,000 idle connections), so it
/// is kept only when asked for (`--log info,sigmahub::conn=debug`). The INFO connect and
/// disconnect lines carry the id and peer themselves.
fn conn_span(client: u64, address: IpAddr) -> tracing::Span {
    tracing::debug_span!(target: "sigmahub::conn", "conn", id = client, peer = %address)
}

/// [`run`] once the client has its slot: greets and authenticates it, then [`drive`]s it.
async fn serve<R, W>(mut conn: Conn<R, W>, mut handshake: Box<Handshake>)
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session = &mut conn.session;
    let shared = &*session.shared.clone();
    let outbox = session.client.outbox().clone();
    if let Some(greeting) = handshake.greeting.take() {
        session.client.send(greeting);
    }
    if let Some(resume) = &session.resume {
        // Resuming the channels it gets on connect: the broker brings what this node lacks.
        let mut resumed = resume
            .since
            .iter()
            .filter(|(name, _)| shared.config.default_subscriptions.contains(name))
            .filter_map(|(name, _)| Channel::new(name).ok());
        if let Completion::Pending(listening) = shared.broker.listen(&mut resumed, Some(resume)) {
            listening.await;
        }
    }
    let headers = std::mem::take(&mut handshake.headers);
    if let Some(code) = session.start(handshake.token.take(), headers).await {
        // A refused token: the writer sends the `auth_response`, then closes.
        outbox.close(Closing::AfterFlush(code));
    }
    // Not held while the connection is open.
    drop(handshake);
    if shared.shutdown.is_cancelled() {
        // Upgraded while the server was shutting down, possibly after `close_all` ran.
        outbox.close(Closing::AfterFlush(CloseCode::GOING_AWAY));
    }
    // Most clients say nothing more after the welcome: let it rest once that is written,
    // rather than after the sweep's second of silence.
    outbox.ask_to_rest();
    drop(outbox);
    drive(conn).await;
}

/// Serves a connection until it ends or goes dormant.
async fn drive<R, W>(mut conn: Conn<R, W>)
where
    R: AsyncRead + Readiness + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    loop {
        match conn.active().await {
            Activity::AtRest => match dormant::rest(conn) {
                Ok(()) => return,
                // It cannot go dormant, or something came in meanwhile: serve on.
                Err(back) => conn = back,
            },
            Activity::Ended(code, reason) => return conn.ended(code, reason),
        }
    }
}

/// What a connection holds from its first task to its end, dormant or not.
pub(crate) struct Conn<R, W> {
    session: Session,
    reader: MessageReader<R>,
    write: W,
    /// What the writer writes: empty between writes, except for what a dormant
    /// connection's write left when the socket was full, which the writer sends first.
    unsent: Vec<bytes::Bytes>,
    /// When it was accepted.
    started: std::time::Instant,
    /// Writes made while dormant, second by second; see [`dormant`].
    dormant_writes: dormant::Writes,
    /// Its place among the admitted connections, if the caller does not hold it.
    _place: Option<Ticket>,
}

/// How [`Conn::active`] ended.
enum Activity {
    /// Asked to go dormant, both halves were between frames: dropped, they lose nothing.
    AtRest,
    /// The connection ended: with the close code sent or received, for this reason.
    Ended(Option<CloseCode>, Disconnect),
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Readiness + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Runs the reader and the writer until the connection ends, or until it is asked to
    /// go dormant while both are between frames.
    async fn active(&mut self) -> Activity {
        let shared = &*self.session.shared.clone();
        let outbox = self.session.client.outbox().clone();
        let (reader_at_rest, writer_at_rest) = (AtomicBool::new(false), AtomicBool::new(false));
        // The reason of an operator's disconnect, from the reader to the close frame.
        let farewell = OnceLock::new();
        let read_half = self
            .session
            .read_loop(&mut self.reader, &reader_at_rest, &farewell);
        let write_half = writer::run(
            &outbox,
            &mut self.write,
            shared,
            &mut self.unsent,
            &writer_at_rest,
            &farewell,
        );
        tokio::pin!(read_half, write_half);
        let first = std::future::poll_fn(|cx| {
            if let Poll::Ready(written) = write_half.as_mut().poll(cx) {
                return Poll::Ready(Some(Either::Left(written)));
            }
            if let Poll::Ready(end) = read_half.as_mut().poll(cx) {
                return Poll::Ready(Some(Either::Right(end)));
            }
            // Both just returned pending: their flags say where they wait. The ask came
            // with a wake-up of the writer, which is this task.
            let at_rest =
                || reader_at_rest.load(Ordering::Relaxed) && writer_at_rest.load(Ordering::Relaxed);
            if outbox.take_rest_ask() && at_rest() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match first {
            None => Activity::AtRest,
            Some(Either::Left(written)) => {
                // Our close frame is out (or the socket failed): give the client a moment
                // to answer it, so the socket is not reset under the close frame.
                let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut read_half)).await;
                match written {
                    Ok(code) => Activity::Ended(Some(code), Disconnect::ClosedByServer),
                    // Closed for a reason the client could not be told (it reads nothing):
                    // still a close for that reason, counted as such.
                    Err(WriteFailed {
                        closing: Some(code),
                        error,
                    }) => Activity::Ended(Some(code), Disconnect::CloseUnsent(error.kind())),
                    Err(WriteFailed {
                        closing: None,
                        error,
                    }) => Activity::Ended(None, Disconnect::WriteFailed(error.kind())),
                }
            }
            Some(Either::Right(end)) => {
                outbox.close(match end {
                    Ending::Read(end) => {
                        Closing::Now(end.close_code().unwrap_or(CloseCode::NORMAL))
                    }
                    Ending::Refused(code) | Ending::Dismissed(code) => Closing::AfterFlush(code),
                });
                // Only `end` lives across this wait: every byte here is paid per connection.
                let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, &mut write_half)).await;
                match end {
                    Ending::Read(ReadEnd::Gone) => {
                        Activity::Ended(None, Disconnect::ConnectionLost)
                    }
                    Ending::Read(ReadEnd::Violation(code))
                        if code.code == CloseCode::NORMAL.code =>
                    {
                        Activity::Ended(Some(code), Disconnect::ClientClosed)
                    }
                    Ending::Read(end @ (ReadEnd::Violation(_) | ReadEnd::Inflate(_))) => {
                        Activity::Ended(end.close_code(), Disconnect::Violation)
                    }
                    Ending::Refused(code) => Activity::Ended(Some(code), Disconnect::Refused),
                    Ending::Dismissed(code) => Activity::Ended(Some(code), Disconnect::Dismissed),
                }
            }
        }
    }

    /// Counts and logs the end of the connection, which closed with `code`.
    fn ended(self, code: Option<CloseCode>, reason: Disconnect) {
        let Self {
            session, started, ..
        } = self;
        let shared = &*session.shared;
        match (code, reason) {
            // Whatever code the operator chose.
            (_, Disconnect::Dismissed) => shared.counters.closed(CloseCode::DISCONNECTED),
            (Some(code), _) => shared.counters.closed(code),
            (None, _) => {}
        }
        let duration = crate::clock::now().saturating_duration_since(started);
        session.notify(
            crate::hooks::webhook::Notice::Disconnect,
            Some(reason.as_str()),
            code.map(|c| c.code),
        );
        let address = session.address;
        let key = session
            .identity
            .as_deref()
            .map(|identity| ClientKey::of(identity, address));
        shared.analytics.left(key, duration, crate::clock::now());
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
    /// An operator disconnected it (the control API).
    Dismissed,
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
            Self::Dismissed => "disconnected_by_operator",
        }
    }
}

/// What is left to do after [`Session::handle_message`].
enum Step {
    /// Nothing: the message was answered.
    Done,
    /// Close the connection with this code once the reply is out (refused credentials).
    Close(CloseCode),
    /// The client said it leaves: close normally, as if it had sent a close frame.
    Leave,
    /// A subscribe the application is asked about, or whose channels the broker is still
    /// readying (a cluster listening in NATS): wait for both, then subscribe, but to none
    /// of the channels the application refused.
    Subscribe(Arc<Identity>, ChannelList, BoxFuture<'static, Vec<Refused>>),
    /// A publish the application is deciding on: wait for it, then publish (or refuse).
    Publish(BoxFuture<'static, CheckedPublish>, Option<CorrelationId>),
    /// Credentials the application is being asked about: wait for its answer, then
    /// answer the client as the credentials came.
    Identify(BoxFuture<'static, Identified>, Credentials),
    /// A presence request whose members are being gathered (from every node): wait for
    /// them, then answer.
    Presence(
        Option<CorrelationId>,
        BoxFuture<'static, super::control::PresenceList>,
    ),
}

/// How credentials came, to answer them the same way.
enum Credentials {
    /// An `auth` message, with its correlation id.
    Auth(Option<CorrelationId>),
    /// A Socket.IO namespace connect, with its namespace.
    Connect(Option<CorrelationId>),
}

/// Why the reading side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The reader stopped: the peer left or broke a rule (or a deadline passed).
    Read(ReadEnd),
    /// Credentials were refused: close with this code once the reply has been sent.
    Refused(CloseCode),
    /// The control API disconnected it: close with this code (and the reason it gave) once
    /// what is queued has been sent.
    Dismissed(CloseCode),
}

/// One connection's state on the reading side.
struct Session {
    shared: Arc<Shared>,
    /// The client's address, for the failed-credentials backoff.
    address: IpAddr,
    client: Client,
    /// `None` until the client has authenticated (only when a token is required).
    identity: Option<Arc<Identity>>,
    limit: TokenBucket,
    deadlines: Deadlines,
    /// The upgrade's `since`, until the welcome uses it.
    resume: Option<Box<Resume>>,
    /// What the upgrade brought for the connect hook, while the connection may need it.
    presented: Option<Box<Presented>>,
}

/// What a client's upgrade brought for the application's connect hook.
#[derive(Debug, Default)]
struct Presented {
    /// The upgrade's token, until a connect in band (Socket.IO) uses it.
    token: Option<Box<str>>,
    /// The headers `hooks.connect_headers` names, shown with every connect call.
    headers: Headers,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.left(self.client.subscriptions());
        if let Some(identity) = self.identity.as_deref().filter(|i| auth::is_named(i)) {
            self.shared
                .users
                .remove(&identity.subject, self.client.id());
        }
    }
}

impl Session {
    /// Reads and answers client messages, and carries out the control API's commands,
    /// until the connection should end. `at_rest` as [`MessageReader::next`] sets it;
    /// `farewell` gets the reason of a disconnect command.
    async fn read_loop<S: AsyncRead + Unpin>(
        &mut self,
        reader: &mut MessageReader<S>,
        at_rest: &AtomicBool,
        farewell: &OnceLock<Box<str>>,
    ) -> Ending {
        let outbox = self.client.outbox().clone();
        loop {
            let incoming = tokio::select! {
                () = std::future::poll_fn(|cx| outbox.poll_commands(cx)) => {
                    match self.obey(farewell).await {
                        Some(ending) => return ending,
                        None => continue,
                    }
                }
                next = reader.next(at_rest) => match next {
                    Ok(incoming) => incoming,
                    Err(end) => {
                        if let ReadEnd::Inflate(e) = end {
                            self.shared.counters.hit(Limit::refused_inflate(e));
                        }
                        return Ending::Read(end);
                    }
                },
                code = self.deadlines.passed() => return Ending::Read(ReadEnd::Violation(code)),
            };
            self.client.outbox().mark_alive();
            // Every message and control frame counts against the inbound limit (a message's
            // fragments are bounded by the reader); only the client's close does not.
            if !matches!(incoming, Incoming::Close) {
                match self.limit.take(crate::clock::now()) {
                    Verdict::Allow => {}
                    Verdict::Warn => {
                        self.shared.counters.hit(Limit::RateLimited);
                        self.client.send(rate_limited(
                            self.client.dialect(),
                            self.limit.retry_after(),
                        ));
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
                        Step::Leave => return Ending::Read(ReadEnd::Violation(CloseCode::NORMAL)),
                        Step::Subscribe(identity, list, readying) => {
                            let refused = readying.await;
                            self.subscribe(&identity, &list, &refused, SystemTime::now());
                        }
                        Step::Publish(checking, correlation_id) => {
                            let checked = checking.await;
                            self.publish_checked(checked, correlation_id, SystemTime::now());
                        }
                        Step::Identify(identifying, credentials) => {
                            let identified = identifying.await;
                            let refused = match credentials {
                                Credentials::Auth(id) => {
                                    self.authenticated(identified, id.as_ref())
                                }
                                Credentials::Connect(id) => self.connected(identified, id.as_ref()),
                            };
                            if let Some(code) = refused {
                                return Ending::Refused(code);
                            }
                        }
                        Step::Presence(correlation_id, gathering) => {
                            let list = gathering.await;
                            self.say(
                                ServerMessage::PresenceResponse,
                                correlation_id.as_ref(),
                                SystemTime::now(),
                                &list,
                            );
                        }
                    }
                }
                Incoming::Ping(payload) => {
                    self.client.send(frame::pong(&payload));
                }
                Incoming::Pong => {}
                // Socket.IO sends a binary packet's attachments after it; the packet was
                // refused with an error, its attachments are dropped. Elsewhere binary data
                // is not part of the protocol.
                Incoming::Binary if self.client.dialect() == Dialect::SocketIo => {}
                Incoming::Binary => {
                    return Ending::Read(ReadEnd::Violation(CloseCode::UNSUPPORTED_DATA))
                }
                Incoming::Close => return Ending::Read(ReadEnd::Violation(CloseCode::NORMAL)),
            }
        }
    }

    /// Answers one text message, or says what is left to do.
    fn handle_message(&mut self, payload: &mut [u8]) -> Step {
        let now = SystemTime::now();
        let max_channels = self.shared.config.max_subscriptions_per_connection;
        let message = match self.client.dialect().decode(payload, max_channels) {
            Ok(message) => message,
            Err(e) => {
                self.refuse(&e, now);
                return Step::Done;
            }
        };
        // Answered alike before and after authentication.
        let message = match message {
            ClientMessage::Auth {
                token,
                correlation_id,
            } => {
                return match self.identify(Some(token)) {
                    Completion::Ready(identified) => self
                        .authenticated(identified, correlation_id.as_ref())
                        .map_or(Step::Done, Step::Close),
                    Completion::Pending(identifying) => {
                        Step::Identify(identifying, Credentials::Auth(correlation_id))
                    }
                }
            }
            ClientMessage::Connect {
                token,
                correlation_id,
            } => {
                return match self.connect(token) {
                    Completion::Ready(identified) => self
                        .connected(identified, correlation_id.as_ref())
                        .map_or(Step::Done, Step::Close),
                    Completion::Pending(identifying) => {
                        Step::Identify(identifying, Credentials::Connect(correlation_id))
                    }
                }
            }
            ClientMessage::Disconnect { namespace: None } => return Step::Leave,
            ClientMessage::Ping { correlation_id } => {
                self.pong(correlation_id.as_ref(), now);
                return Step::Done;
            }
            ClientMessage::Pong | ClientMessage::Ack => return Step::Done,
            other => other,
        };
        let Some(identity) = self.identity.clone() else {
            self.before_auth(message, now);
            return Step::Done;
        };
        match message {
            ClientMessage::Auth { .. }
            | ClientMessage::Connect { .. }
            | ClientMessage::Disconnect { namespace: None }
            | ClientMessage::Ping { .. }
            | ClientMessage::Pong
            | ClientMessage::Ack => {} // answered above
            ClientMessage::Disconnect {
                namespace: Some(namespace),
            } => {
                // Leaving a namespace leaves its channels, quietly: the client asked for
                // nothing more.
                let prefix = format!("{namespace}/");
                let inside: Vec<String> = self
                    .client
                    .subscriptions()
                    .iter()
                    .filter(|c| c.starts_with(&prefix))
                    .map(|c| c.to_string())
                    .collect();
                self.leave(inside.iter().map(String::as_str));
            }
            ClientMessage::Subscribe(list) => return self.check_subscribe(identity, list, now),
            ClientMessage::Unsubscribe(list) => self.unsubscribe(&list, now),
            ClientMessage::Request {
                method,
                data,
                correlation_id,
            } => self.request(&identity, method, data, correlation_id, now),
            ClientMessage::Publish {
                body,
                correlation_id,
            } => return self.publish(&identity, &body, correlation_id, now),
            ClientMessage::Presence {
                channel,
                correlation_id,
            } => return self.presence(&identity, &channel, correlation_id, now),
        }
        Step::Done
    }

    /// Before authentication only `auth`, a connect and `ping` are answered (by
    /// [`handle_message`](Self::handle_message)); the rest is refused.
    fn before_auth(&mut self, message: ClientMessage, now: SystemTime) {
        let correlation_id = match message {
            ClientMessage::Subscribe(list) | ClientMessage::Unsubscribe(list) => {
                list.correlation_id
            }
            ClientMessage::Publish { correlation_id, .. }
            | ClientMessage::Presence { correlation_id, .. }
            | ClientMessage::Request { correlation_id, .. } => correlation_id,
            // Leaving a namespace it never joined: nothing to do.
            _ => return,
        };
        let e = MessageError {
            code: ErrorCode::AuthRequired,
            message: "authenticate first: {\"type\":\"auth\",\"data\":{\"token\":…}}".to_owned(),
            correlation_id,
        };
        self.refuse(&e, now);
    }

    fn pong(&self, correlation_id: Option<&CorrelationId>, now: SystemTime) {
        let data = serde_json::json!({ "server_time": unix_seconds(now) });
        self.say(ServerMessage::Pong, correlation_id, now, &data);
    }

    /// Sends the client a message of `kind` about `data`, in its dialect.
    fn say(
        &self,
        kind: ServerMessage,
        correlation_id: Option<&CorrelationId>,
        now: SystemTime,
        data: &impl serde::Serialize,
    ) {
        let dialect = self.client.dialect();
        self.client
            .send(dialect.message(kind, correlation_id, now, data));
    }
}
