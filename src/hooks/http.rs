//! The binary's hooks: each one a `POST` of JSON to the application's backend (Centrifugo's
//! proxy model), with a timeout and a circuit breaker of its own.
//!
//! Every call is answered with `200` and `{"result": {...}}` (yes) or
//! `{"error": {"message": ...}}` (no); either may say `"cache_seconds"`. Anything else (no
//! answer within `hooks.timeout`, a refused connection, another status, a body that is not
//! such an answer) is a failure: the breaker counts it and `hooks.on_failure` decides.
//! docs/hooks.md has every call's body and answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Attempt, Authorizer, Caller, Connected, Decision, Hook, HookError, Request};
use super::{Ruling, Verdict};
use crate::auth::permissions::{Identity, Patterns, MAX_INFO};
use crate::config::{ConfigError, HooksConfig};
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::upstream::breaker::{Breaker, BreakerState};
use crate::upstream::rpc::error_chain;

/// The largest answer read from the backend.
const MAX_ANSWER: usize = 1024 * 1024;

/// The longest time an answer may ask to be cached.
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);

/// Hooks that ask the application's backend over HTTP (`[hooks]`).
#[derive(Clone)]
pub struct HttpHooks {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, Full<Bytes>>,
    connect: Option<Endpoint>,
    subscribe: Option<Endpoint>,
    publish: Option<Endpoint>,
    request: Option<Endpoint>,
    subscribe_channels: Patterns,
    publish_channels: Patterns,
    timeout: Duration,
    cache: Duration,
    authorization: Option<HeaderValue>,
}

/// One hook's URL and breaker.
struct Endpoint {
    hook: Hook,
    uri: Uri,
    breaker: Mutex<Breaker>,
}

/// What the backend answers.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Refusal>,
}

#[derive(Deserialize)]
struct Refusal {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    cache_seconds: Option<u64>,
}

impl Answer {
    /// The `result`, or the refusal in `error`.
    fn result(self) -> Result<Box<RawValue>, HookError> {
        match (self.result, self.error) {
            (_, Some(refusal)) => Err(HookError::Refused(
                refusal.message.unwrap_or_else(|| "refused".into()),
            )),
            (Some(result), None) => Ok(result),
            (None, None) => unreachable!("checked when read: result or error"),
        }
    }
}

/// A `result` that may say how long it holds, and may carry `data`.
#[derive(Deserialize, Default)]
struct Granted {
    #[serde(default)]
    cache_seconds: Option<u64>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// A connect hook's `result`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectResult {
    user: String,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// The body of a subscribe or publish check.
#[derive(Serialize)]
struct Check<'a> {
    client: u64,
    user: &'a str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// The body of a request.
#[derive(Serialize)]
struct Asking<'a> {
    client: u64,
    user: &'a str,
    method: Option<&'a str>,
    data: &'a RawValue,
}

impl HttpHooks {
    /// The hooks `config` sets, or `None` when it sets none.
    pub fn new(config: &HooksConfig) -> Result<Option<Self>, ConfigError> {
        if !config.any() {
            return Ok(None);
        }
        let endpoint = |hook: Hook, field: &'static str, url: &Option<String>| {
            url.as_deref()
                .map(|url| {
                    Ok(Endpoint {
                        hook,
                        uri: http_uri(field, url)?,
                        breaker: Mutex::new(Breaker::new(
                            config.breaker_threshold,
                            config.breaker_reset,
                        )),
                    })
                })
                .transpose()
        };
        let patterns = |field: &'static str, list: &[String]| {
            Patterns::new(list).map_err(|e| ConfigError::Invalid {
                field,
                reason: e.to_string(),
            })
        };
        let authorization = bearer(config)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        Ok(Some(Self {
            inner: Arc::new(Inner {
                client: Client::builder(TokioExecutor::new()).build(connector),
                connect: endpoint(Hook::Connect, "hooks.connect_url", &config.connect_url)?,
                subscribe: endpoint(
                    Hook::Subscribe,
                    "hooks.subscribe_url",
                    &config.subscribe_url,
                )?,
                publish: endpoint(Hook::Publish, "hooks.publish_url", &config.publish_url)?,
                request: endpoint(Hook::Request, "hooks.request_url", &config.request_url)?,
                subscribe_channels: patterns(
                    "hooks.subscribe_channels",
                    &config.subscribe_channels,
                )?,
                publish_channels: patterns("hooks.publish_channels", &config.publish_channels)?,
                timeout: config.timeout,
                cache: config.cache,
                authorization,
            }),
        }))
    }

    /// The state of each hook's breaker, for `/metrics`.
    pub fn breakers(&self) -> Vec<(Hook, BreakerState)> {
        let inner = &self.inner;
        [
            &inner.connect,
            &inner.subscribe,
            &inner.publish,
            &inner.request,
        ]
        .into_iter()
        .flatten()
        .map(|e| (e.hook, e.breaker.lock().state()))
        .collect()
    }
}

