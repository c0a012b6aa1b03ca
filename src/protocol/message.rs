//! Client-to-server messages: parsing and the errors sent back for bad ones.
//!
//! Client messages are parsed with simd-json in place (the frame payload is already an owned,
//! mutable buffer), with nesting limited to [`MAX_DEPTH`]. A message is a JSON object with a
//! string `type`; the rest depends on the type:
//!
//! | type          | fields                                                                      |
//! |---------------|-----------------------------------------------------------------------------|
//! | `subscribe`   | `data.events`, `data.types` or `data.channels`: array of channel names      |
//! | `unsubscribe` | as `subscribe`                                                              |
//! | `ping`        | none; answered by `pong`                                                    |
//! | `pong`        | none; an application-level answer to a server ping, accepted and ignored    |
//! | `auth`        | `data.token`: a JWT or key; answered by `auth_response`                     |
//! | `publish`     | `data`: one event `{"type", "data"}` or an array, as `POST /api/v1/publish` |
//!
//! A subscribe or unsubscribe names at most as many channels as a connection may hold
//! (`too_many_channels` otherwise). Any message may carry a `correlation_id` (string or number, top level or in `data`) that
//! the reply echoes.

use serde_json::value::RawValue;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::code::ErrorCode;

/// Deepest nesting of arrays and objects accepted in a client message.
pub const MAX_DEPTH: usize = 32;

/// Longest `correlation_id` accepted, in bytes of JSON.
pub const MAX_CORRELATION_ID_LEN: usize = 256;

/// The list keys a subscribe or unsubscribe may use, in the order they are looked for:
/// SigmaVault's documented `events`, the `types` its server reads, and Skreaver's `channels`.
pub const LIST_KEYS: [&str; 3] = ["events", "types", "channels"];

/// A request's `correlation_id` (a JSON string or number), echoed verbatim in the reply.
#[derive(Debug, Clone)]
pub struct CorrelationId(Box<RawValue>);

impl CorrelationId {
    /// The id as raw JSON.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// An id a dialect builds itself (Socket.IO's namespace and ack id, for one).
    pub(crate) fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl PartialEq for CorrelationId {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for CorrelationId {}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Subscribe to channels.
    Subscribe(ChannelList),
    /// Unsubscribe from channels.
    Unsubscribe(ChannelList),
    /// Application-level ping; answered by `pong`.
    Ping {
        /// Echoed in the reply.
        correlation_id: Option<CorrelationId>,
    },
    /// Application-level pong; ignored.
    Pong,
    /// Credentials: the first message when a token is required, or a refresh later.
    Auth {
        /// The token as sent.
        token: String,
        /// Echoed in the reply.
        correlation_id: Option<CorrelationId>,
    },
    /// A request for the application to answer (the request hook): a Skreaver `request`,
    /// answered with a `response` or an `error` with the same `correlation_id`; or a
    /// Socket.IO event that is not sigmahub's own, answered by its ack, if it asked for one.
    Request {
        /// What it asks for: the Socket.IO event's name; `None` for a Skreaver request.
        method: Option<String>,
        /// The request's `data`, as JSON.
        data: Option<String>,
        /// Echoed in the answer.
        correlation_id: Option<CorrelationId>,
    },
    /// A Skreaver `ack` of something the server sent; accepted and ignored.
    Ack,
    /// A Socket.IO namespace connect (`40`): the client's credentials, if its `auth`
    /// payload carries a `token`; otherwise the upgrade's (or none). Answered with the
    /// namespace's connect packet, or a connect error.
    Connect {
        /// The token of the connect's `auth` payload.
        token: Option<String>,
        /// The namespace, in the dialect's reply address (see `CorrelationId`); `None` for
        /// the main namespace.
        correlation_id: Option<CorrelationId>,
    },
    /// The client leaves: the whole connection (`namespace: None`, an Engine.IO close or a
    /// disconnect of the main namespace), or one Socket.IO namespace, whose channels it
    /// then leaves.
    Disconnect {
        /// The namespace left, if not the main one.
        namespace: Option<String>,
    },
    /// Who is subscribed to a channel that keeps presence; answered with a
    /// `presence_response` (or an `error`) with the same `correlation_id`.
    Presence {
        /// The channel, as sent.
        channel: String,
        /// Echoed in the reply.
        correlation_id: Option<CorrelationId>,
    },
    /// Events to publish, where the client's permissions allow it.
    Publish {
        /// `data` re-encoded as JSON, in the form of a publish body (see
        /// [`crate::protocol::publish`]).
        body: String,
        /// Echoed in the reply.
        correlation_id: Option<CorrelationId>,
    },
}

/// The channel list of a subscribe or unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelList {
    /// The names as sent, not yet validated.
    pub channels: Vec<String>,
    /// Echoed in the reply.
    pub correlation_id: Option<CorrelationId>,
    /// Where a reconnecting client left off (`data.since`, `data.epoch`; subscribe only).
    pub resume: Option<Resume>,
}

