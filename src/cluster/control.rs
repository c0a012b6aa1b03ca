//! The control API across the cluster (see [`crate::server::control`]).
//!
//! A request is published once on `{prefix}.control` (core NATS: not stored, so a node
//! that is down meanwhile never applies it later) with a reply inbox. Every node, the
//! asking one included, applies it to its own connections and answers on the inbox with
//! what it did; the asking node gathers the answers until every node it has heard from
//! lately (see `nodes`) has answered, or [`GATHER_WINDOW`] has passed. A node slower than
//! that still applies the request, but its count is missed; one that joined in the last
//! second may answer in time or not.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::{subject, Cluster, ClusterError};
use crate::server::control::{ControlHandler, ControlRequest, NodeAnswer};

/// How long a control request waits for the nodes' answers. Nodes on a healthy network
/// answer within milliseconds: each applies a request with a walk over its slots.
pub const GATHER_WINDOW: Duration = Duration::from_millis(500);

impl Cluster {
    /// Applies every control request of the cluster here with `handler`, answering each
    /// on its inbox, until the link closes.
    pub(super) async fn serve_control(
        self: &Arc<Self>,
        handler: ControlHandler,
    ) -> Result<(), ClusterError> {
        let mut requests = self.follow(subject::control(&self.prefix)).await?;
        let client = self.client.clone();
        let node = self.instance.clone();
        let own = handler.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let request: ControlRequest = match serde_json::from_slice(&message.payload) {
                    Ok(request) => request,
                    Err(e) => {
                        tracing::warn!(error = %e, "not a sigmahub control request; dropped");
                        continue;
                    }
                };
                let mut answer = handler(&request);
                answer.node.clone_from(&node);
                let Some(inbox) = message.reply else {
                    continue;
                };
                let body = serde_json::to_vec(&answer).expect("serializing to memory cannot fail");
                if let Err(e) = client.publish(inbox, body.into()).await {
                    tracing::warn!(error = %e, "control answer not sent");
                }
            }
        });
        self.tasks.lock().push(task);
        // Now that this node answers, it says so, and keeps the others' presence.
        self.beat().await?;
        self.keep_roster(own).await
    }

    /// Sends `request` to every node and gathers their answers: until every node heard
    /// from lately has answered, for [`GATHER_WINDOW`] at most.
    pub(super) async fn gather(
        self: Arc<Self>,
        request: ControlRequest,
    ) -> Result<Vec<NodeAnswer>, ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let inbox = self.client.new_inbox();
        let mut answers = self.follow(inbox.clone()).await?;
        let body = serde_json::to_vec(&request).expect("serializing to memory cannot fail");
        self.client
            .publish_with_reply(subject::control(&self.prefix), inbox, body.into())
            .await
            .map_err(|e| ClusterError::Publish(e.into()))?;
        let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
        // Not listened long enough to know every node (just started): wait out the window.
        let live = self.nodes.live(crate::clock::now());
        let known = live.is_some();
        let mut waiting = live.unwrap_or_default();
        let mut gathered: Vec<NodeAnswer> = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
            match serde_json::from_slice::<NodeAnswer>(&message.payload) {
                Ok(answer) => {
                    waiting.remove(&answer.node);
                    gathered.push(answer);
                    if known && waiting.is_empty() {
                        tracing::debug!(nodes = gathered.len(), "every live node answered");
                        return Ok(gathered);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "not a sigmahub control answer; ignored"),
            }
        }
        if !waiting.is_empty() {
            tracing::debug!(?waiting, "nodes that did not answer within the window");
        }
        Ok(gathered)
    }
}