impl Inner {
    fn endpoint(&self, hook: Hook) -> Option<&Endpoint> {
        match hook {
            Hook::Connect => self.connect.as_ref(),
            Hook::Subscribe => self.subscribe.as_ref(),
            Hook::Publish => self.publish.as_ref(),
            Hook::Request => self.request.as_ref(),
        }
    }

    /// Posts `body` to `hook`'s URL: the backend's answer, or why there is none.
    async fn call(&self, hook: Hook, body: Vec<u8>) -> Result<Answer, String> {
        let endpoint = self.endpoint(hook).expect("called only when configured");
        let (permitted, transition) = endpoint.breaker.lock().permit(crate::clock::now());
        log_transition(hook, transition);
        if !permitted {
            return Err(format!(
                "the {} hook's circuit breaker is open",
                hook.as_str()
            ));
        }
        let outcome = self.exchange(endpoint, body).await;
        let mut breaker = endpoint.breaker.lock();
        let transition = match &outcome {
            Ok(_) => breaker.on_success(),
            Err(_) => breaker.on_failure(crate::clock::now()),
        };
        drop(breaker);
        log_transition(hook, transition);
        if let Err(why) = &outcome {
            tracing::warn!(hook = hook.as_str(), url = %endpoint.uri, why, "hook call failed");
        }
        outcome
    }

    async fn exchange(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<Answer, String> {
        let request = post(
            &endpoint.uri,
            self.authorization.as_ref(),
            Bytes::from(body),
        );
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            if status != hyper::StatusCode::OK {
                return Err(format!("the backend answered HTTP {status}"));
            }
            Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| format!("reading the answer: {e}"))
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not {{\"result\"}} or {{\"error\"}}: {e}"))?;
        match (&answer.result, &answer.error) {
            (Some(_), None) | (None, Some(_)) => Ok(answer),
            _ => Err("the answer must hold exactly one of `result` and `error`".to_owned()),
        }
    }

    /// A subscribe or publish check: the backend's ruling.
    async fn check(&self, hook: Hook, body: Vec<u8>) -> Ruling {
        let answer = match self.call(hook, body).await {
            Ok(answer) => answer,
            Err(why) => return Ruling::once(Verdict::Unavailable(why)),
        };
        let holds = |seconds: Option<u64>| {
            seconds.map_or(self.cache, |s| Duration::from_secs(s).min(MAX_CACHE))
        };
        if let Some(refusal) = answer.error {
            return Ruling {
                verdict: Verdict::Refuse(refusal.message.unwrap_or_else(|| "refused".into())),
                cache_for: holds(refusal.cache_seconds),
            };
        }
        let result = answer.result.expect("checked: result or error");
        match serde_json::from_str::<Granted>(result.get()) {
            Ok(granted) => Ruling {
                cache_for: holds(granted.cache_seconds),
                verdict: match granted.data {
                    Some(data) if hook == Hook::Publish => Verdict::Rewrite(data),
                    _ => Verdict::Allow,
                },
            },
            Err(e) => Ruling::once(Verdict::Unavailable(format!(
                "the {} hook's result is not an object: {e}",
                hook.as_str()
            ))),
        }
    }
}

impl Authorizer for HttpHooks {
    fn checks(&self, hook: Hook, channel: Option<&Channel>) -> bool {
        let inner = &self.inner;
        let allows = |patterns: &Patterns| channel.is_some_and(|c| patterns.allows(c));
        match hook {
            Hook::Connect => inner.connect.is_some(),
            Hook::Subscribe => inner.subscribe.is_some() && allows(&inner.subscribe_channels),
            Hook::Publish => inner.publish.is_some() && allows(&inner.publish_channels),
            Hook::Request => inner.request.is_some(),
        }
    }

    fn authenticate(&self, attempt: Attempt) -> Decision<Result<Connected, HookError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&attempt).expect("an attempt serializes");
            let answer = inner.call(Hook::Connect, body).await;
            let result = answer.map_err(HookError::Unavailable)?.result()?;
            connected(result.get()).map_err(|e| {
                HookError::Unavailable(format!("the connect hook's result is invalid: {e}"))
            })
        })
    }

    fn check_subscribe(&self, caller: Caller, channel: Channel) -> Decision<Ruling> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let body = check(&caller, &channel, None);
            inner.check(Hook::Subscribe, body).await
        })
    }

    fn check_publish(&self, caller: Caller, event: Event) -> Decision<Ruling> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let body = check(&caller, event.channel(), Some(event.data()));
            inner.check(Hook::Publish, body).await
        })
    }

    fn request(&self, request: Request) -> Decision<Result<Box<RawValue>, HookError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&Asking {
                client: request.caller.client,
                user: &request.caller.identity.subject,
                method: request.method.as_deref(),
                data: &request.data,
            })
            .expect("a request serializes");
            let answer = inner.call(Hook::Request, body).await;
            let result = answer.map_err(HookError::Unavailable)?.result()?;
            let granted: Granted = serde_json::from_str(result.get()).map_err(|e| {
                HookError::Unavailable(format!("the request hook's result is invalid: {e}"))
            })?;
            Ok(granted
                .data
                .unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON")))
        })
    }
}

