//! Interest-based routing: a node listens on a channel's live subject only while it has
//! local subscribers to it, and reads back from the stream what a resuming client missed.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::stream::DirectGetErrorKind;
use tokio::task::JoinHandle;

use super::receiver::{is_event, latest, receive, with_offset, Receiver};
use super::{subject, Cluster, ClusterError};
use crate::engine::history::UNKNOWN;
use crate::protocol::channel::Channel;
use crate::protocol::message::Resume;

/// How long a channel stays subscribed in NATS after its last local subscriber left, so a
/// client that reconnects at once does not cost a resubscription.
const INTEREST_LINGER: Duration = Duration::from_secs(5);

/// One channel's live subscription.
pub(super) struct Interest {
    task: JoinHandle<()>,
    /// When a local subscriber last asked for it; the sweeper keeps it at least
    /// `INTEREST_LINGER` after that.
    ensured: Instant,
    /// Default channels are always listened to.
    pinned: bool,
}

impl Cluster {
    /// Before a local client subscribes to `channels`: makes sure this node receives their
    /// events (returning once NATS has the subscriptions), and reads back from the stream
    /// what a client resuming from `resume` missed on them. A NATS failure is logged; the
    /// client is still subscribed to what this node publishes.
    pub(super) async fn prepare(&self, channels: &[Channel], resume: Option<&Resume>) {
        for channel in channels {
            if let Err(e) = self.listen(channel, false).await {
                tracing::warn!(%channel, error = %e, "cannot listen in the cluster");
            }
        }
        let Some(resume) = resume else {
            return;
        };
        if resume.epoch.as_deref().is_some_and(|e| e != self.epoch) {
            return; // answered with epoch_changed
        }
        for (name, since) in &resume.since {
            if let Some(channel) = channels.iter().find(|c| c.as_str() == name) {
                self.backfill(channel, *since).await;
            }
        }
    }

    pub(super) async fn listen(&self, channel: &Channel, pinned: bool) -> Result<(), ClusterError> {
        {
            let mut interest = self.interest.lock();
            if let Some(existing) = interest.get_mut(channel) {
                existing.ensured = crate::clock::now();
                existing.pinned |= pinned;
                return Ok(());
            }
        }
        let subjects = subject::of(&self.prefix, channel);
        // This node's view of the channel starts after its latest event now. Whatever is
        // stored between this and the subscription taking effect shows as a gap in front
        // of the first live event, and is read back then.
        let start = latest(&self.stream, &subjects.publish)
            .await
            .map_err(ClusterError::Subscribe)?;
        let subscriber = self.follow(subjects.live).await?;
        // A flush only empties our buffer. A request on the same connection is answered
        // after the server has taken the SUB sent before it: from its answer on, every
        // event the stream stores comes to us.
        latest(&self.stream, &subjects.publish)
            .await
            .map_err(ClusterError::Subscribe)?;
        if let Some(history) = self.local.hub().history() {
            history.backfill(channel, Vec::new(), start, SystemTime::now());
        }
        let task = tokio::spawn(receive(
            Receiver {
                hub: self.local.hub().clone(),
                stream: self.stream.clone(),
                channel: channel.clone(),
                subject: subjects.publish,
                last: start,
            },
            subscriber,
            self.reconnects.subscribe(),
        ));
        let mut interest = self.interest.lock();
        match interest.get_mut(channel) {
            // Another subscriber raced us here: keep theirs.
            Some(existing) => {
                task.abort();
                existing.ensured = crate::clock::now();
                existing.pinned |= pinned;
            }
            None => {
                interest.insert(
                    channel.clone(),
                    Interest {
                        task,
                        ensured: crate::clock::now(),
                        pinned,
                    },
                );
            }
        }
        Ok(())
    }

    /// Reads what `channel` had after `since` back from the stream into this node's
    /// history, in front of what the node received live, so that a client reconnecting
    /// here from another node recovers completely. Call after
    /// [`listen`](Self::listen) and before subscribing the client.
    ///
    /// The start is vouched for when the stream still holds the channel's event at or
    /// before `since` (per-subject limits drop the oldest first). `since = 0` ("from the
    /// beginning") is never vouched for: older events may have been dropped.
    async fn backfill(&self, channel: &Channel, since: u64) {
        let Some(history) = self.local.hub().history() else {
            return;
        };
        let stop = history.first(channel).unwrap_or(u64::MAX);
        if since.saturating_add(1) >= stop {
            return; // this node's own history reaches back
        }
        let subject = subject::of(&self.prefix, channel).publish;
        let newest = match latest(&self.stream, &subject).await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "cannot read history from the stream");
                return;
            }
        };
        let vouched = since > 0
            && matches!(
                self.stream.direct_get_first_for_subject(subject.as_str()).await,
                Ok(first) if first.sequence <= since
            );
        let mut prev = if vouched { since } else { UNKNOWN };
        let mut events = Vec::new();
        let mut next = since + 1;
        while events.len() < self.history_size {
            let message = match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(message) if message.sequence < stop => message,
                Ok(_) => break,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "cannot read history from the stream");
                    break;
                }
            };
            let offset = message.sequence;
            next = offset + 1;
            if !is_event(&message.payload) {
                continue;
            }
            let frame = with_offset(&message.payload, offset);
            events.push((offset, prev, SystemTime::from(message.time), frame));
            prev = offset;
        }
        let taken = history.backfill(channel, events, newest, SystemTime::now());
        tracing::debug!(%channel, since, taken, "history read back from the stream");
    }

    /// Stops listening on channels without local subscribers for a few seconds, and
    /// forgets their local history (it stops being complete). Called about once a second.
    pub(super) fn sweep(&self) {
        let now = crate::clock::now();
        let mut interest = self.interest.lock();
        interest.retain(|channel, i| {
            let keep = i.pinned
                || now.duration_since(i.ensured) < INTEREST_LINGER
                || self.local.hub().subscriber_count(channel) > 0;
            if !keep {
                i.task.abort();
                if let Some(history) = self.local.hub().history() {
                    history.forget(channel);
                }
                tracing::debug!(%channel, "no local subscribers: left the channel in NATS");
            }
            keep
        });
    }

    /// The channels this node listens to in NATS.
    pub(super) fn channels(&self) -> Vec<Channel> {
        let interest = self.interest.lock();
        let mut channels: Vec<Channel> = interest.keys().cloned().collect();
        channels.sort();
        channels
    }

    /// Stops listening on every channel (leaving the cluster).
    pub(super) fn stop_listening(&self) {
        for (_, interest) in self.interest.lock().drain() {
            interest.task.abort();
        }
    }
}
