//! Keeping the presence of the channels that keep it (see `server::presence`): a session
//! records its client's joins and leaves, and publishes each as an event.

use std::time::SystemTime;

use super::Session;
use crate::broker::Completion;
use crate::protocol::channel::Channel;

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
        self.announce(events);
    }

    /// Takes the client off those of `channels` that keep presence, just left.
    pub(super) fn left<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) {
        let hub = &self.shared.hub;
        let events: Vec<_> = channels
            .into_iter()
            .filter(|c| hub.keeps_presence(c))
            .filter_map(|c| self.shared.presence.leave(c, self.client.id()))
            .collect();
        self.announce(events);
    }

    /// Publishes presence events to every node, without waiting for them.
    fn announce(&self, events: Vec<crate::event::Event>) {
        if events.is_empty() {
            return;
        }
        if let Completion::Pending(publishing) =
            self.shared.broker.publish(events, SystemTime::now())
        {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(publishing)),
                Err(_) => tracing::debug!("presence events not sent: no runtime (shutting down)"),
            }
        }
    }
}
