//! What a connection may do: the channels it may subscribe to and publish on, as glob
//! patterns (`*` any run of characters, `?` one character), and who it is.

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use wildmatch::WildMatch;

/// Most patterns one claim may hold; a token with more is refused.
pub const MAX_PATTERNS: usize = 256;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

/// A set of channel-name glob patterns. Cheap to clone: clones share the compiled
/// patterns (every connection whose token names no channels shares the defaults).
#[derive(Debug, Clone)]
pub enum Patterns {
    /// Every channel.
    All,
    /// The channels matching at least one pattern (none when empty).
    Some(Arc<[WildMatch]>),
}

/// The empty set, shared: most tokens may publish nowhere.
static NONE: LazyLock<Arc<[WildMatch]>> = LazyLock::new(|| Arc::from([]));

/// Why a list of patterns was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("more than {MAX_PATTERNS} channel patterns")]
    TooMany,
    /// A pattern is empty or longer than [`MAX_PATTERN_LEN`] bytes.
    #[error("a channel pattern is empty or longer than {MAX_PATTERN_LEN} bytes")]
    BadLength,
}

impl Patterns {
    /// No channel at all.
    pub fn none() -> Self {
        Self::Some(Arc::clone(&NONE))
    }

    /// Compiles `patterns`; a lone `*` becomes [`Patterns::All`].
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany);
        }
        if patterns.is_empty() {
            return Ok(Self::none());
        }
        let mut compiled = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
                return Err(PatternError::BadLength);
            }
            if pattern == "*" {
                return Ok(Self::All);
            }
            compiled.push(WildMatch::new(pattern));
        }
        Ok(Self::Some(compiled.into()))
    }

    /// Whether `channel` matches.
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some(patterns) => patterns.iter().any(|p| p.matches(channel)),
        }
    }

    /// The patterns as text, for `auth_response`.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            Self::All => vec!["*".to_owned()],
            Self::Some(patterns) => patterns.iter().map(ToString::to_string).collect(),
        }
    }
}

/// How a connection proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No credentials: the server runs without token authentication.
    Anonymous,
    /// A JWT.
    Jwt,
    /// A publish API key (a trusted service).
    ApiKey,
    /// The application said who it is: a connect hook or an embedder's
    /// [`Authorizer`](crate::hooks::Authorizer).
    Application,
}

/// Who a connection is and what it may do. Shared (`Arc`) by every connection with the
/// same grant, so anonymous clients cost one pointer each.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The subject (`sub` claim), `anonymous`, or `api-key` plus the key's position.
    pub subject: String,
    /// How the identity was established.
    pub method: Method,
    /// When the credentials stop being valid (a token's `exp` plus `auth.leeway`); the
    /// connection is closed then (4004).
    pub expires_at: Option<SystemTime>,
    /// Channels it may subscribe to.
    pub subscribe: Patterns,
    /// Channels it may publish on over the WebSocket.
    pub publish: Patterns,
    /// What the token says about its user for others to see (its `info` claim, any JSON
    /// up to [`MAX_INFO`] bytes): shown in the presence of channels that keep it.
    pub info: Option<Arc<serde_json::value::RawValue>>,
}

/// The most bytes of a token's `info` claim.
pub const MAX_INFO: usize = 1024;

impl Identity {
    /// A client of a server without token authentication: it may subscribe to anything and
    /// publish nothing over the socket.
    pub fn anonymous() -> Arc<Self> {
        Arc::new(Self {
            subject: "anonymous".to_owned(),
            method: Method::Anonymous,
            expires_at: None,
            subscribe: Patterns::All,
            publish: Patterns::none(),
            info: None,
        })
    }

    /// A user the application vouches for (see [`crate::hooks`]): it may subscribe to
    /// any channel (the subscribe hook, if any, decides) and publish on none, until the
    /// fields say otherwise.
    ///
    /// ```
    /// use sigmahub::auth::permissions::{Identity, Patterns};
    /// let alice = Identity {
    ///     publish: Patterns::new(&["chat.*"]).unwrap(),
    ///     ..Identity::user("alice")
    /// };
    /// assert!(alice.may_publish("chat.lobby") && alice.may_subscribe("news"));
    /// ```
    pub fn user(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            method: Method::Application,
            expires_at: None,
            subscribe: Patterns::All,
            publish: Patterns::none(),
            info: None,
        }
    }

    /// The server itself, for what the control API asks of a connection: it may subscribe
    /// a client to any channel.
    pub(crate) fn server() -> Self {
        Self {
            subject: "server".to_owned(),
            method: Method::ApiKey,
            expires_at: None,
            subscribe: Patterns::All,
            publish: Patterns::none(),
            info: None,
        }
    }

    /// Whether it may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.allows(channel)
    }

    /// Whether it may publish on `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.allows(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_channel_names() {
        let p = Patterns::new(&["agent.*", "tenant:42/?rders", "notification"]).unwrap();
        assert!(p.allows("agent.status"));
        assert!(p.allows("agent."));
        assert!(p.allows("tenant:42/orders"));
        assert!(p.allows("notification"));
        assert!(!p.allows("agents"));
        assert!(!p.allows("tenant:43/orders"));
        assert!(!p.allows("notification.x"));
    }

    #[test]
    fn a_lone_star_is_everything_and_empty_is_nothing() {
        assert!(matches!(Patterns::new(&["a", "*"]).unwrap(), Patterns::All));
        let none = Patterns::new::<&str>(&[]).unwrap();
        assert!(!none.allows("a"));
    }

    #[test]
    fn hostile_pattern_lists_are_refused() {
        let many = vec!["a"; MAX_PATTERNS + 1];
        assert_eq!(Patterns::new(&many).unwrap_err(), PatternError::TooMany);
        assert_eq!(Patterns::new(&[""]).unwrap_err(), PatternError::BadLength);
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert_eq!(Patterns::new(&[long]).unwrap_err(), PatternError::BadLength);
    }

    #[test]
    fn anonymous_subscribes_to_anything_and_publishes_nothing() {
        let a = Identity::anonymous();
        assert!(a.may_subscribe("anything"));
        assert!(!a.may_publish("anything"));
    }
}
