//! Socket.IO (protocol v5, as socket.io 3 and 4 speak it) over Engine.IO 4: what Seneca's
//! frontends (seed 002) and every `socket.io-client` send and expect.
//!
//! Every WebSocket text frame (or long-polling record) is one Engine.IO packet: a digit for
//! its type (`0` open, `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop),
//! then its data. A `4` carries one Socket.IO packet: a digit for its type (`0` connect,
//! `1` disconnect, `2` event, `3` ack, `4` connect error, `5`/`6` binary), an optional
//! namespace (`/admin,`), an optional ack id, then JSON.
//!
//! # How sigmahub maps onto it
//! - The server sends the Engine.IO open packet first, then waits for the client's
//!   namespace connect (`40`, with the `auth` payload of `io(url, {auth})`): that is the
//!   client's authentication, answered with `40{"sid"}` or a connect error `44{"message"}`.
//! - An event published on channel `C` arrives as `42["C",{"type":"C","timestamp":…,
//!   "data":…,"offset":…}]`: `socket.on(C, e => …)` gets the object a SigmaVault client
//!   gets.
//! - `emit('subscribe', {events: […]}, ack)`, `unsubscribe`, `publish`, `auth` and `ping`
//!   are the SigmaVault messages; with an ack callback the reply is the ack (`43<id>[…]`),
//!   without one it is emitted as an event named for the reply (`subscribe_response`,
//!   `error`, …). The welcome is emitted as `connection_established`.
//! - **Namespaces are channel prefixes.** In namespace `/admin`, `orders` is the channel
//!   `/admin/orders`, and an event on channel `/admin/orders` is emitted as `orders` on
//!   `/admin`. A channel whose name has no leading `/` belongs to the main namespace `/`
//!   (the last `/` of a name starting with one splits namespace from event name).
//! - Binary attachments (`45`, `46`, `b…` records) are refused with an `error`: sigmahub
//!   carries JSON.
//!
//! # Reply addresses
//! A reply must go to the namespace (and ack id) of its request. The dialect keeps both in
//! the request's [`CorrelationId`]: a JSON string `"<namespace>,<ack id>"`, either part
//! possibly empty (`",12"`, `"/admin,"`). No address at all means the main namespace and
//! no ack, and for a `pong` an Engine.IO `3`.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::{sigmavault, ServerMessage};
use crate::event::Event;
use crate::frame::{self, FrameBuf, OpCode};
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{
    self, error, ChannelList, ClientMessage, CorrelationId, MessageError, LIST_KEYS, MAX_DEPTH,
};

/// Longest namespace accepted, in bytes.
const MAX_NAMESPACE_LEN: usize = 128;

/// The Engine.IO keep-alive ping (`2`), as a text frame.
pub(crate) fn ping() -> Bytes {
    frame::text(b"2")
}

/// The Engine.IO open packet (`0{…}`), as a text frame: the session id, whether the
/// client may upgrade to WebSocket (only from long-polling), the keep-alive timings and
/// the largest packet accepted.
pub(crate) fn open_packet(
    sid: &str,
    upgrade: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: usize,
) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Open<'a> {
        sid: &'a str,
        upgrades: &'a [&'a str],
        ping_interval: u128,
        ping_timeout: u128,
        max_payload: usize,
    }
    let open = Open {
        sid,
        upgrades: if upgrade { &["websocket"] } else { &[] },
        ping_interval: ping_interval.as_millis(),
        ping_timeout: ping_timeout.as_millis(),
        max_payload,
    };
    let mut buf = FrameBuf::with_capacity(128);
    buf.extend_from_slice(b"0");
    serde_json::to_writer(buf.writer(), &open).expect("serializing to memory cannot fail");
    buf.finish(OpCode::Text)
}

