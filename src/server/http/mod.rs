//! HTTP routing: the WebSocket upgrades and the REST API.
//!
//! | method | path               | answer                                                   |
//! |--------|--------------------|----------------------------------------------------------|
//! | GET    | `/`                | the live dashboard (`dashboard/`), unless `dashboard = false` |
//! | GET    | `/ws`              | WebSocket upgrade (426 for a plain GET, 403 origin, 429/503 admission), speaking `ws_dialect` (SigmaVault by default) |
//! | GET    | `/skreaver/ws`     | the same, speaking Skreaver's protocol                   |
//! | GET, POST | `/socket.io/`   | Socket.IO clients: Engine.IO 4 long-polling and WebSocket (`engineio`) |
//! | POST   | `/api/v1/publish`  | publish one event or an array; 200 with counts, 400/401/413 |
//! | GET    | `/healthz`         | 200 `{"status":"ok"}` while the process serves           |
//! | GET    | `/readyz`          | 200 while taking connections, 503 shutting down; upstream state |
//! | GET    | `/metrics`         | Prometheus/OpenMetrics text (a publish key once any is set; 404 with `metrics = false`) |
//! | GET    | `/api/v1/snapshot` | every status type's latest snapshot (that the token allows) |
//! | GET    | `/api/v1/snapshot/{type}` | one type's snapshot; 404 if none yet, 403 if not allowed |
//! | GET    | `/api/v1/stats`    | connections, counters, analytics, latency, channels, breakers, snapshot ages (a publish key once any is set) |
//! | GET    | `/api/v1/stats/history` | per-second samples of the last 5 minutes (a publish key once any is set) |
//! | GET    | `/api/v1/channels`, `/api/v1/channels/{channel}/history`, `…/presence` | the control API: channels and their subscribers, a channel's history, its presence (a publish key once any is set; `control`) |
//! | POST   | `/api/v1/disconnect`, `/subscribe`, `/unsubscribe`, `/broadcast` | the control API: disconnect, subscribe or unsubscribe a client or a user's connections, publish one event to several channels (the same) |
//! | GET    | `/api/v1/openapi.json` | the OpenAPI description of this HTTP API (`docs/openapi.json`) |
//!
//! Every error body is `{"error": {"code": …, "message": …}}`.
//!
//! Before any route: a request whose `Host` names a host the server does not answer to
//! gets 421 (`auth.allowed_hosts`, DNS rebinding), and an `/api/`, `/metrics` or `/readyz` request
//! carrying an `Origin` that is neither the server's own nor on `auth.allowed_origins`
//! gets 403 (a page elsewhere may not publish or read operator data). A publish must
//! declare `Content-Type: application/json` (415 otherwise), so that a browser cannot send
//! one without a CORS preflight.
//!
//! The upgrade's credentials are `Authorization: Bearer <token>` or `?token=<token>` (for
//! browsers, which cannot set headers on a WebSocket); the header wins when both are given.
//! Publishing takes a key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! CORS: a browser page elsewhere may call `/api/` only from an origin on
//! `auth.allowed_origins` (which then gets `Access-Control-Allow-Origin` and preflight
//! answers); with no list, only same-origin pages are answered.

mod control;
mod credentials;
pub(crate) mod engineio;
mod ops;
mod publish;
mod response;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, HOST, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};

use self::credentials::publish_key_refusal;
use self::ops::{operator, ready, snapshot};
use self::response::{error, json, method_not_allowed, retry_after};
use super::admission::{Refusal, Ticket};
use super::counters::Limit;
use super::{dashboard, Shared};
use crate::dialect::Dialect;
use crate::protocol::code::ErrorCode;

/// The response body type of every sigmahub route.
pub type ResponseBody = Full<Bytes>;

/// One accepted HTTP connection: its peer, and the admission place it holds (none when
/// the peer is a trusted proxy), which a WebSocket upgrade on it takes over.
pub(crate) struct Connection {
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// Its place among `max_connections` and `max_connections_per_ip`.
    pub(crate) place: parking_lot::Mutex<Option<Ticket>>,
}

/// The answer to every request on a connection that was refused a place: 503 or 429 with
/// `Retry-After`, and the connection closed.
pub(crate) fn refused(refusal: Refusal) -> Response<ResponseBody> {
    let message = match refusal {
        Refusal::ServerFull => "the server is full",
        Refusal::TooManyFromAddress => "too many connections from your address",
        Refusal::TooFast(_) => "too many new connections from your address",
    };
    retry_after(error(refusal.code(), message), refusal.retry_after())
}

