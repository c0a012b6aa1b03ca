//! A JSON-RPC 2.0 client for SigmaVault's engine: `POST {engine.url}/rpc` with
//! `{"jsonrpc":"2.0","method","params","id"}`, answered by `{"jsonrpc":"2.0","result"|"error","id"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The largest response accepted from the engine.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// JSON-RPC's "method not found".
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;

/// Why a poll of an upstream source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The host could not be read (the host source).
    #[error("{0}")]
    Host(String),
    /// The engine could not be reached (refused, reset, DNS): an outage.
    #[error("engine unreachable: {0}")]
    Transport(String),
    /// The engine did not answer in time: an outage.
    #[error("engine did not answer within {0:?}")]
    Timeout(Duration),
    /// The engine answered with an HTTP error status (and no JSON-RPC body).
    #[error("engine answered HTTP {status} to POST {url}{}", status_hint(*.status))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The URL called.
        url: String,
    },
    /// The answer is not a JSON-RPC 2.0 response to this call.
    #[error("invalid JSON-RPC response: {0}")]
    InvalidResponse(String),
    /// The engine returned a JSON-RPC error.
    #[error("engine error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
}

impl UpstreamError {
    /// Whether the method does not exist on this engine (not an outage).
    pub(crate) fn is_method_not_found(&self) -> bool {
        matches!(self, Self::Rpc { code, .. } if *code == METHOD_NOT_FOUND)
    }

    /// Whether the engine itself is unreachable, rather than this method failing.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self, Self::Transport(_) | Self::Timeout(_))
    }
}

/// A client for one engine.
pub(crate) struct RpcClient {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
    timeout: Duration,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct Response<'a> {
    jsonrpc: &'a str,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorObject>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    #[serde(default)]
    message: String,
}

impl RpcClient {
    /// A client for the engine at `base_url` (calls go to `{base_url}/rpc`), each call
    /// limited to `timeout`.
    pub(crate) fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let endpoint: Uri = format!("{}/rpc", base_url.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("invalid engine url {base_url:?}: {e}"))?;
        if endpoint.scheme_str() != Some("http") {
            return Err(format!("engine url {base_url:?} must start with http://"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            endpoint,
            timeout,
            next_id: AtomicU64::new(1),
        })
    }

    /// Calls `method` with `params` and returns its `result`.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: &serde_json::Value,
    ) -> Result<Box<RawValue>, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let request = hyper::Request::post(self.endpoint.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| UpstreamError::Transport(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| UpstreamError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, UpstreamError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))??;
        // JSON-RPC servers may carry errors on non-2xx statuses; read the body first.
        match parse_response(&body, id) {
            Err(UpstreamError::InvalidResponse(_)) if !status.is_success() => {
                Err(UpstreamError::Status {
                    status: status.as_u16(),
                    url: self.endpoint.to_string(),
                })
            }
            other => other,
        }
    }
}

/// What an HTTP status most likely means about `engine.url`.
fn status_hint(status: u16) -> &'static str {
    match status {
        404 | 405 => {
            " (is engine.url the engine's API base? SigmaVault's usually ends in /api/v1, \
             and calls go to {engine.url}/rpc)"
        }
        _ => "",
    }
}

fn parse_response(body: &[u8], id: u64) -> Result<Box<RawValue>, UpstreamError> {
    let response: Response<'_> =
        serde_json::from_slice(body).map_err(|e| UpstreamError::InvalidResponse(e.to_string()))?;
    if response.jsonrpc != "2.0" {
        return Err(UpstreamError::InvalidResponse(format!(
            "jsonrpc is {:?}",
            response.jsonrpc
        )));
    }
    if response.id.map(RawValue::get) != Some(id.to_string().as_str()) {
        return Err(UpstreamError::InvalidResponse(
            "the id does not match the request".into(),
        ));
    }
    match (response.result, response.error) {
        (_, Some(e)) => Err(UpstreamError::Rpc {
            code: e.code,
            message: e.message,
        }),
        (Some(result), None) => Ok(result.to_owned()),
        (None, None) => Err(UpstreamError::InvalidResponse(
            "neither result nor error".into(),
        )),
    }
}

/// `e` and each of its sources, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_checked() {
        assert_eq!(
            parse_response(br#"{"jsonrpc":"2.0","result":{"a":1},"id":7}"#, 7)
                .unwrap()
                .get(),
            r#"{"a":1}"#
        );
        assert!(parse_response(
            br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"nope"},"id":7}"#,
            7
        )
        .unwrap_err()
        .is_method_not_found());
        for bad in [
            &br#"{"jsonrpc":"2.0","result":1,"id":8}"#[..],
            br#"{"jsonrpc":"1.0","result":1,"id":7}"#,
            br#"{"jsonrpc":"2.0","id":7}"#,
            b"<html>",
        ] {
            assert!(matches!(
                parse_response(bad, 7),
                Err(UpstreamError::InvalidResponse(_))
            ));
        }
    }

    #[test]
    fn urls_are_validated() {
        assert!(RpcClient::new("http://127.0.0.1:5000/api/v1", Duration::from_secs(1)).is_ok());
        assert!(RpcClient::new("https://x", Duration::from_secs(1)).is_err());
        assert!(RpcClient::new("not a url", Duration::from_secs(1)).is_err());
    }
}
