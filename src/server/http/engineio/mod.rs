//! `/socket.io/`: Engine.IO 4's two transports, for Socket.IO clients.
//!
//! | request | answer |
//! |---------|--------|
//! | `GET ?EIO=4&transport=websocket` (upgrade) | a WebSocket session in the Socket.IO dialect; the open packet is its first frame |
//! | `GET ?EIO=4&transport=polling` | a new long-polling session; the body is the open packet |
//! | `GET ?EIO=4&transport=polling&sid=S` | the packets waiting for session `S`, when there are any (a long poll) |
//! | `POST ?EIO=4&transport=polling&sid=S` | packets from the client, separated by `\x1e`; answered `ok` |
//! | `GET ?EIO=4&transport=websocket&sid=S` (upgrade) | the upgrade of `S` to WebSocket: `2probe`/`3probe`, then `5` |
//!
//! Errors are Engine.IO's: status 400 (403 for a refused origin) and
//! `{"code": N, "message": …}` with its codes (0 unknown transport, 1 unknown session, 2 bad
//! handshake method, 3 bad request, 4 forbidden, 5 unsupported protocol version). Admission
//! refusals (503, 429) are sigmahub's, as on `/ws`.
//!
//! A long-polling session is a session like any other (see [`polling`]): its packets go
//! through the same reader, outbox and writer as a WebSocket's, so every limit, policy,
//! metric and stat applies to it alike.

pub(super) mod polling;
pub(super) mod probe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE, HOST, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};

pub(super) use self::polling::Polling;
use super::credentials::barred;
use super::upgrade::{admit, upgrade_token, websocket, Handover, Then};
use super::{refused, Connection, ResponseBody};
use crate::dialect::{socketio, Dialect};
use crate::server::counters::Limit;
use crate::server::{session, Shared};

/// How long an ended long-polling session waits for its client to fetch its last packets.
const END_GRACE: Duration = Duration::from_secs(5);

/// The long-polling sessions of a server, by session id.
#[derive(Default)]
pub(crate) struct Sessions(parking_lot::Mutex<HashMap<Box<str>, Arc<Polling>>>);

impl Sessions {
    fn get(&self, sid: &str) -> Option<Arc<Polling>> {
        self.0.lock().get(sid).cloned()
    }

    fn insert(&self, polling: Arc<Polling>) {
        self.0.lock().insert(polling.sid().into(), polling);
    }

    fn remove(&self, sid: &str) {
        self.0.lock().remove(sid);
    }

    /// How many sessions are on the long-polling transport now (not upgraded, not ended).
    pub(crate) fn polling(&self) -> usize {
        self.0.lock().values().filter(|p| p.is_polling()).count()
    }
}

