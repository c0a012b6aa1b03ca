//! The broker seam: where every publish, status snapshot and interest change goes.
//!
//! Nothing above the broker asks whether it runs alone or in a cluster. The HTTP publish
//! API, a socket's `publish`, the upstream pollers and the subscribe path all speak to one
//! [`Broker`]:
//!
//! - [`MemoryBroker`] serves one node: a publish is delivered to this node's [`Hub`](crate::Hub) at
//!   once, and the hub's history numbers it.
//! - [`NatsBroker`](crate::cluster::NatsBroker) serves a cluster: a publish is stored in a
//!   JetStream stream, which numbers it and hands it to every node (this one included);
//!   each node encodes it once and fans it out to its own subscribers.
//!
//! A single node is a cluster of one whose broker is in memory (as in centrifuge, whose
//! `Node.Publish` always goes through its broker).

mod completion;
mod memory;

use std::fmt;
use std::time::SystemTime;

use futures_util::future::BoxFuture;

pub use self::completion::Completion;
pub use self::memory::MemoryBroker;
use crate::engine::hub::Delivery;
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::protocol::message::Resume;
use crate::server::control::{ControlRequest, NodeAnswer};
use crate::server::presence::Action;
use crate::snapshot::Snapshot;

/// Carries publishes, snapshots and interest between this node and every other.
///
/// Operations that may wait on the network return a [`Completion`]: `Ready` when the work
/// is already done (always so in memory), `Pending` with a future otherwise. A pending
/// completion does its work when polled, like any future: await it, or spawn it when the
/// result does not matter; dropped unpolled, it does nothing (a cluster publish is then
/// not sent).
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Publishes `events`, in order, to the subscribers of every node (this one included),
    /// stamped with `now`. Never lost to an outage: a cluster node that cannot reach its
    /// broker delivers them here ([`Published::Here`]).
    fn publish(&self, events: Vec<Event>, now: SystemTime) -> Completion<Published>;

    /// Makes `snapshot` its channel's latest on every node, each of which broadcasts what
    /// changed to its own subscribers ([`Snapshot::to_broadcast`]).
    fn publish_snapshot(&self, snapshot: Snapshot);

    /// Readies this node for a client to subscribe to `channels`. Once it completes,
    /// nothing published on them anywhere is missed here, and what a client resuming from
    /// `resume` missed on them is in this node's history (for the hub to replay).
    /// `channels` is lazy: a broker that needs nothing (one node) never runs it.
    fn listen(
        &self,
        channels: &mut dyn Iterator<Item = Channel>,
        resume: Option<&Resume>,
    ) -> Completion<()>;

    /// Whether this node runs the upstream pollers: always alone; in a cluster, one node
    /// at a time, handed over when it leaves or dies.
    fn leadership(&self) -> tokio::sync::watch::Receiver<bool>;

    /// The broker's part of the stats and `/readyz`; `None` for one node.
    fn status(&self) -> Option<serde_json::Value>;

    /// Housekeeping, called about once a second.
    fn sweep(&self) {}

    /// Publishes presence `changes` made here (join or leave events, as `action` says)
    /// like [`publish`](Broker::publish), without waiting, after the changes passed
    /// before; and tells the other nodes of them, so that they can announce this node's
    /// members as leaving if it dies. The others must hear of a join before any
    /// subscriber can, and of a leave only once every subscriber may have: a node that
    /// dies in between then has its member announced as leaving (once more, perhaps),
    /// never kept for ever. The default publishes them on a task of their own, which
    /// keeps their order only for a broker whose publish completes at once (one node).
    fn publish_presence(&self, changes: Vec<Event>, action: Action, now: SystemTime) {
        let _ = action;
        if let Completion::Pending(publishing) = self.publish(changes, now) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(publishing)),
                Err(_) => tracing::debug!("presence events not sent: no runtime (shutting down)"),
            }
        }
    }

    /// Sends a control request to every node (this one included) and gathers their
    /// answers (see `cluster::control`). `None` for a broker without other nodes: the
    /// caller applies the request here.
    fn gather(
        &self,
        request: &ControlRequest,
    ) -> Option<BoxFuture<'static, Result<Vec<NodeAnswer>, String>>> {
        let _ = request;
        None
    }

    /// Leaves by `deadline`, whether the other side answers or not. Called at shutdown.
    fn close(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()>;
}

/// Where a [`Broker::publish`] put the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored in the cluster's stream at these offsets; every node delivers them.
    Stored(Vec<u64>),
    /// Delivered on this node (alone, or with the cluster unreachable).
    Here(Delivery),
}
