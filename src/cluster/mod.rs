//! Past one node: a NATS backplane, through the official async-nats client.
//!
//! # How an event crosses the cluster
//! 1. A node publishes the event's JSON (its frame's payload, encoded once) to JetStream on
//!    `{prefix}.ev.{channel}` (`subject`), with a `Nats-Msg-Id` so a retried publish is
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

mod announcing;
mod control;
mod headers;
mod interest;
mod leader;
mod nodes;
mod receiver;
mod roster;
mod snapshots;
pub(crate) mod subject;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

pub use self::control::GATHER_WINDOW;
use self::interest::Interest;
use self::leader::LEADER_KEY;
pub use self::leader::LEADER_TTL;

use crate::broker::{Broker, Completion, MemoryBroker, Published};
use crate::config::Config;
use crate::engine::hub::Hub;
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::protocol::message::Resume;
use crate::server::control::{ControlHandler, ControlRequest, NodeAnswer};
use crate::server::presence::Action;
use crate::snapshot::Snapshot;
use futures_util::future::BoxFuture;

/// How often an idle link pings NATS. The client gives the link up after three unanswered
/// pings, so a silent cut (no reset, no FIN) is noticed within about three of these; the
/// client's default, 60 s, would leave publishes waiting on it for three minutes.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long a starting node keeps asking JetStream for its stream while JetStream does not
/// answer (NATS still starting, or its JetStream not ready yet: sigmahub and nats-server
/// started together). A NATS without JetStream is reported after this long; a JetStream
/// that answers with an error (a stream configured otherwise) at once.
const STREAM_SET_UP_PATIENCE: Duration = Duration::from_secs(30);

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server was named.
    #[error("cluster.nats_url is not set: name the NATS server to join")]
    NoUrl,
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

/// A cluster's broker: this node's link to NATS. Cheap to clone: clones share one link.
#[derive(Clone)]
pub struct NatsBroker {
    link: Arc<Cluster>,
}

/// A node's link to the cluster.
pub(crate) struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    prefix: String,
    node: String,
    /// This node's hub and snapshot cache: what arrives is delivered there.
    local: MemoryBroker,
    interest: Mutex<HashMap<Channel, Interest>>,
    published: AtomicU64,
    epoch: String,
    /// Most events read back per channel: the stream keeps no more per subject.
    history_size: usize,
    /// Bumped on every reconnection: each channel's receiver then checks what it missed.
    reconnects: tokio::sync::watch::Sender<u64>,
    /// Whether this node holds the poller leadership.
    leader: std::sync::atomic::AtomicBool,
    /// This process among the nodes: its name and a random suffix, so that a node
    /// restarted under the same name is another node.
    instance: String,
    /// The nodes that answer control requests, by when each last said so.
    nodes: nodes::Nodes,
    /// The other nodes' presence members.
    roster: roster::Roster,
    /// This node's presence changes, published in order (see [`announcing`]).
    announcements: announcing::Queue,
    /// Background tasks (snapshot follower, leadership), stopped by [`Cluster::close`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The leader key's store and revision while this node holds it, to resign on close.
    held: tokio::sync::Mutex<Option<(kv::Store, u64)>>,
}

impl NatsBroker {
    /// Connects to NATS, creates (or checks) the stream, hands the numbering of the hub's
    /// history to it, and listens on `config.default_subscriptions` for good. What arrives
    /// is delivered through `local`.
    pub async fn connect(config: &Config, local: MemoryBroker) -> Result<Self, ClusterError> {
        let link = Cluster::connect(config, local).await?;
        Ok(Self { link })
    }

    /// This node's name in the cluster.
    pub fn node(&self) -> &str {
        &self.link.node
    }

    /// The epoch of the cluster's offsets (the stream's creation time).
    pub fn epoch(&self) -> &str {
        &self.link.epoch
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The channels this node listens to in NATS.
    pub fn channels(&self) -> Vec<Channel> {
        self.link.channels()
    }

    /// Applies every control request of the cluster on this node with `handler` (the
    /// server's [`Control::apply`](crate::server::control::Control::apply)) from now
    /// on, answering each; see [`Broker::gather`].
    pub async fn serve_control(&self, handler: ControlHandler) -> Result<(), ClusterError> {
        self.link.serve_control(handler).await
    }
}

impl Broker for NatsBroker {
    fn publish(&self, events: Vec<Event>, now: SystemTime) -> Completion<Published> {
        let link = self.link.clone();
        Completion::pending(async move { link.publish_or_deliver_here(&events, now).await })
    }

    fn publish_snapshot(&self, snapshot: Snapshot) {
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(e) = link.publish_snapshot(&snapshot).await {
                tracing::warn!(error = %e, "snapshot not sent to the cluster; broadcast here only");
                link.local.deliver_snapshot(snapshot);
            }
        });
    }

    fn listen(
        &self,
        channels: &mut dyn Iterator<Item = Channel>,
        resume: Option<&Resume>,
    ) -> Completion<()> {
        let channels: Vec<Channel> = channels.collect();
        let (link, resume) = (self.link.clone(), resume.cloned());
        Completion::pending(async move { link.prepare(&channels, resume.as_ref()).await })
    }

    fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.link.leadership()
    }

    fn status(&self) -> Option<serde_json::Value> {
        Some(self.link.status())
    }

    fn publish_presence(&self, changes: Vec<Event>, action: Action, now: SystemTime) {
        self.link.announce(changes, action, now);
    }

    fn sweep(&self) {
        self.link.sweep();
    }

    fn gather(
        &self,
        request: &ControlRequest,
    ) -> Option<BoxFuture<'static, Result<Vec<NodeAnswer>, String>>> {
        let (link, request) = (self.link.clone(), request.clone());
        Some(Box::pin(async move {
            link.gather(request).await.map_err(|e| e.to_string())
        }))
    }

    fn close(&self, deadline: tokio::time::Instant) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.link.close(deadline))
    }
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.link.fmt(f)
    }
}

