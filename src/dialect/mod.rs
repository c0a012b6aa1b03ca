//! Wire dialects: how one family of clients speaks to the hub.
//!
//! A session does not write JSON or parse it: it asks its connection's [`Dialect`] to turn
//! a client's message into a [`ClientMessage`] (`Dialect::decode`) and a reply into a
//! frame (`Dialect::message`). A second wire protocol is a new file here and a new
//! variant, not a branch in the session.
//!
//! # Encoded once per encoding per broadcast
//! A channel's subscribers are kept in one set per [`Encoding`] (a dialect, with or without
//! permessage-deflate; [`crate::engine`]'s topics). A publish encodes its event for each
//! dialect that has subscribers on the channel, once (`Dialect::event`), compresses that
//! frame once if some of them negotiated compression ([`crate::compression`]), and every
//! subscriber gets a refcounted clone of the frame of its encoding; an encoding without
//! subscribers there costs nothing.
//!
//! # The canonical encoding
//! What the hub keeps — history for recovery, the status snapshot cache — and what a
//! cluster sends between nodes is the SigmaVault encoding. A dialect turns a kept frame
//! into its own with `Dialect::transcode`; for SigmaVault that is a refcount increment.

pub(crate) mod sigmavault;
pub(crate) mod skreaver;
pub(crate) mod socketio;

use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;

use crate::compression::negotiate::Window;
use crate::event::Event;
use crate::protocol::message::{self, ClientMessage, CorrelationId, MessageError};

/// The wire protocol one connection speaks.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Dialect {
    /// The SigmaVault WebSocket Protocol v1.0 (seed 000), on `/ws`.
    #[default]
    SigmaVault,
    /// Skreaver's JSON protocol (seed 004), on `/skreaver/ws`.
    Skreaver,
    /// Socket.IO v4 over Engine.IO 4 (seed 002's frontends, `socket.io-client`), on
    /// `/socket.io/`.
    #[serde(rename = "socketio")]
    SocketIo,
}

impl Dialect {
    /// How many dialects there are.
    pub const COUNT: usize = 3;

    /// Every dialect, in [`index`](Self::index) order.
    pub const ALL: [Dialect; Self::COUNT] =
        [Dialect::SigmaVault, Dialect::Skreaver, Dialect::SocketIo];

    /// The dialect whose frames the hub keeps (see the [module docs](self)).
    pub const CANONICAL: Dialect = Dialect::SigmaVault;

    /// The dialect's place in [`ALL`](Self::ALL): an index into per-dialect tables.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The dialect's name in metrics, stats and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SigmaVault => "sigmavault",
            Self::Skreaver => "skreaver",
            Self::SocketIo => "socketio",
        }
    }

    /// Whether a client of this dialect is sent the welcome (`notification`, Socket.IO's
    /// `connection_established`) and subscribed to `default_subscriptions` once it has
    /// authenticated. Skreaver's protocol has no welcome, and its clients subscribe to what
    /// they want.
    pub(crate) const fn welcomes(self) -> bool {
        matches!(self, Self::SigmaVault | Self::SocketIo)
    }

    /// Whether the client authenticates by a connect message of its own (Socket.IO's
    /// namespace connect) rather than with the upgrade: the session then waits for it,
    /// whatever the upgrade carried.
    pub(crate) const fn connects_in_band(self) -> bool {
        matches!(self, Self::SocketIo)
    }

    /// Parses one client text message (its payload, parsed in place) into a command. A
    /// subscribe may name at most `max_channels` channels.
    pub(crate) fn decode(
        self,
        payload: &mut [u8],
        max_channels: usize,
    ) -> Result<ClientMessage, MessageError> {
        match self {
            Self::SigmaVault => message::parse(payload, max_channels),
            Self::Skreaver => skreaver::decode(payload, max_channels),
            Self::SocketIo => socketio::decode(payload, max_channels),
        }
    }

    /// The frame of a message from the server to one client: `kind` says what it is, `data`
    /// is its content, `correlation_id` the request it answers.
    pub(crate) fn message(
        self,
        kind: ServerMessage,
        correlation_id: Option<&CorrelationId>,
        now: SystemTime,
        data: &impl Serialize,
    ) -> Bytes {
        // Skreaver's replies have SigmaVault's envelope (see `skreaver`).
        match self {
            Self::SocketIo => socketio::message(kind, correlation_id, data),
            Self::SigmaVault | Self::Skreaver => sigmavault::encode_serialize(
                kind.as_str(),
                now,
                correlation_id.map(CorrelationId::as_raw),
                data,
            ),
        }
    }

    /// The frame of a broadcast `event` stamped `now`, with its `offset` in its channel's
    /// history if it has one.
    #[inline]
    pub(crate) fn event(self, event: &Event, now: SystemTime, offset: Option<u64>) -> Bytes {
        match self {
            Self::SigmaVault => sigmavault::event_frame(event, now, offset),
            Self::Skreaver => skreaver::event_frame(event, now, offset),
            Self::SocketIo => socketio::event_frame(event, now, offset),
        }
    }

    /// The keep-alive ping a client of this dialect must answer: a WebSocket ping frame
    /// for SigmaVault (browsers answer it by themselves), the JSON `{"type":"ping"}`
    /// message for Skreaver, whose clients answer `{"type":"pong"}`, and Engine.IO's `2`
    /// for Socket.IO, answered by `3`.
    pub(crate) fn keepalive_ping(self, now: SystemTime) -> Bytes {
        match self {
            Self::SigmaVault => crate::frame::ping(b""),
            Self::SocketIo => socketio::ping(),
            Self::Skreaver => self.message(ServerMessage::Ping, None, now, &serde_json::json!({})),
        }
    }

    /// This dialect's frame for a frame in the [canonical](Self::CANONICAL) encoding (from
    /// history, the snapshot cache or another node).
    #[inline]
    pub(crate) fn transcode(self, canonical: &Bytes) -> Bytes {
        match self {
            Self::SigmaVault => canonical.clone(),
            Self::Skreaver => skreaver::transcode(canonical),
            Self::SocketIo => socketio::transcode(canonical),
        }
    }
}

