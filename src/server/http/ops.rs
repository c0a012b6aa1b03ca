//! What operators read: snapshots, readiness, stats and metrics.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::credentials::{barred, bearer, unauthorized};
use super::response::{error, json};
use super::ResponseBody;
use crate::protocol::code::ErrorCode;
use crate::server::stats::Stats;
use crate::server::{metrics, Shared};

/// `GET /api/v1/snapshot[/kind]`. With token auth on, the reader needs a token (a JWT or a
/// publish key, as `Authorization: Bearer`) and sees only the types it may subscribe to:
/// the snapshot endpoint must not be a way around channel permissions.
pub(super) fn snapshot(
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

/// `GET /readyz`: 200 while the server takes connections, 503 once it is shutting down.
/// The upstream state is reported, not gating: with the engine down, sigmahub still serves
/// (stale) snapshots and every published event.
pub(super) fn ready(shared: &Shared) -> Response<ResponseBody> {
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
pub(super) fn operator(shared: &Arc<Shared>, path: &str) -> Response<ResponseBody> {
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics::render(shared))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/api/v1/stats" => json(StatusCode::OK, &Stats::of(shared)),
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
