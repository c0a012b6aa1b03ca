//! Hooks into the application: who a client is, whether it may subscribe to or publish on
//! a channel, and the answers to its requests, decided by the application's own code
//! rather than by a token's claims alone (seed 004's `AuthHandler`, Centrifugo's proxy).
//!
//! - An embedder implements [`Authorizer`] and gives it to
//!   [`Server::bind_with`](crate::Server::bind_with).
//! - The binary's `[hooks]` section calls the application's backend over HTTP instead (see
//!   [`HttpHooks`]), with a timeout and a circuit breaker per hook.
//!
//! Every check is asked only where the authorizer says it wants it ([`Authorizer::checks`]),
//! so a server with no hooks, or a channel outside them, takes the synchronous path it
//! always took. Answers to subscribe and publish checks may be cached per user and channel
//! ([`Ruling::cache_for`]). When the application fails to answer ([`Verdict::Unavailable`],
//! [`HookError::Unavailable`]), `hooks.on_failure` decides: refuse (the default) or allow.

mod cache;
mod http;
pub mod webhook;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::header::{HeaderMap, HeaderName, COOKIE};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use self::http::HttpHooks;
use crate::auth::permissions::Identity;
use crate::auth::AuthError;
use crate::broker::Completion;
use crate::config::{ConfigError, HooksConfig};
use crate::engine::client::Rejection;
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::protocol::code::RejectReason;
use crate::upstream::breaker::BreakerState;
use cache::{Checked, VerdictCache};

/// What an [`Authorizer`] returns: a future the connection awaits (other connections go
/// on meanwhile). Return `Box::pin(std::future::ready(answer))` when the answer is known.
pub type Decision<T> = BoxFuture<'static, T>;

/// The calls an [`Authorizer`] may want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Who a client is, when sigmahub's own checks do not know it.
    Connect,
    /// Whether a client may subscribe to a channel.
    Subscribe,
    /// Whether a client may publish an event (and in what form).
    Publish,
    /// A client's request (a Skreaver `request`, a Socket.IO event with an ack that is
    /// not one of sigmahub's own).
    Request,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Self; 4] = [Self::Connect, Self::Subscribe, Self::Publish, Self::Request];

    /// The hook's name, as in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Request => "request",
        }
    }
}

/// A client connecting, as the application is shown it.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The connection's id (as the control API names it).
    pub client: u64,
    /// Its address (behind trusted proxies, the client's).
    pub address: IpAddr,
    /// The protocol it speaks: `sigmavault`, `socketio` or `skreaver`.
    pub dialect: &'static str,
    /// The token it presented, if any.
    pub token: Option<String>,
    /// The headers of its upgrade request that `hooks.connect_headers` names and it sent.
    #[serde(skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// Request headers shown to the connect hook: lowercase name to value (a header sent more
/// than once has its values joined with `, `, or `; ` for `cookie`).
pub type Headers = std::collections::BTreeMap<String, String>;

/// Who the application says a connecting client is.
#[derive(Debug, Clone)]
pub struct Connected {
    /// Its identity: subject, grant, expiry and `info`. Build it with [`Identity::user`].
    pub identity: Identity,
    /// Channels it joins at once, whatever its grant (like a server-side subscribe).
    pub join: Vec<Channel>,
}

/// A connected client, as a hook is shown it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The connection's id.
    pub client: u64,
    /// Who it is.
    pub identity: Arc<Identity>,
}

/// A client's request for the application to answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who asks.
    pub caller: Caller,
    /// What it asks for: the Socket.IO event's name; `None` in Skreaver's grammar, whose
    /// requests carry only `data`.
    pub method: Option<String>,
    /// The request's data, as JSON (`null` when it sent none).
    pub data: Box<RawValue>,
}

/// Why the application did not say yes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// It said no; the reason is shown to the client.
    #[error("{0}")]
    Refused(String),
    /// It could not be asked or did not answer in time (or its breaker is open).
    #[error("the application did not answer: {0}")]
    Unavailable(String),
    /// It answers no such call.
    #[error("this server answers no requests")]
    NotSupported,
}

/// The application's answer to a subscribe or publish check.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Yes.
    Allow,
    /// Yes, with this `data` in place of the event's (publish only; a subscribe takes it
    /// as [`Verdict::Allow`]). Never cached.
    Rewrite(Box<RawValue>),
    /// No; the reason is shown to the client.
    Refuse(String),
    /// It could not be asked or did not answer in time; `hooks.on_failure` decides. Never
    /// cached.
    Unavailable(String),
}

