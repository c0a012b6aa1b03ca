//! Keeping the presence of the channels that keep it (see `server::presence`): a session
//! records its client's joins and leaves, and publishes each as an event.

use std::time::SystemTime;

use super::{Session, Step};
use crate::auth::permissions::Identity;
use crate::protocol::channel::Channel;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{CorrelationId, MessageError};
use crate::server::control::Control;
use crate::server::presence::Action;

impl Session {
    /// Records the client on those of `channels` that keep presence, just subscribed.
    pub(super) fn joined<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) {
        let Some(identity) = &self.identity else {
            return;
        };
        let hub = &self.shared.hub;
        let events: Vec<_> = channels
            .into_iter()
            .filter(|c| hub.keeps_presence(c))
            .filter_map(|c| self.shared.presence.join(c, self.client.id(), identity))
            .collect();
        self.announce(events, Action::Join);
    }

    /// Takes the client off those of `channels` that keep presence, just left.
    pub(super) fn left<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) {
        let hub = &self.shared.hub;
        let events: Vec<_> = channels
            .into_iter()
            .filter(|c| hub.keeps_presence(c))
            .filter_map(|c| self.shared.presence.leave(c, self.client.id()))
            .collect();
        self.announce(events, Action::Leave);
    }

    /// Answers a client's `presence` request for `name`: refused unless its grant allows
    /// the channel and the channel keeps presence; else the members, gathered from every
    /// node.
    pub(super) fn presence(
        &self,
        identity: &Identity,
        name: &str,
        correlation_id: Option<CorrelationId>,
        now: SystemTime,
    ) -> Step {
        let refuse = |code, message| {
            let e = MessageError {
                code,
                message,
                correlation_id: correlation_id.clone(),
            };
            self.refuse(&e, now);
            Step::Done
        };
        let channel = match Channel::new(name) {
            Ok(channel) => channel,
            Err(e) => return refuse(e.code().into(), e.message().to_owned()),
        };
        if !identity.may_subscribe(name) {
            let message = "your token does not allow this channel".to_owned();
            return refuse(ErrorCode::Forbidden, message);
        }
        if !self.shared.hub.keeps_presence(&channel) {
            return refuse(
                ErrorCode::NoPresence,
                format!("{channel} keeps no presence"),
            );
        }
        let control = Control::new(self.shared.clone());
        let gathering = async move {
            control
                .presence(&channel)
                .await
                .expect("the channel keeps presence")
        };
        Step::Presence(correlation_id, Box::pin(gathering))
    }

    /// Publishes presence events to every node, in order, without waiting for them.
    fn announce(&self, events: Vec<crate::event::Event>, action: Action) {
        if !events.is_empty() {
            let broker = &self.shared.broker;
            broker.publish_presence(events, action, SystemTime::now());
        }
    }
}
