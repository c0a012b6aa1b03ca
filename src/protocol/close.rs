//! WebSocket close codes used by sigmahub, in one table.
//!
//! | code | name               | when                                                        | client should |
//! |------|--------------------|-------------------------------------------------------------|---------------|
//! | 1000 | `NORMAL`           | the client asked to close                                   | -             |
//! | 1001 | `GOING_AWAY`       | the server is shutting down                                 | reconnect     |
//! | 1002 | `PROTOCOL_ERROR`   | a frame broke RFC 6455 (reserved bits, bad fragments, …)    | fix client    |
//! | 1003 | `UNSUPPORTED_DATA` | a binary message (sigmahub speaks JSON text only)           | fix client    |
//! | 1007 | `INVALID_PAYLOAD`  | a text message that is not valid UTF-8                      | fix client    |
//! | 1008 | `POLICY_VIOLATION` | kept sending over the inbound rate limit after a warning    | slow down     |
//! | 1009 | `MESSAGE_TOO_BIG`  | a message over `max_message_size`                           | fix client    |
//! | 1011 | `INTERNAL_ERROR`   | the server hit an unexpected condition                      | reconnect     |
//! | 1013 | `TRY_AGAIN_LATER`  | the application's connect hook did not answer               | reconnect later |
//! | 4000 | `SLOW_CONSUMER`    | the client's queue overflowed (`slow_consumer = "close"`)   | reconnect     |
//! | 4001 | `KEEPALIVE_TIMEOUT`| no pong within `pong_timeout` after a ping                  | reconnect     |
//! | 4002 | `AUTH_TIMEOUT`     | no credentials within `auth.timeout` (token required)       | send `auth` sooner |
//! | 4003 | `AUTH_FAILED`      | the token is invalid: forged, malformed, wrong issuer, …    | get a new token |
//! | 4004 | `TOKEN_EXPIRED`    | the token expired, at connect or while connected            | refresh, reconnect |
//! | 4005 | `IDLE_TIMEOUT`     | no message within `idle_timeout` (off by default)           | reconnect     |
//! | 4010 | `DISCONNECTED`     | an operator disconnected it (control API), unless they gave another code | as the reason says |
//!
//! Codes in the 4000 range are sigmahub's own (RFC 6455 §7.4.2 reserves 4000-4999 for
//! applications). The table is repeated in `docs/protocol.md`.

/// A WebSocket close code with its reason text, as sigmahub sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    /// The numeric code sent in the close frame.
    pub code: u16,
    /// A short reason sent with it (at most 123 bytes, RFC 6455 §5.5).
    pub reason: &'static str,
}

impl CloseCode {
    /// The client asked to close.
    pub const NORMAL: Self = Self::new(1000, "normal closure");
    /// The server is shutting down; reconnect (to another node) after a pause.
    pub const GOING_AWAY: Self = Self::new(1001, "server shutting down");
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: Self = Self::new(1002, "protocol error");
    /// The client sent a binary message.
    pub const UNSUPPORTED_DATA: Self = Self::new(1003, "binary messages are not supported");
    /// The client sent a text message that is not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = Self::new(1007, "invalid UTF-8");
    /// The client kept sending over its inbound rate limit after a `rate_limited` error.
    pub const POLICY_VIOLATION: Self = Self::new(1008, "rate limit exceeded");
    /// The client sent a message larger than `max_message_size`.
    pub const MESSAGE_TOO_BIG: Self = Self::new(1009, "message too big");
    /// The server failed; reconnect.
    pub const INTERNAL_ERROR: Self = Self::new(1011, "internal error");
    /// The application's backend did not answer who the client is (a connect hook);
    /// reconnect later.
    pub const TRY_AGAIN_LATER: Self = Self::new(1013, "try again later");
    /// The client did not read fast enough and its queue overflowed; reconnect.
    pub const SLOW_CONSUMER: Self = Self::new(4000, "slow consumer");
    /// The client did not answer a ping in time; reconnect.
    pub const KEEPALIVE_TIMEOUT: Self = Self::new(4001, "keep-alive timeout");
    /// A token is required and none arrived within `auth.timeout`.
    pub const AUTH_TIMEOUT: Self = Self::new(4002, "authentication timeout");
    /// The token was refused; reconnecting with the same one is pointless.
    pub const AUTH_FAILED: Self = Self::new(4003, "invalid token");
    /// The token expired; reconnect with a fresh one.
    pub const TOKEN_EXPIRED: Self = Self::new(4004, "token expired");
    /// The client sent no message within `idle_timeout`.
    pub const IDLE_TIMEOUT: Self = Self::new(4005, "idle timeout");
    /// An operator disconnected the client through the control API; they may have given
    /// another code and reason, which the client is sent instead. Operator disconnects are
    /// counted under this code whatever code was sent.
    pub const DISCONNECTED: Self = Self::new(4010, "disconnected by the server");

    /// Every code sigmahub sends, in the order of the table above.
    pub const ALL: [Self; 16] = [
        Self::NORMAL,
        Self::GOING_AWAY,
        Self::PROTOCOL_ERROR,
        Self::UNSUPPORTED_DATA,
        Self::INVALID_PAYLOAD,
        Self::POLICY_VIOLATION,
        Self::MESSAGE_TOO_BIG,
        Self::INTERNAL_ERROR,
        Self::TRY_AGAIN_LATER,
        Self::SLOW_CONSUMER,
        Self::KEEPALIVE_TIMEOUT,
        Self::AUTH_TIMEOUT,
        Self::AUTH_FAILED,
        Self::TOKEN_EXPIRED,
        Self::IDLE_TIMEOUT,
        Self::DISCONNECTED,
    ];

    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Whether a client that receives this code should reconnect (true) or fix itself first.
    /// After 4004 it reconnects with a fresh token.
    pub fn should_reconnect(self) -> bool {
        matches!(
            self.code,
            1001 | 1011 | 1013 | 4000 | 4001 | 4002 | 4004 | 4005
        )
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_in_a_control_frame() {
        for c in CloseCode::ALL {
            assert!(2 + c.reason.len() <= 125, "{c}");
        }
    }
}
