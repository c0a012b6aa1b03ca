//! The poller leadership: one node at a time polls the upstream engine.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;

use super::Cluster;

/// How long the poller leader's key lives without renewal: a dead leader is replaced
/// within about this long.
pub const LEADER_TTL: Duration = Duration::from_secs(5);

pub(super) const LEADER_KEY: &str = "pollers";

impl Cluster {
    /// Runs for the poller leadership until the process ends, and says on the returned
    /// channel whether this node holds it. The leader holds a key in a KV bucket whose
    /// entries live [`LEADER_TTL`]; it renews the key every second, and when it stops
    /// (killed, cut off), another node takes the key once it has expired.
    pub(super) fn leadership(self: &Arc<Self>) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move { this.campaign(tx).await });
        self.tasks.lock().push(task);
        rx
    }

    async fn campaign(&self, leader: tokio::sync::watch::Sender<bool>) {
        let bucket = format!("{}_leader", self.prefix);
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut kv = None;
        let mut revision = None;
        loop {
            ticks.tick().await;
            if kv.is_none() {
                match self.leader_bucket(&bucket).await {
                    Ok(store) => kv = Some(store),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the leader bucket");
                        continue;
                    }
                }
            }
            let store = kv.as_ref().expect("opened above");
            let value = Bytes::from(self.node.clone());
            revision = match revision {
                Some(held) => match store.update(LEADER_KEY, value, held).await {
                    Ok(renewed) => Some(renewed),
                    // Taken by another node (ours expired): step down.
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                    // NATS unreachable: keep polling for our own clients meanwhile.
                    Err(_) => Some(held),
                },
                None => store.create(LEADER_KEY, value).await.ok(),
            };
            let is_leader = revision.is_some();
            *self.held.lock().await = revision.map(|r| (store.clone(), r));
            self.leader.store(is_leader, Ordering::Relaxed);
            if *leader.borrow() != is_leader {
                tracing::info!(
                    node = self.node,
                    leader = is_leader,
                    "poller leadership changed"
                );
                let _ = leader.send(is_leader);
            }
        }
    }

    /// The leader bucket, created as a plain stream (async-nats' KV creation speaks a
    /// newer server API than 2.9's).
    async fn leader_bucket(&self, bucket: &str) -> Result<kv::Store, async_nats::Error> {
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: LEADER_TTL,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(1),
                ..Default::default()
            })
            .await?;
        Ok(self.js.get_key_value(bucket).await?)
    }
}
