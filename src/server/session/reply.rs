//! The session's own messages to the client: subscription replies, errors, warnings.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;

use super::{Session, MAX_LISTED_REJECTIONS};
use crate::dialect::{Dialect, ServerMessage};
use crate::engine::client::{Rejection, SubscriptionChange};
use crate::protocol::channel::Channel;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{ChannelList, MessageError};
use crate::protocol::recovery::Recovery;

/// The `error` sent for the first message over the inbound limit.
pub(super) fn rate_limited(dialect: Dialect, retry_after: std::time::Duration) -> Bytes {
    dialect.message(
        ServerMessage::Error,
        None,
        SystemTime::now(),
        &serde_json::json!({
            "code": ErrorCode::RateLimited,
            "message": "too many messages; this one was ignored, and more now close the connection (1008)",
            "retry_after_ms": retry_after.as_millis() as u64,
        }),
    )
}

/// The recovery part of a `subscribe_response`.
#[derive(Default, Serialize)]
pub(super) struct Resumed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) recovery: Option<&'a BTreeMap<String, Recovery>>,
    /// Where each newly subscribed channel starts (see [`Session::positions`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) offsets: Option<&'a BTreeMap<&'a str, u64>>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn subscription_reply(
    dialect: Dialect,
    kind: ServerMessage,
    changed_key: &'static str,
    subscriptions: &[Channel],
    request: &ChannelList,
    change: &SubscriptionChange,
    resumed: Resumed<'_>,
    now: SystemTime,
) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        success: bool,
        #[serde(flatten)]
        changed: BTreeMap<&'static str, &'a [Channel]>,
        subscriptions: &'a [Channel],
        rejected: &'a [Rejection],
        /// Present when `rejected` lists only the first of them.
        #[serde(skip_serializing_if = "Option::is_none")]
        rejected_total: Option<usize>,
        #[serde(flatten)]
        resumed: Resumed<'a>,
    }
    let rejected = &change.rejected;
    let listed = &rejected[..rejected.len().min(MAX_LISTED_REJECTIONS)];
    dialect.message(
        kind,
        request.correlation_id.as_ref(),
        now,
        &Reply {
            success: rejected.is_empty(),
            changed: [(changed_key, change.changed.as_slice())].into(),
            subscriptions,
            rejected: listed,
            rejected_total: (listed.len() < rejected.len()).then_some(rejected.len()),
            resumed,
        },
    )
}

impl Session {
    /// The position of each channel `change` subscribes: the offset of its latest event,
    /// from which a client that sees nothing more on it resumes after a reconnect. `None`
    /// without history. Read before a resuming subscribe locks its channels' logs.
    pub(super) fn positions<'c>(
        &self,
        change: &'c SubscriptionChange,
    ) -> Option<BTreeMap<&'c str, u64>> {
        let history = self.shared.hub.history()?;
        Some(
            change
                .changed
                .iter()
                .map(|c| (c.as_str(), history.position(c)))
                .collect(),
        )
    }

    /// Sends the client an `error` for a message it was refused.
    pub(super) fn refuse(&self, e: &MessageError, now: SystemTime) {
        self.client.send(refusal(self.client.dialect(), e, now));
    }
}

/// The `error` frame of a message refused with `e`, in `dialect`.
pub(super) fn refusal(dialect: Dialect, e: &MessageError, now: SystemTime) -> Bytes {
    let data = serde_json::json!({ "code": e.code, "message": e.message });
    dialect.message(ServerMessage::Error, e.correlation_id.as_ref(), now, &data)
}
