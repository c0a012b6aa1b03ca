//! This node's presence changes, published and told to the other nodes in the order they
//! were made: a client that joins and at once leaves is seen to join and then leave,
//! never the other way round, on every node and in every node's roster.
//!
//! Sessions queue their changes without waiting. One task publishes them, each run of
//! joins (or of leaves) together, so a burst (a node's clients leaving at shutdown) goes
//! out pipelined rather than one acknowledgement at a time. The queue is bounded by what
//! clients do: every change is a subscribe, an unsubscribe or a disconnect, which the
//! inbound rate limit and the connection limits bound. The task holds the link weakly and
//! ends with it.

use std::sync::Weak;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::Cluster;
use crate::event::Event;
use crate::server::presence::Action;

/// Most queued changes taken at once.
const BATCH: usize = 256;

/// Presence changes made on this node, queued for publishing.
#[derive(Debug)]
pub(super) struct Changes {
    events: Vec<Event>,
    action: Action,
    now: SystemTime,
}

/// The queue's sending end.
pub(super) type Queue = mpsc::UnboundedSender<Changes>;

/// A queue, and its receiving end for [`start`].
pub(super) fn queue() -> (Queue, mpsc::UnboundedReceiver<Changes>) {
    mpsc::unbounded_channel()
}

/// Publishes what is queued, in order, until the link is dropped.
pub(super) fn start(link: Weak<Cluster>, mut queued: mpsc::UnboundedReceiver<Changes>) {
    tokio::spawn(async move {
        let mut taken = Vec::with_capacity(BATCH);
        while queued.recv_many(&mut taken, BATCH).await > 0 {
            let Some(link) = link.upgrade() else {
                return;
            };
            let mut changes = taken.drain(..).peekable();
            while let Some(first) = changes.next() {
                let mut events = first.events;
                while let Some(next) = changes.next_if(|c| c.action == first.action) {
                    events.extend(next.events);
                }
                link.publish_presence(&events, first.action, first.now)
                    .await;
            }
        }
    });
}

impl Cluster {
    /// Publishes this node's presence `changes` through the stream, and tells the other
    /// nodes of them: of joins first, of leaves after. On one connection the roster's
    /// message reaches NATS before the stream's, so no subscriber sees a join the others
    /// do not know of; and a leave is forgotten only once it is stored (see
    /// [`Broker::publish_presence`](crate::broker::Broker::publish_presence)).
    async fn publish_presence(&self, changes: &[Event], action: Action, now: SystemTime) {
        if action == Action::Join {
            self.tell_roster(changes).await;
        }
        // Not lost to an outage: then delivered on this node only.
        let _ = self.publish_or_deliver_here(changes, now).await;
        if action == Action::Leave {
            self.tell_roster(changes).await;
        }
    }

    /// Queues presence `changes` made here, all joins or all leaves as `action` says, to
    /// be published after those queued before.
    pub(super) fn announce(&self, events: Vec<Event>, action: Action, now: SystemTime) {
        let changes = Changes {
            events,
            action,
            now,
        };
        if self.announcements.send(changes).is_err() {
            tracing::debug!("presence changes not published: the link is closing");
        }
    }
}
