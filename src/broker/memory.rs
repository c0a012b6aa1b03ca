//! One node's broker: everything is delivered to this node's hub at once.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;

use super::{Broker, Completion, Published};
use crate::engine::hub::{Delivery, Hub};
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::protocol::message::Resume;
use crate::snapshot::{Snapshot, SnapshotCache};

/// The broker of a node that runs alone, and the local side of a cluster node: publishes go
/// straight to the [`Hub`], snapshots to the [`SnapshotCache`] and the hub.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    hub: Hub,
    snapshots: Arc<SnapshotCache>,
    /// Always `true`: a node alone runs its pollers. Kept so that receivers never see the
    /// channel close.
    leader: Arc<tokio::sync::watch::Sender<bool>>,
}

impl MemoryBroker {
    /// A broker delivering to `hub` and storing snapshots in `snapshots`.
    pub fn new(hub: Hub, snapshots: Arc<SnapshotCache>) -> Self {
        Self {
            hub,
            snapshots,
            leader: Arc::new(tokio::sync::watch::Sender::new(true)),
        }
    }

    /// The hub this broker delivers to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Delivers `events` to this node's subscribers, in order, as one batch.
    pub fn deliver(&self, events: &[Event], now: SystemTime) -> Delivery {
        self.hub.publish_batch(events, now)
    }

    /// Stores `snapshot` as its channel's latest and broadcasts what changed since the one
    /// it replaces to this node's subscribers.
    pub fn deliver_snapshot(&self, snapshot: Snapshot) {
        let previous = self.snapshots.get(&snapshot.channel);
        let snapshot = self.snapshots.store(snapshot);
        self.hub.publish_frames(
            &snapshot.channel,
            &snapshot.to_broadcast(previous.as_deref()),
        );
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, events: Vec<Event>, now: SystemTime) -> Completion<Published> {
        Completion::Ready(Published::Here(self.deliver(&events, now)))
    }

    fn publish_snapshot(&self, snapshot: Snapshot) {
        self.deliver_snapshot(snapshot);
    }

    fn listen(
        &self,
        _channels: &mut dyn Iterator<Item = Channel>,
        _resume: Option<&Resume>,
    ) -> Completion<()> {
        // Every publish reaches this hub, and its history is all there is.
        Completion::Ready(())
    }

    fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    fn close(&self, _deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_publish_is_delivered_before_the_call_returns() {
        let hub = Hub::new(&Config::default());
        let broker = MemoryBroker::new(hub.clone(), Arc::default());
        let mut client = hub.connect().unwrap();
        client.subscribe(["orders"]);
        let event = Event::new("orders", &serde_json::json!({"id": 1})).unwrap();
        let Completion::Ready(Published::Here(delivery)) =
            broker.publish(vec![event], SystemTime::now())
        else {
            panic!("a memory publish is ready at once");
        };
        assert_eq!(delivery.queued, 1);
        assert_eq!(client.outbox().len(), 1);
    }

    #[test]
    fn a_node_alone_leads_its_pollers_for_good() {
        let broker = MemoryBroker::new(Hub::new(&Config::default()), Arc::default());
        let leader = broker.leadership();
        assert!(*leader.borrow());
        assert!(!leader.has_changed().unwrap(), "the channel stays open");
    }
}
