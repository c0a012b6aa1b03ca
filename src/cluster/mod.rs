//! Past one node: a NATS backplane, through the official async-nats client.
//!
//! # How an event crosses the cluster
//! 1. A node publishes the event's JSON (its frame's payload, encoded once) to JetStream on
//!    `{prefix}.ev.{channel}` ([`subject`]), with a `Nats-Msg-Id` so a retried publish is
//!    stored once.
//! 2. The stream `{PREFIX}` stores it, giving it its sequence number, and *republishes* it
//!    on `{prefix}.live.{channel}` with the headers `Nats-Sequence` (its offset) and
//!    `Nats-Last-Sequence` (the offset of the channel's event before it). The stream does
//!    this from one place in stream order, so every node sees a channel's events in the same
//!    order, with the same offsets.
//! 3. A node listens on a channel's live subject only while it has local subscribers to it
//!    (interest-based routing): a node without subscribers receives none of the channel's
//!    traffic. The publishing node receives its own events the same way, so it delivers
//!    them in the same order as everyone else, exactly once.
//! 4. The node frames the payload with its offset (once per node) and fans it out.
//!
//! History lives in the stream (at most `history.size` events per subject, none older than
//! `history.max_age`); each node also keeps what it received in its in-memory history.
//! The stream's creation time is the epoch.

pub mod subject;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::history::UNKNOWN;
use crate::engine::hub::{Delivery, Hub};
use crate::event::Event;
use crate::frame::{self, FrameBuf, OpCode};
use crate::protocol::channel::Channel;
use crate::upstream::snapshot::{Snapshot, SnapshotCache};

/// How long a channel stays subscribed in NATS after its last local subscriber left, so a
/// client that reconnects at once does not cost a resubscription.
const INTEREST_LINGER: Duration = Duration::from_secs(5);

/// How long the poller leader's key lives without renewal: a dead leader is replaced
/// within about this long.
pub const LEADER_TTL: Duration = Duration::from_secs(5);

const LEADER_KEY: &str = "pollers";

/// How often an idle link pings NATS. The client gives the link up after three unanswered
/// pings, so a silent cut (no reset, no FIN) is noticed within about three of these; the
/// client's default, 60 s, would leave publishes waiting on it for three minutes.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The first connection failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating or reading the stream failed (is JetStream enabled on the server?).
    #[error("cannot set up the JetStream stream {stream}: {source}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// The client's error.
        source: async_nats::Error,
    },
    /// A publish was not stored.
    #[error("publish to NATS failed: {0}")]
    Publish(async_nats::Error),
    /// Not connected to NATS right now (it reconnects by itself).
    #[error("not connected to NATS")]
    Disconnected,
    /// Subscribing to a channel's live subject failed.
    #[error("cannot subscribe in NATS: {0}")]
    Subscribe(async_nats::Error),
}

/// Where [`Cluster::publish_or_deliver_here`] put the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored in the stream at these offsets; every node delivers them.
    Stored(Vec<u64>),
    /// NATS was unreachable: delivered on this node only.
    Here(Delivery),
}

/// One channel's live subscription.
struct Interest {
    task: JoinHandle<()>,
    /// When a local subscriber last asked for it; the sweeper keeps it at least
    /// `INTEREST_LINGER` after that.
    ensured: Instant,
    /// Default channels are always listened to.
    pinned: bool,
}

/// A node's link to the cluster. Cheap to share (`Arc`).
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    prefix: String,
    node: String,
    hub: Hub,
    interest: Mutex<HashMap<Channel, Interest>>,
    published: AtomicU64,
    epoch: String,
    /// Most events read back per channel: the stream keeps no more per subject.
    history_size: usize,
    /// Bumped on every reconnection: each channel's receiver then checks what it missed.
    reconnects: tokio::sync::watch::Sender<u64>,
    /// Whether this node holds the poller leadership.
    leader: std::sync::atomic::AtomicBool,
    /// Background tasks (snapshot follower, leadership), stopped by [`Cluster::close`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The leader key's store and revision while this node holds it, to resign on close.
    held: tokio::sync::Mutex<Option<(kv::Store, u64)>>,
}