/// A [`Verdict`] and how long it holds for the same user and channel.
#[derive(Debug, Clone)]
pub struct Ruling {
    /// The answer.
    pub verdict: Verdict,
    /// How long the same user gets the same answer for the same channel without asking
    /// again; zero asks every time.
    pub cache_for: Duration,
}

impl Ruling {
    /// `verdict`, not cached.
    pub fn once(verdict: Verdict) -> Self {
        Self {
            verdict,
            cache_for: Duration::ZERO,
        }
    }
}

/// The application's side of authentication and authorisation. Every method has a
/// default that says nothing: implement the ones [`checks`](Self::checks) names.
///
/// Calls are made from the connection's task and awaited there, so a slow answer delays
/// that connection's next messages, never another connection. Bound their time yourself
/// (the HTTP hooks time out after `hooks.timeout`) and answer [`Verdict::Unavailable`] or
/// [`HookError::Unavailable`] when the application cannot say.
///
/// ```
/// use std::sync::Arc;
/// use sigmahub::hooks::{Authorizer, Caller, Decision, Hook, Ruling, Verdict};
/// use sigmahub::Channel;
///
/// /// Only the user named after a `user:` channel may subscribe to it.
/// struct OwnChannels;
///
/// impl Authorizer for OwnChannels {
///     fn checks(&self, hook: Hook, channel: Option<&Channel>) -> bool {
///         hook == Hook::Subscribe && channel.is_some_and(|c| c.starts_with("user:"))
///     }
///
///     fn check_subscribe(&self, caller: Caller, channel: Channel) -> Decision<Ruling> {
///         let own = channel.strip_prefix("user:") == Some(caller.identity.subject.as_str());
///         let verdict = match own {
///             true => Verdict::Allow,
///             false => Verdict::Refuse("not your channel".into()),
///         };
///         Box::pin(std::future::ready(Ruling::once(verdict)))
///     }
/// }
/// # let _: Arc<dyn Authorizer> = Arc::new(OwnChannels);
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Whether this authorizer wants `hook` asked (for `channel`, for subscribe and
    /// publish). Called on every subscribe and publish, so keep it cheap. Default: none.
    fn checks(&self, hook: Hook, channel: Option<&Channel>) -> bool {
        let _ = (hook, channel);
        false
    }

    /// Who a connecting client is. Asked when [`checks`](Self::checks) wants
    /// [`Hook::Connect`] and sigmahub's own checks do not know the client: it presented
    /// no token, or one that is neither a publish key nor a JWT sigmahub verifies.
    fn authenticate(&self, attempt: Attempt) -> Decision<Result<Connected, HookError>> {
        let _ = attempt;
        Box::pin(std::future::ready(Err(HookError::NotSupported)))
    }

    /// Whether `caller` may subscribe to `channel`. Asked after its grant allowed it.
    fn check_subscribe(&self, caller: Caller, channel: Channel) -> Decision<Ruling> {
        let _ = (caller, channel);
        Box::pin(std::future::ready(Ruling::once(Verdict::Allow)))
    }

    /// Whether `caller` may publish `event`, and in what form. Asked after its grant
    /// allowed the channel, once per event of a publish; one refusal publishes none.
    fn check_publish(&self, caller: Caller, event: Event) -> Decision<Ruling> {
        let _ = (caller, event);
        Box::pin(std::future::ready(Ruling::once(Verdict::Allow)))
    }

    /// The answer to a client's request: the `data` of its `response` (or its ack).
    fn request(&self, request: Request) -> Decision<Result<Box<RawValue>, HookError>> {
        let _ = request;
        Box::pin(std::future::ready(Err(HookError::NotSupported)))
    }
}

/// What a client is told when the application does not answer a hook.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Refuse: a connect is closed with 1013 (try again later), a subscribe or publish is
    /// refused with `unavailable`. The safe default.
    #[default]
    Refuse,
    /// Allow: a connect goes on as the server's anonymous client, a subscribe or publish
    /// is allowed as if the application had said yes. A request still fails.
    Allow,
}

