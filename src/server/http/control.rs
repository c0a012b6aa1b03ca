//! The control API over HTTP, behind the publish keys (see [`crate::server::control`]):
//!
//! | method | path | body | answer |
//! |--------|------|------|--------|
//! | GET  | `/api/v1/channels` | | `{"channels": [{"channel", "subscribers"}]}` |
//! | GET  | `/api/v1/channels/{channel}/history?since&limit` | | a [`HistoryPage`](crate::server::control::HistoryPage) |
//! | GET  | `/api/v1/channels/{channel}/presence` | | a [`PresenceList`](crate::server::control::PresenceList); 404 if the channel keeps none |
//! | POST | `/api/v1/disconnect` | `{"client"` or `"user", "code"?, "reason"?}` | `{"connections", "nodes"}` |
//! | POST | `/api/v1/subscribe` | `{"client"` or `"user", "channels"}` | `{"connections", "nodes"}` |
//! | POST | `/api/v1/unsubscribe` | `{"client"` or `"user", "channels"}` | `{"connections", "nodes"}` |
//! | POST | `/api/v1/broadcast` | one event with `"channels"` instead of `"type"` | as `/api/v1/publish` |
//! | GET  | `/api/v1/openapi.json` | | the OpenAPI description of the HTTP API (no key needed) |
//!
//! `connections` counts the connections told on every node that answered (`nodes`; in a
//! cluster, those that answered within `cluster::GATHER_WINDOW`); 0 means none matched
//! (the client is gone, or the user has no connection). Channel counts are summed the
//! same way.

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::publish::{json_body, publish_events};
use super::response::{error, json, method_not_allowed};
use super::ResponseBody;
use crate::engine::control::Farewell;
use crate::protocol::channel::Channel;
use crate::protocol::code::ErrorCode;
use crate::protocol::publish;
use crate::server::control::{Control, Target, MAX_HISTORY_PAGE};
use crate::server::Shared;

/// The committed OpenAPI description (`docs/openapi.json`), served as it is.
pub(super) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Events a history page holds when `limit` is not given.
const DEFAULT_HISTORY_PAGE: usize = 100;

/// Who a command is for, as a body names it: exactly one of `client` and `user`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Addressed {
    #[serde(default)]
    client: Option<ClientId>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// A client id as the welcome gives it (a string) or as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientId {
    Number(u64),
    Text(String),
}

impl Addressed {
    fn target(&self) -> Result<Target, String> {
        match (&self.client, &self.user) {
            (Some(ClientId::Number(id)), None) => Ok(Target::Client(*id)),
            (Some(ClientId::Text(id)), None) => id
                .parse()
                .map(Target::Client)
                .map_err(|_| format!("`client` is a client id (a number), not {id:?}")),
            (None, Some(user)) if !user.is_empty() => Ok(Target::User(user.clone())),
            _ => Err(
                "name exactly one of `client` (a client id) and `user` (a token's `sub`)".into(),
            ),
        }
    }

    /// The named channels, each valid.
    fn channels(&self) -> Result<Vec<Channel>, String> {
        let names = match &self.channels {
            Some(names) if !names.is_empty() => names,
            _ => return Err("name the channels: `\"channels\": [\"a\", \"b\"]`".into()),
        };
        names
            .iter()
            .map(|name| Channel::new(name).map_err(|e| format!("channel {name:?}: {e}")))
            .collect()
    }
}

/// What a control command does.
#[derive(Clone, Copy)]
pub(super) enum Order {
    Disconnect,
    Subscribe,
    Unsubscribe,
}

/// A control API route (see the module docs); a channel's name as the path has it,
/// percent-encoded.
pub(super) enum Route<'a> {
    Channels,
    History(&'a str),
    Presence(&'a str),
    Command(Order),
    Broadcast,
}

impl<'a> Route<'a> {
    /// The control route `path` names, if it names one.
    pub(super) fn of(path: &'a str) -> Option<Self> {
        Some(match path {
            "/api/v1/channels" => Self::Channels,
            "/api/v1/disconnect" => Self::Command(Order::Disconnect),
            "/api/v1/subscribe" => Self::Command(Order::Subscribe),
            "/api/v1/unsubscribe" => Self::Command(Order::Unsubscribe),
            "/api/v1/broadcast" => Self::Broadcast,
            _ => {
                let rest = path.strip_prefix("/api/v1/channels/")?;
                match (
                    rest.strip_suffix("/history"),
                    rest.strip_suffix("/presence"),
                ) {
                    (Some(name), _) if !name.is_empty() => Self::History(name),
                    (_, Some(name)) if !name.is_empty() => Self::Presence(name),
                    _ => return None,
                }
            }
        })
    }

    /// The method the route answers.
    fn method(&self) -> &'static str {
        match self {
            Self::Channels | Self::History(_) | Self::Presence(_) => "GET",
            Self::Command(_) | Self::Broadcast => "POST",
        }
    }
}

