//! Status snapshots across the cluster: the leader sends each one through the stream, and
//! every node stores and broadcasts it.

use std::time::SystemTime;

use futures_util::StreamExt;

use super::{subject, Cluster, ClusterError};
use crate::snapshot::Snapshot;

impl Cluster {
    /// Keeps this node's snapshot cache the same as every node's: the poller leader sends
    /// each snapshot through the stream, and every node (the leader too) stores and
    /// broadcasts it to its own subscribers. At start, the latest of each is read back.
    pub(super) async fn follow_snapshots(&self) -> Result<(), ClusterError> {
        let mut subscriber = self.follow(subject::snapshots_live(&self.prefix)).await?;
        for channel in crate::snapshot::STATUS_TYPES {
            let subject = subject::snapshot_of(&self.prefix, channel).publish;
            if let Ok(message) = self.stream.direct_get_last_for_subject(subject).await {
                if let Some(snapshot) = Snapshot::from_wire(&message.payload, SystemTime::now()) {
                    self.local.deliver_snapshot(snapshot);
                }
            }
        }
        let local = self.local.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(snapshot) = Snapshot::from_wire(&message.payload, SystemTime::now())
                else {
                    tracing::warn!(subject = %message.subject, "not a sigmahub snapshot; dropped");
                    continue;
                };
                local.deliver_snapshot(snapshot);
            }
        });
        self.tasks.lock().push(task);
        Ok(())
    }

    /// Sends a status snapshot to every node (this one included), which store and
    /// broadcast it.
    pub(super) async fn publish_snapshot(&self, snapshot: &Snapshot) -> Result<(), ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let subject = subject::snapshot_of(&self.prefix, &snapshot.channel).publish;
        self.js
            .publish(subject, snapshot.to_wire().into())
            .await
            .map_err(|e| ClusterError::Publish(e.into()))?
            .await
            .map_err(|e| ClusterError::Publish(e.into()))?;
        Ok(())
    }
}