/// Engine.IO's error codes.
#[derive(Debug, Clone, Copy)]
enum EioError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl EioError {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// An Engine.IO error answer.
fn eio_error(error: EioError) -> Response<ResponseBody> {
    let status = match error {
        EioError::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::json!({ "code": error as u8, "message": error.message() });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A new session id: 120 random bits, URL-safe base64 (20 characters). It is the only
/// credential of a long-polling session's requests, so it must not be guessable.
fn new_sid() -> String {
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes).expect("the OS random number generator is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The open packet of a new session, as a text frame.
fn open_packet(shared: &Shared, sid: &str, upgrade: bool) -> Bytes {
    let config = &shared.config;
    socketio::open_packet(
        sid,
        upgrade,
        config.ping_interval,
        config.pong_timeout,
        config.max_message_size,
    )
}

/// Answers a request on `/socket.io/`.
pub(super) async fn route<B>(
    shared: Arc<Shared>,
    req: Request<B>,
    conn: &Connection,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut version = None;
    let mut transport = None;
    let mut sid = None;
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "EIO" => version = Some(value.into_owned()),
            "transport" => transport = Some(value.into_owned()),
            "sid" => sid = Some(value.into_owned()),
            _ => {}
        }
    }
    let origin = req.headers().get(ORIGIN).cloned();
    if !shared.auth.origin_allowed(
        origin.as_ref().map(HeaderValue::as_bytes),
        req.headers().get(HOST).map(HeaderValue::as_bytes),
    ) {
        shared.counters.hit(Limit::OriginRefused);
        return eio_error(EioError::Forbidden);
    }
    let mut response = if version.as_deref() != Some("4") {
        eio_error(EioError::UnsupportedProtocolVersion)
    } else {
        let method = req.method().clone();
        match (transport.as_deref(), sid, method) {
            (_, _, Method::OPTIONS) => preflight(),
            (Some("websocket"), None, Method::GET) => {
                let greeting = open_packet(&shared, &new_sid(), false);
                let then = Then::Session {
                    dialect: Dialect::SocketIo,
                    greeting: Some(greeting),
                };
                websocket(shared.clone(), req, conn, then)
            }
            (Some("websocket"), Some(sid), Method::GET) => match shared.polling.get(&sid) {
                Some(polling) if polling.may_upgrade() => {
                    let handover: Handover = Box::new(move |read, write| {
                        Box::pin(probe::take_over(polling, read, write))
                    });
                    websocket(shared.clone(), req, conn, Then::Handover(handover))
                }
                Some(_) => eio_error(EioError::BadRequest),
                None => eio_error(EioError::UnknownSid),
            },
            (Some("polling"), _, _) if !shared.config.socketio.polling => {
                eio_error(EioError::UnknownTransport)
            }
            (Some("polling"), None, Method::GET) => handshake(&shared, req, conn).await,
            (Some("polling"), None, _) => eio_error(EioError::BadHandshakeMethod),
            (Some("polling"), Some(sid), method) => match shared.polling.get(&sid) {
                None => eio_error(EioError::UnknownSid),
                Some(polling) if method == Method::GET => polling.poll(&shared).await,
                Some(polling) if method == Method::POST => polling.post(&shared, req).await,
                Some(_) => eio_error(EioError::BadRequest),
            },
            _ => eio_error(EioError::UnknownTransport),
        }
    };
    // A page elsewhere that may open WebSockets here may also poll (`auth.allowed_origins`).
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The answer to a CORS preflight of a long-polling request (the origin was checked).
fn preflight() -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization"),
    );
    response
}

/// A new long-polling session: admitted like a WebSocket (it takes over its connection's
/// place, which it holds for its life, and takes its share of the connection rate), served
/// by a session task of its own, answered with its first packets (the open packet).
async fn handshake<B>(
    shared: &Arc<Shared>,
    req: Request<B>,
    conn: &Connection,
) -> Response<ResponseBody> {
    let address = shared.admission.client_address(conn.peer, req.headers());
    if let Some(barred) = barred(shared, address) {
        return barred;
    }
    let ticket = match admit(shared, conn, address) {
        Ok(ticket) => ticket,
        Err(refusal) => return refused(refusal),
    };
    let sid = new_sid();
    let polling = Arc::new(Polling::new(&sid, shared.config.client_queue_bytes));
    let handshake = Box::new(session::Handshake {
        dialect: Dialect::SocketIo,
        // Long-polling: plain frames, read as bytes (and kept so after an upgrade).
        deflate: None,
        token: upgrade_token(&req),
        headers: shared.hooks.forwarded(req.headers()),
        resume: None,
        greeting: Some(open_packet(shared, &sid, true)),
        place: None,
    });
    shared.polling.insert(polling.clone());
    let (read, write) = polling.transport();
    let task_shared = shared.clone();
    let task_polling = polling.clone();
    shared.tasks.spawn(async move {
        let _ticket = ticket;
        session::run(task_shared.clone(), read, write, address, handshake).await;
        // The client may still fetch its last packets (a connect error, the close).
        task_polling.end(END_GRACE).await;
        task_shared.polling.remove(task_polling.sid());
    });
    polling.poll(shared).await
}
