//! Which nodes answer control requests: each says so every [`BEAT`] on core NATS, and
//! a node not heard from for [`SILENCE`] is taken to be gone. A gathering then ends as
//! soon as every node heard from has answered, rather than always waiting out its window.
//! A node begins to beat before it listens for clients, so a node with clients has been
//! heard; a node that has itself just started waits out the window until it has listened
//! for a beat and a half.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;

use super::{subject, Cluster, ClusterError};

/// How often a node says it is there.
pub(super) const BEAT: Duration = Duration::from_secs(1);

/// How long a node may be silent before it is no longer waited for.
pub(super) const SILENCE: Duration = Duration::from_secs(3);

/// The nodes heard from, by when.
#[derive(Debug, Default)]
pub(super) struct Nodes {
    heard: Mutex<HashMap<String, Instant>>,
    /// When this node began to listen, or last got its link back: until it has listened
    /// for a beat and more since, it may not have heard every node yet.
    since: Mutex<Option<Instant>>,
}

impl Nodes {
    fn heard(&self, node: &str, now: Instant) {
        let mut heard = self.heard.lock();
        match heard.get_mut(node) {
            Some(at) => *at = now,
            None => {
                heard.insert(node.to_owned(), now);
            }
        }
    }

    /// The nodes heard from within [`SILENCE`] of `now` (forgetting the others); `None`
    /// while this node has not listened long enough to have heard every node.
    pub(super) fn live(&self, now: Instant) -> Option<BTreeSet<String>> {
        let since = (*self.since.lock())?;
        if now.saturating_duration_since(since) < BEAT + BEAT / 2 {
            return None;
        }
        let mut heard = self.heard.lock();
        heard.retain(|_, at| now.saturating_duration_since(*at) < SILENCE);
        Some(heard.keys().cloned().collect())
    }

    /// This node listens from `now` on (again, after its link came back).
    pub(super) fn listening(&self, now: Instant) {
        *self.since.lock() = Some(now);
    }
}

impl Cluster {
    /// Says every [`BEAT`] that this node answers control requests, and listens for the
    /// others saying so, until the link closes.
    pub(super) async fn beat(self: &Arc<Self>) -> Result<(), ClusterError> {
        let mut beats = self.follow(subject::alive(&self.prefix)).await?;
        self.nodes.listening(crate::clock::now());
        let this = self.clone();
        let listening = tokio::spawn(async move {
            while let Some(message) = beats.next().await {
                if let Ok(node) = std::str::from_utf8(&message.payload) {
                    this.nodes.heard(node, crate::clock::now());
                }
            }
        });
        let this = self.clone();
        let beating = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(BEAT);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let node = bytes::Bytes::from(this.instance.clone());
                if let Err(e) = this
                    .client
                    .publish(subject::alive(&this.prefix), node)
                    .await
                {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        });
        self.tasks.lock().extend([listening, beating]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_silent_too_long_is_no_longer_live() {
        let nodes = Nodes::default();
        let t0 = Instant::now();
        assert_eq!(nodes.live(t0), None, "not listening yet");
        nodes.listening(t0);
        nodes.heard("a", t0);
        assert_eq!(nodes.live(t0 + BEAT), None, "not every node heard from yet");
        nodes.heard("b", t0 + Duration::from_secs(2));
        let live = |at| nodes.live(at).expect("listened long enough");
        assert_eq!(live(t0 + Duration::from_secs(2)).len(), 2);
        let later = live(t0 + SILENCE + Duration::from_millis(1));
        assert_eq!(later.into_iter().collect::<Vec<_>>(), ["b"]);
        nodes.heard("a", t0 + SILENCE + Duration::from_secs(1));
        assert_eq!(live(t0 + SILENCE + Duration::from_secs(1)).len(), 2);
    }
}
