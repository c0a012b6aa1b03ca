//! The network server: hyper for HTTP and the upgrade, one task per WebSocket connection,
//! and the hub-wide timers (heartbeat events, keep-alive pings).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sigmahub::ServeError> {
//! let server = sigmahub::Server::bind(sigmahub::Config::default()).await?;
//! let hub = server.hub();            // publish in-process through this handle
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```
//!
//! # Shutdown
//! When the `shutdown` future given to [`Server::run`] completes, the server stops accepting,
//! asks every client to flush its queue and close with 1001 (going away), leaves the
//! cluster (if any), and returns once both are done or `shutdown_timeout` has passed,
//! whichever comes first: a NATS server that is gone cannot hold a stopping node.

mod admission;
mod analytics;
mod backoff;
pub mod control;
mod counters;
mod dashboard;
pub(crate) mod deadline;
mod gate;
mod http;
mod memory;
mod metrics;
pub mod presence;
pub(crate) mod reader;
mod session;
mod socket;
mod stats;
mod throttle;
mod users;
mod writer;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use http::ResponseBody;
pub use session::WELCOME_MESSAGE;

use crate::auth::host::HostPolicy;
use crate::auth::permissions::{Identity, Method};
use crate::auth::{AuthError, Authenticator};
use crate::broker::{Broker, Completion, MemoryBroker};
use crate::cluster::{ClusterError, NatsBroker};
use crate::config::{Config, ConfigError};
use crate::engine::hub::Hub;
use crate::engine::hub::Occupancy;
use crate::event::{unix_seconds, Event};
use crate::hooks::webhook::{About, Notice};
use crate::hooks::Identified;
use crate::protocol::close::CloseCode;
use crate::snapshot::SnapshotCache;
use crate::upstream::poller::Outlet;
use crate::upstream::{self, BreakerBoard};
use backoff::Credential;

/// Why the server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid; fix the named setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster backplane could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The listen address could not be bound (in use, or not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) auth: Authenticator,
    /// The host names requests may name (DNS rebinding).
    pub(crate) hosts: HostPolicy,
    pub(crate) counters: counters::Counters,
    pub(crate) analytics: analytics::Analytics,
    pub(crate) backoff: backoff::AuthBackoff,
    pub(crate) admission: Arc<admission::Admission>,
    pub(crate) snapshots: Arc<SnapshotCache>,
    pub(crate) breakers: Arc<BreakerBoard>,
    /// Engine answers that did not fit the protocol (`/metrics`).
    pub(crate) translation_faults: Arc<upstream::translate::Faults>,
    pub(crate) config: Arc<Config>,
    /// Where publishes, snapshots and interest go: memory alone, NATS in a cluster.
    pub(crate) broker: Arc<dyn Broker>,
    /// `[[channels]]` throttles, applied before the broker.
    pub(crate) throttle: throttle::Throttle,
    /// Socket.IO's long-polling sessions.
    pub(crate) polling: http::engineio::Sessions,
    /// The application's hooks: who connects, what they may do, what they ask.
    pub(crate) hooks: crate::hooks::Hooks,
    /// Where notices of connects, disconnects and channel occupancy go, if anywhere.
    pub(crate) webhook: Option<crate::hooks::webhook::Webhook>,
    /// The connections of each authenticated user, for the control API.
    pub(crate) users: users::Users,
    /// Who is subscribed to the channels that keep presence, on this node.
    pub(crate) presence: presence::Presence,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// The runtime a dormant connection wakes on (its waker may run on any thread);
    /// `None` outside a runtime, where connections never go dormant.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}

impl writer::WriterEnv for Shared {
    fn counters(&self) -> &counters::Counters {
        &self.counters
    }

    fn catch_up(&self) -> writer::CatchUp<'_> {
        writer::CatchUp {
            snapshots: &self.snapshots,
            hub: &self.hub,
        }
    }
}

impl Shared {
    /// The state of a server with this (validated) configuration.
    pub(crate) fn new(config: Config) -> Result<Self, ConfigError> {
        let hub = Hub::new(&config);
        let snapshots = Arc::<SnapshotCache>::default();
        let webhook = crate::hooks::webhook::Webhook::start(&config.hooks)?;
        if let Some(webhook) = webhook
            .clone()
            .filter(|w| w.wants(Notice::ChannelOccupied) || w.wants(Notice::ChannelVacated))
        {
            hub.watch_occupancy(move |channel, change| {
                let kind = match change {
                    Occupancy::Occupied => Notice::ChannelOccupied,
                    Occupancy::Vacated => Notice::ChannelVacated,
                };
                let channel = channel.clone();
                webhook.notify(kind, About::Channel { channel });
            });
        }
        Ok(Self {
            webhook,
            hooks: crate::hooks::Hooks::from_config(&config.hooks)?,
            broker: Arc::new(MemoryBroker::new(hub.clone(), snapshots.clone())),
            throttle: throttle::Throttle::new(&config.channels),
            hub,
            auth: Authenticator::new(&config.auth, &config.default_subscriptions)?,
            hosts: HostPolicy::new(&config.auth.allowed_hosts, config.listen).map_err(|e| {
                ConfigError::Invalid {
                    field: "auth.allowed_hosts",
                    reason: e.to_string(),
                }
            })?,
            counters: counters::Counters::new(config.metrics),
            analytics: analytics::Analytics::default(),
            backoff: backoff::AuthBackoff::new(config.auth.backoff_after, config.auth.max_backoff),
            admission: Arc::new(admission::Admission::new(&config)),
            snapshots,
            breakers: Arc::default(),
            translation_faults: Arc::default(),
            config: Arc::new(config),
            polling: http::engineio::Sessions::default(),
            users: users::Users::default(),
            presence: presence::Presence::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }
}

impl Shared {
    /// Checks a client's token (a JWT or a publish key) and records the outcome in the
    /// failed-credentials backoff of `address`, whatever route it came by.
    ///
    /// A success clears the failures of its own kind only. A refused token counts as a
    /// failed token and, where publish keys exist, as a failed key too: it may have been a
    /// guess at either. An expired one was signed by the issuer, so it is no key guess.
    pub(crate) fn verify_token(
        &self,
        address: std::net::IpAddr,
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        let verified = self.auth.verify(token);
        self.record_credentials(address, verified.as_deref());
        verified
    }

    /// Whether WebSocket clients must present a token: a JWT key is configured, or the
    /// application's connect hook decides who clients are.
    pub(crate) fn requires_token(&self) -> bool {
        self.auth.requires_token() || self.hooks.authenticates()
    }

    /// Records how a client's credentials went in the backoff of `address` (see
    /// [`verify_token`](Self::verify_token)). An application that did not answer says
    /// nothing about them.
    pub(crate) fn record_credentials(
        &self,
        address: std::net::IpAddr,
        verified: Result<&Identity, &AuthError>,
    ) {
        match verified {
            Ok(identity) => match identity.method {
                Method::Anonymous => {}
                Method::Jwt | Method::Application => {
                    self.backoff.succeeded(address, Credential::Token)
                }
                Method::ApiKey => self.backoff.succeeded(address, Credential::PublishKey),
            },
            Err(AuthError::Unavailable(_)) => {}
            Err(e) => {
                let now = crate::clock::now();
                self.backoff.failed(address, Credential::Token, now);
                if self.auth.publish_needs_key() && *e != AuthError::Expired {
                    self.backoff.failed(address, Credential::PublishKey, now);
                }
            }
        }
    }

    /// Who a client presenting `attempt.token` is: sigmahub's own checks, then, for a
    /// client they do not know (no token, or one that is neither a publish key nor a JWT
    /// verified here), the application's connect hook if there is one, whose answer may
    /// name channels to join. Without a hook, a client without a token is anonymous: ask
    /// only where that is allowed. Recorded in the backoff of `attempt.address`.
    pub(crate) fn identify(
        self: &Arc<Self>,
        attempt: crate::hooks::Attempt,
    ) -> Completion<Identified> {
        if !self.hooks.authenticates() {
            let verified = match attempt.token.as_deref() {
                Some(token) => self.verify_token(attempt.address, token),
                None => Ok(self.auth.anonymous()),
            };
            return Completion::Ready(verified.map(|identity| (identity, Vec::new())));
        }
        if let Some(token) = attempt.token.as_deref() {
            if let Ok(identity) = self.auth.verify(token) {
                if identity.method != Method::Anonymous {
                    self.record_credentials(attempt.address, Ok(&identity));
                    return Completion::Ready(Ok((identity, Vec::new())));
                }
            }
        }
        let shared = self.clone();
        let address = attempt.address;
        let asked = self.hooks.authenticate(attempt, self.auth.anonymous());
        Completion::pending(async move {
            let identified = asked.await;
            shared.record_credentials(
                address,
                identified.as_ref().map(|(identity, _)| &**identity),
            );
            identified
        })
    }

    /// Whether `key` is a publish key, recorded in the backoff of `address`.
    pub(crate) fn verify_publish_key(&self, address: std::net::IpAddr, key: &str) -> bool {
        let valid = self.auth.is_publish_key(key);
        if valid {
            self.backoff.succeeded(address, Credential::PublishKey);
        } else {
            self.backoff
                .failed(address, Credential::PublishKey, crate::clock::now());
        }
        valid
    }
}

/// A bound, not yet running sigmahub server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Validates `config` and binds its listen address.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        Self::bind_hooked(config, None).await
    }

    /// [`bind`](Self::bind), with `authorizer` deciding who connects and what they may
    /// do (see [`crate::hooks`]), under `hooks.on_failure` and with `hooks.cache_size`;
    /// the `[hooks]` URLs must then be unset.
    pub async fn bind_with(
        config: Config,
        authorizer: Arc<dyn crate::hooks::Authorizer>,
    ) -> Result<Self, ServeError> {
        Self::bind_hooked(config, Some(authorizer)).await
    }

    async fn bind_hooked(
        config: Config,
        authorizer: Option<Arc<dyn crate::hooks::Authorizer>>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        if authorizer.is_some() && config.hooks.any() {
            return Err(ConfigError::Invalid {
                field: "hooks",
                reason: "an embedder's Authorizer replaces the HTTP hooks: unset their URLs"
                    .to_owned(),
            }
            .into());
        }
        let mut shared = Shared::new(config)?;
        if let Some(authorizer) = authorizer {
            shared.hooks = crate::hooks::Hooks::new(Some(authorizer), &shared.config.hooks);
        }
        let mut cluster = None;
        if shared.config.cluster.enabled() {
            let local = MemoryBroker::new(shared.hub.clone(), shared.snapshots.clone());
            let nats = NatsBroker::connect(&shared.config, local).await?;
            shared.broker = Arc::new(nats.clone());
            cluster = Some(nats);
        }
        let shared = Arc::new(shared);
        if let Some(nats) = cluster {
            nats.serve_control(control::Control::handler(&shared))
                .await?;
        }
        let addr = shared.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The hub, to publish in-process or inspect subscriptions.
    pub fn hub(&self) -> Hub {
        self.shared.hub.clone()
    }

    /// The control API: disconnect, subscribe or unsubscribe a client or a user's
    /// connections, list channels, read history. Valid for as long as the server runs.
    pub fn control(&self) -> control::Control {
        control::Control::new(self.shared.clone())
    }

    /// The snapshot cache: the latest value of each status type.
    pub fn snapshots(&self) -> Arc<SnapshotCache> {
        self.shared.snapshots.clone()
    }

    /// The broker: publish through it to reach every node's subscribers (the hub's own
    /// `publish` stays on this node). In memory alone, NATS when `cluster.nats_url` is set.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.shared.broker.clone()
    }

    /// The circuit breakers of the upstream pollers.
    pub fn breakers(&self) -> Arc<BreakerBoard> {
        self.shared.breakers.clone()
    }

    /// Serves until `shutdown` completes, then closes every client with 1001 and returns
    /// once they are gone or `shutdown_timeout` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self { listener, shared } = self;
        tracing::info!(addr = %listener.local_addr().map_err(|source| ServeError::Bind { addr: shared.config.listen, source })?, "sigmahub listening");

        let timers = tokio::spawn(run_timers(shared.clone()));
        let outlet = || Outlet {
            snapshots: shared.snapshots.clone(),
            breakers: shared.breakers.clone(),
            broker: shared.broker.clone(),
            faults: shared.translation_faults.clone(),
            recovery: Arc::default(),
        };
        // Only the leader polls (alone, this node); the others get its snapshots and events.
        let mut leader = shared.broker.leadership();
        let (config, outlet) = (shared.config.clone(), outlet());
        let pollers = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                if *leader.borrow_and_update() {
                    if running.is_empty() {
                        upstream::start(&config, outlet.clone(), &mut running);
                    }
                } else {
                    running.abort_all();
                }
                if leader.changed().await.is_err() {
                    // The broker is gone (shutting down): the pollers stop with this task.
                    std::future::pending::<()>().await;
                }
            }
        });
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors or a transient error: back off briefly
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            socket::tune(&tcp, shared.config.socket_unsent_limit);
            // Every client connection takes a place from the start (a trusted proxy's
            // carry many clients: their upgrades are admitted by forwarded address).
            let place = if shared.admission.is_trusted_proxy(peer.ip()) {
                Ok(None)
            } else {
                let now = crate::clock::now();
                shared
                    .admission
                    .admit_connection(peer.ip().to_canonical(), now)
                    .map(Some)
            };
            let place = match place {
                Ok(place) => place,
                Err(refusal) => {
                    tracing::debug!(%peer, reason = refusal.code().as_str(), "connection refused");
                    shared
                        .tasks
                        .spawn(refuse(tcp, refusal, shared.config.handshake_timeout));
                    continue;
                }
            };
            let conn_shared = shared.clone();
            let connection = Arc::new(http::Connection {
                peer,
                place: parking_lot::Mutex::new(place),
            });
            let service = service_fn(move |req| {
                let shared = conn_shared.clone();
                let connection = connection.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(http::route(shared, req, connection).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(shared.config.handshake_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let stop = shared.shutdown.clone();
            shared.tasks.spawn(async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = stop.cancelled() => {
                        // Finish the request in flight, then close; upgraded sockets already
                        // left this future and are closed by the hub.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
            });
        }

        tracing::info!("shutting down: closing every client with 1001");
        // Every step below ends by this deadline, whatever the clients or NATS do.
        let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
        drop(listener);
        shared.shutdown.cancel();
        timers.abort();
        // Pollers loop forever and hold no client state: aborting the task drops them.
        pollers.abort();
        // What a throttle holds is published, not lost: clients get it before their 1001.
        let held = shared.throttle.take_all();
        if !held.is_empty() {
            let publish = shared.broker.publish(held, SystemTime::now()).into_future();
            if tokio::time::timeout_at(deadline, publish).await.is_err() {
                tracing::warn!("shutdown deadline passed while publishing throttled events");
            }
        }
        shared.hub.close_all(CloseCode::GOING_AWAY);
        shared.tasks.close();
        let leave_cluster = shared.broker.close(deadline);
        let drain_clients = async {
            if tokio::time::timeout_at(deadline, shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    remaining = shared.hub.stats().clients,
                    "shutdown deadline passed; dropping remaining connections"
                );
            }
        };
        tokio::join!(leave_cluster, drain_clients);
        // The clients' disconnect notices are in: the application hears of them.
        if let Some(webhook) = &shared.webhook {
            webhook.finish(deadline).await;
        }
        Ok(())
    }
}

/// Answers a connection that was refused a place: its request (read within at most
/// 2 s) gets 503 or 429 with `Retry-After`, and the connection is closed.
async fn refuse(tcp: tokio::net::TcpStream, refusal: admission::Refusal, handshake: Duration) {
    let service = service_fn(
        move |_req: hyper::Request<hyper::body::Incoming>| async move {
            Ok::<_, std::convert::Infallible>(http::refused(refusal))
        },
    );
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake.min(Duration::from_secs(2)))
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// Heartbeat events, keep-alive pings and the analytics sampler until shutdown.
async fn run_timers(shared: Arc<Shared>) {
    tokio::join!(
        heartbeat(&shared),
        keepalive(&shared),
        sample(&shared),
        release_throttled(&shared),
        wake_deferred(&shared)
    );
}

/// Every `low_priority_delay`, if set: wakes the writers whose queue holds only `low`
/// events that have waited for company.
async fn wake_deferred(shared: &Shared) {
    let delay = shared.config.low_priority_delay;
    if delay.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(delay);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        shared.hub.wake_deferred();
    }
}

/// Publishes the throttled events whose window ended, if any rule throttles.
async fn release_throttled(shared: &Shared) {
    let Some(tick) = shared.throttle.tick() else {
        return;
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let due = shared.throttle.due(std::time::Instant::now());
        if !due.is_empty() {
            // Awaited: a cluster's publish is a future that does nothing until polled, and
            // one release after the other keeps each key's events in order.
            shared.broker.publish(due, SystemTime::now()).await;
        }
    }
}

/// Every second: adds a second of traffic to the analytics history, drops expired channel
/// history, gives back the queue memory of idle clients and asks their connections to
/// go dormant.
async fn sample(shared: &Shared) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let hub = shared.hub.stats();
        let totals = analytics::Totals {
            connections: hub.clients,
            connects: hub.connected_total,
            events: hub.published,
            frames_sent: shared.counters.frames_sent.get(),
            messages_received: shared.counters.messages_received.get(),
        };
        let now = SystemTime::now();
        shared.analytics.sample(totals, now);
        shared.hub.sweep_history(now);
        shared.hub.sweep_idle();
        shared.broker.sweep();
    }
}

/// Publishes a `heartbeat` event every `heartbeat_interval`.
async fn heartbeat(shared: &Shared) {
    let period = shared.config.heartbeat_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = SystemTime::now();
        let event = Event::new(
            "heartbeat",
            &serde_json::json!({ "server_time": unix_seconds(now) }),
        )
        .expect("heartbeat is a valid channel");
        shared.hub.publish_at(&event, now);
    }
}

/// Pings every client every `ping_interval`; closes those silent for `pong_timeout` after it.
async fn keepalive(shared: &Shared) {
    let (interval, timeout) = (shared.config.ping_interval, shared.config.pong_timeout);
    let mut round = tokio::time::Instant::now() + interval;
    loop {
        tokio::time::sleep_until(round).await;
        let now = SystemTime::now();
        let pinged = shared.hub.ping_all(|dialect| dialect.keepalive_ping(now));
        tokio::time::sleep(timeout).await;
        round = (round + interval).max(tokio::time::Instant::now());
        let expired = shared.hub.expire_silent();
        if expired > 0 {
            tracing::info!(pinged, expired, "closed clients that did not answer a ping");
        }
    }
}
