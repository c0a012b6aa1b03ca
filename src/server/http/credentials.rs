//! Publish keys and the failed-credentials backoff on HTTP routes.

use std::net::IpAddr;

use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::Response;

use super::response::{error, retry_after};
use super::ResponseBody;
use crate::protocol::code::ErrorCode;
use crate::server::counters::Limit;
use crate::server::Shared;

pub(super) fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A 401 with `WWW-Authenticate: Bearer`, counted. (Wrong credentials were already
/// recorded in the backoff by [`Shared::verify_token`] or [`Shared::verify_publish_key`];
/// missing ones are not failures.)
pub(super) fn unauthorized(shared: &Shared, message: &str) -> Response<ResponseBody> {
    shared.counters.hit(Limit::Unauthorized);
    let mut response = error(ErrorCode::Unauthorized, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A 429 for an address barred after failed credentials, counted; `None` if not barred.
pub(super) fn barred(shared: &Shared, address: IpAddr) -> Option<Response<ResponseBody>> {
    let wait = shared.backoff.check(address, crate::clock::now()).err()?;
    shared.counters.hit(Limit::AuthBackoff);
    tracing::debug!(%address, wait_ms = wait.as_millis() as u64, "refused: credential backoff");
    let response = error(
        ErrorCode::AuthBackoff,
        "too many failed credentials from your address; wait before trying again",
    );
    Some(retry_after(response, wait))
}

/// Checks the publish key of a request (when any is configured): the 429 of a barred
/// address or the 401 of a missing or wrong key; `None` when the request may proceed.
pub(super) fn publish_key_refusal(
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
