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
use crate::engine::latency::HistogramSnapshot;
use crate::protocol::code::ErrorCode;
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
pub(super) fn stats(shared: &Shared) -> serde_json::Value {
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
        "memory": crate::server::memory::Memory::now(&shared.hub),
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
pub(super) fn latency(h: &HistogramSnapshot) -> serde_json::Value {
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
