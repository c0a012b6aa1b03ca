//! `GET /ws`: the WebSocket upgrade, its credentials and its `since`, then the session in
//! the dialect of the path.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, HOST, ORIGIN, SEC_WEBSOCKET_EXTENSIONS};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::credentials::{barred, bearer};
use super::response::error;
use super::{refused, Connection, ResponseBody};
use crate::compression::negotiate;
use crate::config::CompressionMode;
use crate::dialect::Dialect;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{Resume, MAX_RESUME_CHANNELS};
use crate::server::admission::{Refusal, Ticket};
use crate::server::counters::Limit;
use crate::server::reader::Prefixed;
use crate::server::{session, Shared};

pub(super) fn upgrade<B>(
    shared: Arc<Shared>,
    req: Request<B>,
    conn: &Connection,
    dialect: Dialect,
) -> Response<ResponseBody> {
    websocket(
        shared,
        req,
        conn,
        Then::Session {
            dialect,
            greeting: None,
        },
    )
}

/// What an accepted WebSocket becomes.
pub(super) enum Then {
    /// A new session in `dialect`, which says `greeting` first.
    Session {
        dialect: Dialect,
        greeting: Option<Bytes>,
    },
    /// The socket goes to whoever asked for it (a Socket.IO long-polling session moving
    /// onto it), which already holds the connection's place.
    Handover(Handover),
}

/// The socket's read half, as [`Then::Handover`] receives it.
pub(super) type BoxRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The socket's write half, as [`Then::Handover`] receives it.
pub(super) type BoxWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
/// What serves a handed-over socket.
pub(super) type Handover =
    Box<dyn FnOnce(BoxRead, BoxWrite) -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// Checks and accepts a WebSocket upgrade (origin, credential backoff, admission), then
/// serves the socket as `then` says.
pub(super) fn websocket<B>(
    shared: Arc<Shared>,
    mut req: Request<B>,
    conn: &Connection,
    then: Then,
) -> Response<ResponseBody> {
    let peer = conn.peer;
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return error(
            ErrorCode::UpgradeRequired,
            "this path speaks WebSocket only; connect with a WebSocket client",
        );
    }
    let origin = req.headers().get(ORIGIN).map(HeaderValue::as_bytes);
    let host = req.headers().get(HOST).map(HeaderValue::as_bytes);
    if !shared.auth.origin_allowed(origin, host) {
        shared.counters.hit(Limit::OriginRefused);
        tracing::debug!(%peer, origin = ?origin.map(String::from_utf8_lossy), "upgrade refused: origin");
        return error(
            ErrorCode::OriginNotAllowed,
            "this origin may not open WebSockets here",
        );
    }
    let address = shared.admission.client_address(peer, req.headers());
    if let Some(barred) = barred(&shared, address) {
        return barred;
    }
    // What permessage-deflate agreed on, answered once the upgrade is accepted.
    let mut agreed = None;
    let then = match then {
        Then::Session { dialect, greeting } => {
            let resume = match upgrade_resume(&req) {
                Ok(resume) => resume,
                Err(message) => return error(ErrorCode::InvalidSince, &message),
            };
            agreed = match shared.config.compression.mode {
                CompressionMode::On => negotiate::negotiate(
                    req.headers()
                        .get_all(SEC_WEBSOCKET_EXTENSIONS)
                        .iter()
                        .map(HeaderValue::as_bytes),
                ),
                CompressionMode::Off => None,
            };
            let mut handshake = Box::new(session::Handshake {
                dialect,
                deflate: agreed.map(|agreed| agreed.window),
                token: upgrade_token(&req),
                headers: shared.hooks.forwarded(req.headers()),
                resume,
                greeting,
                place: None,
            });
            match admit(&shared, conn, address) {
                Ok(ticket) => {
                    handshake.place = Some(ticket);
                    Accepted::Session(handshake)
                }
                Err(refusal) => return refused(refusal),
            }
        }
        // Whoever takes the socket already holds its place and took its share of the
        // connection rate: the socket needs no place of its own.
        Then::Handover(handover) => {
            drop(conn.place.lock().take());
            Accepted::Handover(handover)
        }
    };
    // The socket comes from hyper itself: fastwebsockets' upgrade future would wrap it in a
    // `WebSocket` with an 8 KiB read buffer, allocated only to be thrown away (we read and
    // write frames ourselves). fastwebsockets still checks the handshake and answers it;
    // the future it returns, left without the upgrade, is dropped.
    let upgrade = hyper::upgrade::on(&mut req);
    let mut response = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, _)) => response,
        Err(e) => return error(ErrorCode::BadHandshake, &e.to_string()),
    };
    // A handed-over socket (Engine.IO's upgrade from polling) keeps its session's plain
    // frames: the extension is declined.
    if let (Accepted::Session(..), Some(agreed)) = (&then, agreed) {
        response.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(agreed.answer()),
        );
    }
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let handshake = match then {
            Accepted::Session(handshake) => handshake,
            Accepted::Handover(handover) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let read = Prefixed::new(Bytes::new(), read);
                return handover(Box::new(read), Box::new(write)).await;
            }
        };
        // The session gets a task of its own, which holds nothing of the upgrade (its
        // future, the captures above): what that task holds, every connection pays for as
        // long as it is open.
        // On our own listener the socket is a TcpStream: split it into owned halves (no lock
        // between reader and writer). Embedded in another server, fall back to a generic split.
        let tasks = shared.tasks.clone();
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let read = Prefixed::new(parts.read_buf, read);
                tasks.spawn(session::run(shared, read, write, address, handshake));
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let read = Prefixed::new(Bytes::new(), read);
                tasks.spawn(session::run(shared, read, write, address, handshake));
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// An accepted upgrade, on its way to being served.
enum Accepted {
    /// A session, with its place among the admitted connections.
    Session(Box<session::Handshake>),
    Handover(Handover),
}