/// Answers a control route (its publish key already checked).
pub(super) async fn serve<B>(
    shared: &std::sync::Arc<Shared>,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let route = Route::of(&path).expect("routed here for a control path");
    if req.method().as_str() != route.method() {
        return method_not_allowed(route.method());
    }
    match route {
        Route::Channels => channels(shared).await,
        Route::History(name) => history(shared, name, req.uri().query()),
        Route::Presence(name) => presence(shared, name).await,
        Route::Command(order) => command(shared, req, order).await,
        Route::Broadcast => broadcast(shared, req).await,
    }
}

/// The channel a path names (percent-encoded), or why it names none.
fn path_channel(name: &str) -> Result<Channel, String> {
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    Channel::new(&name).map_err(|e| format!("channel {name:?}: {e}"))
}

/// `POST /api/v1/disconnect`, `/subscribe` or `/unsubscribe`.
async fn command<B>(
    shared: &std::sync::Arc<Shared>,
    req: Request<B>,
    order: Order,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = match json_body(shared, req).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let addressed: Addressed = match serde_json::from_slice(&body) {
        Ok(addressed) => addressed,
        Err(e) => return error(ErrorCode::InvalidBody, &e.to_string()),
    };
    let target = match addressed.target() {
        Ok(target) => target,
        Err(message) => return error(ErrorCode::InvalidBody, &message),
    };
    let control = Control::new(shared.clone());
    let told = match order {
        Order::Disconnect => {
            if addressed.channels.is_some() {
                return error(ErrorCode::InvalidBody, "a disconnect takes no `channels`");
            }
            let code = addressed.code.unwrap_or(Farewell::DEFAULT_CODE);
            let reason = addressed.reason.as_deref().unwrap_or(match code {
                Farewell::DEFAULT_CODE => Farewell::DEFAULT_REASON,
                _ => "",
            });
            match Farewell::new(code, reason) {
                Ok(farewell) => control.disconnect(&target, &farewell).await,
                Err(e) => return error(ErrorCode::InvalidBody, &e.to_string()),
            }
        }
        Order::Subscribe | Order::Unsubscribe => {
            if addressed.code.is_some() || addressed.reason.is_some() {
                return error(
                    ErrorCode::InvalidBody,
                    "`code` and `reason` belong to a disconnect",
                );
            }
            let channels = match addressed.channels() {
                Ok(channels) => channels,
                Err(message) => return error(ErrorCode::InvalidBody, &message),
            };
            match order {
                Order::Subscribe => control.subscribe(&target, &channels).await,
                _ => control.unsubscribe(&target, &channels).await,
            }
        }
    };
    json(StatusCode::OK, &told)
}

/// `POST /api/v1/broadcast`: one event to several channels.
async fn broadcast<B>(shared: &Shared, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match json_body(shared, req).await {
        Ok(body) => publish_events(shared, publish::parse_broadcast(&body)).await,
        Err(refused) => refused,
    }
}

/// `GET /api/v1/channels`.
async fn channels(shared: &std::sync::Arc<Shared>) -> Response<ResponseBody> {
    let channels: Vec<_> = Control::new(shared.clone())
        .channels()
        .await
        .into_iter()
        .map(|(channel, subscribers)| {
            serde_json::json!({ "channel": channel, "subscribers": subscribers })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "channels": channels }))
}

/// `GET /api/v1/channels/{channel}/history?since&limit`; `name` is the path's channel,
/// percent-encoded.
fn history(
    shared: &std::sync::Arc<Shared>,
    name: &str,
    query: Option<&str>,
) -> Response<ResponseBody> {
    let channel = match path_channel(name) {
        Ok(channel) => channel,
        Err(message) => return error(ErrorCode::InvalidBody, &message),
    };
    let (mut since, mut limit) = (0u64, DEFAULT_HISTORY_PAGE);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let parsed = match &*key {
            "since" => value.parse().map(|v| since = v).is_ok(),
            "limit" => value
                .parse()
                .ok()
                .filter(|v| (1..=MAX_HISTORY_PAGE).contains(v))
                .map(|v| limit = v)
                .is_some(),
            _ => true,
        };
        if !parsed {
            return error(
                ErrorCode::InvalidBody,
                &format!(
                    "`{key}` must be a number (`since` an offset, `limit` 1 to {MAX_HISTORY_PAGE})"
                ),
            );
        }
    }
    match Control::new(shared.clone()).history(&channel, since, limit) {
        Some(page) => json(StatusCode::OK, &page),
        None => error(
            ErrorCode::NotFound,
            "this server keeps no history (history.size = 0)",
        ),
    }
}

/// `GET /api/v1/channels/{channel}/presence`; `name` is the path's channel,
/// percent-encoded.
async fn presence(shared: &std::sync::Arc<Shared>, name: &str) -> Response<ResponseBody> {
    let channel = match path_channel(name) {
        Ok(channel) => channel,
        Err(message) => return error(ErrorCode::InvalidBody, &message),
    };
    match Control::new(shared.clone()).presence(&channel).await {
        Some(list) => json(StatusCode::OK, &list),
        None => error(
            ErrorCode::NotFound,
            &format!("{channel} keeps no presence: turn it on with [[channels]] presence = true"),
        ),
    }
}

/// `GET /api/v1/openapi.json`.
pub(super) fn openapi() -> Response<ResponseBody> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
        OPENAPI.as_bytes(),
    )));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
