//! Every machine-readable code sigmahub sends, typed, each spelled in one place.
//!
//! - [`ErrorCode`]: the `code` of a socket `error` message, of an `auth_response` that
//!   refuses credentials, and of every HTTP error body (`{"error": {"code", "message"}}`),
//!   with its one HTTP status ([`ErrorCode::status`]) and, where it ends a connection, its
//!   one close code ([`ErrorCode::close_code`]).
//! - [`RejectReason`]: why one channel of a `subscribe` or `unsubscribe` was refused.
//! - [`StaleCode`]: why a status snapshot is stale (`error_code`, upper case as SigmaVault
//!   spells it).
//!
//! `docs/protocol.md` lists them with the messages that carry them.

use hyper::StatusCode;

use super::close::CloseCode;

/// Declares a code enum whose variants each have one wire spelling, with `as_str`, `ALL`,
/// `Display` and a `Serialize` that writes the spelling.
macro_rules! codes {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The code as it is sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }

            /// The code spelled `wire`, if it is one.
            pub fn from_wire(wire: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|code| code.as_str() == wire)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

codes! {
    /// The code of an error a client is told of, on the socket or over HTTP.
    pub enum ErrorCode {
        // A client message that cannot be read.
        /// Not JSON.
        InvalidJson => "invalid_json",
        /// JSON, but not a message of the protocol (wrong shape or field types).
        InvalidMessage => "invalid_message",
        /// No `type`.
        MissingType => "missing_type",
        /// A `type` the server does not know.
        UnknownType => "unknown_type",
        /// More channels in one list than a connection may hold.
        TooManyChannels => "too_many_channels",
        /// A channel name is empty.
        EmptyChannel => "empty_channel",
        /// A channel name is longer than 128 bytes.
        ChannelTooLong => "channel_too_long",
        /// A channel name has a character outside `A-Z a-z 0-9 . _ - : /`.
        InvalidChannel => "invalid_channel",
        /// The connection holds `max_subscriptions_per_connection` already.
        SubscriptionLimit => "subscription_limit",
        /// The channel has `max_subscribers_per_channel` already.
        ChannelFull => "channel_full",
        /// A published event is malformed (socket `publish` or `POST /api/v1/publish`).
        InvalidEvent => "invalid_event",
        /// A publish body is neither an event nor a list of them.
        InvalidBody => "invalid_body",
        /// A message the server understands but has nothing to answer with (a Skreaver
        /// `request`, until requests have a handler).
        NotSupported => "not_supported",
        // What the client may do.
        /// The message needs credentials first (`auth.required`).
        AuthRequired => "auth_required",
        /// A second `auth` named another subject than the first.
        AuthSubjectChanged => "auth_subject_changed",
        /// The token does not allow this channel.
        Forbidden => "forbidden",
        /// The channel keeps no presence (`[[channels]] presence = true` is not set for it).
        NoPresence => "no_presence",
        /// Over the inbound message rate; more closes the connection.
        RateLimited => "rate_limited",
        /// Frames were dropped for a slow consumer (`slow_consumer = "drop"`).
        FramesDropped => "frames_dropped",
        // Credentials.
        /// The token is invalid: forged, malformed, wrong issuer, …
        InvalidToken => "invalid_token",
        /// The token expired.
        TokenExpired => "token_expired",
        /// No credentials within `auth.timeout`.
        AuthTimeout => "auth_timeout",
        /// An HTTP request without valid credentials.
        Unauthorized => "unauthorized",
        /// Too many failed credentials from this address; wait.
        AuthBackoff => "auth_backoff",
        /// The application's backend did not answer a hook (in time, or its breaker is
        /// open) and `hooks.on_failure` is `refuse`; try again later.
        Unavailable => "unavailable",
        // HTTP.
        /// No such route.
        NotFound => "not_found",
        /// The route exists for another method.
        MethodNotAllowed => "method_not_allowed",
        /// `/ws` without a WebSocket upgrade.
        UpgradeRequired => "upgrade_required",
        /// A WebSocket handshake that cannot be answered.
        BadHandshake => "bad_handshake",
        /// A malformed `since` or `epoch` on the upgrade URL.
        InvalidSince => "invalid_since",
        /// The `Host` is not one this server answers to (DNS rebinding).
        HostNotAllowed => "host_not_allowed",
        /// A page from an origin that may not call the API or open sockets.
        OriginNotAllowed => "origin_not_allowed",
        /// A publish body not declared `application/json`.
        UnsupportedMediaType => "unsupported_media_type",
        /// A publish body over `max_publish_body_size`.
        BodyTooLarge => "body_too_large",
        /// A publish body that could not be read.
        BadBody => "bad_body",
        /// A publish body that did not arrive within `body_timeout`.
        BodyTimeout => "body_timeout",
        /// No snapshot of that status type yet.
        NoSnapshot => "no_snapshot",
        /// `/metrics` with `metrics = false`.
        MetricsDisabled => "metrics_disabled",
        /// `max_connections` reached.
        ServerFull => "server_full",
        /// `max_connections_per_ip` reached for this address.
        TooManyConnectionsFromAddress => "too_many_connections_from_address",
        /// This address connects faster than `connection_rate_per_ip`.
        ConnectionRateExceeded => "connection_rate_exceeded",
    }
}