/// The namespace and event name a channel is emitted as: `/admin/orders` is `orders` on
/// `/admin`; a name without a leading `/` (or with no second one) is on the main
/// namespace, whole.
pub(crate) fn split_channel(channel: &str) -> (Option<&str>, &str) {
    match channel.rfind('/') {
        Some(i) if channel.starts_with('/') && i > 1 && i + 1 < channel.len() => {
            (Some(&channel[..i]), &channel[i + 1..])
        }
        _ => (None, channel),
    }
}

/// `42[/nsp,]["name",`: the start of an event packet.
fn event_prefix(buf: &mut FrameBuf, channel: &str) {
    debug_assert!(crate::protocol::channel::validate(channel).is_ok());
    let (namespace, name) = split_channel(channel);
    buf.extend_from_slice(b"42");
    if let Some(namespace) = namespace {
        buf.extend_from_slice(namespace.as_bytes());
        buf.extend_from_slice(b",");
    }
    buf.extend_from_slice(b"[\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\",");
}

/// The frame of `event` stamped `now`, with its `offset` if it has one: the SigmaVault
/// object as the argument of an event named for the channel.
pub(crate) fn event_frame(event: &Event, now: std::time::SystemTime, offset: Option<u64>) -> Bytes {
    let data = event.data().get();
    let channel = event.channel();
    let mut buf = FrameBuf::with_capacity(96 + 2 * channel.len() + data.len());
    event_prefix(&mut buf, channel);
    sigmavault::write_envelope(&mut buf, channel, now, None, offset, |buf| {
        buf.extend_from_slice(data.as_bytes())
    });
    buf.extend_from_slice(b"]");
    buf.finish(OpCode::Text)
}

/// A canonical (SigmaVault) event frame as a Socket.IO event: its payload is already the
/// argument, so only the packet around it is written. A frame that is not a canonical
/// event is emitted as a `message` event.
pub(crate) fn transcode(canonical: &Bytes) -> Bytes {
    let payload = frame::payload_of(canonical);
    let channel = payload
        .strip_prefix(b"{\"type\":\"")
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|end| &rest[..end]))
        .and_then(|name| std::str::from_utf8(name).ok())
        .filter(|name| crate::protocol::channel::validate(name).is_ok());
    let mut buf = FrameBuf::with_capacity(32 + 2 * channel.map_or(7, str::len) + payload.len());
    event_prefix(&mut buf, channel.unwrap_or("message"));
    buf.extend_from_slice(&payload);
    buf.extend_from_slice(b"]");
    buf.finish(OpCode::Text)
}

/// The main namespace's DISCONNECT packet (`41`): the server disconnects the client, whose
/// Socket.IO client then reports "io server disconnect" and does not reconnect by itself.
pub(crate) fn disconnect() -> Bytes {
    let mut buf = FrameBuf::with_capacity(2);
    buf.extend_from_slice(b"41");
    buf.finish(OpCode::Text)
}

/// The frame of a message from the server to one client (see the [module docs](self)).
pub(crate) fn message(
    kind: ServerMessage,
    address: Option<&CorrelationId>,
    data: &impl Serialize,
) -> Bytes {
    let (namespace, ack) = address.map_or(("", ""), |a| parse_address(a.as_raw()));
    let mut buf = FrameBuf::with_capacity(128);
    let namespace_prefix = |buf: &mut FrameBuf| {
        if !namespace.is_empty() {
            buf.extend_from_slice(namespace.as_bytes());
            buf.extend_from_slice(b",");
        }
    };
    let write_data = |buf: &mut FrameBuf| {
        serde_json::to_writer(buf.writer(), data).expect("serializing to memory cannot fail")
    };
    match kind {
        ServerMessage::Ping => buf.extend_from_slice(b"2"),
        ServerMessage::Pong if address.is_none() => buf.extend_from_slice(b"3"),
        ServerMessage::Connected | ServerMessage::ConnectError => {
            buf.extend_from_slice(match kind {
                ServerMessage::Connected => b"40",
                _ => b"44",
            });
            namespace_prefix(&mut buf);
            write_data(&mut buf);
        }
        _ if !ack.is_empty() => {
            buf.extend_from_slice(b"43");
            namespace_prefix(&mut buf);
            buf.extend_from_slice(ack.as_bytes());
            buf.extend_from_slice(b"[");
            write_data(&mut buf);
            buf.extend_from_slice(b"]");
        }
        _ => {
            buf.extend_from_slice(b"42");
            namespace_prefix(&mut buf);
            buf.extend_from_slice(b"[\"");
            buf.extend_from_slice(match kind {
                ServerMessage::Welcome => b"connection_established",
                other => other.as_str().as_bytes(),
            });
            buf.extend_from_slice(b"\",");
            write_data(&mut buf);
            buf.extend_from_slice(b"]");
        }
    }
    buf.finish(OpCode::Text)
}