/// A reconnecting client's last positions: `"since": {"orders": 41}` and the `"epoch"` the
/// offsets belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The epoch of the offsets, as the server announced it (welcome, `subscribe_response`).
    /// Without it the offsets are taken to be of the current epoch.
    pub epoch: Option<String>,
    /// Channel name (as sent) and the offset of the last event the client saw on it.
    pub since: Vec<(String, u64)>,
}

/// Most channels one `since` may name.
pub const MAX_RESUME_CHANNELS: usize = 256;

/// Why a client message was refused; sent back as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MessageError {
    /// Stable machine-readable code (see the protocol docs).
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request's correlation id, when it could be read.
    pub correlation_id: Option<CorrelationId>,
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> MessageError {
    MessageError {
        code,
        message: message.into(),
        correlation_id: None,
    }
}

/// Parses one client text message. `payload` is used as simd-json's scratch space.
///
/// A subscribe or unsubscribe may name at most `max_channels` channels (the server passes
/// `max_subscriptions_per_connection`: a longer list can never succeed); a longer one is
/// refused whole with `too_many_channels`, before any name is copied, so that the work
/// and memory a request costs stay in proportion to what it can do.
pub fn parse(payload: &mut [u8], max_channels: usize) -> Result<ClientMessage, MessageError> {
    parse_as(Grammar::SigmaVault, payload, max_channels)
}

/// Which messages [`parse_as`] accepts, and where it looks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// The messages in the table of the [module docs](self).
    SigmaVault,
    /// Skreaver's too (seed 004): `request` and `ack`, and a subscribe's `channels` at
    /// the top level (`{"type":"subscribe","channels":[…]}`) as well as in `data`.
    Skreaver,
}

/// [`parse`], for the messages of `grammar`.
pub fn parse_as(
    grammar: Grammar,
    payload: &mut [u8],
    max_channels: usize,
) -> Result<ClientMessage, MessageError> {
    let mut buffers = simd_json::Buffers::with_max_depth(payload.len(), MAX_DEPTH);
    let value = simd_json::to_borrowed_value_with_buffers(payload, &mut buffers).map_err(|e| {
        error(
            ErrorCode::InvalidJson,
            format!("message is not valid JSON: {e}"),
        )
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| error(ErrorCode::InvalidMessage, "message must be a JSON object"))?;
    let data = object.get("data");
    let correlation_id = correlation_id(object.get("correlation_id"))
        .or_else(|| correlation_id(data.and_then(|d| d.get("correlation_id"))));
    let with_id = |mut e: MessageError| {
        e.correlation_id = correlation_id.clone();
        e
    };
    let kind = match object.get("type") {
        None => {
            return Err(with_id(error(
                ErrorCode::MissingType,
                "message has no `type`",
            )))
        }
        Some(t) => t
            .as_str()
            .ok_or_else(|| with_id(error(ErrorCode::InvalidMessage, "`type` must be a string")))?,
    };
    match kind {
        "subscribe" | "unsubscribe" => {
            // Skreaver's reference server reads the list at the top level too.
            let lists = match (grammar, data) {
                (Grammar::Skreaver, None) => Some(&value),
                (Grammar::Skreaver, Some(d)) if !LIST_KEYS.iter().any(|k| d.get(*k).is_some()) => {
                    Some(&value)
                }
                _ => data,
            };
            let channels = channel_list(kind, lists, max_channels).map_err(with_id)?;
            let resume = match kind {
                "subscribe" => resume(data).map_err(with_id)?,
                _ => None,
            };
            let list = ChannelList {
                channels,
                correlation_id,
                resume,
            };
            Ok(if kind == "subscribe" {
                ClientMessage::Subscribe(list)
            } else {
                ClientMessage::Unsubscribe(list)
            })
        }
        "ping" => Ok(ClientMessage::Ping { correlation_id }),
        "pong" => Ok(ClientMessage::Pong),
        "auth" => {
            let token = data
                .and_then(|d| d.get("token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    with_id(error(
                        ErrorCode::InvalidMessage,
                        "auth needs `data.token`: a string",
                    ))
                })?;
            Ok(ClientMessage::Auth {
                token: token.to_owned(),
                correlation_id,
            })
        }
        "publish" => {
            let body =
                match data {
                    Some(d) if d.is_object() || d.is_array() => d.encode(),
                    _ => return Err(with_id(error(
                        ErrorCode::InvalidMessage,
                        "publish needs `data`: an event {\"type\", \"data\"} or an array of them",
                    ))),
                };
            Ok(ClientMessage::Publish {
                body,
                correlation_id,
            })
        }
        "presence" => {
            // Skreaver's messages name their channel at the top level.
            let channel = data
                .and_then(|d| d.get("channel"))
                .or_else(|| value.get("channel"))
                .and_then(|c| c.as_str())
                .ok_or_else(|| {
                    with_id(error(
                        ErrorCode::InvalidMessage,
                        "presence needs `data.channel`: a channel name",
                    ))
                })?;
            Ok(ClientMessage::Presence {
                channel: truncate(channel, 256).to_owned(),
                correlation_id,
            })
        }
        "request" if grammar == Grammar::Skreaver => Ok(ClientMessage::Request {
            method: None,
            data: data.map(|d| d.encode()),
            correlation_id,
        }),
        "ack" if grammar == Grammar::Skreaver => Ok(ClientMessage::Ack),
        other => Err(with_id(error(
            ErrorCode::UnknownType,
            format!("unknown message type {:?}", truncate(other, 64)),
        ))),
    }
}

