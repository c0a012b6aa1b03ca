//! One connected client: its outbox and its subscriptions, and what a subscribe refused.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::outbox::{Outbox, Push};
use super::state::HubState;
use crate::dialect::{Dialect, Encoding};
use crate::protocol::channel::{self, Channel};
use crate::protocol::code::RejectReason;

/// One connected client: its slot, outbox and subscriptions. Dropping it unsubscribes it
/// from everything and frees its slot.
pub struct Client {
    state: Arc<HubState>,
    slot: u32,
    id: u64,
    outbox: Arc<Outbox>,
    subscriptions: Vec<Channel>,
}

impl Client {
    pub(super) fn new(state: Arc<HubState>, slot: u32, id: u64, outbox: Arc<Outbox>) -> Self {
        Self {
            state,
            slot,
            id,
            outbox,
            subscriptions: Vec::new(),
        }
    }

    /// The wire dialect the client speaks: the frames it is sent are in it.
    pub fn dialect(&self) -> Dialect {
        self.outbox.dialect()
    }

    /// The form of the frames it is sent: its dialect, compressed or not.
    pub fn encoding(&self) -> Encoding {
        self.outbox.encoding()
    }

    /// The client's id, unique for the hub's lifetime.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's outbox, drained by its writer.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The channels the client is subscribed to, in the order it subscribed.
    pub fn subscriptions(&self) -> &[Channel] {
        &self.subscriptions
    }

    /// A broadcast frame of the client's dialect (a snapshot's, say) in the client's
    /// encoding: compressed if it negotiated permessage-deflate and compressing pays, as
    /// a publish compresses it.
    pub fn encode(&self, frame: &Bytes) -> Bytes {
        self.state.encode(self.encoding(), frame)
    }

    /// Queues a frame for this client alone (a reply, a welcome).
    pub fn send(&self, frame: Bytes) -> Push {
        self.outbox.push(frame)
    }

    /// Subscribes to each valid name; invalid names, and names beyond the subscription
    /// limit, are rejected without affecting the others. Already subscribed names are
    /// accepted and left as they are.
    pub fn subscribe<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> SubscriptionChange {
        let mut change = self.plan_subscribe(names);
        let late = self.apply_subscribe(&change);
        change
            .changed
            .retain(|c| !late.iter().any(|r| r.channel == c.as_str()));
        change.rejected.extend(late);
        change
    }

    /// What [`subscribe`](Self::subscribe) would do, without doing it. Lets a caller queue
    /// its reply (and snapshots) before the subscription lets any event through.
    pub fn plan_subscribe<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> SubscriptionChange {
        let mut change = SubscriptionChange::default();
        let limit = self.state.max_subscriptions;
        for name in names {
            if self.is_subscribed(name) || change.changed.iter().any(|c| c.as_str() == name) {
                continue;
            }
            let channel = match Channel::new(name) {
                Ok(channel) => channel,
                Err(e) => {
                    change
                        .rejected
                        .push(Rejection::new(name, e.code(), e.message()));
                    continue;
                }
            };
            if self.subscriptions.len() + change.changed.len() >= limit {
                change.rejected.push(Rejection::new(
                    name,
                    RejectReason::SubscriptionLimit,
                    "the connection holds as many subscriptions as it may (max_subscriptions_per_connection)",
                ));
                continue;
            }
            let full = self.state.max_subscribers;
            if full > 0 && self.state.topics.subscriber_count(name) >= full {
                change.rejected.push(channel_full(name));
                continue;
            }
            change.changed.push(channel);
        }
        change
    }

    /// Applies a change made by [`plan_subscribe`](Self::plan_subscribe). Returns the
    /// channels that filled up (`max_subscribers_per_channel`) between the plan and now,
    /// which are not subscribed; empty unless other clients subscribed concurrently.
    pub fn apply_subscribe(&mut self, change: &SubscriptionChange) -> Vec<Rejection> {
        let limit = self.state.max_subscribers;
        let mut late = Vec::new();
        for channel in &change.changed {
            if self.is_subscribed(channel) {
                continue;
            }
            match self
                .state
                .topics
                .subscribe_within(channel, self.slot, self.encoding(), limit)
            {
                // The topic's own name: a subscription costs the client no allocation.
                Ok((_, name)) => self.subscriptions.push(name),
                Err(_) => late.push(channel_full(channel)),
            }
        }
        // Held for the connection's life: no room for subscriptions that may never come.
        self.subscriptions.shrink_to_fit();
        late
    }

    /// Unsubscribes from each name. Names not subscribed are accepted as no-ops; invalid
    /// names are rejected.
    pub fn unsubscribe<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> SubscriptionChange {
        let mut change = SubscriptionChange::default();
        for name in names {
            if let Err(e) = channel::validate(name) {
                change
                    .rejected
                    .push(Rejection::new(name, e.code(), e.message()));
                continue;
            }
            if let Some(i) = self.subscriptions.iter().position(|c| c.as_str() == name) {
                let channel = self.subscriptions.remove(i);
                let topics = &self.state.topics;
                topics.unsubscribe(&channel, self.slot, self.encoding());
                change.changed.push(channel);
            }
        }
        change
    }

    fn is_subscribed(&self, name: &str) -> bool {
        self.subscriptions.iter().any(|c| c.as_str() == name)
    }
}

fn channel_full(name: &str) -> Rejection {
    Rejection::new(
        name,
        RejectReason::ChannelFull,
        "the channel has as many subscribers as it may (max_subscribers_per_channel)",
    )
}

impl Drop for Client {
    fn drop(&mut self) {
        let (state, encoding) = (&self.state, self.outbox.encoding());
        for channel in self.subscriptions.drain(..) {
            state.topics.unsubscribe(&channel, self.slot, encoding);
        }
        state.slots.release(self.slot);
        // Commands that came too late go with it.
        state.mailbox.take(self.id);
        state.clients.fetch_sub(1, Ordering::Relaxed);
        state.clients_by_dialect[encoding.dialect.index()].fetch_sub(1, Ordering::Relaxed);
        if encoding.is_deflated() {
            state.deflate_clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("encoding", &self.encoding())
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

/// A channel name refused by subscribe or unsubscribe, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The name as the client sent it, cut to [`MAX_ECHOED_NAME`] bytes (then ending in
    /// `…`): a reply never echoes more of a name than a valid one could hold.
    pub channel: String,
    /// Why it was refused.
    pub code: RejectReason,
    /// A human-readable reason.
    pub reason: Cow<'static, str>,
}

/// Most bytes of a refused name that a [`Rejection`] keeps.
pub const MAX_ECHOED_NAME: usize = channel::MAX_CHANNEL_LEN;

impl Rejection {
    /// A rejection of `name`, which is echoed cut to [`MAX_ECHOED_NAME`] bytes.
    pub fn new(name: &str, code: RejectReason, reason: impl Into<Cow<'static, str>>) -> Self {
        let channel = match name.len() {
            n if n <= MAX_ECHOED_NAME => name.to_owned(),
            _ => {
                let mut end = MAX_ECHOED_NAME;
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &name[..end])
            }
        };
        Self {
            channel,
            code,
            reason: reason.into(),
        }
    }
}

/// The outcome of [`Client::subscribe`] or [`Client::unsubscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// Channels whose subscription this call changed.
    pub changed: Vec<Channel>,
    /// Names refused, with reasons. The other names in the same call were still applied.
    pub rejected: Vec<Rejection>,
}
