//! Response builders: JSON bodies, errors with their code's status, `Connection: close`,
//! `Retry-After`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::ResponseBody;
use crate::protocol::code::ErrorCode;

/// `response` with `Connection: close`: the request's body was not read to its end, so the
/// connection cannot carry another request.
pub(super) fn closing(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `response` with `Retry-After: wait` in whole seconds, rounded up (at least 1): a client
/// that waits what it is told must not be refused again.
pub(super) fn retry_after(
    mut response: Response<ResponseBody>,
    wait: Duration,
) -> Response<ResponseBody> {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = error(ErrorCode::MethodNotAllowed, &format!("use {allow}"));
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// An error answer: `{"error": {"code", "message"}}` with the code's HTTP status.
pub(super) fn error(code: ErrorCode, message: &str) -> Response<ResponseBody> {
    json(
        code.status(),
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

pub(super) fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<ResponseBody> {
    let body = serde_json::to_vec(body).expect("serializing to memory cannot fail");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