pub(crate) fn channel_list(
    kind: &str,
    data: Option<&BorrowedValue<'_>>,
    max_channels: usize,
) -> Result<Vec<String>, MessageError> {
    let missing = || {
        error(
            ErrorCode::InvalidMessage,
            format!("{kind} needs `data.events` (or `data.types`, `data.channels`): an array of channel names"),
        )
    };
    let data = data.ok_or_else(missing)?;
    let (key, list) = LIST_KEYS
        .iter()
        .find_map(|k| data.get(*k).map(|v| (*k, v)))
        .ok_or_else(missing)?;
    let items = list.as_array().ok_or_else(|| {
        error(
            ErrorCode::InvalidMessage,
            format!("`data.{key}` must be an array"),
        )
    })?;
    channel_names(kind, &format!("data.{key}"), items, max_channels)
}

/// The channel names in `items` (the list at `place` in a `kind` message), at most
/// `max_channels` of them.
pub(crate) fn channel_names(
    kind: &str,
    place: &str,
    items: &[BorrowedValue<'_>],
    max_channels: usize,
) -> Result<Vec<String>, MessageError> {
    if items.len() > max_channels {
        return Err(error(
            ErrorCode::TooManyChannels,
            format!(
                "a {kind} may name at most {max_channels} channels (max_subscriptions_per_connection); this one named {}, and nothing was changed",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_owned).ok_or_else(|| {
                error(
                    ErrorCode::InvalidMessage,
                    format!("`{place}[{i}]` must be a string"),
                )
            })
        })
        .collect()
}

/// `data.since` and `data.epoch`, if given.
pub(crate) fn resume(data: Option<&BorrowedValue<'_>>) -> Result<Option<Resume>, MessageError> {
    let Some(since) = data.and_then(|d| d.get("since")) else {
        return Ok(None);
    };
    let since = since.as_object().ok_or_else(|| {
        error(
            ErrorCode::InvalidMessage,
            "`data.since` must be an object of channel names to offsets",
        )
    })?;
    if since.len() > MAX_RESUME_CHANNELS {
        return Err(error(
            ErrorCode::InvalidMessage,
            format!("`data.since` may name at most {MAX_RESUME_CHANNELS} channels"),
        ));
    }
    let since = since
        .iter()
        .map(|(channel, offset)| {
            offset
                .as_u64()
                .map(|o| (channel.to_string(), o))
                .ok_or_else(|| {
                    error(
                        ErrorCode::InvalidMessage,
                        format!(
                            "`data.since.{}` must be a non-negative integer offset",
                            truncate(channel, 64)
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let epoch = match data.and_then(|d| d.get("epoch")) {
        None => None,
        Some(e) => Some(
            e.as_str()
                .filter(|e| e.len() <= 64)
                .ok_or_else(|| {
                    error(
                        ErrorCode::InvalidMessage,
                        "`data.epoch` must be a string of at most 64 bytes",
                    )
                })?
                .to_owned(),
        ),
    };
    Ok(Some(Resume { epoch, since }))
}

fn correlation_id(value: Option<&BorrowedValue<'_>>) -> Option<CorrelationId> {
    let value = value?;
    if !(value.is_str() || value.is_number()) {
        return None;
    }
    let json = value.encode();
    if json.len() > MAX_CORRELATION_ID_LEN {
        return None;
    }
    RawValue::from_string(json).ok().map(CorrelationId)
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ClientMessage, MessageError> {
        parse(&mut s.as_bytes().to_vec(), 50)
    }

    #[test]
    fn presence_names_its_channel() {
        assert_eq!(
            parse_str(r#"{"type":"presence","data":{"channel":"room.blue"},"correlation_id":"p"}"#)
                .unwrap(),
            ClientMessage::Presence {
                channel: "room.blue".to_owned(),
                correlation_id: Some(CorrelationId::from_raw(
                    RawValue::from_string(r#""p""#.to_owned()).unwrap()
                )),
            }
        );
        let e = parse_str(r#"{"type":"presence","data":{}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn auth_and_publish_carry_their_payloads() {
        match parse_str(r#"{"type":"auth","data":{"token":"abc"},"correlation_id":1}"#).unwrap() {
            ClientMessage::Auth {
                token,
                correlation_id,
            } => {
                assert_eq!(token, "abc");
                assert_eq!(correlation_id.unwrap().as_raw().get(), "1");
            }
            other => panic!("{other:?}"),
        }
        let e = parse_str(r#"{"type":"auth","data":{"token":7}}"#).unwrap_err();
        assert_eq!(e.code, "invalid_message");
        match parse_str(r#"{"type":"publish","data":{"type":"chat","data":{"n":1}}}"#).unwrap() {
            ClientMessage::Publish { body, .. } => {
                let events = crate::protocol::publish::parse(body.as_bytes()).unwrap();
                assert_eq!(events[0].channel().as_str(), "chat");
            }
            other => panic!("{other:?}"),
        }
        let e = parse_str(r#"{"type":"publish","data":"x"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_message");
    }

    fn channels(m: ClientMessage) -> Vec<String> {
        match m {
            ClientMessage::Subscribe(l) | ClientMessage::Unsubscribe(l) => l.channels,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_three_list_spellings_are_read() {
        for key in LIST_KEYS {
            let m = parse_str(&format!(
                r#"{{"type":"subscribe","data":{{"{key}":["a","b"]}}}}"#
            ))
            .unwrap();
            assert_eq!(channels(m), ["a", "b"]);
        }
    }

    #[test]
    fn correlation_id_is_kept_from_top_level_or_data() {
        let m = parse_str(r#"{"type":"unsubscribe","correlation_id":"r1","data":{"channels":[]}}"#)
            .unwrap();
        let ClientMessage::Unsubscribe(l) = m else {
            panic!()
        };
        assert_eq!(l.correlation_id.unwrap().as_raw().get(), r#""r1""#);
        let m = parse_str(r#"{"type":"ping","data":{"correlation_id":42}}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Ping {
                correlation_id: Some(CorrelationId(RawValue::from_string("42".into()).unwrap()))
            }
        );
    }

    #[test]
    fn bad_messages_get_their_codes() {
        let cases = [
            ("not json", "invalid_json"),
            ("{\"type\":", "invalid_json"),
            ("[1,2]", "invalid_message"),
            ("{}", "missing_type"),
            (r#"{"type":5}"#, "invalid_message"),
            (r#"{"type":"launch"}"#, "unknown_type"),
            (r#"{"type":"subscribe"}"#, "invalid_message"),
            (
                r#"{"type":"subscribe","data":{"events":"a"}}"#,
                "invalid_message",
            ),
            (
                r#"{"type":"subscribe","data":{"events":["a",1]}}"#,
                "invalid_message",
            ),
        ];
        for (input, code) in cases {
            assert_eq!(parse_str(input).unwrap_err().code, code, "{input}");
        }
    }

    #[test]
    fn a_list_longer_than_the_allowance_is_refused_whole() {
        let names: Vec<String> = (0..51).map(|i| format!("c{i}")).collect();
        for kind in ["subscribe", "unsubscribe"] {
            let m =
                serde_json::json!({"type": kind, "correlation_id": 7, "data": {"events": names}});
            let e = parse_str(&m.to_string()).unwrap_err();
            assert_eq!(e.code, "too_many_channels");
            assert!(e.message.contains("51"), "{}", e.message);
            assert_eq!(e.correlation_id.unwrap().as_raw().get(), "7");
            let m = serde_json::json!({"type": kind, "data": {"events": &names[..50]}});
            assert_eq!(channels(parse_str(&m.to_string()).unwrap()).len(), 50);
        }
    }

    #[test]
    fn errors_keep_the_correlation_id() {
        let e = parse_str(r#"{"type":"launch","correlation_id":"x"}"#).unwrap_err();
        assert_eq!(e.correlation_id.unwrap().as_raw().get(), r#""x""#);
    }

    #[test]
    fn nesting_bombs_are_refused() {
        let bomb = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_str(&bomb).unwrap_err().code, "invalid_json");
        let ok = format!(
            r#"{{"type":"ping","x":{}1{}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert!(parse_str(&ok).is_ok());
    }
}