/// A `POST` of the JSON `body` to `uri`, with the secret's header if there is one.
pub(super) fn post(
    uri: &Uri,
    authorization: Option<&HeaderValue>,
    body: Bytes,
) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(authorization) = authorization {
        headers.insert(AUTHORIZATION, authorization.clone());
    }
    request
}

/// `url`, checked: `http://` with a host (`field` names the setting in errors).
pub(super) fn http_uri(field: &'static str, url: &str) -> Result<Uri, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { field, reason };
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(invalid(format!(
            "{url:?} must be an http:// URL with a host"
        )));
    }
    Ok(uri)
}

/// The `Authorization` header of every call, from `hooks.secret`, if set.
pub(super) fn bearer(config: &HooksConfig) -> Result<Option<HeaderValue>, ConfigError> {
    config
        .secret
        .as_deref()
        .map(|secret| {
            HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| ConfigError::Invalid {
                field: "hooks.secret",
                reason: "must be printable ASCII, as an HTTP header is".to_owned(),
            })
        })
        .transpose()
}

/// The body of a subscribe or publish check.
fn check(caller: &Caller, channel: &Channel, data: Option<&RawValue>) -> Vec<u8> {
    serde_json::to_vec(&Check {
        client: caller.client,
        user: &caller.identity.subject,
        channel,
        data,
    })
    .expect("a check serializes")
}

/// The identity a connect hook's `result` describes.
fn connected(result: &str) -> Result<Connected, String> {
    let result: ConnectResult = serde_json::from_str(result).map_err(|e| e.to_string())?;
    if result.user.is_empty() || result.user.len() > 256 {
        return Err("`user` must be 1 to 256 bytes".to_owned());
    }
    let patterns = |list: Option<Vec<String>>, default: Patterns| match list {
        Some(list) => Patterns::new(&list).map_err(|e| e.to_string()),
        None => Ok(default),
    };
    let join = result
        .channels
        .iter()
        .map(|name| Channel::new(name).map_err(|e| format!("channel {name:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if result
        .info
        .as_ref()
        .is_some_and(|i| i.get().len() > MAX_INFO)
    {
        return Err(format!("`info` is longer than {MAX_INFO} bytes"));
    }
    let identity = Identity {
        subscribe: patterns(result.subscribe, Patterns::All)?,
        publish: patterns(result.publish, Patterns::none())?,
        expires_at: result
            .expires_at
            .map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(at.min(1 << 40))),
        info: result.info.map(Arc::from),
        ..Identity::user(result.user)
    };
    Ok(Connected { identity, join })
}

fn log_transition(hook: Hook, transition: Option<crate::upstream::breaker::Transition>) {
    if let Some(t) = transition {
        tracing::warn!(
            hook = hook.as_str(),
            from = ?t.from,
            to = ?t.to,
            "hook circuit breaker changed state"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_result_becomes_an_identity() {
        let c = connected(
            r#"{"user":"alice","publish":["chat.*"],"channels":["user:alice"],"expires_at":2000000000,"info":{"name":"Alice"}}"#,
        )
        .unwrap();
        assert_eq!(c.identity.subject, "alice");
        assert!(c.identity.may_publish("chat.x") && !c.identity.may_publish("news"));
        assert!(c.identity.may_subscribe("anything"));
        assert_eq!(c.join, [Channel::new("user:alice").unwrap()]);
        assert_eq!(c.identity.info.unwrap().get(), r#"{"name":"Alice"}"#);
        assert!(c.identity.expires_at.is_some());
        for bad in [
            r#"{}"#,
            r#"{"user":""}"#,
            r#"{"user":"a","channels":["bad name"]}"#,
            r#"{"user":"a","subscribe":[""]}"#,
            r#"{"user":"a","admin":true}"#,
        ] {
            assert!(connected(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        for url in ["https://example.com/x", "not a url", "/relative"] {
            let config = HooksConfig {
                connect_url: Some(url.to_owned()),
                ..HooksConfig::default()
            };
            let err = HttpHooks::new(&config).err().expect(url).to_string();
            assert!(err.contains("hooks.connect_url"), "{err}");
        }
        assert!(HttpHooks::new(&HooksConfig::default()).unwrap().is_none());
    }
}