/// Whether a message with this reply address asked for an ack.
pub(crate) fn asks_ack(address: Option<&CorrelationId>) -> bool {
    address.is_some_and(|a| !parse_address(a.as_raw()).1.is_empty())
}

/// The namespace (empty for the main one) and ack id (empty for none) of a reply address.
fn parse_address(raw: &RawValue) -> (&str, &str) {
    let inner = raw
        .get()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or("");
    inner.split_once(',').unwrap_or(("", ""))
}

/// The reply address of a packet in `namespace` with ack id `ack`; `None` for the main
/// namespace without an ack.
fn address(namespace: Option<&str>, ack: Option<&str>) -> Option<CorrelationId> {
    if namespace.is_none() && ack.is_none() {
        return None;
    }
    // Both parts are made of characters that need no JSON escaping (checked by the parser).
    let raw = format!("\"{},{}\"", namespace.unwrap_or(""), ack.unwrap_or(""));
    RawValue::from_string(raw).ok().map(CorrelationId::from_raw)
}

/// Parses one Engine.IO packet (a WebSocket text frame's payload, or one long-polling
/// record). A subscribe may name at most `max_channels` channels.
pub(crate) fn decode(
    payload: &mut [u8],
    max_channels: usize,
) -> Result<ClientMessage, MessageError> {
    let Some((&mut kind, rest)) = payload.split_first_mut() else {
        return Err(error(ErrorCode::InvalidMessage, "empty Engine.IO packet"));
    };
    match kind {
        // A client ping (only `2probe` in Engine.IO 4, which the upgrade answers; any other
        // is answered with a pong all the same).
        b'2' => Ok(ClientMessage::Ping {
            correlation_id: None,
        }),
        // Pong, upgrade and noop: the packet itself is the news (the client is alive).
        b'3' | b'5' | b'6' => Ok(ClientMessage::Pong),
        b'1' => Ok(ClientMessage::Disconnect { namespace: None }),
        b'4' => decode_socket(rest, max_channels),
        b'b' => Err(binary_refused(None)),
        b'0' => Err(error(
            ErrorCode::InvalidMessage,
            "Engine.IO open packets come from the server",
        )),
        other => Err(error(
            ErrorCode::InvalidMessage,
            format!(
                "unknown Engine.IO packet type {:?}",
                char::from(other).escape_default().to_string()
            ),
        )),
    }
}

fn binary_refused(address: Option<CorrelationId>) -> MessageError {
    MessageError {
        code: ErrorCode::NotSupported,
        message: "binary attachments are not supported here: send JSON (no Buffer, Blob or ArrayBuffer in emit arguments)".to_owned(),
        correlation_id: address,
    }
}