/// The server's hooks: an [`Authorizer`] (or none), the failure policy, the cache of its
/// answers and their tally.
pub(crate) struct Hooks {
    authorizer: Option<Arc<dyn Authorizer>>,
    /// The same, when it is the binary's HTTP hooks: for their breakers' states.
    http: Option<HttpHooks>,
    on_failure: FailurePolicy,
    cache: VerdictCache,
    tally: Arc<Tally>,
    /// The headers shown to the connect hook (`hooks.connect_headers`).
    connect_headers: Box<[HeaderName]>,
}

/// What a hook answered, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Yes.
    Allowed,
    /// Yes, with other data (publish).
    Rewritten,
    /// No.
    Refused,
    /// No answer: a failure.
    Unavailable,
    /// Answered from the cache, without asking.
    Cached,
}

impl Answer {
    /// Every answer, in the order of [`Tally`]'s columns.
    pub(crate) const ALL: [Self; 5] = [
        Self::Allowed,
        Self::Rewritten,
        Self::Refused,
        Self::Unavailable,
        Self::Cached,
    ];

    /// The answer's label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Rewritten => "rewritten",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::Cached => "cached",
        }
    }

    fn of(verdict: &Verdict) -> Self {
        match verdict {
            Verdict::Allow => Self::Allowed,
            Verdict::Rewrite(_) => Self::Rewritten,
            Verdict::Refuse(_) => Self::Refused,
            Verdict::Unavailable(_) => Self::Unavailable,
        }
    }

    fn of_error(error: &HookError) -> Self {
        match error {
            HookError::Refused(_) | HookError::NotSupported => Self::Refused,
            HookError::Unavailable(_) => Self::Unavailable,
        }
    }
}

/// How many answers of each kind each hook gave.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: [[std::sync::atomic::AtomicU64; Answer::ALL.len()]; Hook::ALL.len()],
}

impl Tally {
    fn count(&self, hook: Hook, answer: Answer) {
        let (h, a) = (hook as usize, answer as usize);
        self.counts[h][a].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every hook and answer, with its count.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (Hook, Answer, u64)> + '_ {
        Hook::ALL.into_iter().flat_map(move |hook| {
            Answer::ALL.into_iter().map(move |answer| {
                let n = self.counts[hook as usize][answer as usize]
                    .load(std::sync::atomic::Ordering::Relaxed);
                (hook, answer, n)
            })
        })
    }
}

/// Who a client is, and the channels the application has it join at once.
pub(crate) type Identified = Result<(Arc<Identity>, Vec<Channel>), AuthError>;

/// A publish as the application checked it: the events to publish, or the index of the
/// first it refused and why.
pub(crate) type CheckedPublish = Result<Vec<Event>, (usize, HookError)>;

/// One channel a subscribe check refused, and why.
pub(crate) struct Refused {
    pub(crate) channel: String,
    pub(crate) error: HookError,
}

impl Refused {
    /// The subscribe reply's rejection of the channel.
    pub(crate) fn rejection(&self) -> Rejection {
        match &self.error {
            HookError::Unavailable(_) => Rejection::new(
                &self.channel,
                RejectReason::Unavailable,
                "the application did not answer; try again later",
            ),
            e => Rejection::new(&self.channel, RejectReason::Forbidden, e.to_string()),
        }
    }
}

impl Hooks {
    /// The binary's hooks: the HTTP calls `config` sets up, if any.
    pub(crate) fn from_config(config: &HooksConfig) -> Result<Self, ConfigError> {
        let http = HttpHooks::new(config)?;
        let authorizer = http
            .clone()
            .map(|hooks| Arc::new(hooks) as Arc<dyn Authorizer>);
        Ok(Self {
            http,
            ..Self::new(authorizer, config)
        })
    }

