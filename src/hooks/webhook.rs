//! Webhooks: notices of what happened (a client connected or left, a channel got its first
//! subscriber or lost its last), POSTed to the application's backend in batches, retried
//! with growing pauses while it does not take them.
//!
//! Sessions and the hub only push a notice onto a bounded queue (never waiting); one task
//! sends them, in order. A batch goes when `webhook_batch_size` notices are waiting or the
//! oldest has waited `webhook_interval`. A batch the backend does not take (anything but a
//! 2xx within `hooks.timeout`) is retried after 0.25 s, then twice as long each time up to
//! 10 s, for `webhook_retry_for`; then it is dropped and counted. While it is retried, new
//! notices wait behind it; past [`MAX_WAITING`] of them, the newest are dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, HooksConfig};
use crate::protocol::channel::Channel;

/// Most notices waiting to be sent; past it, new ones are dropped (and counted).
pub const MAX_WAITING: usize = 100_000;

/// The longest pause between two tries of a batch.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// A kind of notice (`hooks.webhook_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// A client was accepted (after its credentials).
    Connect,
    /// A client that had connected left.
    Disconnect,
    /// A channel got its first subscriber on this node.
    ChannelOccupied,
    /// A channel lost its last subscriber on this node.
    ChannelVacated,
}

impl Notice {
    /// Every kind.
    pub const ALL: [Self; 4] = [
        Self::Connect,
        Self::Disconnect,
        Self::ChannelOccupied,
        Self::ChannelVacated,
    ];
}

/// One notice, as the backend receives it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Happened {
    /// What happened.
    event: Notice,
    /// When, in Unix milliseconds.
    time_ms: u64,
    #[serde(flatten)]
    about: About,
}

/// What a notice is about.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum About {
    /// A client.
    Client {
        /// Its id.
        client: u64,
        /// Its user (`anonymous` for an anonymous client).
        user: String,
        /// Its address.
        address: std::net::IpAddr,
        /// Its protocol.
        dialect: &'static str,
        /// For a disconnect, why (as the disconnect log line says) and the close code.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// The close code, if one was sent or received.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
    },
    /// A channel.
    Channel {
        /// Its name.
        channel: Channel,
    },
}

/// The sending side: where sessions and the hub leave notices.
#[derive(Clone)]
pub(crate) struct Webhook {
    queue: mpsc::Sender<Happened>,
    wanted: Arc<[Notice]>,
    counts: Arc<Counts>,
    /// Tells the sender to send what waits, once, and end.
    finishing: CancellationToken,
    sending: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// What became of the notices, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Notices the backend took.
    pub(crate) delivered: AtomicU64,
    /// Notices dropped: the queue was full, or their batch ran out of retries.
    pub(crate) dropped: AtomicU64,
    /// Tries that failed (each is retried until `webhook_retry_for`).
    pub(crate) failed_tries: AtomicU64,
}

impl Webhook {
    /// Starts the sender configured by `config`, if `webhook_url` is set. It runs until
    /// [`finish`](Self::finish).
    pub(crate) fn start(config: &HooksConfig) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &config.webhook_url else {
            return Ok(None);
        };
        let uri = super::http::http_uri("hooks.webhook_url", url)?;
        let authorization = super::http::bearer(config)?;
        let (queue, waiting) = mpsc::channel(MAX_WAITING);
        let counts = Arc::new(Counts::default());
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        let sender = Sender {
            client: Client::builder(TokioExecutor::new()).build(connector),
            uri,
            authorization,
            timeout: config.timeout,
            interval: config.webhook_interval,
            batch_size: config.webhook_batch_size.max(1),
            retry_for: config.webhook_retry_for,
            counts: counts.clone(),
        };
        let finishing = CancellationToken::new();
        let sending = tokio::spawn(sender.run(waiting, finishing.clone()));
        Ok(Some(Self {
            queue,
            wanted: config.webhook_events.clone().into(),
            counts,
            finishing,
            sending: Arc::new(parking_lot::Mutex::new(Some(sending))),
        }))
    }

    /// At shutdown, once the clients are gone: sends what waits, once (a batch that is
    /// being retried gets one more try), by `deadline` at the latest.
    pub(crate) async fn finish(&self, deadline: tokio::time::Instant) {
        self.finishing.cancel();
        let Some(sending) = self.sending.lock().take() else {
            return;
        };
        if tokio::time::timeout_at(deadline, sending).await.is_err() {
            tracing::warn!("shutdown deadline passed while sending the last webhook notices");
        }
    }

    /// Whether notices of `kind` are sent.
    pub(crate) fn wants(&self, kind: Notice) -> bool {
        self.wanted.contains(&kind)
    }

    /// Leaves a notice of `kind` about `about` to be sent, if such notices are wanted;
    /// never waits.
    pub(crate) fn notify(&self, kind: Notice, about: About) {
        if !self.wants(kind) {
            return;
        }
        let happened = Happened {
            event: kind,
            time_ms: unix_millis(SystemTime::now()),
            about,
        };
        if self.queue.try_send(happened).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What became of the notices.
    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }
}