impl Cluster {
    /// Connects to NATS, creates (or checks) the stream, names the hub's offsets after it,
    /// and listens on `config.default_subscriptions` for good.
    pub async fn connect(
        config: &Config,
        hub: Hub,
        snapshots: Arc<SnapshotCache>,
    ) -> Result<Arc<Self>, ClusterError> {
        let cluster = &config.cluster;
        let url = cluster
            .nats_url
            .clone()
            .expect("Cluster::connect needs cluster.nats_url");
        let node = cluster.node_name.clone().unwrap_or_else(default_node_name);
        let (reconnects, _) = tokio::sync::watch::channel(0u64);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("sigmahub {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(PING_INTERVAL)
            .event_callback(announce(hub.clone(), node.clone(), reconnects.clone()));
        if let Some(path) = &cluster.credentials_file {
            options = options.credentials_file(path).await.map_err(|source| {
                ClusterError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        if let Some(token) = &cluster.token {
            options = options.token(token.clone());
        }
        let client = tokio::time::timeout(Duration::from_secs(10), options.connect(&url))
            .await
            .unwrap_or_else(|_| {
                Err(async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::TimedOut,
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ))
            })
            .map_err(|source| ClusterError::Connect {
                url: url.clone(),
                source,
            })?;
        let js = jetstream::new(client.clone());
        let prefix = cluster.subject_prefix.clone();
        let name = stream_name(&prefix);
        let stream = js
            .get_or_create_stream(stream_config(&name, &prefix, config))
            .await
            .map_err(|e| ClusterError::Stream {
                stream: name.clone(),
                source: e.into(),
            })?;
        let mut stream = stream;
        let info = stream.info().await.map_err(|e| ClusterError::Stream {
            stream: name.clone(),
            source: e.into(),
        })?;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
        if let Some(history) = hub.history() {
            history.set_epoch(epoch.clone());
        }
        tracing::info!(%url, node, stream = name, epoch, "joined the cluster");
        let this = Arc::new(Self {
            client,
            js,
            stream,
            prefix,
            node,
            hub,
            interest: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            epoch,
            history_size: config.history.size,
            reconnects,
            leader: std::sync::atomic::AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            held: tokio::sync::Mutex::new(None),
        });
        for name in &config.default_subscriptions {
            if let Ok(channel) = Channel::new(name) {
                this.listen(&channel, true).await?;
            }
        }
        this.follow_snapshots(snapshots).await?;
        Ok(this)
    }

    /// Keeps this node's snapshot cache the same as every node's: the poller leader sends
    /// each snapshot through the stream, and every node (the leader too) stores and
    /// broadcasts it to its own subscribers. At start, the latest of each is read back.
    async fn follow_snapshots(&self, cache: Arc<SnapshotCache>) -> Result<(), ClusterError> {
        let mut subscriber = self
            .client
            .subscribe(subject::snapshots_live(&self.prefix))
            .await
            .map_err(|e| ClusterError::Subscribe(e.into()))?;
        for channel in crate::upstream::STATUS_TYPES {
            let subject = subject::snapshot_of(&self.prefix, channel).publish;
            if let Ok(message) = self.stream.direct_get_last_for_subject(subject).await {
                if let Some(snapshot) = Snapshot::from_wire(&message.payload, SystemTime::now()) {
                    cache.store(snapshot);
                }
            }
        }
        let hub = self.hub.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(snapshot) = Snapshot::from_wire(&message.payload, SystemTime::now())
                else {
                    tracing::warn!(subject = %message.subject, "not a sigmahub snapshot; dropped");
                    continue;
                };
                let previous = cache.get(&snapshot.channel);
                let snapshot = cache.store(snapshot);
                hub.publish_frames(
                    &snapshot.channel,
                    &snapshot.to_broadcast(previous.as_deref()),
                );
            }
        });
        self.tasks.lock().expect("tasks lock").push(task);
        Ok(())
    }