/// Parses the Socket.IO packet of an Engine.IO message.
fn decode_socket(packet: &mut [u8], max_channels: usize) -> Result<ClientMessage, MessageError> {
    let Some((&mut kind, mut rest)) = packet.split_first_mut() else {
        return Err(error(ErrorCode::InvalidMessage, "empty Socket.IO packet"));
    };
    let binary = matches!(kind, b'5' | b'6');
    if binary {
        // `<attachments>-` comes first.
        let skip = rest
            .iter()
            .position(|&b| b == b'-')
            .map_or(0, |dash| dash + 1);
        rest = &mut rest[skip..];
    }
    let (namespace, after) = split_namespace(rest)?;
    let rest = &mut rest[after..];
    let digits = match kind {
        b'2' | b'3' | b'5' | b'6' => rest.iter().take_while(|b| b.is_ascii_digit()).count(),
        _ => 0,
    };
    if digits > 19 {
        return Err(error(ErrorCode::InvalidMessage, "ack id too long"));
    }
    let (ack, json) = rest.split_at_mut(digits);
    let ack = (!ack.is_empty()).then(|| std::str::from_utf8(ack).expect("ASCII digits"));
    let address = address(namespace.as_deref(), ack);
    if binary {
        return Err(binary_refused(address));
    }
    match kind {
        b'0' => connect(json, address),
        b'1' => Ok(ClientMessage::Disconnect { namespace }),
        b'2' => event(json, namespace.as_deref(), address, max_channels),
        b'3' => Ok(ClientMessage::Ack),
        b'4' => Err(MessageError {
            correlation_id: address,
            ..error(
                ErrorCode::InvalidMessage,
                "connect errors come from the server",
            )
        }),
        other => Err(error(
            ErrorCode::InvalidMessage,
            format!(
                "unknown Socket.IO packet type {:?}",
                char::from(other).escape_default().to_string()
            ),
        )),
    }
}

/// The namespace at the start of `packet` (`/admin,`), if any (`/` alone is the main one),
/// and where the rest begins.
fn split_namespace(packet: &[u8]) -> Result<(Option<String>, usize), MessageError> {
    if packet.first() != Some(&b'/') {
        return Ok((None, 0));
    }
    let end = packet
        .iter()
        .position(|&b| b == b',')
        .unwrap_or(packet.len());
    let namespace = &packet[..end];
    let valid = namespace.len() <= MAX_NAMESPACE_LEN
        && namespace
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if !valid {
        return Err(error(
            ErrorCode::InvalidMessage,
            format!(
                "a namespace is at most {MAX_NAMESPACE_LEN} bytes of letters, digits and . _ - : /"
            ),
        ));
    }
    let rest = (end + 1).min(packet.len());
    let namespace = std::str::from_utf8(namespace).expect("checked ASCII");
    Ok(((namespace != "/").then(|| namespace.to_owned()), rest))
}

/// Parses JSON in place, with sigmahub's nesting limit.
fn parse_json<'a>(
    json: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<BorrowedValue<'a>, MessageError> {
    simd_json::to_borrowed_value_with_buffers(json, buffers).map_err(|e| {
        error(
            ErrorCode::InvalidJson,
            format!("packet data is not valid JSON: {e}"),
        )
    })
}

/// A namespace connect: `auth.token`, if the payload has one.
fn connect(json: &mut [u8], address: Option<CorrelationId>) -> Result<ClientMessage, MessageError> {
    let with_address = |e: MessageError| MessageError {
        correlation_id: address.clone(),
        ..e
    };
    let token = if json.is_empty() {
        None
    } else {
        let mut buffers = simd_json::Buffers::with_max_depth(json.len(), MAX_DEPTH);
        let auth = parse_json(json, &mut buffers).map_err(with_address)?;
        if !auth.is_object() {
            return Err(with_address(error(
                ErrorCode::InvalidMessage,
                "the connect payload (`auth`) must be an object",
            )));
        }
        match auth.get("token") {
            None => None,
            Some(t) => Some(
                t.as_str()
                    .ok_or_else(|| {
                        with_address(error(
                            ErrorCode::InvalidMessage,
                            "`auth.token` must be a string",
                        ))
                    })?
                    .to_owned(),
            ),
        }
    };
    Ok(ClientMessage::Connect {
        token,
        correlation_id: address,
    })
}