/// The task that sends the batches.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    interval: Duration,
    batch_size: usize,
    retry_for: Duration,
    counts: Arc<Counts>,
}

impl Sender {
    async fn run(self, mut waiting: mpsc::Receiver<Happened>, finishing: CancellationToken) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            // The first notice of a batch, then more until it is full or has waited long
            // enough.
            tokio::select! {
                received = waiting.recv() => match received {
                    Some(happened) => batch.push(happened),
                    None => return,
                },
                () = finishing.cancelled() => break,
            }
            let deadline = tokio::time::Instant::now() + self.interval;
            while batch.len() < self.batch_size {
                tokio::select! {
                    received = waiting.recv() => match received {
                        Some(happened) => batch.push(happened),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = finishing.cancelled() => break,
                }
            }
            self.deliver(&mut batch, &finishing).await;
        }
        // Finishing (the server is shutting down): what is waiting gets one try.
        while let Ok(happened) = waiting.try_recv() {
            batch.push(happened);
            if batch.len() == self.batch_size {
                self.try_once(&mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.try_once(&mut batch).await;
        }
    }

    /// Sends `batch` until the backend takes it or `retry_for` has passed (only one try
    /// once shutting down); empties it either way.
    async fn deliver(&self, batch: &mut Vec<Happened>, finishing: &CancellationToken) {
        let body = body(batch);
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            match self.post(body.clone()).await {
                Ok(()) => {
                    self.counts
                        .delivered
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(why) => {
                    self.counts.failed_tries.fetch_add(1, Ordering::Relaxed);
                    let out_of_time = started.elapsed() + pause > self.retry_for;
                    if out_of_time || finishing.is_cancelled() {
                        tracing::warn!(
                            url = %self.uri,
                            why,
                            notices = batch.len(),
                            "webhook batch dropped after retrying"
                        );
                        self.counts
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    tracing::debug!(url = %self.uri, why, ?pause, "webhook batch not taken; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = finishing.cancelled() => {}
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
        batch.clear();
    }

    async fn try_once(&self, batch: &mut Vec<Happened>) {
        let counter = match self.post(body(batch)).await {
            Ok(()) => &self.counts.delivered,
            Err(_) => &self.counts.dropped,
        };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }

    async fn post(&self, body: Bytes) -> Result<(), String> {
        let request = super::http::post(&self.uri, self.authorization.as_ref(), body);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::upstream::rpc::error_chain(&e))?;
            let status = response.status();
            // Read the body, so the connection can be used again.
            let _ = response.into_body().collect().await;
            match status.is_success() {
                true => Ok(()),
                false => Err(format!("the backend answered HTTP {status}")),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

fn unix_millis(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `{"events": [...]}`.
fn body(batch: &[Happened]) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        events: &'a [Happened],
    }
    Bytes::from(serde_json::to_vec(&Body { events: batch }).expect("notices serialize"))
}
