//! HTTP routing: the WebSocket upgrade at `/ws` and the REST API.
//!
//! | method | path               | answer                                                   |
//! |--------|--------------------|----------------------------------------------------------|
//! | GET    | `/`                | the live dashboard (`dashboard/`), unless `dashboard = false` |
//! | GET    | `/ws`              | WebSocket upgrade (426 for a plain GET, 403 origin, 429/503 admission) |
//! | POST   | `/api/v1/publish`  | publish one event or an array; 200 with counts, 400/401/413 |
//! | GET    | `/healthz`         | 200 `{"status":"ok"}` while the process serves           |
//! | GET    | `/readyz`          | 200 while taking connections, 503 shutting down; upstream state |
//! | GET    | `/metrics`         | Prometheus/OpenMetrics text (a publish key once any is set; 404 with `metrics = false`) |
//! | GET    | `/api/v1/snapshot` | every status type's latest snapshot (that the token allows) |
//! | GET    | `/api/v1/snapshot/{type}` | one type's snapshot; 404 if none yet, 403 if not allowed |
//! | GET    | `/api/v1/stats`    | connections, counters, analytics, latency, channels, breakers, snapshot ages (a publish key once any is set) |
//! | GET    | `/api/v1/stats/history` | per-second samples of the last 5 minutes (a publish key once any is set) |
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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ALLOW, AUTHORIZATION, CONNECTION,
    CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::admission::{Refusal, Ticket};
use super::counters::Limit;
use super::reader::Prefixed;
use super::{dashboard, metrics, session, Shared};
use crate::broker::Published;
use crate::engine::latency::HistogramSnapshot;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{Resume, MAX_RESUME_CHANNELS};
use crate::protocol::publish;

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
    let mut response = error(refusal.code(), message);
    let seconds = refusal.retry_after().as_secs().max(1);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
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
        (&Method::GET, "/ws") => upgrade(shared, req, conn),
        (_, "/ws") => method_not_allowed("GET"),
        (&Method::POST, "/api/v1/publish") => {
            let address = shared.admission.client_address(peer, req.headers());
            publish(&shared, req, address).await
        }
        (_, "/api/v1/publish") => method_not_allowed("POST"),
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
            snapshot(&shared, req.headers(), address, kind)
        }
        (&Method::GET, path) if shared.config.dashboard => {
            dashboard::asset(path).unwrap_or_else(|| error(ErrorCode::NotFound, "no such route"))
        }
        _ => error(ErrorCode::NotFound, "no such route"),
    }
}