impl ErrorCode {
    /// The HTTP status an error with this code is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::InvalidMessage
            | Self::MissingType
            | Self::UnknownType
            | Self::TooManyChannels
            | Self::EmptyChannel
            | Self::ChannelTooLong
            | Self::InvalidChannel
            | Self::InvalidEvent
            | Self::InvalidBody
            | Self::BadHandshake
            | Self::InvalidSince
            | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::AuthRequired
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::AuthTimeout
            | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::AuthSubjectChanged | Self::Forbidden | Self::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Self::SubscriptionLimit | Self::ChannelFull => StatusCode::CONFLICT,
            Self::NotFound | Self::NoSnapshot | Self::MetricsDisabled | Self::NoPresence => {
                StatusCode::NOT_FOUND
            }
            Self::NotSupported => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::RateLimited
            | Self::AuthBackoff
            | Self::TooManyConnectionsFromAddress
            | Self::ConnectionRateExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::FramesDropped | Self::ServerFull | Self::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The close code of a connection this error ends, if it ends one.
    pub const fn close_code(self) -> Option<CloseCode> {
        match self {
            Self::InvalidToken => Some(CloseCode::AUTH_FAILED),
            Self::TokenExpired => Some(CloseCode::TOKEN_EXPIRED),
            Self::AuthTimeout => Some(CloseCode::AUTH_TIMEOUT),
            Self::Unavailable => Some(CloseCode::TRY_AGAIN_LATER),
            _ => None,
        }
    }
}

codes! {
    /// Why one channel of a `subscribe` or `unsubscribe` was refused (the others in the
    /// same request are still applied).
    pub enum RejectReason {
        /// The name is empty.
        EmptyChannel => "empty_channel",
        /// The name is longer than 128 bytes.
        ChannelTooLong => "channel_too_long",
        /// The name has a character outside `A-Z a-z 0-9 . _ - : /`.
        InvalidChannel => "invalid_channel",
        /// The connection holds `max_subscriptions_per_connection` already.
        SubscriptionLimit => "subscription_limit",
        /// The channel has `max_subscribers_per_channel` already.
        ChannelFull => "channel_full",
        /// The token does not allow this channel, or the application refused it.
        Forbidden => "forbidden",
        /// The application's subscribe hook did not answer (`hooks.on_failure = "refuse"`).
        Unavailable => "unavailable",
    }
}

impl From<RejectReason> for ErrorCode {
    fn from(reason: RejectReason) -> Self {
        match reason {
            RejectReason::EmptyChannel => Self::EmptyChannel,
            RejectReason::ChannelTooLong => Self::ChannelTooLong,
            RejectReason::InvalidChannel => Self::InvalidChannel,
            RejectReason::SubscriptionLimit => Self::SubscriptionLimit,
            RejectReason::ChannelFull => Self::ChannelFull,
            RejectReason::Forbidden => Self::Forbidden,
            RejectReason::Unavailable => Self::Unavailable,
        }
    }
}

codes! {
    /// Why a status snapshot is stale: the `error_code` it is re-sent with.
    pub enum StaleCode {
        /// The upstream engine cannot be reached.
        RpcDisconnect => "RPC_DISCONNECT",
        /// `system.status` calls fail.
        SystemStatusFailed => "SYSTEM_STATUS_FAILED",
        /// `compression.jobs` calls fail.
        CompressionJobsFailed => "COMPRESSION_JOBS_FAILED",
        /// Host storage readings fail (`storage.update`).
        StorageStatusFailed => "STORAGE_STATUS_FAILED",
        /// `agent.status` calls fail.
        AgentStatusFailed => "AGENT_STATUS_FAILED",
        /// The poller's circuit breaker is open.
        CircuitBreakerOpen => "CIRCUIT_BREAKER_OPEN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_unique_and_reads_back() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            as_str: fn(T) -> &'static str,
            from: fn(&str) -> Option<T>,
        ) {
            let mut seen = std::collections::HashSet::new();
            for &code in all {
                assert!(seen.insert(as_str(code)), "{code:?} spelled twice");
                assert_eq!(from(as_str(code)), Some(code));
            }
        }
        check(ErrorCode::ALL, ErrorCode::as_str, ErrorCode::from_wire);
        check(
            RejectReason::ALL,
            RejectReason::as_str,
            RejectReason::from_wire,
        );
        check(StaleCode::ALL, StaleCode::as_str, StaleCode::from_wire);
        for &reason in RejectReason::ALL {
            assert_eq!(ErrorCode::from(reason).as_str(), reason.as_str());
        }
    }

    #[test]
    fn codes_serialize_as_their_spelling() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::InvalidSince).unwrap(),
            r#""invalid_since""#
        );
        assert_eq!(
            serde_json::to_string(&StaleCode::CircuitBreakerOpen).unwrap(),
            r#""CIRCUIT_BREAKER_OPEN""#
        );
    }

    #[test]
    fn credentials_errors_close_with_their_own_code() {
        assert_eq!(
            ErrorCode::TokenExpired.close_code(),
            Some(CloseCode::TOKEN_EXPIRED)
        );
        assert_eq!(ErrorCode::Forbidden.close_code(), None);
        assert_eq!(
            ErrorCode::HostNotAllowed.status(),
            StatusCode::MISDIRECTED_REQUEST
        );
    }
}
