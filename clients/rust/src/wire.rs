//! The SigmaVault messages this client reads and writes (docs/protocol.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::GapReason;

/// Any message from the server: the envelope, with `data` left unparsed.
#[derive(Debug, Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    #[serde(default)]
    pub(crate) timestamp: String,
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) offset: Option<u64>,
    #[serde(default)]
    pub(crate) correlation_id: Option<serde_json::Value>,
}

impl Incoming<'_> {
    /// `data` read as `T`.
    pub(crate) fn data<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.map_or("{}", RawValue::get))
    }

    /// The correlation id this client gave the request answered (always a string).
    pub(crate) fn correlation(&self) -> Option<&str> {
        self.correlation_id.as_ref().and_then(|v| v.as_str())
    }
}

/// The welcome `notification`, the first message of a connection.
#[derive(Debug, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) subscriptions: Vec<String>,
    #[serde(flatten)]
    pub(crate) resumed: Resumed,
}

/// A `subscribe_response`.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscribed {
    #[serde(default)]
    pub(crate) subscriptions: Vec<String>,
    #[serde(default)]
    pub(crate) rejected: Vec<Rejected>,
    #[serde(flatten)]
    pub(crate) resumed: Resumed,
}

/// What the welcome and a `subscribe_response` say about resuming: the epoch, how each
/// resumed channel's recovery went, and each subscribed channel's position.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Resumed {
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    #[serde(default)]
    pub(crate) recovery: BTreeMap<String, Recovery>,
    #[serde(default)]
    pub(crate) offsets: BTreeMap<String, u64>,
}

/// A channel a subscribe was refused.
#[derive(Debug, Deserialize)]
pub(crate) struct Rejected {
    pub(crate) channel: String,
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// How a resumed channel's recovery went.
#[derive(Debug, Deserialize)]
pub(crate) struct Recovery {
    pub(crate) recovered: bool,
    #[serde(default)]
    pub(crate) replayed: u64,
    #[serde(default)]
    pub(crate) reason: Option<GapReason>,
}

/// An `auth_response`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuthResponse {
    pub(crate) success: bool,
    #[serde(default)]
    pub(crate) expires_at: Option<String>,
    #[serde(default)]
    pub(crate) error: Option<ErrorBody>,
}

/// An `error` message's data.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// A message to the server.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a, D: Serialize> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) correlation_id: &'a str,
    pub(crate) data: D,
}

/// `subscribe` / `unsubscribe` data.
#[derive(Debug, Serialize)]
pub(crate) struct ChannelList<'a> {
    pub(crate) channels: Vec<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) since: BTreeMap<&'a str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<&'a str>,
}

/// `publish` data: one event.
#[derive(Debug, Serialize)]
pub(crate) struct Publish<'a> {
    #[serde(rename = "type")]
    pub(crate) channel: &'a str,
    pub(crate) data: &'a RawValue,
}

/// `presence` data.
#[derive(Debug, Serialize)]
pub(crate) struct PresenceAsk<'a> {
    pub(crate) channel: &'a str,
}

/// `auth` data.
#[derive(Debug, Serialize)]
pub(crate) struct Auth<'a> {
    pub(crate) token: &'a str,
}

/// Whether `name` is a channel name the server accepts: 1 to 128 bytes of
/// `A-Z a-z 0-9 . _ - : /`.
pub(crate) fn valid_channel(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelope_and_leaves_data_for_later() {
        let text = r#"{"type":"orders","timestamp":"2026-11-22T07:30:00.120Z","data":{"id":7},"offset":1042}"#;
        let m: Incoming<'_> = serde_json::from_str(text).unwrap();
        assert_eq!((m.kind, m.offset), ("orders", Some(1042)));
        assert_eq!(m.data.unwrap().get(), r#"{"id":7}"#);
        let reply = r#"{"type":"subscribe_response","timestamp":"t","correlation_id":"c3","data":{"success":false,"subscribed":["a"],"subscriptions":["a"],"rejected":[{"channel":"b","code":"forbidden","reason":"no"}],"epoch":"e","recovery":{"a":{"recovered":false,"replayed":2,"reason":"history_truncated"},"c":{"recovered":false,"replayed":0,"reason":"something_new"}},"offsets":{"a":9}}}"#;
        let m: Incoming<'_> = serde_json::from_str(reply).unwrap();
        assert_eq!(m.correlation(), Some("c3"));
        let s: Subscribed = m.data().unwrap();
        assert_eq!(s.rejected[0].code, "forbidden");
        assert_eq!(
            s.resumed.recovery["a"].reason,
            Some(GapReason::HistoryTruncated)
        );
        assert_eq!(s.resumed.recovery["c"].reason, Some(GapReason::Other));
        assert_eq!(s.resumed.offsets["a"], 9);
    }

    #[test]
    fn channel_names_as_the_server_has_them() {
        assert!(valid_channel("orders.eu-1:x/y_z"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("with space"));
        assert!(!valid_channel(&"a".repeat(129)));
        assert!(valid_channel(&"a".repeat(128)));
    }
}