/// The place of an upgraded connection from `address`. A direct client's connection
/// already holds its place, which the WebSocket keeps; it still takes its share of the
/// connection rate. Behind a trusted proxy, the forwarded address is admitted here.
pub(super) fn admit(
    shared: &Shared,
    conn: &Connection,
    address: std::net::IpAddr,
) -> Result<Ticket, Refusal> {
    let now = crate::clock::now();
    let mut place = conn.place.lock();
    let admitted = match place.take() {
        Some(ticket) => match shared.admission.take_rate(address, now) {
            Ok(()) => Ok(ticket),
            Err(refusal) => {
                *place = Some(ticket);
                Err(refusal)
            }
        },
        None => shared.admission.admit(address, now),
    };
    drop(place);
    admitted.inspect_err(|refusal| {
        tracing::debug!(peer = %conn.peer, %address, reason = refusal.code().as_str(), "upgrade refused");
    })
}

/// The token of a WebSocket upgrade: `Authorization: Bearer`, else `?token=`.
pub(super) fn upgrade_token<B>(req: &Request<B>) -> Option<Box<str>> {
    bearer(req.headers()).map(Box::from).or_else(|| {
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into())
    })
}

/// Where a reconnecting client left off on the channels it gets on connect:
/// `?since=orders:41,notification:7&epoch=…` (a channel name may itself contain `:`; the
/// offset follows the last one).
pub(super) fn upgrade_resume<B>(req: &Request<B>) -> Result<Option<Box<Resume>>, String> {
    let Some(query) = req.uri().query() else {
        return Ok(None);
    };
    let mut resume = Resume::default();
    let mut given = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "since" => {
                given = true;
                for item in value.split(',').filter(|i| !i.is_empty()) {
                    let offset = item
                        .rsplit_once(':')
                        .and_then(|(channel, offset)| Some((channel, offset.parse().ok()?)));
                    let Some((channel, offset)) = offset else {
                        return Err(format!(
                            "`since` takes channel:offset pairs separated by commas, not {:?}",
                            item.chars().take(64).collect::<String>()
                        ));
                    };
                    resume.since.push((channel.to_owned(), offset));
                }
            }
            "epoch" if value.len() <= 64 => resume.epoch = Some(value.into_owned()),
            "epoch" => return Err("`epoch` is at most 64 bytes".to_owned()),
            _ => {}
        }
    }
    if resume.since.len() > MAX_RESUME_CHANNELS {
        return Err(format!(
            "`since` may name at most {MAX_RESUME_CHANNELS} channels"
        ));
    }
    Ok(given.then(|| Box::new(resume)))
}