impl Cluster {
    /// A core NATS subscription to `subject`.
    pub(super) async fn follow(
        &self,
        subject: String,
    ) -> Result<async_nats::Subscriber, ClusterError> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| ClusterError::Subscribe(e.into()))
    }

    async fn connect(config: &Config, local: MemoryBroker) -> Result<Arc<Self>, ClusterError> {
        let cluster = &config.cluster;
        let url = cluster.nats_url.clone().ok_or(ClusterError::NoUrl)?;
        let hub = local.hub().clone();
        // Client ids unique across the cluster (the control API names clients by them):
        // from a random multiple of 2^32 below 2^52, which JavaScript numbers still hold.
        // Two nodes' ids meet only if they draw the same base (one chance in a million
        // per pair) or one connects over 4 billion clients.
        let base = (getrandom::u64().unwrap_or(0) % (1 << 20)).max(1) << 32;
        hub.number_clients_from(base);
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
        let (stream, info) = set_up_stream(
            &js,
            stream_config(&name, &prefix, config),
            STREAM_SET_UP_PATIENCE,
        )
        .await?;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
        if let Some(history) = hub.history() {
            history.number_elsewhere(epoch.clone());
        }
        tracing::info!(%url, node, stream = name, epoch, "joined the cluster");
        let instance = format!("{node}#{:08x}", getrandom::u32().unwrap_or_default());
        let (announcements, to_announce) = announcing::queue();
        let this = Arc::new(Self {
            client,
            js,
            stream,
            prefix,
            node,
            local,
            interest: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            epoch,
            history_size: config.history.size,
            reconnects,
            leader: std::sync::atomic::AtomicBool::new(false),
            instance,
            nodes: nodes::Nodes::default(),
            roster: roster::Roster::default(),
            announcements,
            tasks: Mutex::new(Vec::new()),
            held: tokio::sync::Mutex::new(None),
        });
        announcing::start(Arc::downgrade(&this), to_announce);
        for name in &config.default_subscriptions {
            if let Ok(channel) = Channel::new(name) {
                this.listen(&channel, true).await?;
            }
        }
        this.follow_snapshots().await?;
        Ok(this)
    }

    /// Leaves the cluster by `deadline`, whether NATS answers or not: resigns the poller
    /// leadership (so another node takes over at once rather than after [`LEADER_TTL`]),
    /// stops listening, and flushes what is buffered. Called when the server shuts down.
    /// With NATS unreachable each step gives up at the deadline (the leader key then
    /// expires by itself).
    async fn close(&self, deadline: tokio::time::Instant) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.stop_listening();
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

    /// Whether the NATS connection is up now.
    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The cluster part of the stats and `/readyz`.
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.node,
            "connected": self.is_connected(),
            "leader": self.leader.load(Ordering::Relaxed),
            "epoch": self.epoch,
            "listening": self.interest.lock().len(),
        })
    }

    /// Publishes `events` to the whole cluster, in order; returns each one's offset once
    /// the stream has stored it. Every node, this one included, delivers them when the
    /// stream republishes them.
    async fn publish(&self, events: &[Event], now: SystemTime) -> Result<Vec<u64>, ClusterError> {
        // Fail at once rather than wait for acknowledgements that cannot come.
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let subject = subject::of(&self.prefix, event.channel()).publish;
            let payload = event.to_json(now);
            let mut headers = HeaderMap::new();
            let id = self.published.fetch_add(1, Ordering::Relaxed);
            headers.insert("Nats-Msg-Id", format!("{}-{}", self.node, id).as_str());
            headers::put_degrade_meta(&mut headers, event);
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
    async fn publish_or_deliver_here(&self, events: &[Event], now: SystemTime) -> Published {
        match self.publish(events, now).await {
            Ok(offsets) => Published::Stored(offsets),
            Err(e) => {
                tracing::warn!(error = %e, "cluster publish failed; delivering on this node only");
                Published::Here(self.local.deliver(events, now))
            }
        }
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

/// Creates (or finds) the stream and reads its info, asking again with growing pauses
/// (0.25 s doubling to 4 s) while JetStream times out or has no responder, for at most
/// `patience`. Each retry is logged; any other error fails at once.
async fn set_up_stream(
    js: &jetstream::Context,
    config: stream::Config,
    patience: Duration,
) -> Result<(stream::Stream, stream::Info), ClusterError> {
    use jetstream::context::{CreateStreamErrorKind as Create, RequestErrorKind as Request};
    let name = config.name.clone();
    let give_up = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    loop {
        // Each error with whether it is JetStream's silence (worth asking again).
        let attempt = async {
            let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| {
                let silent = matches!(e.kind(), Create::TimedOut | Create::JetStreamUnavailable);
                (silent, async_nats::Error::from(e))
            })?;
            let info = stream.info().await.map_err(|e| {
                let silent = matches!(e.kind(), Request::TimedOut | Request::NoResponders);
                (silent, async_nats::Error::from(e))
            })?;
            let info = info.clone();
            Ok::<_, (bool, async_nats::Error)>((stream, info))
        };
        let (silent, source) = match attempt.await {
            Ok(set_up) => return Ok(set_up),
            Err(error) => error,
        };
        if !silent || tokio::time::Instant::now() + pause > give_up {
            return Err(ClusterError::Stream {
                stream: name,
                source,
            });
        }
        tracing::warn!(
            stream = name,
            error = %source,
            retry_in_ms = pause.as_millis() as u64,
            "JetStream did not answer the stream set-up (is NATS starting, with JetStream on?); asking again"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
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