/// The form of the frames one connection is sent: its dialect's, compressed
/// (permessage-deflate, when the client negotiated it) with a given window, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Encoding {
    /// The dialect the client speaks.
    pub dialect: Dialect,
    /// Whether broadcast frames are sent compressed, and with which window.
    pub deflate: Option<Window>,
}

impl Encoding {
    /// Forms per dialect: uncompressed, then compressed with each [`Window`].
    const PER_DIALECT: usize = 1 + Window::ALL.len();

    /// How many encodings there are.
    pub const COUNT: usize = Dialect::COUNT * Self::PER_DIALECT;

    /// Every encoding, in [`index`](Self::index) order: each dialect's uncompressed, then
    /// its compressed ones, in [`Window::ALL`] order.
    pub const ALL: [Encoding; Self::COUNT] = {
        let mut all = [Encoding::plain(Dialect::SigmaVault); Self::COUNT];
        let mut i = 0;
        while i < Dialect::COUNT {
            all[Self::PER_DIALECT * i] = Encoding::plain(Dialect::ALL[i]);
            let mut w = 0;
            while w < Window::ALL.len() {
                all[Self::PER_DIALECT * i + 1 + w] = Encoding {
                    dialect: Dialect::ALL[i],
                    deflate: Some(Window::ALL[w]),
                };
                w += 1;
            }
            i += 1;
        }
        all
    };

    /// `dialect`, uncompressed.
    pub const fn plain(dialect: Dialect) -> Self {
        Self {
            dialect,
            deflate: None,
        }
    }

    /// `dialect`, compressed with the full window: what a client that negotiated
    /// permessage-deflate without asking for a smaller window takes.
    pub const fn deflated(dialect: Dialect) -> Self {
        Self {
            dialect,
            deflate: Some(Window::Bits15),
        }
    }

    /// The encoding's place in [`ALL`](Self::ALL): an index into per-encoding tables.
    #[inline]
    pub const fn index(self) -> usize {
        let form = match self.deflate {
            None => 0,
            Some(window) => 1 + window.index(),
        };
        self.dialect.index() * Self::PER_DIALECT + form
    }

    /// Whether broadcast frames are sent compressed.
    #[inline]
    pub const fn is_deflated(self) -> bool {
        self.deflate.is_some()
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a message from the server to one client is (not a broadcast event); each dialect
/// puts it on the wire its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerMessage {
    /// The welcome after authentication.
    Welcome,
    /// The answer to credentials.
    AuthResponse,
    /// The answer to a subscribe.
    SubscribeResponse,
    /// The answer to an unsubscribe.
    UnsubscribeResponse,
    /// The answer to a socket publish.
    PublishResponse,
    /// The answer to a `presence` request.
    PresenceResponse,
    /// The application's answer to a client's request (the request hook).
    Response,
    /// The answer to an application-level ping.
    Pong,
    /// A keep-alive ping the client must answer (Skreaver).
    Ping,
    /// A refused request, a limit hit, or frames lost under the `drop` policy.
    Error,
    /// A Socket.IO namespace connect accepted (`40{"sid"}`).
    Connected,
    /// A Socket.IO namespace connect refused (`44{"message"}`).
    ConnectError,
    /// What a client that fell behind missed on a channel (`slow_consumer = "degrade"`).
    Gap,
}

impl ServerMessage {
    /// The SigmaVault `type` of the message.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Welcome => "notification",
            Self::AuthResponse => "auth_response",
            Self::SubscribeResponse => "subscribe_response",
            Self::UnsubscribeResponse => "unsubscribe_response",
            Self::PublishResponse => "publish_response",
            Self::PresenceResponse => "presence_response",
            Self::Response => "response",
            Self::Pong => "pong",
            Self::Ping => "ping",
            Self::Error => "error",
            Self::Connected => "connect",
            Self::ConnectError => "connect_error",
            Self::Gap => "gap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_the_table() {
        for (i, dialect) in Dialect::ALL.into_iter().enumerate() {
            assert_eq!(dialect.index(), i);
        }
        for (i, encoding) in Encoding::ALL.into_iter().enumerate() {
            assert_eq!(encoding.index(), i);
        }
    }

    #[test]
    fn the_canonical_dialect_transcodes_without_a_copy() {
        let event = Event::new("orders", &serde_json::json!({"id": 7})).unwrap();
        let frame = Dialect::CANONICAL.event(&event, SystemTime::UNIX_EPOCH, Some(3));
        let same = Dialect::CANONICAL.transcode(&frame);
        assert_eq!(same.as_ptr(), frame.as_ptr());
    }
}