/// Routes one request.
pub(crate) async fn route<B>(
    shared: Arc<Shared>,
    req: Request<B>,
    conn: Arc<Connection>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = conn.peer;
    let host = req.headers().get(HOST);
    if !shared.hosts.allows(host.map(HeaderValue::as_bytes)) {
        shared.counters.hit(Limit::HostRefused);
        tracing::debug!(%peer, host = ?host, "refused: host not allowed");
        return error(
            ErrorCode::HostNotAllowed,
            "this server does not answer to that host name (auth.allowed_hosts)",
        );
    }
    let origin = req.headers().get(ORIGIN).cloned();
    let path = req.uri().path();
    let api = path.starts_with("/api/");
    // The operators' data and every API call: browsers only from here or a listed origin.
    let guarded = api || path == "/metrics" || path == "/readyz";
    let mut response = if api && req.method() == Method::OPTIONS {
        preflight(&shared, origin.as_ref())
    } else if guarded
        && !shared.auth.api_origin_allowed(
            origin.as_ref().map(HeaderValue::as_bytes),
            host.map(HeaderValue::as_bytes),
        )
    {
        shared.counters.hit(Limit::OriginRefused);
        error(
            ErrorCode::OriginNotAllowed,
            "a page from this origin may not call the API (auth.allowed_origins)",
        )
    } else {
        answer(shared.clone(), req, &conn).await
    };
    if let Some(origin) = origin.filter(|o| api && shared.auth.cors_allowed(o.as_bytes())) {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// A CORS preflight for the HTTP API: allowed only for origins on `auth.allowed_origins`.
fn preflight(shared: &Shared, origin: Option<&HeaderValue>) -> Response<ResponseBody> {
    if !origin.is_some_and(|o| shared.auth.cors_allowed(o.as_bytes())) {
        return error(
            ErrorCode::OriginNotAllowed,
            "this origin may not call the API from a browser",
        );
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

async fn answer<B>(
    shared: Arc<Shared>,
    req: Request<B>,
    conn: &Connection,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = conn.peer;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => {
            let dialect = shared.config.ws_dialect;
            upgrade::upgrade(shared, req, conn, dialect)
        }
        (&Method::GET, "/skreaver/ws") => upgrade::upgrade(shared, req, conn, Dialect::Skreaver),
        (_, "/ws" | "/skreaver/ws") => method_not_allowed("GET"),
        (_, "/socket.io/" | "/socket.io") => engineio::route(shared, req, conn).await,
        (&Method::POST, "/api/v1/publish") => {
            let address = shared.admission.client_address(peer, req.headers());
            publish::publish(&shared, req, address).await
        }
        (_, "/api/v1/publish") => method_not_allowed("POST"),
        (&Method::GET, "/api/v1/openapi.json") => control::openapi(),
        (_, path) if control::Route::of(path).is_some() => {
            let address = shared.admission.client_address(peer, req.headers());
            if let Some(refused) = publish_key_refusal(&shared, req.headers(), address) {
                return refused;
            }
            control::serve(&shared, req).await
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => ready(&shared),
        (&Method::GET, "/metrics") if !shared.config.metrics => error(
            ErrorCode::MetricsDisabled,
            "metrics are turned off (metrics = false)",
        ),
        (&Method::GET, path @ ("/metrics" | "/api/v1/stats" | "/api/v1/stats/history")) => {
            let address = shared.admission.client_address(peer, req.headers());
            if let Some(refused) = publish_key_refusal(&shared, req.headers(), address) {
                return refused;
            }
            operator(&shared, path)
        }
        (&Method::GET, path)
            if path == "/api/v1/snapshot" || path.starts_with("/api/v1/snapshot/") =>
        {
            let address = shared.admission.client_address(peer, req.headers());
            let kind = path.strip_prefix("/api/v1/snapshot/");
            snapshot(&shared, req.headers(), address, kind).await
        }
        (&Method::GET, path) if shared.config.dashboard => {
            dashboard::asset(path).unwrap_or_else(|| error(ErrorCode::NotFound, "no such route"))
        }
        _ => error(ErrorCode::NotFound, "no such route"),
    }
}