/// An event: `["name", argument?]`.
fn event(
    json: &mut [u8],
    namespace: Option<&str>,
    address: Option<CorrelationId>,
    max_channels: usize,
) -> Result<ClientMessage, MessageError> {
    let with_address = |e: MessageError| MessageError {
        correlation_id: address.clone(),
        ..e
    };
    let mut buffers = simd_json::Buffers::with_max_depth(json.len(), MAX_DEPTH);
    let value = parse_json(json, &mut buffers).map_err(with_address)?;
    let args = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        with_address(error(
            ErrorCode::InvalidMessage,
            "an event is a JSON array: [name, argument]",
        ))
    })?;
    let name = args[0].as_str().ok_or_else(|| {
        with_address(error(
            ErrorCode::InvalidMessage,
            "an event's name must be a string",
        ))
    })?;
    let argument = args.get(1);
    match name {
        "subscribe" | "unsubscribe" => {
            let mut channels = channel_names(name, argument, max_channels).map_err(with_address)?;
            let mut resume = match name {
                "subscribe" => {
                    message::resume(argument.filter(|a| a.is_object())).map_err(with_address)?
                }
                _ => None,
            };
            if let Some(namespace) = namespace {
                let mut scoped = |name: &mut String| {
                    match name.contains('/') {
                    true => Err(with_address(error(
                        ErrorCode::InvalidChannel,
                        format!(
                            "in namespace {namespace}, name channels without `/` ({:?}): the namespace is their prefix",
                            message::truncate(name, 64)
                        ),
                    ))),
                    false => {
                        *name = format!("{namespace}/{name}");
                        Ok(())
                    }
                }
                };
                channels.iter_mut().try_for_each(&mut scoped)?;
                if let Some(resume) = &mut resume {
                    resume
                        .since
                        .iter_mut()
                        .try_for_each(|(name, _)| scoped(name))?;
                }
            }
            let list = ChannelList {
                channels,
                correlation_id: address,
                resume,
            };
            Ok(match name {
                "subscribe" => ClientMessage::Subscribe(list),
                _ => ClientMessage::Unsubscribe(list),
            })
        }
        "presence" => {
            let channel = argument
                .and_then(|a| {
                    a.as_str()
                        .or_else(|| a.get("channel").and_then(|c| c.as_str()))
                })
                .ok_or_else(|| {
                    with_address(error(
                        ErrorCode::InvalidMessage,
                        "presence takes a channel name, or {\"channel\": name}",
                    ))
                })?;
            Ok(ClientMessage::Presence {
                channel: message::truncate(channel, 256).to_owned(),
                correlation_id: address,
            })
        }
        "publish" => match argument {
            Some(a) if a.is_object() || a.is_array() => Ok(ClientMessage::Publish {
                body: a.encode(),
                correlation_id: address,
            }),
            _ => Err(with_address(error(
                ErrorCode::InvalidMessage,
                "publish takes one event {\"type\", \"data\"} or an array of them",
            ))),
        },
        "auth" => {
            let token = argument
                .and_then(|a| {
                    a.as_str()
                        .or_else(|| a.get("token").and_then(|t| t.as_str()))
                })
                .ok_or_else(|| {
                    with_address(error(
                        ErrorCode::InvalidMessage,
                        "auth takes {\"token\": …} or the token itself",
                    ))
                })?;
            Ok(ClientMessage::Auth {
                token: token.to_owned(),
                correlation_id: address,
            })
        }
        // The reply is an event or an ack, never an Engine.IO pong: give it an address.
        "ping" => Ok(ClientMessage::Ping {
            correlation_id: address.or_else(|| self::address(Some(""), None)),
        }),
        // The application's, if it answers requests (the request hook).
        other if other.len() <= MAX_EVENT_NAME => Ok(ClientMessage::Request {
            method: Some(other.to_owned()),
            data: argument.map(|a| a.encode()),
            correlation_id: address,
        }),
        other => Err(with_address(unknown_event(other))),
    }
}