    /// Leaves the cluster by `deadline`, whether NATS answers or not: resigns the poller
    /// leadership (so another node takes over at once rather than after [`LEADER_TTL`]),
    /// stops listening, and flushes what is buffered. Called when the server shuts down.
    /// With NATS unreachable each step gives up at the deadline (the leader key then
    /// expires by itself).
    pub async fn close(&self, deadline: tokio::time::Instant) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        for (_, interest) in self.interest.lock().expect("interest lock").drain() {
            interest.task.abort();
        }
        let held = self.held.lock().await.take();
        if !self.is_connected() {
            // Nothing can be said to a NATS that is gone; the leader key expires by itself.
            tracing::warn!("leaving a cluster whose NATS is unreachable");
            return;
        }
        if let Some((store, revision)) = held {
            let resign = store.delete_expect_revision(LEADER_KEY, Some(revision));
            match tokio::time::timeout_at(deadline, resign).await {
                Ok(Ok(())) => tracing::info!(node = self.node, "resigned the poller leadership"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not resign the poller leadership"),
                Err(_) => tracing::warn!("could not resign the poller leadership in time"),
            }
        }
        if tokio::time::timeout_at(deadline, self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS did not take the last messages in time; leaving anyway");
        }
    }

    /// Sends a status snapshot to every node (this one included), which store and
    /// broadcast it.
    pub async fn publish_snapshot(&self, snapshot: &Snapshot) -> Result<(), ClusterError> {
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

    /// Runs for the poller leadership until the process ends, and says on the returned
    /// channel whether this node holds it. The leader holds a key in a KV bucket whose
    /// entries live [`LEADER_TTL`]; it renews the key every second, and when it stops
    /// (killed, cut off), another node takes the key once it has expired.
    pub fn leadership(self: &Arc<Self>) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move { this.campaign(tx).await });
        self.tasks.lock().expect("tasks lock").push(task);
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

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The cluster part of the stats and `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.node,
            "connected": self.is_connected(),
            "leader": self.leader.load(Ordering::Relaxed),
            "epoch": self.epoch,
            "listening": self.interest.lock().expect("interest lock").len(),
        })
    }

    /// The epoch of the cluster's offsets (the stream's creation time).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Publishes `events` to the whole cluster, in order; returns each one's offset once
    /// the stream has stored it. Every node, this one included, delivers them when the
    /// stream republishes them.
    pub async fn publish(
        &self,
        events: &[Event],
        now: SystemTime,
    ) -> Result<Vec<u64>, ClusterError> {
        // Fail at once rather than wait for acknowledgements that cannot come.
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let subject = subject::of(&self.prefix, event.channel()).publish;
            let payload = frame::payload_of(&event.to_frame(now));
            let mut headers = HeaderMap::new();
            let id = self.published.fetch_add(1, Ordering::Relaxed);
            headers.insert("Nats-Msg-Id", format!("{}-{}", self.node, id).as_str());
            // Sent in order on one connection, so stored in order; acknowledged later.
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| ClusterError::Publish(e.into()))?;
            acks.push(ack);
        }
        let mut offsets = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack.await.map_err(|e| ClusterError::Publish(e.into()))?;
            offsets.push(ack.sequence);
        }
        Ok(offsets)
    }

    /// Publishes `events` to the cluster; if NATS cannot take them, delivers them on this
    /// node only (without offsets), so a publish is never lost to an outage.
    pub async fn publish_or_deliver_here(&self, events: &[Event], now: SystemTime) -> Published {
        match self.publish(events, now).await {
            Ok(offsets) => Published::Stored(offsets),
            Err(e) => {
                tracing::warn!(error = %e, "cluster publish failed; delivering on this node only");
                Published::Here(self.hub.publish_batch(events, now))
            }
        }
    }

    /// Makes sure this node receives `channel`'s events, before a local client subscribes
    /// to it. Returns once NATS has the subscription.
    pub async fn ensure_interest(&self, channel: &Channel) -> Result<(), ClusterError> {
        self.listen(channel, false).await
    }

    async fn listen(&self, channel: &Channel, pinned: bool) -> Result<(), ClusterError> {
        {
            let mut interest = self.interest.lock().expect("interest lock");
            if let Some(existing) = interest.get_mut(channel) {
                existing.ensured = Instant::now();
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
        let subscriber = self
            .client
            .subscribe(subjects.live)
            .await
            .map_err(|e| ClusterError::Subscribe(e.into()))?;
        // A flush only empties our buffer. A request on the same connection is answered
        // after the server has taken the SUB sent before it: from its answer on, every
        // event the stream stores comes to us.
        latest(&self.stream, &subjects.publish)
            .await
            .map_err(ClusterError::Subscribe)?;
        if let Some(history) = self.hub.history() {
            history.backfill(channel, Vec::new(), start, SystemTime::now());
        }
        let task = tokio::spawn(receive(
            Receiver {
                hub: self.hub.clone(),
                stream: self.stream.clone(),
                channel: channel.clone(),
                subject: subjects.publish,
                last: start,
            },
            subscriber,
            self.reconnects.subscribe(),
        ));
        let mut interest = self.interest.lock().expect("interest lock");
        match interest.get_mut(channel) {
            // Another subscriber raced us here: keep theirs.
            Some(existing) => {
                task.abort();
                existing.ensured = Instant::now();
                existing.pinned |= pinned;
            }
            None => {
                interest.insert(
                    channel.clone(),
                    Interest {
                        task,
                        ensured: Instant::now(),
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
    /// [`ensure_interest`](Self::ensure_interest) and before subscribing the client.
    ///
    /// The start is vouched for when the stream still holds the channel's event at or
    /// before `since` (per-subject limits drop the oldest first). `since = 0` ("from the
    /// beginning") is never vouched for: older events may have been dropped.
    pub async fn backfill(&self, channel: &Channel, since: u64) {
        let Some(history) = self.hub.history() else {
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
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut interest = self.interest.lock().expect("interest lock");
        interest.retain(|channel, i| {
            let keep = i.pinned
                || now.duration_since(i.ensured) < INTEREST_LINGER
                || self.hub.subscriber_count(channel) > 0;
            if !keep {
                i.task.abort();
                if let Some(history) = self.hub.history() {
                    history.forget(channel);
                }
                tracing::debug!(%channel, "no local subscribers: left the channel in NATS");
            }
            keep
        });
    }

    /// The channels this node listens to in NATS.
    pub fn channels(&self) -> Vec<Channel> {
        let interest = self.interest.lock().expect("interest lock");
        let mut channels: Vec<Channel> = interest.keys().cloned().collect();
        channels.sort();
        channels
    }

    /// The stream, for reading history.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// One channel's live feed on this node.
struct Receiver {
    hub: Hub,
    stream: stream::Stream,
    channel: Channel,
    /// The channel's stream-side subject, for reading back.
    subject: String,
    /// The offset of the last event delivered (or the channel's latest when the
    /// subscription was taken).
    last: u64,
}

/// Delivers a channel's live events to the hub, in stream order. Events stored while this
/// node's link was down are read back from the stream: when a live event does not follow
/// the last one delivered, and after every reconnection (the events stored before the
/// subscription was renewed would otherwise wait for the next live one).
async fn receive(
    mut feed: Receiver,
    mut subscriber: async_nats::Subscriber,
    mut reconnects: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        tokio::select! {
            message = subscriber.next() => {
                let Some(message) = message else { return };
                feed.live(message).await;
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                feed.catch_up().await;
            }
        }
    }
}

impl Receiver {
    async fn live(&mut self, message: async_nats::Message) {
        let Some((offset, prev)) = sequence(message.headers.as_ref()) else {
            tracing::warn!(channel = %self.channel, "a live message without stream sequence headers; dropped");
            return;
        };
        if offset <= self.last {
            return; // already read back
        }
        if prev != UNKNOWN && prev > self.last {
            self.read_back(offset).await;
        }
        deliver(
            &self.hub,
            &self.channel,
            offset,
            prev,
            &message.payload,
            SystemTime::now(),
        );
        self.last = offset;
    }

    /// After a reconnection: the stream's latest for the channel is asked on the renewed
    /// connection, after the renewed subscription, so everything up to it is read back
    /// here and everything after it comes live.
    async fn catch_up(&mut self) {
        let newest = match latest(&self.stream, &self.subject).await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "cannot check for missed events");
                return;
            }
        };
        if newest > self.last {
            self.read_back(newest + 1).await;
        }
    }

    /// Reads the channel's events after the last delivered and before `until` back from
    /// the stream and delivers them.
    async fn read_back(&mut self, until: u64) {
        let mut filled = 0;
        loop {
            match self
                .stream
                .direct_get_next_for_subject(self.subject.as_str(), Some(self.last + 1))
                .await
            {
                Ok(message) if message.sequence < until => {
                    let offset = message.sequence;
                    let at = SystemTime::from(message.time);
                    deliver(
                        &self.hub,
                        &self.channel,
                        offset,
                        self.last,
                        &message.payload,
                        at,
                    );
                    self.last = offset;
                    filled += 1;
                }
                Ok(_) => break,
                Err(e) => {
                    if e.kind() != DirectGetErrorKind::NotFound {
                        tracing::warn!(channel = %self.channel, error = %e, "cannot read missed events from the stream");
                    }
                    break;
                }
            }
        }
        tracing::info!(channel = %self.channel, filled, "delivered events missed while the NATS link was down");
    }
}

/// The offset of the latest event stored on `subject` (0: none).
async fn latest(stream: &stream::Stream, subject: &str) -> Result<u64, async_nats::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(last) => Ok(last.sequence),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Frames one event from the stream with its offset and fans it out.
fn deliver(hub: &Hub, channel: &Channel, offset: u64, prev: u64, payload: &Bytes, at: SystemTime) {
    if !is_event(payload) {
        tracing::warn!(%channel, offset, "a message that is not a sigmahub event; dropped");
        return;
    }
    hub.publish_sequenced(channel, offset, prev, at, |offset| {
        with_offset(payload, offset)
    });
}

/// Tells this node's clients when the link to the rest of the cluster goes down
/// (`connection_error`) and comes back (`notification`). Meanwhile each node keeps
/// delivering what is published on it.
fn announce(
    hub: Hub,
    node: String,
    reconnects: tokio::sync::watch::Sender<u64>,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    let was_connected = std::sync::atomic::AtomicBool::new(false);
    move |event| {
        let now = SystemTime::now();
        let published = match event {
            async_nats::Event::Disconnected => {
                tracing::warn!(
                    node,
                    "lost the NATS connection; serving local publishes only"
                );
                Event::new(
                    "connection_error",
                    &serde_json::json!({
                        "reason": "cluster_disconnected",
                        "message": "this node lost its link to the cluster; events published on other nodes are not delivered until it is back",
                        "node": node,
                        "timestamp": crate::event::unix_seconds(now),
                    }),
                )
            }
            async_nats::Event::Connected if was_connected.swap(true, Ordering::Relaxed) => {
                tracing::info!(node, "NATS connection restored");
                reconnects.send_modify(|n| *n += 1);
                Event::new(
                    "notification",
                    &serde_json::json!({
                        "message": "this node is linked to the cluster again",
                        "level": "info",
                        "cluster": {"node": node, "connected": true},
                    }),
                )
            }
            _ => return std::future::ready(()),
        };
        if let Ok(event) = published {
            hub.publish_at(&event, now);
        }
        std::future::ready(())
    }
}

/// Whether a payload from NATS is a JSON object, as sigmahub nodes publish (anything else
/// on our subjects came from elsewhere and is not passed to clients).
fn is_event(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
        && payload.last() == Some(&b'}')
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// `Nats-Sequence` and `Nats-Last-Sequence` of a republished message.
fn sequence(headers: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let headers = headers?;
    let offset = headers.get("Nats-Sequence")?.as_str().parse().ok()?;
    let prev = headers
        .get("Nats-Last-Sequence")
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(UNKNOWN);
    Some((offset, prev))
}

/// The frame of an event's JSON (`{…}`) with `,"offset":N` added before its last brace.
fn with_offset(payload: &Bytes, offset: u64) -> Bytes {
    let body = &payload[..payload.len() - 1];
    let mut buf = FrameBuf::with_capacity(body.len() + 32);
    buf.extend_from_slice(body);
    buf.extend_from_slice(b",\"offset\":");
    buf.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
    buf.extend_from_slice(b"}");
    buf.finish(OpCode::Text)
}

/// The stream's name: the prefix in capitals.
fn stream_name(prefix: &str) -> String {
    prefix.to_ascii_uppercase()
}

fn stream_config(name: &str, prefix: &str, config: &Config) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject::stream_pattern(prefix)],
        republish: Some(stream::Republish {
            source: subject::stream_pattern(prefix),
            destination: subject::live_pattern(prefix),
            headers_only: false,
        }),
        allow_direct: true,
        max_messages_per_subject: config.history.size.max(1) as i64,
        max_age: config.history.max_age,
        duplicate_window: Duration::from_secs(120).min(config.history.max_age),
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn default_node_name() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_goes_in_before_the_last_brace() {
        let payload = Bytes::from_static(br#"{"type":"a","timestamp":"t","data":{}}"#);
        let frame = with_offset(&payload, 42);
        assert_eq!(
            &frame::payload_of(&frame)[..],
            br#"{"type":"a","timestamp":"t","data":{},"offset":42}"#
        );
    }

    #[test]
    fn sequence_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Sequence", "7");
        h.insert("Nats-Last-Sequence", "3");
        assert_eq!(sequence(Some(&h)), Some((7, 3)));
        assert_eq!(sequence(None), None);
    }

    /// A real nats-server with JetStream on a free port and its own store, killed on drop.
    struct Nats {
        child: std::process::Child,
        port: u16,
        store: std::path::PathBuf,
    }

    impl Nats {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let store = std::env::temp_dir().join(format!("sigmahub-unit-nats-{port}"));
            let child = std::process::Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(&store)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server is not installed (scripts/test-all.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Self { child, port, store }
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }

    /// Live messages can be lost without the connection dropping (NATS drops messages to a
    /// slow subscriber). A live event that does not follow the last one delivered makes
    /// the receiver read the missing ones back from the stream first: the node's clients
    /// get every event, in order, once.
    #[tokio::test]
    async fn a_gap_before_a_live_event_is_read_back_from_the_stream_first() {
        let nats = Nats::start();
        let url = format!("nats://127.0.0.1:{}", nats.port);
        let mut config = Config::default();
        config.cluster.nats_url = Some(url);
        let hub = Hub::new(&config);
        let cluster = Cluster::connect(&config, hub.clone(), Arc::default())
            .await
            .expect("joins the cluster");
        let channel = Channel::new("gappy").unwrap();
        let subjects = subject::of(&cluster.prefix, &channel);

        // What the stream republishes, caught on the node's connection with the same
        // barrier as `listen` (a flush alone does not wait for the server to take the SUB).
        let mut live = cluster.client.subscribe(subjects.live).await.unwrap();
        latest(&cluster.stream, &subjects.publish).await.unwrap();
        let events: Vec<Event> = (0..5)
            .map(|i| Event::new("gappy", &serde_json::json!({ "i": i })).unwrap())
            .collect();
        let offsets = cluster.publish(&events, SystemTime::now()).await.unwrap();
        let mut messages = Vec::new();
        while messages.len() < events.len() {
            let next = tokio::time::timeout(Duration::from_secs(10), live.next()).await;
            messages.push(next.expect("republished in time").expect("subscribed"));
        }

        let mut client = hub.connect().unwrap();
        client.subscribe(["gappy"]);
        let mut feed = Receiver {
            hub: hub.clone(),
            stream: cluster.stream().clone(),
            channel: channel.clone(),
            subject: subjects.publish,
            last: 0,
        };
        // The second, third and fourth live messages never arrive.
        let mut messages = messages.into_iter();
        feed.live(messages.next().unwrap()).await;
        feed.live(messages.next_back().unwrap()).await;

        let mut frames = Vec::new();
        client.outbox().drain_into(&mut frames, usize::MAX);
        let received: Vec<(u64, u64)> = frames
            .iter()
            .map(|frame| {
                let event: serde_json::Value =
                    serde_json::from_slice(&frame::payload_of(frame)).unwrap();
                (
                    event["offset"].as_u64().unwrap(),
                    event["data"]["i"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(u64, u64)> = offsets.iter().copied().zip(0..).collect();
        assert_eq!(received, expected);
        assert_eq!(feed.last, offsets[4]);
        cluster
            .close(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
    }
}
