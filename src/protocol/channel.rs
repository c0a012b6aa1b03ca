//! Channel (event type) names and their validation.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of ASCII letters, digits and `.`, `_`, `-`,
//! `:`, `/`. That admits every SigmaVault type (`system.status`, `rpc_error`, …), Skreaver
//! style names (`agent-updates`) and namespaced ones (`tenant:42/orders`), and it means a
//! channel name never needs escaping inside JSON.

use std::fmt;
use std::sync::Arc;

use super::code::RejectReason;

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// The 8 channels every SigmaVault client is subscribed to on connect.
pub const DEFAULT_CHANNELS: [&str; 8] = [
    "system.status",
    "agent.status",
    "compression.update",
    "notification",
    "rpc_error",
    "connection_error",
    "heartbeat",
    "storage.update",
];

/// A validated channel name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name holds a character outside `[A-Za-z0-9._:/-]`.
    #[error("channel name may only contain A-Z a-z 0-9 . _ - : /")]
    InvalidCharacter,
}

impl ChannelError {
    /// The error's message, as `to_string` gives it, without allocating.
    pub fn message(self) -> &'static str {
        match self {
            Self::Empty => "channel name is empty",
            Self::TooLong => "channel name is longer than 128 bytes",
            Self::InvalidCharacter => "channel name may only contain A-Z a-z 0-9 . _ - : /",
        }
    }

    /// A stable machine-readable code for this error, sent to clients.
    pub fn code(self) -> RejectReason {
        match self {
            Self::Empty => RejectReason::EmptyChannel,
            Self::TooLong => RejectReason::ChannelTooLong,
            Self::InvalidCharacter => RejectReason::InvalidChannel,
        }
    }
}

impl Channel {
    /// Validates `name` and makes a channel of it.
    pub fn new(name: &str) -> Result<Self, ChannelError> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a channel name without allocating.
pub fn validate(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(ChannelError::InvalidCharacter)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Channel {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Channel {
    type Error = ChannelError;
    fn try_from(name: &str) -> Result<Self, ChannelError> {
        Self::new(name)
    }
}

impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A channel name from elsewhere (another node's request), validated as [`Channel::new`]
/// validates it.
impl<'de> serde::Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Channel::new(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid() {
        for name in DEFAULT_CHANNELS {
            Channel::new(name).unwrap();
        }
    }

    #[test]
    fn messages_are_the_display_text() {
        for e in [
            ChannelError::Empty,
            ChannelError::TooLong,
            ChannelError::InvalidCharacter,
        ] {
            assert_eq!(e.message(), e.to_string());
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate(""), Err(ChannelError::Empty));
        assert_eq!(validate(&"a".repeat(129)), Err(ChannelError::TooLong));
        assert!(validate(&"a".repeat(128)).is_ok());
        for bad in ["a b", "a\"b", "a\\b", "é", "a*", "a\0", "a\n", "<script>"] {
            assert_eq!(
                validate(bad),
                Err(ChannelError::InvalidCharacter),
                "{bad:?}"
            );
        }
        for good in [
            "agent-updates",
            "tenant:42/orders",
            "rpc_error",
            "A.b_c-d:e/f9",
        ] {
            assert!(validate(good).is_ok(), "{good}");
        }
    }

    proptest! {
        /// A valid name never needs JSON escaping: serializing it gives the name in quotes.
        #[test]
        fn valid_names_need_no_escaping(s in "\\PC{0,140}") {
            if validate(&s).is_ok() {
                prop_assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            }
        }
    }
}