/// The longest event name passed on to the application.
const MAX_EVENT_NAME: usize = 128;

/// The error for an event neither sigmahub nor the application answers.
pub(crate) fn unknown_event(name: &str) -> MessageError {
    error(
        ErrorCode::UnknownType,
        format!(
            "unknown event {:?}: this server answers subscribe, unsubscribe, publish, presence, auth and ping",
            message::truncate(name, 64)
        ),
    )
}

/// A subscribe's or unsubscribe's channels: `{events|types|channels: […]}`, `[…]`, or one
/// name.
fn channel_names(
    kind: &str,
    argument: Option<&BorrowedValue<'_>>,
    max_channels: usize,
) -> Result<Vec<String>, MessageError> {
    match argument {
        Some(name) if name.is_str() => Ok(vec![name.as_str().unwrap_or_default().to_owned()]),
        Some(list) if list.is_array() => {
            let items = list.as_array().expect("checked");
            message::channel_names(kind, "the argument", items, max_channels)
        }
        Some(object) if LIST_KEYS.iter().any(|k| object.get(*k).is_some()) => {
            message::channel_list(kind, Some(object), max_channels)
        }
        _ => Err(error(
            ErrorCode::InvalidMessage,
            format!(
                "{kind} takes {{\"events\": [channel, …]}}, an array of channel names, or one name"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn decode_str(s: &str) -> Result<ClientMessage, MessageError> {
        decode(&mut s.as_bytes().to_vec(), 50)
    }

    fn text(frame: &Bytes) -> String {
        String::from_utf8(frame::payload_of(frame).to_vec()).unwrap()
    }

    fn address_of(m: &ClientMessage) -> Option<String> {
        let id = match m {
            ClientMessage::Subscribe(l) | ClientMessage::Unsubscribe(l) => {
                l.correlation_id.as_ref()
            }
            ClientMessage::Connect { correlation_id, .. }
            | ClientMessage::Ping { correlation_id }
            | ClientMessage::Publish { correlation_id, .. }
            | ClientMessage::Auth { correlation_id, .. } => correlation_id.as_ref(),
            _ => None,
        };
        id.map(|id| id.as_raw().get().to_owned())
    }

    #[test]
    fn presence_takes_a_name_or_an_object_with_an_ack() {
        for packet in [
            r#"427["presence","room.blue"]"#,
            r#"427["presence",{"channel":"room.blue"}]"#,
        ] {
            match decode_str(packet).unwrap() {
                ClientMessage::Presence {
                    channel,
                    correlation_id,
                } => {
                    assert_eq!(channel, "room.blue");
                    assert!(correlation_id.is_some(), "the ack id: {packet}");
                }
                other => panic!("{packet}: {other:?}"),
            }
        }
        assert!(decode_str(r#"42["presence",7]"#).is_err());
    }

    #[test]
    fn engine_io_packets() {
        assert_eq!(decode_str("3").unwrap(), ClientMessage::Pong);
        assert_eq!(decode_str("6").unwrap(), ClientMessage::Pong);
        assert_eq!(
            decode_str("1").unwrap(),
            ClientMessage::Disconnect { namespace: None }
        );
        assert!(matches!(
            decode_str("2").unwrap(),
            ClientMessage::Ping {
                correlation_id: None
            }
        ));
        for bad in ["", "0{}", "9", "b AQID"] {
            assert!(decode_str(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            decode_str("bAQID").unwrap_err().code,
            ErrorCode::NotSupported
        );
    }

    #[test]
    fn connects_carry_the_auth_token_and_namespace() {
        match decode_str(r#"40{"token":"abc"}"#).unwrap() {
            ClientMessage::Connect {
                token,
                correlation_id,
            } => {
                assert_eq!(token.as_deref(), Some("abc"));
                assert!(correlation_id.is_none());
            }
            other => panic!("{other:?}"),
        }
        let m = decode_str("40/admin,").unwrap();
        assert!(matches!(m, ClientMessage::Connect { token: None, .. }));
        assert_eq!(address_of(&m).as_deref(), Some(r#""/admin,""#));
        assert!(matches!(
            decode_str("40").unwrap(),
            ClientMessage::Connect { token: None, .. }
        ));
        assert!(decode_str(r#"40{"token":5}"#).is_err());
        assert!(decode_str(r#"40"x""#).is_err());
        assert!(decode_str("40/ad min,").is_err());
        assert_eq!(
            decode_str("41/admin,").unwrap(),
            ClientMessage::Disconnect {
                namespace: Some("/admin".into())
            }
        );
    }

    #[test]
    fn events_map_onto_the_hubs_messages() {
        let m = decode_str(r#"4212["subscribe",{"events":["a","b"]}]"#).unwrap();
        assert_eq!(address_of(&m).as_deref(), Some(r#"",12""#));
        match m {
            ClientMessage::Subscribe(list) => assert_eq!(list.channels, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        for args in [r#"["unsubscribe",["a"]]"#, r#"["unsubscribe","a"]"#] {
            match decode_str(&format!("42{args}")).unwrap() {
                ClientMessage::Unsubscribe(list) => assert_eq!(list.channels, ["a"]),
                other => panic!("{other:?}"),
            }
        }
        match decode_str(r#"42/admin,7["subscribe",["orders"]]"#).unwrap() {
            ClientMessage::Subscribe(list) => {
                assert_eq!(list.channels, ["/admin/orders"]);
                let id = list.correlation_id.unwrap();
                assert_eq!(id.as_raw().get(), r#""/admin,7""#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_str(r#"42["publish",{"type":"chat","data":{}}]"#).unwrap(),
            ClientMessage::Publish { .. }
        ));
        match decode_str(r#"42["auth",{"token":"t"}]"#).unwrap() {
            ClientMessage::Auth { token, .. } => assert_eq!(token, "t"),
            other => panic!("{other:?}"),
        }
        // An event-level ping is answered by an event, not by Engine.IO's `3`.
        let ping = decode_str(r#"42["ping"]"#).unwrap();
        assert_eq!(address_of(&ping).as_deref(), Some(r#"",""#));
        assert_eq!(decode_str(r#"43["x"]"#).unwrap(), ClientMessage::Ack);
        // Any other event is the application's to answer.
        match decode_str(r#"423["launch",{"at":1}]"#).unwrap() {
            ClientMessage::Request {
                method,
                data,
                correlation_id,
            } => {
                assert_eq!(method.as_deref(), Some("launch"));
                assert_eq!(data.as_deref(), Some(r#"{"at":1}"#));
                assert!(correlation_id.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_events_get_errors_addressed_to_their_ack() {
        let cases = [
            (
                &*format!(r#"423["{}",1]"#, "x".repeat(MAX_EVENT_NAME + 1)),
                ErrorCode::UnknownType,
            ),
            (r#"423{"not":"an array"}"#, ErrorCode::InvalidMessage),
            (r#"423[]"#, ErrorCode::InvalidMessage),
            (r#"423[5]"#, ErrorCode::InvalidMessage),
            (r#"423["subscribe"]"#, ErrorCode::InvalidMessage),
            (r#"423["subscribe",[1]]"#, ErrorCode::InvalidMessage),
            (r#"423["publish","x"]"#, ErrorCode::InvalidMessage),
            (r#"423["x""#, ErrorCode::InvalidJson),
            (
                r#"4513-3["publish",{"_placeholder":true,"num":0}]"#,
                ErrorCode::NotSupported,
            ),
            (r#"42/a,3["subscribe",["b/c"]]"#, ErrorCode::InvalidChannel),
        ];
        for (packet, code) in cases {
            let e = decode_str(packet).unwrap_err();
            assert_eq!(e.code, code, "{packet}: {}", e.message);
            let id = e.correlation_id.expect(packet);
            assert!(id.as_raw().get().ends_with(",3\""), "{packet}");
        }
        let many: Vec<String> = (0..51).map(|i| format!("\"c{i}\"")).collect();
        let e = decode_str(&format!("42[\"subscribe\",[{}]]", many.join(","))).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyChannels);
        assert!(decode_str(&format!("42{}[\"ping\"]", "9".repeat(20))).is_err());
    }

    #[test]
    fn replies_go_to_their_ack_or_as_events_on_their_namespace() {
        let data = serde_json::json!({"success": true});
        let at =
            |raw: &str| CorrelationId::from_raw(RawValue::from_string(raw.to_owned()).unwrap());
        let reply = |kind, address: Option<&CorrelationId>| text(&message(kind, address, &data));
        assert_eq!(
            reply(ServerMessage::SubscribeResponse, Some(&at(r#"",12""#))),
            r#"4312[{"success":true}]"#
        );
        assert_eq!(
            reply(ServerMessage::SubscribeResponse, Some(&at(r#""/admin,4""#))),
            r#"43/admin,4[{"success":true}]"#
        );
        assert_eq!(
            reply(ServerMessage::SubscribeResponse, None),
            r#"42["subscribe_response",{"success":true}]"#
        );
        assert_eq!(
            reply(ServerMessage::Welcome, None),
            r#"42["connection_established",{"success":true}]"#
        );
        assert_eq!(
            reply(ServerMessage::Error, Some(&at(r#""/admin,""#))),
            r#"42/admin,["error",{"success":true}]"#
        );
        assert_eq!(reply(ServerMessage::Pong, None), "3");
        assert_eq!(reply(ServerMessage::Ping, None), "2");
        assert_eq!(
            reply(ServerMessage::Pong, Some(&at(r#"",""#))),
            r#"42["pong",{"success":true}]"#
        );
        assert_eq!(
            reply(ServerMessage::Connected, Some(&at(r#""/admin,""#))),
            r#"40/admin,{"success":true}"#
        );
        assert_eq!(
            reply(ServerMessage::ConnectError, None),
            r#"44{"success":true}"#
        );
    }

    #[test]
    fn events_carry_the_sigmavault_object_and_transcode_alike() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_703_337_717_123);
        for (channel, expected_prefix) in [
            ("agent_update", r#"42["agent_update","#),
            ("/admin/orders", r#"42/admin,["orders","#),
            ("orders/eu", r#"42["orders/eu","#),
            ("/x", r#"42["/x","#),
        ] {
            let event = Event::new(channel, &serde_json::json!({"n": 1})).unwrap();
            for offset in [None, Some(9)] {
                let frame = event_frame(&event, now, offset);
                let packet = text(&frame);
                assert!(packet.starts_with(expected_prefix), "{packet}");
                let args: serde_json::Value =
                    serde_json::from_str(&packet[packet.find('[').unwrap()..]).unwrap();
                assert_eq!(args[1]["type"], channel);
                assert_eq!(args[1]["data"]["n"], 1);
                assert_eq!(args[1]["timestamp"], "2023-12-23T13:21:57.123Z");
                assert_eq!(args[1].get("offset").and_then(|o| o.as_u64()), offset);
                let canonical = sigmavault::event_frame(&event, now, offset);
                assert_eq!(transcode(&canonical), frame, "{channel}");
            }
        }
    }

    #[test]
    fn the_open_packet_states_the_sessions_terms() {
        let frame = open_packet(
            "abc",
            true,
            Duration::from_secs(25),
            Duration::from_secs(20),
            1_000_000,
        );
        assert_eq!(
            text(&frame),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let direct = open_packet("abc", false, Duration::ZERO, Duration::ZERO, 1);
        assert!(text(&direct).contains(r#""upgrades":[]"#));
    }
}
