//! What the end of a connection, or a refused one, means for the next attempt: the close
//! codes and HTTP refusals of docs/protocol.md, read as a client should read them.

use std::time::Duration;

/// Why a connection ended or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server closed the WebSocket with this code and reason.
    Closed { code: u16, reason: String },
    /// The server refused the upgrade with this HTTP status, its `code` and `Retry-After`.
    Refused {
        status: u16,
        code: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The socket failed, the server went away without a close, or could not be reached.
    Lost(String),
    /// Nothing arrived for longer than the server's keep-alive allows.
    Silent,
}

/// What to do after an [`Ending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Reconnect after the backoff, and not before `at_least`.
    Retry { at_least: Duration },
    /// Reconnect after the backoff without `since` in the URL (it was refused).
    RetryWithoutSince,
    /// Get a fresh token, then reconnect at once.
    RefreshToken,
    /// Stop: retrying cannot succeed.
    Stop,
}

impl Ending {
    /// What the protocol says a client should do next.
    pub(crate) fn next(&self, backoff_max: Duration) -> Next {
        let retry = Next::Retry {
            at_least: Duration::ZERO,
        };
        match self {
            Ending::Closed { code, .. } => match code {
                // 1002 protocol error, 1003 binary, 1007 bad UTF-8, 1009 too large: a
                // client bug that a reconnect repeats. 4003: an invalid token.
                1002 | 1003 | 1007 | 1009 | 4003 => Next::Stop,
                // Over the inbound rate limit: slow down, then reconnect.
                1008 => Next::Retry {
                    at_least: backoff_max,
                },
                4004 => Next::RefreshToken,
                // 1000 unasked, 1001 going away, 1011, 4000 slow consumer, 4001 keep-alive,
                // 4002 auth timeout, 4005 idle, and codes this client does not know.
                _ => retry,
            },
            Ending::Refused {
                status,
                code,
                retry_after,
            } => match (status, code.as_deref()) {
                (400, Some("invalid_since")) => Next::RetryWithoutSince,
                // 429 and 503 (full, per-address limits, rate, auth backoff) say when.
                (429 | 503, _) => Next::Retry {
                    at_least: retry_after.unwrap_or_default(),
                },
                // Other refusals (403 origin, 421 host, 404, 426, other 4xx) do not change
                // by themselves. 5xx, or a proxy's answer, might.
                (s, _) if (400..500).contains(s) => Next::Stop,
                _ => retry,
            },
            Ending::Lost(_) | Ending::Silent => retry,
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Closed { code, reason } if reason.is_empty() => write!(f, "closed ({code})"),
            Ending::Closed { code, reason } => write!(f, "closed ({code}: {reason})"),
            Ending::Refused { status, code, .. } => match code {
                Some(code) => write!(f, "refused (HTTP {status}, {code})"),
                None => write!(f, "refused (HTTP {status})"),
            },
            Ending::Lost(why) => write!(f, "connection lost: {why}"),
            Ending::Silent => f.write_str("no heartbeat from the server"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> Next {
        Ending::Closed {
            code,
            reason: String::new(),
        }
        .next(Duration::from_secs(20))
    }

    fn refused(status: u16, code: Option<&str>, retry_after: Option<u64>) -> Next {
        Ending::Refused {
            status,
            code: code.map(str::to_owned),
            retry_after: retry_after.map(Duration::from_secs),
        }
        .next(Duration::from_secs(20))
    }

    #[test]
    fn close_codes_follow_the_protocol_table() {
        let retry = Next::Retry {
            at_least: Duration::ZERO,
        };
        for code in [1000, 1001, 1011, 4000, 4001, 4002, 4005, 4999, 3000] {
            assert_eq!(closed(code), retry, "{code}");
        }
        for code in [1002, 1003, 1007, 1009, 4003] {
            assert_eq!(closed(code), Next::Stop, "{code}");
        }
        assert_eq!(
            closed(1008),
            Next::Retry {
                at_least: Duration::from_secs(20)
            }
        );
        assert_eq!(closed(4004), Next::RefreshToken);
    }

    #[test]
    fn refusals_honour_retry_after_and_stop_on_what_will_not_change() {
        assert_eq!(
            refused(429, Some("too_many_connections_from_address"), Some(7)),
            Next::Retry {
                at_least: Duration::from_secs(7)
            }
        );
        assert_eq!(
            refused(503, Some("server_full"), None),
            Next::Retry {
                at_least: Duration::ZERO
            }
        );
        assert_eq!(
            refused(400, Some("invalid_since"), None),
            Next::RetryWithoutSince
        );
        for status in [400, 403, 404, 421, 426] {
            assert_eq!(refused(status, None, None), Next::Stop, "{status}");
        }
        assert!(matches!(refused(502, None, None), Next::Retry { .. }));
        assert!(matches!(
            Ending::Silent.next(Duration::ZERO),
            Next::Retry { .. }
        ));
    }
}