fn upgrade<B>(
    shared: Arc<Shared>,
    mut req: Request<B>,
    conn: &Connection,
) -> Response<ResponseBody> {
    let peer = conn.peer;
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return error(
            ErrorCode::UpgradeRequired,
            "/ws speaks WebSocket only; connect with a WebSocket client",
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
    let resume = match upgrade_resume(&req) {
        Ok(resume) => resume,
        Err(message) => return error(ErrorCode::InvalidSince, &message),
    };
    let handshake = session::Handshake {
        token: upgrade_token(&req),
        resume,
    };
    let address = shared.admission.client_address(peer, req.headers());
    if let Some(barred) = barred(&shared, address) {
        return barred;
    }
    let now = crate::clock::now();
    // A direct client's connection already holds its place, which the WebSocket keeps; it
    // still takes its share of the connection rate. Behind a trusted proxy, the forwarded
    // address is admitted here.
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
    let ticket = match admitted {
        Ok(ticket) => ticket,
        Err(refusal) => {
            tracing::debug!(%peer, %address, reason = refusal.code().as_str(), "upgrade refused");
            return refused(refusal);
        }
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return error(ErrorCode::BadHandshake, &e.to_string()),
    };
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let _ticket = ticket;
        let upgraded = match upgrade.await {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        // On our own listener the socket is a TcpStream: split it into owned halves (no lock
        // between reader and writer). Embedded in another server, fall back to a generic split.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let read = Prefixed::new(parts.read_buf, read);
                session::run(shared, read, write, address, handshake).await
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let read = Prefixed::new(Bytes::new(), read);
                session::run(shared, read, write, address, handshake).await
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// The token of a WebSocket upgrade: `Authorization: Bearer`, else `?token=`.
fn upgrade_token<B>(req: &Request<B>) -> Option<Box<str>> {
    bearer(req.headers()).map(Box::from).or_else(|| {
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into())
    })
}

/// Where a reconnecting client left off on the channels it gets on connect:
/// `?since=orders:41,notification:7&epoch=…` (a channel name may itself contain `:`; the
/// offset follows the last one).
fn upgrade_resume<B>(req: &Request<B>) -> Result<Option<Box<Resume>>, String> {
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

/// Whether the request declares a JSON body: `application/json` or `application/*+json`,
/// with any parameters.
fn declares_json(headers: &hyper::HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `GET /api/v1/snapshot[/kind]`. With token auth on, the reader needs a token (a JWT or a
/// publish key, as `Authorization: Bearer`) and sees only the types it may subscribe to:
/// the snapshot endpoint must not be a way around channel permissions.
fn snapshot(
    shared: &Shared,
    headers: &hyper::HeaderMap,
    address: IpAddr,
    kind: Option<&str>,
) -> Response<ResponseBody> {
    let identity = if shared.auth.requires_token() {
        if let Some(barred) = barred(shared, address) {
            return barred;
        }
        let Some(token) = bearer(headers) else {
            return unauthorized(
                shared,
                "snapshots need a token: `Authorization: Bearer <token>`",
            );
        };
        match shared.verify_token(address, token) {
            Ok(identity) => identity,
            Err(e) => return unauthorized(shared, &e.to_string()),
        }
    } else {
        shared.auth.anonymous()
    };
    let Some(kind) = kind else {
        let all: Vec<_> = shared
            .snapshots
            .all()
            .iter()
            .filter(|s| identity.may_subscribe(&s.channel))
            .map(|s| s.to_json())
            .collect();
        return json(StatusCode::OK, &serde_json::json!({ "snapshots": all }));
    };
    if !identity.may_subscribe(kind) {
        return error(
            ErrorCode::Forbidden,
            "your token does not allow this channel",
        );
    }
    match shared.snapshots.get(kind) {
        Some(snapshot) => json(StatusCode::OK, &snapshot.to_json()),
        None => error(
            ErrorCode::NoSnapshot,
            &format!("no snapshot of {kind:?} yet"),
        ),
    }
}

/// A 401 with `WWW-Authenticate: Bearer`, counted. (Wrong credentials were already
/// recorded in the backoff by [`Shared::verify_token`] or [`Shared::verify_publish_key`];
/// missing ones are not failures.)
fn unauthorized(shared: &Shared, message: &str) -> Response<ResponseBody> {
    shared.counters.hit(Limit::Unauthorized);
    let mut response = error(ErrorCode::Unauthorized, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A 429 for an address barred after failed credentials, counted; `None` if not barred.
fn barred(shared: &Shared, address: IpAddr) -> Option<Response<ResponseBody>> {
    let wait = shared.backoff.check(address, crate::clock::now()).err()?;
    shared.counters.hit(Limit::AuthBackoff);
    tracing::debug!(%address, wait_ms = wait.as_millis() as u64, "refused: credential backoff");
    let mut response = error(
        ErrorCode::AuthBackoff,
        "too many failed credentials from your address; wait before trying again",
    );
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    Some(response)
}

/// Checks the publish key of a request (when any is configured): the 429 of a barred
/// address or the 401 of a missing or wrong key; `None` when the request may proceed.
fn publish_key_refusal(
    shared: &Shared,
    headers: &hyper::HeaderMap,
    address: IpAddr,
) -> Option<Response<ResponseBody>> {
    if !shared.auth.publish_needs_key() {
        return None;
    }
    if let Some(barred) = barred(shared, address) {
        return Some(barred);
    }
    let message = "this needs a publish key: `Authorization: Bearer <key>` or `X-API-Key: <key>`";
    let Some(key) = bearer(headers).or_else(|| headers.get("x-api-key")?.to_str().ok()) else {
        return Some(unauthorized(shared, message));
    };
    if !shared.verify_publish_key(address, key) {
        return Some(unauthorized(shared, message));
    }
    None
}

async fn publish<B>(shared: &Shared, req: Request<B>, address: IpAddr) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(refused) = publish_key_refusal(shared, req.headers(), address) {
        return refused;
    }
    // A browser form or a `text/plain` fetch needs no CORS preflight; JSON does.
    if !declares_json(req.headers()) {
        shared.counters.hit(Limit::NotJson);
        return error(
            ErrorCode::UnsupportedMediaType,
            "publish bodies are JSON: send `Content-Type: application/json`",
        );
    }
    let limit = shared.config.max_publish_body_size;
    let too_large = || {
        shared.counters.hit(Limit::PublishBodyTooLarge);
        closing(error(
            ErrorCode::BodyTooLarge,
            &format!("publish bodies are limited to {limit} bytes"),
        ))
    };
    // A declared length over the limit is refused before a byte of it is read.
    if req.body().size_hint().lower() > limit as u64 {
        return too_large();
    }
    let deadline = shared.config.body_timeout;
    let collect = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => return closing(error(ErrorCode::BadBody, &e.to_string())),
        Err(_) => {
            shared.counters.hit(Limit::BodyTimeout);
            return closing(error(
                ErrorCode::BodyTimeout,
                &format!("the request body did not arrive within {deadline:?} (body_timeout)"),
            ));
        }
    };
    let events = match publish::parse(&body) {
        Ok(events) => events,
        Err(e) => {
            let mut body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
            if let Some(i) = e.index {
                body["error"]["index"] = i.into();
            }
            return json(e.code.status(), &body);
        }
    };
    let now = SystemTime::now();
    let accepted = events.len();
    let body = match shared.broker.publish(events, now).await {
        Published::Stored(offsets) => serde_json::json!({
            "accepted": accepted,
            "offsets": offsets,
            // Delivered by every node when the stream republishes them.
            "delivered": null,
        }),
        Published::Here(total) => serde_json::json!({
            "accepted": accepted,
            "delivered": total.queued,
            "slow_consumers": total.overflowed,
            "dropped": total.dropped,
        }),
    };
    json(StatusCode::OK, &body)
}

/// `GET /readyz`: 200 while the server takes connections, 503 once it is shutting down.
/// The upstream state is reported, not gating: with the engine down, sigmahub still serves
/// (stale) snapshots and every published event.
fn ready(shared: &Shared) -> Response<ResponseBody> {
    let open: Vec<&str> = shared
        .breakers
        .all()
        .into_iter()
        .filter(|(_, s)| s.state != crate::upstream::breaker::BreakerState::Closed)
        .map(|(method, _)| method)
        .collect();
    let stale = shared
        .snapshots
        .all()
        .iter()
        .filter(|s| s.stale.is_some())
        .count();
    let (status, state) = if shared.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "ready")
    };
    json(
        status,
        &serde_json::json!({
            "status": state,
            "cluster": shared.broker.status(),
            "upstream": {
                "engine": shared.config.engine.url.is_some(),
                "breakers_not_closed": open,
                "stale_snapshots": stale,
            },
        }),
    )
}

/// The operators' routes, once the caller has shown a publish key (when keys are set).
fn operator(shared: &Arc<Shared>, path: &str) -> Response<ResponseBody> {
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics::render(shared))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/api/v1/stats" => json(StatusCode::OK, &stats(shared)),
        "/api/v1/stats/history" => json(
            StatusCode::OK,
            &serde_json::json!({
                "interval_seconds": 1,
                "samples": shared.analytics.history(),
            }),
        ),
        _ => error(ErrorCode::NotFound, "no such route"),
    }
}

/// Counters and upstream state (`GET /api/v1/stats`).
fn stats(shared: &Shared) -> serde_json::Value {
    let hub = shared.hub.stats();
    let counters = shared.counters.to_json();
    let channels: serde_json::Map<String, serde_json::Value> = shared
        .hub
        .channels()
        .into_iter()
        .map(|(channel, n)| (channel.to_string(), n.into()))
        .collect();
    serde_json::json!({
        "active_connections": hub.clients,
        "total_connections": hub.connected_total,
        "peak_connections": hub.peak_clients,
        "messages_sent": shared.counters.frames_sent.get(),
        "messages_received": shared.counters.messages_received.get(),
        "events_published": hub.published,
        "frames_delivered": hub.delivered,
        "memory": super::memory::Memory::now(&shared.hub),
        "analytics": shared.analytics.summary(hub.connected_total),
        "cluster": shared.broker.status(),
        "latency": latency(&shared.counters.publish_to_write.snapshot()),
        "channels": channels,
        "refused": shared.admission.refused.to_json(),
        "limits": counters["limits"],
        "closes": counters["closes"],
        "upstream": {
            "breakers": shared.breakers.all(),
            "snapshots": shared
                .snapshots
                .all()
                .iter()
                .map(|s| (s.channel.to_string(), s.status()))
                .collect::<serde_json::Map<_, _>>(),
        },
    })
}

/// The publish-to-write histogram in brief: observations and bucket bounds of p50/p99.
fn latency(h: &HistogramSnapshot) -> serde_json::Value {
    let bound_ms = |q| {
        h.quantile_bound(q)
            .map(|s| if s == f64::MAX { None } else { Some(s * 1e3) })
    };
    serde_json::json!({
        "publish_to_write": {
            "observations": h.count,
            "mean_ms": if h.count == 0 { 0.0 } else { h.sum * 1e3 / h.count as f64 },
            // Upper bounds of the buckets holding the quantile; null past the last bound.
            "p50_ms_at_most": bound_ms(0.5),
            "p99_ms_at_most": bound_ms(0.99),
        }
    })
}

/// `response` with `Connection: close`: the request's body was not read to its end, so the
/// connection cannot carry another request.
fn closing(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = error(ErrorCode::MethodNotAllowed, &format!("use {allow}"));
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// An error answer: `{"error": {"code", "message"}}` with the code's HTTP status.
fn error(code: ErrorCode, message: &str) -> Response<ResponseBody> {
    json(
        code.status(),
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
