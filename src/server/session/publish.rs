//! A client's `publish`: its grant (and the application, where it wants to be asked)
//! checked for every event, then through the broker.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Session, Step};
use crate::auth::permissions::Identity;
use crate::broker::{Completion, Published};
use crate::dialect::ServerMessage;
use crate::hooks::{Caller, CheckedPublish, HookError};
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{CorrelationId, MessageError};
use crate::protocol::publish;
use crate::server::counters::Limit;

impl Session {
    /// Publishes the client's events if its grant, and the application where it wants to
    /// be asked, allow every one of them (all or none). Says what is left to do when the
    /// application is still deciding.
    pub(super) fn publish(
        &mut self,
        identity: &Arc<Identity>,
        body: &str,
        correlation_id: Option<CorrelationId>,
        now: SystemTime,
    ) -> Step {
        let fail = |code: ErrorCode, message: String| MessageError {
            code,
            message,
            correlation_id: correlation_id.clone(),
        };
        let events = match publish::parse(body.as_bytes()) {
            Ok(events) => events,
            Err(e) => {
                self.refuse(&fail(e.code, e.message), now);
                return Step::Done;
            }
        };
        if let Some((i, event)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| !identity.may_publish(e.channel()))
        {
            self.shared.counters.hit(Limit::ForbiddenPublish);
            let e = fail(
                ErrorCode::Forbidden,
                format!(
                    "event {i}: your token does not allow publishing on {:?}; nothing was published",
                    event.channel().as_str()
                ),
            );
            self.refuse(&e, now);
            return Step::Done;
        }
        let caller = Caller {
            client: self.client.id(),
            identity: identity.clone(),
        };
        match self.shared.hooks.check_publish(&caller, events) {
            Completion::Ready(checked) => {
                self.publish_checked(checked, correlation_id, now);
                Step::Done
            }
            Completion::Pending(checking) => Step::Publish(checking, correlation_id),
        }
    }

    /// Publishes events the application has `checked`, or tells the client which one it
    /// refused.
    pub(super) fn publish_checked(
        &mut self,
        checked: CheckedPublish,
        correlation_id: Option<CorrelationId>,
        now: SystemTime,
    ) {
        let events = match checked {
            Ok(events) => events,
            Err((i, error)) => {
                let code = match error {
                    HookError::Unavailable(_) => ErrorCode::Unavailable,
                    HookError::Refused(_) | HookError::NotSupported => {
                        self.shared.counters.hit(Limit::ForbiddenPublish);
                        ErrorCode::Forbidden
                    }
                };
                let e = MessageError {
                    code,
                    message: format!("event {i}: {error}; nothing was published"),
                    correlation_id,
                };
                self.refuse(&e, now);
                return;
            }
        };
        // The client's own subscriptions get the events the way every subscriber does; the
        // reply follows them, or, when the broker must wait (a cluster's stream), follows
        // once the events are stored.
        let accepted = events.len();
        let admitted = self
            .shared
            .throttle
            .admit(events, std::time::Instant::now());
        let throttled = admitted.throttled;
        match self.shared.broker.publish(admitted.events, now) {
            Completion::Ready(published) => {
                let reply = publish_reply(accepted, throttled, &published);
                self.say(
                    ServerMessage::PublishResponse,
                    correlation_id.as_ref(),
                    now,
                    &reply,
                );
            }
            Completion::Pending(publishing) => {
                let outbox = self.client.outbox().clone();
                let dialect = self.client.dialect();
                tokio::spawn(async move {
                    let reply = publish_reply(accepted, throttled, &publishing.await);
                    let kind = ServerMessage::PublishResponse;
                    outbox.push(dialect.message(kind, correlation_id.as_ref(), now, &reply));
                });
            }
        }
    }
}

/// The `publish_response` data: with the offsets when the cluster's stream stored the
/// events (every node delivers them), else how many client queues they went to here; and
/// how many a `[[channels]]` throttle held, if any.
pub(super) fn publish_reply(
    accepted: usize,
    throttled: usize,
    published: &Published,
) -> serde_json::Value {
    let mut reply = match published {
        Published::Stored(offsets) => serde_json::json!({
            "success": true,
            "accepted": accepted,
            "offsets": offsets,
            "delivered": null,
        }),
        Published::Here(delivery) => serde_json::json!({
            "success": true,
            "accepted": accepted,
            "delivered": delivery.queued,
        }),
    };
    if throttled > 0 {
        reply["throttled"] = throttled.into();
    }
    reply
}