    /// An embedder's `authorizer`, under `config`'s failure policy and cache size.
    pub(crate) fn new(authorizer: Option<Arc<dyn Authorizer>>, config: &HooksConfig) -> Self {
        Self {
            authorizer,
            http: None,
            on_failure: config.on_failure,
            cache: VerdictCache::new(config.cache_size),
            tally: Arc::default(),
            connect_headers: config
                .connect_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    /// The headers of `request` that the connect hook is shown (`hooks.connect_headers`),
    /// those it sent; none without a connect hook.
    pub(crate) fn forwarded(&self, request: &HeaderMap) -> Headers {
        let mut forwarded = Headers::new();
        if !self.authenticates() {
            return forwarded;
        }
        for name in &*self.connect_headers {
            let separator = if *name == COOKIE { "; " } else { ", " };
            let mut values = request.get_all(name).iter();
            let Some(first) = values.next() else {
                continue;
            };
            let mut value = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for more in values {
                value.push_str(separator);
                value.push_str(&String::from_utf8_lossy(more.as_bytes()));
            }
            forwarded.insert(name.as_str().to_owned(), value);
        }
        forwarded
    }

    /// The state of each HTTP hook's circuit breaker.
    pub(crate) fn breakers(&self) -> Vec<(Hook, BreakerState)> {
        self.http
            .as_ref()
            .map(HttpHooks::breakers)
            .unwrap_or_default()
    }

    /// How the hooks have answered: nothing when there are none.
    pub(crate) fn tally(&self) -> Option<&Tally> {
        self.authorizer.as_ref().map(|_| &*self.tally)
    }

    fn wants(&self, hook: Hook, channel: Option<&Channel>) -> Option<&Arc<dyn Authorizer>> {
        self.authorizer.as_ref().filter(|a| a.checks(hook, channel))
    }

    /// Whether clients sigmahub's own checks do not know are asked about.
    pub(crate) fn authenticates(&self) -> bool {
        self.wants(Hook::Connect, None).is_some()
    }

    /// Asks the application who a connecting client is. `anonymous` is what a failure
    /// admits it as under [`FailurePolicy::Allow`].
    pub(crate) fn authenticate(
        &self,
        attempt: Attempt,
        anonymous: Arc<Identity>,
    ) -> Decision<Identified> {
        let asked = self
            .authorizer
            .as_ref()
            .expect("asked only when it authenticates")
            .authenticate(attempt);
        let on_failure = self.on_failure;
        let tally = self.tally.clone();
        Box::pin(async move {
            let answered = asked.await;
            tally.count(
                Hook::Connect,
                answered
                    .as_ref()
                    .map_or_else(Answer::of_error, |_| Answer::Allowed),
            );
            match answered {
                Ok(connected) => Ok((Arc::new(connected.identity), connected.join)),
                Err(HookError::Refused(reason)) => Err(AuthError::Refused(reason)),
                Err(HookError::Unavailable(why)) if on_failure == FailurePolicy::Allow => {
                    tracing::warn!(why, "connect hook failed; admitted as anonymous");
                    Ok((anonymous, Vec::new()))
                }
                Err(HookError::Unavailable(why)) => Err(AuthError::Unavailable(why)),
                Err(HookError::NotSupported) => Err(AuthError::Refused(
                    "this server authenticates no such client".to_owned(),
                )),
            }
        })
    }

    /// Checks `caller`'s subscribe to each of `channels` the application wants to see:
    /// answers the refused ones, at once when the cache (or nothing) answers.
    pub(crate) fn check_subscribe(
        &self,
        caller: &Caller,
        channels: &[Channel],
    ) -> Completion<Vec<Refused>> {
        let mut refused = Vec::new();
        let mut asked = Vec::new();
        for channel in channels {
            let Some(authorizer) = self.wants(Hook::Subscribe, Some(channel)) else {
                continue;
            };
            let key = (Hook::Subscribe, &*caller.identity.subject, channel);
            let cached = self.cache.get(key);
            if cached.is_some() {
                self.tally.count(Hook::Subscribe, Answer::Cached);
            }
            match cached {
                Some(Checked::Allowed) => {}
                Some(Checked::Refused(reason)) => refused.push(Refused {
                    channel: channel.to_string(),
                    error: HookError::Refused(reason),
                }),
                None => asked.push((
                    channel.clone(),
                    authorizer.check_subscribe(caller.clone(), channel.clone()),
                )),
            }
        }
        if asked.is_empty() {
            return Completion::Ready(refused);
        }
        let cache = self.cache.clone();
        let tally = self.tally.clone();
        let subject = caller.identity.subject.clone();
        let on_failure = self.on_failure;
        Completion::pending(async move {
            let (channels, rulings): (Vec<_>, Vec<_>) = asked.into_iter().unzip();
            let rulings = futures_util::future::join_all(rulings).await;
            for (channel, ruling) in channels.into_iter().zip(rulings) {
                tally.count(Hook::Subscribe, Answer::of(&ruling.verdict));
                cache.put((Hook::Subscribe, &subject, &channel), &ruling);
                let error = match ruling.verdict {
                    Verdict::Allow | Verdict::Rewrite(_) => continue,
                    Verdict::Refuse(reason) => HookError::Refused(reason),
                    Verdict::Unavailable(_) if on_failure == FailurePolicy::Allow => continue,
                    Verdict::Unavailable(why) => HookError::Unavailable(why),
                };
                refused.push(Refused {
                    channel: channel.to_string(),
                    error,
                });
            }
            refused
        })
    }

    /// Checks each of `caller`'s `events` the application wants to see, in order: the
    /// events as they are to be published, or the index of the first refused and why.
    pub(crate) fn check_publish(
        &self,
        caller: &Caller,
        events: Vec<Event>,
    ) -> Completion<CheckedPublish> {
        let mut asked = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let Some(authorizer) = self.wants(Hook::Publish, Some(event.channel())) else {
                continue;
            };
            let key = (Hook::Publish, &*caller.identity.subject, event.channel());
            let cached = self.cache.get(key);
            if cached.is_some() {
                self.tally.count(Hook::Publish, Answer::Cached);
            }
            match cached {
                Some(Checked::Allowed) => {}
                Some(Checked::Refused(reason)) => {
                    return Completion::Ready(Err((i, HookError::Refused(reason))))
                }
                None => asked.push((i, authorizer.check_publish(caller.clone(), event.clone()))),
            }
        }
        if asked.is_empty() {
            return Completion::Ready(Ok(events));
        }
        let cache = self.cache.clone();
        let tally = self.tally.clone();
        let subject = caller.identity.subject.clone();
        let on_failure = self.on_failure;
        Completion::pending(async move {
            let (indices, rulings): (Vec<_>, Vec<_>) = asked.into_iter().unzip();
            let rulings = futures_util::future::join_all(rulings).await;
            let mut events = events;
            for (i, ruling) in indices.into_iter().zip(rulings) {
                tally.count(Hook::Publish, Answer::of(&ruling.verdict));
                cache.put((Hook::Publish, &subject, events[i].channel()), &ruling);
                match ruling.verdict {
                    Verdict::Allow => {}
                    Verdict::Rewrite(data) => events[i] = events[i].clone().with_data(data),
                    Verdict::Refuse(reason) => return Err((i, HookError::Refused(reason))),
                    Verdict::Unavailable(_) if on_failure == FailurePolicy::Allow => {}
                    Verdict::Unavailable(why) => return Err((i, HookError::Unavailable(why))),
                }
            }
            Ok(events)
        })
    }

    /// Asks the application to answer `request`, if it answers requests.
    pub(crate) fn request(
        &self,
        request: Request,
    ) -> Option<Decision<Result<Box<RawValue>, HookError>>> {
        let asked = self.wants(Hook::Request, None)?.request(request);
        let tally = self.tally.clone();
        Some(Box::pin(async move {
            let answered = asked.await;
            tally.count(
                Hook::Request,
                answered
                    .as_ref()
                    .map_or_else(Answer::of_error, |_| Answer::Allowed),
            );
            answered
        }))
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("authorizer", &self.authorizer.is_some())
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authorizer that authenticates (and says nothing else).
    struct Connects;

    impl Authorizer for Connects {
        fn checks(&self, hook: Hook, _channel: Option<&Channel>) -> bool {
            hook == Hook::Connect
        }
    }

    fn request(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_connect_hook_is_shown_the_headers_named_and_sent() {
        let config = HooksConfig {
            connect_headers: vec![
                "Cookie".into(),
                "X-Forwarded-Host".into(),
                "x-absent".into(),
            ],
            ..HooksConfig::default()
        };
        let hooks = Hooks::new(Some(Arc::new(Connects)), &config);
        let shown = hooks.forwarded(&request(&[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-forwarded-host", "one"),
            ("x-forwarded-host", "two"),
            ("user-agent", "ua"),
        ]));
        let expected: Headers = [
            ("cookie".to_owned(), "a=1; b=2".to_owned()),
            ("x-forwarded-host".to_owned(), "one, two".to_owned()),
        ]
        .into();
        assert_eq!(shown, expected);
        // Without a connect hook nothing is shown.
        let none = Hooks::new(None, &config);
        assert!(none.forwarded(&request(&[("cookie", "a=1")])).is_empty());
    }
}
