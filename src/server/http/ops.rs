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
use crate::auth::AuthError;
use crate::hooks::{Attempt, Caller, HookError};
use crate::protocol::channel::Channel;
use crate::protocol::code::ErrorCode;
use crate::server::stats::Stats;
use crate::server::{metrics, Shared};

/// `GET /api/v1/snapshot[/kind]`. With token auth on (or a connect hook), the reader
/// needs a token (a JWT, a publish key, or one the application accepts, as
/// `Authorization: Bearer`) and sees only the types it may subscribe to, as its grant and
/// the application's subscribe hook say: the snapshot endpoint must not be a way around
/// channel permissions.
pub(super) async fn snapshot(
    shared: &Arc<Shared>,
    headers: &hyper::HeaderMap,
    address: IpAddr,
    kind: Option<&str>,
) -> Response<ResponseBody> {
    let identity = if shared.requires_token() {
        if let Some(barred) = barred(shared, address) {
            return barred;
        }
        let token = bearer(headers).map(str::to_owned);
        let forwarded = shared.hooks.forwarded(headers);
        if token.is_none() && forwarded.is_empty() {
            return unauthorized(
                shared,
                "snapshots need a token: `Authorization: Bearer <token>`",
            );
        }
        let attempt = Attempt {
            client: 0,
            address,
            dialect: "http",
            token,
            headers: forwarded,
        };
        match shared.identify(attempt).await {
            Ok((identity, _)) => identity,
            Err(e @ AuthError::Unavailable(_)) => return error(e.code(), &e.to_string()),
            Err(e) => return unauthorized(shared, &e.to_string()),
        }
    } else {
        shared.auth.anonymous()
    };
    let caller = Caller {
        client: 0,
        identity,
    };
    // What the grant allows, then what the application allows of it.
    let granted: Vec<Channel> = match kind {
        Some(kind) => match Channel::new(kind) {
            Ok(channel) if caller.identity.may_subscribe(kind) => vec![channel],
            _ => {
                return error(
                    ErrorCode::Forbidden,
                    "your token does not allow this channel",
                )
            }
        },
        None => shared
            .snapshots
            .all()
            .iter()
            .filter(|s| caller.identity.may_subscribe(&s.channel))
            .map(|s| s.channel.clone())
            .collect(),
    };
    let refused = shared.hooks.check_subscribe(&caller, &granted).await;
    let allowed = |channel: &str| {
        granted.iter().any(|c| c.as_str() == channel)
            && !refused.iter().any(|r| r.channel == channel)
    };
    let Some(kind) = kind else {
        let all: Vec<_> = shared
            .snapshots
            .all()
            .iter()
            .filter(|s| allowed(&s.channel))
            .map(|s| s.to_json())
            .collect();
        return json(StatusCode::OK, &serde_json::json!({ "snapshots": all }));
    };
    if let Some(refusal) = refused.first() {
        return match &refusal.error {
            HookError::Unavailable(why) => error(
                ErrorCode::Unavailable,
                &format!("the application did not answer: {why}"),
            ),
            e => error(ErrorCode::Forbidden, &e.to_string()),
        };
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
