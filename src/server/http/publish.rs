//! `POST /api/v1/publish`: a JSON body of events, through the broker.

use std::net::IpAddr;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};

use super::credentials::publish_key_refusal;
use super::response::{closing, error, json};
use super::ResponseBody;
use crate::broker::Published;
use crate::protocol::code::ErrorCode;
use crate::protocol::publish;
use crate::server::counters::Limit;
use crate::server::Shared;

/// Whether the request declares a JSON body: `application/json` or `application/*+json`,
/// with any parameters.
pub(super) fn declares_json(headers: &hyper::HeaderMap) -> bool {
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

/// Reads a JSON request body: 415 unless it declares JSON (a browser form or a
/// `text/plain` fetch needs no CORS preflight; JSON does), 413 past
/// `max_publish_body_size`, 408 past `body_timeout`.
pub(super) async fn json_body<B>(
    shared: &Shared,
    req: Request<B>,
) -> Result<Bytes, Response<ResponseBody>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !declares_json(req.headers()) {
        shared.counters.hit(Limit::NotJson);
        return Err(error(
            ErrorCode::UnsupportedMediaType,
            "request bodies are JSON: send `Content-Type: application/json`",
        ));
    }
    let limit = shared.config.max_publish_body_size;
    let too_large = || {
        shared.counters.hit(Limit::PublishBodyTooLarge);
        closing(error(
            ErrorCode::BodyTooLarge,
            &format!("request bodies are limited to {limit} bytes"),
        ))
    };
    // A declared length over the limit is refused before a byte of it is read.
    if req.body().size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let deadline = shared.config.body_timeout;
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(closing(error(ErrorCode::BadBody, &e.to_string()))),
        Err(_) => {
            shared.counters.hit(Limit::BodyTimeout);
            Err(closing(error(
                ErrorCode::BodyTimeout,
                &format!("the request body did not arrive within {deadline:?} (body_timeout)"),
            )))
        }
    }
}

pub(super) async fn publish<B>(
    shared: &Shared,
    req: Request<B>,
    address: IpAddr,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(refused) = publish_key_refusal(shared, req.headers(), address) {
        return refused;
    }
    let body = match json_body(shared, req).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    publish_events(shared, publish::parse(&body)).await
}

/// Publishes what a publish or broadcast body parsed into, through the throttle and the
/// broker; 400 naming the bad event if it did not parse.
pub(super) async fn publish_events(
    shared: &Shared,
    events: Result<Vec<crate::event::Event>, publish::PublishError>,
) -> Response<ResponseBody> {
    let events = match events {
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
    let admitted = shared.throttle.admit(events, std::time::Instant::now());
    let mut body = match shared.broker.publish(admitted.events, now).await {
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
            "degraded": total.degraded,
        }),
    };
    if admitted.throttled > 0 {
        // Held by a `[[channels]]` throttle: published when its window ends, unless a
        // newer event of its key replaces it; `offsets` has none for them.
        body["throttled"] = admitted.throttled.into();
    }
    json(StatusCode::OK, &body)
}
