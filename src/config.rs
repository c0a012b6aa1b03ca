//! The hub's configuration: one serde struct with embedded defaults.
//!
//! The binary fills it from defaults, an optional TOML file, `SIGMAHUB_*` environment
//! variables and flags (in rising precedence); a library user builds it in code:
//!
//! ```
//! let mut config = sigmahub::Config::default();
//! config.client_queue_capacity = 1024;
//! config.validate().unwrap();
//! ```
//!
//! Durations are written as humantime strings in TOML (`ping_interval = "30s"`).

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::keys::MIN_KEY_LEN;
pub use crate::compression::{CompressionConfig, CompressionMode};
use crate::dialect::Dialect;
use crate::engine::outbox;
pub use crate::engine::outbox::SlowConsumerPolicy;
use crate::protocol::channel::{self, DEFAULT_CHANNELS};

/// sigmahub's configuration. Every field has a default; see each field for it and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:12080`, SigmaVault's port, loopback only so
    /// that nothing is exposed until an operator asks for it.
    #[schemars(extend("x-value-name" = "ADDR:PORT"))]
    pub listen: SocketAddr,

    /// The protocol `/ws` speaks: `sigmavault` (the default) or `skreaver`, which makes
    /// `/ws` a drop-in for Skreaver's clients. `/skreaver/ws` speaks Skreaver's whatever
    /// this says.
    pub ws_dialect: Dialect,

    /// Largest client message accepted, in bytes; larger ones close the connection with 1009.
    /// Default 64 KiB (Skreaver's figure): far above any subscribe request.
    pub max_message_size: usize,

    /// Frames that may wait in one client's queue. Default 256, SigmaVault's per-client
    /// buffer: about 5 s of events at 50 events/s.
    pub client_queue_capacity: usize,

    /// Bytes that may wait in one client's queue: it takes frames while it holds less,
    /// so it holds at most this plus one frame, or one whole publish batch that found it
    /// empty (whose frames every subscriber shares). Default 256 KiB, a full queue of 1 KiB
    /// events: 20,000 clients hold at most 5 GiB between them, and that only if every frame
    /// were theirs alone (a broadcast frame is one allocation shared by every subscriber).
    pub client_queue_bytes: usize,

    /// Most bytes the kernel may hold unsent for one client, beyond its queue
    /// (`TCP_NOTSENT_LOWAT`, Linux; elsewhere ignored). Default 128 KiB. Without a limit
    /// (0) the kernel buffers megabytes for a client that reads slowly: its ping then waits
    /// behind them and it is closed as silent (4001), and it fills its queue, where the
    /// `slow_consumer` policy acts, only after those megabytes. Bytes in flight to a client
    /// that is reading are not limited, so throughput over long links is not either.
    pub socket_unsent_limit: u32,

    /// What happens when a client's queue is full (in frames or in bytes): `close`
    /// (default), `drop`, or `degrade` (hold events back by priority and conflation key
    /// from half the bounds, then send `gap` markers; docs/protocol.md, "Slow consumers").
    pub slow_consumer: SlowConsumerPolicy,

    /// How long a `low` priority event may wait to be written together with the events
    /// after it: a `low` event that finds a client's queue empty does not wake its writer,
    /// the next event of another priority (or a reply) does, or a ticker every
    /// `low_priority_delay`. Fewer, larger writes for `low` traffic, at a latency of up to
    /// this. 0, the default, writes `low` events at once; otherwise 1ms to 10s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub low_priority_delay: Duration,

    /// Most channels one connection may be subscribed to at once, the 8 defaults included.
    /// Default 50 (Skreaver's figure).
    pub max_subscriptions_per_connection: usize,

    /// Interval between WebSocket ping frames to each client. Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub ping_interval: Duration,

    /// How long a client has to answer a ping before it is closed (4001). Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub pong_timeout: Duration,

    /// Interval between `heartbeat` events on the `heartbeat` channel. Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub heartbeat_interval: Duration,

    /// On shutdown, how long clients get to receive what is queued for them before the
    /// server exits anyway. Default 5 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub shutdown_timeout: Duration,

    /// Largest `POST /api/v1/publish` body, in bytes. Default 1 MiB.
    pub max_publish_body_size: usize,

    /// Longest a client may take to send its HTTP request head (the upgrade included)
    /// before the connection is dropped: the defence against slowloris. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub handshake_timeout: Duration,

    /// Longest a publish request's body may take to arrive, once its head has; then HTTP
    /// 408 and the connection is closed. Default 10 s: a 1 MiB body at 1 Mbit/s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub body_timeout: Duration,

    /// Most connections at once, plain HTTP and WebSocket; more are refused with HTTP 503.
    /// 0 is unlimited. Default 100,000 (one process holds what its open-file limit allows
    /// anyway).
    pub max_connections: usize,

    /// Most connections from one client address, plain HTTP and WebSocket (a WebSocket
    /// keeps the place its connection took); more are refused with HTTP 429. 0 is
    /// unlimited. Default 10 (Skreaver's). Behind `trusted_proxies`, WebSockets are counted
    /// by the forwarded address and plain HTTP is the proxy's to limit.
    pub max_connections_per_ip: usize,

    /// New WebSocket connections one address may open per minute on average (reconnect
    /// storms); faster ones are refused with HTTP 429 and `Retry-After`. 0 is unlimited.
    /// Default 60.
    pub connection_rate_per_ip: u32,

    /// New connections one address may open in a burst above `connection_rate_per_ip`.
    /// Default 20.
    pub connection_burst_per_ip: u32,

    /// Reverse proxies whose `X-Forwarded-For` names the client address. Default none:
    /// the peer address is the client's.
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Messages a connection may send per minute on average (seed 002's 100). Past it the
    /// client gets a `rate_limited` error, then a close with 1008 if it goes on.
    pub max_inbound_per_minute: u32,

    /// Messages a connection may send in a burst above `max_inbound_per_minute`. Default 10
    /// (seed 002).
    pub inbound_burst: u32,

    /// Channels every client is subscribed to on connect (those its token allows).
    /// Default: SigmaVault's 8 types.
    pub default_subscriptions: Vec<String>,

    /// Most clients subscribed to one channel; further subscribes get `channel_full`.
    /// 0 is unlimited, the default: Skreaver's 10,000 would refuse the default channels to
    /// the 10,001st client of a node built to hold 19,900.
    pub max_subscribers_per_channel: usize,

    /// Close a connection (4005) that sends no message for this long; pongs to keep-alive
    /// pings do not count. 0, the default, turns it off: subscribers are normally silent,
    /// and dead peers are found by the keep-alive pings. Set it where clients must send
    /// application-level `ping`s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub idle_timeout: Duration,

    /// Count per-frame metrics (frames sent, publish-to-write latency) and serve
    /// `GET /metrics`. Default true; perf/README.md has what it costs.
    pub metrics: bool,

    /// Serve the live dashboard at `GET /`. Default true: it is static assets, and it sees
    /// only what the credentials typed into it allow.
    pub dashboard: bool,

    /// Authentication, permissions and the origin allowlist (TOML section `[auth]`).
    pub auth: AuthConfig,

    /// Each channel's recent events, for clients that reconnect (TOML section `[history]`).
    pub history: HistoryConfig,

    /// Options for the channels that match a pattern (TOML array `[[channels]]`), in
    /// order: each option comes from the first rule that matches and sets it. Default none.
    /// In the TOML file only (no flag).
    #[schemars(extend("x-file-only" = true))]
    pub channels: Vec<ChannelRule>,

    /// Socket.IO clients on `/socket.io/` (TOML section `[socketio]`).
    pub socketio: SocketIoConfig,

    /// permessage-deflate for WebSocket clients that offer it (TOML section
    /// `[compression]`).
    pub compression: CompressionConfig,

    /// Past one node: the NATS backplane (TOML section `[cluster]`). Off unless
    /// `cluster.nats_url` is set.
    pub cluster: ClusterConfig,

    /// The host source: `system.status` and `storage.update` from this machine.
    pub host: HostConfig,

    /// The upstream SigmaVault engine, polled over JSON-RPC when `engine.url` is set.
    pub engine: UpstreamConfig,

    /// Hooks into the application's backend over HTTP (TOML section `[hooks]`): who
    /// connects, what they may subscribe to and publish, the answers to their requests.
    /// Off unless a hook's URL is set.
    pub hooks: HooksConfig,
}

/// Authentication (TOML section `[auth]`). With none of it set, clients are anonymous:
/// fine on loopback, refused on any other address unless `allow_anonymous` is true.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// HS256 secret for client JWTs, at least 32 bytes. Setting it (or
    /// `jwt_public_key_file`) makes a token mandatory on `/ws`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-secret" = true))]
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM file) for client JWTs. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "FILE"))]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Required `iss` claim. Default: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim. Default: not checked (and tokens carrying one are refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub leeway: Duration,
    /// How long a client that connected without a token has to send an `auth` message
    /// before it is closed (4002). Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Duration,
    /// Keys for `POST /api/v1/publish` (several, for rotation), each at least 16 bytes.
    /// Once any is set, publishing needs one. A key also works as a WebSocket token with
    /// every permission. Default: none.
    #[schemars(extend("x-secret" = true))]
    pub publish_keys: Vec<String>,
    /// Serve without authentication on a non-loopback address. Default false: such a
    /// server refuses to start without `jwt_secret`/`jwt_public_key_file` and `publish_keys`.
    pub allow_anonymous: bool,
    /// Failed credentials in a row from one address before it is barred; each further
    /// failure bars it twice as long (1 s, 2 s, 4 s, …). 0 turns this off. Default 5.
    pub backoff_after: u32,
    /// Longest bar for failed credentials. Default 5 min.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub max_backoff: Duration,
    /// Origins allowed to open WebSockets from a browser (`https://app.example.com`,
    /// `https://*.example.com` for every name below a domain, or `*`); others get HTTP 403.
    /// Default: empty, any origin may upgrade. The HTTP API answers a browser request only
    /// from the server's own origin or one on this list (with CORS), whatever the default.
    pub allowed_origins: Vec<String>,
    /// Host names the server answers to (`hub.example.com`, `*.example.com`, or `*`); a
    /// request naming another host gets HTTP 421 (DNS rebinding). Hosts given as IP
    /// addresses always pass. Default: empty, which on a loopback address means
    /// `localhost` and `*.localhost` only, and on any other address every name.
    pub allowed_hosts: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            publish_keys: Vec::new(),
            allow_anonymous: false,
            backoff_after: 5,
            max_backoff: Duration::from_secs(300),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether WebSocket clients must authenticate.
    pub fn has_token_auth(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key_file.is_some()
    }

    /// A copy with the secrets replaced, for printing and logging.
    pub fn redacted(&self) -> Self {
        const HIDDEN: &str = "<redacted>";
        Self {
            jwt_secret: self.jwt_secret.as_ref().map(|_| HIDDEN.to_owned()),
            publish_keys: self
                .publish_keys
                .iter()
                .map(|_| HIDDEN.to_owned())
                .collect(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &shown.jwt_secret)
            .field("jwt_public_key_file", &shown.jwt_public_key_file)
            .field("issuer", &shown.issuer)
            .field("audience", &shown.audience)
            .field("leeway", &shown.leeway)
            .field("timeout", &shown.timeout)
            .field("publish_keys", &shown.publish_keys)
            .field("allow_anonymous", &shown.allow_anonymous)
            .field("backoff_after", &shown.backoff_after)
            .field("max_backoff", &shown.max_backoff)
            .field("allowed_origins", &shown.allowed_origins)
            .field("allowed_hosts", &shown.allowed_hosts)
            .finish()
    }
}

/// Per-channel history (TOML section `[history]`): what a reconnecting client can recover
/// with `since`. A cluster keeps it in JetStream instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// Events kept per channel; 0 turns history (and event offsets) off. Default 100: more
    /// than a client misses in a few seconds' reconnect at SigmaVault's rates, and under
    /// the default queue of 256, so a replay fits.
    pub size: usize,
    /// Longest an event is kept. Default 5 min (a reconnect takes seconds; a laptop lid
    /// closed for longer should reload state).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub max_age: Duration,
    /// Channels with a log beyond which the idle ones (no event kept) are dropped. Default
    /// 10,000.
    pub max_channels: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            max_age: Duration::from_secs(300),
            max_channels: 10_000,
        }
    }
}

/// Options for the channels matching `pattern` (one `[[channels]]` entry).
///
/// ```toml
/// [[channels]]
/// pattern = "metrics.*"
/// priority = "low"
/// history = 500
/// throttle = "1s"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChannelRule {
    /// A channel name (`orders`), a prefix ending in `*` (`metrics.*`), or `*` (every
    /// channel).
    pub pattern: String,
    /// The priority of events published on these channels without one (docs/protocol.md,
    /// "Priorities and conflation"). Default: the next matching rule's, else `normal`.
    #[serde(default)]
    pub priority: Option<crate::event::Priority>,
    /// Events kept in these channels' history, instead of `history.size` (0 keeps none,
    /// though events are still numbered). Default: the next matching rule's, else
    /// `history.size`.
    #[serde(default)]
    pub history: Option<usize>,
    /// At most one event per conflation key (or per channel, for events without one) per
    /// this interval reaches subscribers; the latest of a window follows when it ends, the
    /// ones it replaced are never published. 1 ms to 1 h. Default: the next matching
    /// rule's, else none.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(schema_with = "duration_schema")]
    pub throttle: Option<Duration>,
    /// Whether the server keeps these channels' presence: who is subscribed (client id,
    /// user, the token's `info` claim), with `join` and `leave` events on
    /// `presence:{channel}` and `GET /api/v1/channels/{channel}/presence`. Default: the
    /// next matching rule's, else off (presence costs nothing where it is off).
    #[serde(default)]
    pub presence: Option<bool>,
}

impl ChannelRule {
    /// A rule for `pattern` that sets nothing yet.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            priority: None,
            history: None,
            throttle: None,
            presence: None,
        }
    }
}

/// Socket.IO clients (TOML section `[socketio]`). Engine.IO's keep-alive is the server's
/// (`pingInterval` is `ping_interval`, `pingTimeout` is `pong_timeout`), and its
/// `maxPayload` is `max_message_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SocketIoConfig {
    /// The room (a channel) every Socket.IO client joins when it connects, besides
    /// `default_subscriptions`, as Seneca's server has its clients join `general`; empty
    /// for none. Default `general`.
    pub default_room: String,
    /// Whether clients may use HTTP long-polling, which `io(url)` starts with before it
    /// upgrades to WebSocket. Without it only `transports: ['websocket']` clients connect.
    /// Default true.
    pub polling: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            default_room: "general".to_owned(),
            polling: true,
        }
    }
}

/// The NATS backplane (TOML section `[cluster]`).
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for several). Setting
    /// it turns the cluster on; JetStream must be enabled on the server. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub nats_url: Option<String>,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "FILE"))]
    pub credentials_file: Option<std::path::PathBuf>,
    /// A NATS authentication token. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-secret" = true))]
    pub token: Option<String>,
    /// First token of every subject and of the stream's name, so several sigmahub clusters
    /// can share one NATS. Default `sigmahub`.
    pub subject_prefix: String,
    /// This node's name in NATS (connection name, leader key). Default: host name and
    /// process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            credentials_file: None,
            token: None,
            subject_prefix: "sigmahub".to_owned(),
            node_name: None,
        }
    }
}

impl ClusterConfig {
    /// Whether the backplane is on.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// A copy with the token replaced, for printing and logging.
    pub fn redacted(&self) -> Self {
        Self {
            token: self.token.as_ref().map(|_| "<redacted>".to_owned()),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("ClusterConfig")
            .field("nats_url", &shown.nats_url)
            .field("credentials_file", &shown.credentials_file)
            .field("token", &shown.token)
            .field("subject_prefix", &shown.subject_prefix)
            .field("node_name", &shown.node_name)
            .finish()
    }
}

/// The host source (TOML section `[host]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HostConfig {
    /// Whether sigmahub publishes this machine's status at all. Default true.
    pub enabled: bool,
    /// Interval between `system.status` events from the host. Default 5 s (SigmaVault's).
    /// Not used when an engine is configured: its `system.status` replaces the host's.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub status_interval: Duration,
    /// Interval between `storage.update` events. Default 30 s: disks change slowly.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub storage_interval: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            status_interval: Duration::from_secs(5),
            storage_interval: Duration::from_secs(30),
        }
    }
}

/// The upstream engine (TOML section `[engine]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Base URL of SigmaVault's engine; calls go to `{url}/rpc`. Default: none (no engine;
    /// SigmaVault's own default base is `http://127.0.0.1:5000/api/v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub url: Option<String>,
    /// Interval between calls of each polled method. Default 5 s (SigmaVault's).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub poll_interval: Duration,
    /// Longest a call may take before it counts as a failure. Default 5 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Duration,
    /// Consecutive failures of a method that open its circuit breaker. Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before one trial call. Default 5 min.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub breaker_reset: Duration,
    /// Least time between two `rpc_error` events for one method during an outage (the
    /// first failure and every breaker change are always reported). Default 60 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub error_report_interval: Duration,
    /// While any breaker is open, how often to call the engine's `health.check`; when it
    /// answers, open breakers try their method at once instead of waiting out
    /// `breaker_reset`. Default 30 s; 0 turns the probe off.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub recovery_probe_interval: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            breaker_threshold: 5,
            breaker_reset: Duration::from_secs(300),
            error_report_interval: Duration::from_secs(60),
            recovery_probe_interval: Duration::from_secs(30),
        }
    }
}

/// The application's backend, asked over HTTP (TOML section `[hooks]`; docs/hooks.md has
/// the calls and their answers). Each hook is on when its URL is set.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HooksConfig {
    /// Asked who a client is when it presents a token that is neither a publish key nor a
    /// JWT sigmahub verifies, or (with `connect_headers`) no token but one of those
    /// headers. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub connect_url: Option<String>,
    /// Headers of a client's upgrade request (or Socket.IO handshake) sent to the connect
    /// hook, such as `cookie`: with them a client that brings no token is asked about at
    /// once, judged by its headers, and the answer is final as for a token. Case does not
    /// matter. Default: none.
    #[schemars(extend("x-value-name" = "HEADER"))]
    pub connect_headers: Vec<String>,
    /// Asked whether a client may subscribe to a channel of `subscribe_channels`, after its
    /// grant allowed it. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub subscribe_url: Option<String>,
    /// The channels (glob patterns) whose subscribes `subscribe_url` is asked about.
    /// Default `*`.
    #[schemars(extend("x-value-name" = "PATTERN"))]
    pub subscribe_channels: Vec<String>,
    /// Asked whether a client may publish an event on a channel of `publish_channels`, and
    /// may rewrite its data. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub publish_url: Option<String>,
    /// The channels (glob patterns) whose publishes `publish_url` is asked about.
    /// Default `*`.
    #[schemars(extend("x-value-name" = "PATTERN"))]
    pub publish_channels: Vec<String>,
    /// Answers clients' requests: Skreaver's `request`, and Socket.IO events with an ack
    /// that are not sigmahub's own. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub request_url: Option<String>,
    /// Longest a hook call may take before it counts as a failure. Default 1 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Duration,
    /// What a failed call (no answer in time, an HTTP error, an open breaker) means:
    /// `refuse` (default) or `allow`.
    pub on_failure: crate::hooks::FailurePolicy,
    /// How long an answer to a subscribe or publish check holds for the same user and
    /// channel, unless the answer says (`cache_seconds`). Default 0: ask every time.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub cache: Duration,
    /// Most answers kept. Default 100000.
    pub cache_size: usize,
    /// Sent with every call as `Authorization: Bearer`, so that the backend knows it is
    /// sigmahub asking. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-secret" = true))]
    pub secret: Option<String>,
    /// Consecutive failures of a hook that open its circuit breaker. Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls before one trial call. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub breaker_reset: Duration,
    /// Where to POST notices of what happened (`webhook_events`), in batches. Default:
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-value-name" = "URL"))]
    pub webhook_url: Option<String>,
    /// Which notices to send: `connect`, `disconnect`, `channel_occupied`,
    /// `channel_vacated`. Default all four.
    pub webhook_events: Vec<crate::hooks::webhook::Notice>,
    /// Longest a notice waits to be sent with others. Default 1 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub webhook_interval: Duration,
    /// Most notices in one POST. Default 100.
    pub webhook_batch_size: usize,
    /// How long a batch the backend did not take is retried (with growing pauses) before
    /// it is dropped. Default 60 s.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub webhook_retry_for: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            connect_url: None,
            connect_headers: Vec::new(),
            subscribe_url: None,
            subscribe_channels: vec!["*".to_owned()],
            publish_url: None,
            publish_channels: vec!["*".to_owned()],
            request_url: None,
            timeout: Duration::from_secs(1),
            on_failure: crate::hooks::FailurePolicy::Refuse,
            cache: Duration::ZERO,
            cache_size: 100_000,
            secret: None,
            breaker_threshold: 5,
            breaker_reset: Duration::from_secs(10),
            webhook_url: None,
            webhook_events: crate::hooks::webhook::Notice::ALL.to_vec(),
            webhook_interval: Duration::from_secs(1),
            webhook_batch_size: 100,
            webhook_retry_for: Duration::from_secs(60),
        }
    }
}

impl HooksConfig {
    /// Whether any hook is on.
    pub fn any(&self) -> bool {
        self.connect_url.is_some()
            || self.subscribe_url.is_some()
            || self.publish_url.is_some()
            || self.request_url.is_some()
    }

    /// A copy with the secret replaced, for printing and logging.
    pub fn redacted(&self) -> Self {
        Self {
            secret: self.secret.as_ref().map(|_| "<redacted>".to_owned()),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("HooksConfig")
            .field("connect_url", &shown.connect_url)
            .field("connect_headers", &shown.connect_headers)
            .field("subscribe_url", &shown.subscribe_url)
            .field("subscribe_channels", &shown.subscribe_channels)
            .field("publish_url", &shown.publish_url)
            .field("publish_channels", &shown.publish_channels)
            .field("request_url", &shown.request_url)
            .field("timeout", &shown.timeout)
            .field("on_failure", &shown.on_failure)
            .field("cache", &shown.cache)
            .field("cache_size", &shown.cache_size)
            .field("secret", &shown.secret)
            .field("breaker_threshold", &shown.breaker_threshold)
            .field("breaker_reset", &shown.breaker_reset)
            .field("webhook_url", &shown.webhook_url)
            .field("webhook_events", &shown.webhook_events)
            .field("webhook_interval", &shown.webhook_interval)
            .field("webhook_batch_size", &shown.webhook_batch_size)
            .field("webhook_retry_for", &shown.webhook_retry_for)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 12080)),
            ws_dialect: Dialect::SigmaVault,
            max_message_size: 64 * 1024,
            client_queue_capacity: 256,
            client_queue_bytes: 256 * 1024,
            socket_unsent_limit: 128 * 1024,
            slow_consumer: SlowConsumerPolicy::Close,
            low_priority_delay: Duration::ZERO,
            max_subscriptions_per_connection: 50,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            max_publish_body_size: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_ip: 10,
            connection_rate_per_ip: 60,
            connection_burst_per_ip: 20,
            trusted_proxies: Vec::new(),
            max_inbound_per_minute: 100,
            inbound_burst: 10,
            default_subscriptions: DEFAULT_CHANNELS.iter().map(|s| s.to_string()).collect(),
            max_subscribers_per_channel: 0,
            metrics: true,
            dashboard: true,
            idle_timeout: Duration::ZERO,
            auth: AuthConfig::default(),
            history: HistoryConfig::default(),
            channels: Vec::new(),
            socketio: SocketIoConfig::default(),
            compression: CompressionConfig::default(),
            cluster: ClusterConfig::default(),
            host: HostConfig::default(),
            engine: UpstreamConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

/// The longest duration any setting takes: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The shortest and longest `[[channels]]` `throttle`.
const MIN_THROTTLE: Duration = Duration::from_millis(1);
const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// Most headers `hooks.connect_headers` may name.
const MAX_CONNECT_HEADERS: usize = 32;

/// The longest `low_priority_delay`.
const MAX_LOW_PRIORITY_DELAY: Duration = Duration::from_secs(10);

/// The most events a `[[channels]]` rule may keep in a channel's history.
pub const MAX_HISTORY_SIZE: usize = 10_000_000;

/// The largest `socket_unsent_limit`: 64 MiB, past any kernel's send buffer.
pub const MAX_SOCKET_UNSENT_LIMIT: u32 = 64 * 1024 * 1024;

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of range; the message says which and why.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The config key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this struct.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The TOML error, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value given as a flag or environment variable is not valid for its key.
    #[error("invalid {setting}: {source}")]
    Setting {
        /// The flag and variable, e.g. `--ping-interval (SIGMAHUB_PING_INTERVAL)`.
        setting: String,
        /// What serde said of the value.
        source: Box<toml::de::Error>,
    },
}

/// The JSON schema of a duration, written as a humantime string (`30s`, `5m`, `1h 30m`).
fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "format": "duration" })
}

/// Whether a secret is made of fewer than 8 distinct bytes: typed by hand, not random.
fn weak(secret: &str) -> bool {
    let mut seen = [false; 256];
    secret.bytes().for_each(|b| seen[usize::from(b)] = true);
    seen.iter().filter(|s| **s).count() < 8
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::from_toml_table(Self::read_toml_file(path)?).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Reads a TOML file as a table, not yet checked against this struct (to lay other
    /// settings over it before [`from_toml_table`](Self::from_toml_table)).
    pub fn read_toml_file(path: &std::path::Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        text.parse().map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The configuration a TOML table describes: missing keys keep their defaults,
    /// unknown keys are errors.
    pub fn from_toml_table(table: toml::Table) -> Result<Self, toml::de::Error> {
        table.try_into()
    }

    /// Checks that every value can work; call it before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_size < 128 {
            return Err(invalid("max_message_size", "must be at least 128 bytes"));
        }
        if !(1..=9).contains(&self.compression.level) {
            return Err(invalid(
                "compression.level",
                "must be 1 (fastest) to 9 (smallest)",
            ));
        }
        if !(1..=outbox::MAX_CAPACITY).contains(&self.client_queue_capacity) {
            return Err(invalid(
                "client_queue_capacity",
                format!("must be 1 to {}", outbox::MAX_CAPACITY),
            ));
        }
        if !(1024..=outbox::MAX_BYTE_CAPACITY).contains(&self.client_queue_bytes) {
            return Err(invalid(
                "client_queue_bytes",
                format!("must be 1024 to {}", outbox::MAX_BYTE_CAPACITY),
            ));
        }
        if self.socket_unsent_limit != 0
            && !(1024..=MAX_SOCKET_UNSENT_LIMIT).contains(&self.socket_unsent_limit)
        {
            return Err(invalid(
                "socket_unsent_limit",
                format!("must be 0 (the kernel's) or 1024 to {MAX_SOCKET_UNSENT_LIMIT}"),
            ));
        }
        let delay = self.low_priority_delay;
        if !delay.is_zero() && !(Duration::from_millis(1)..=MAX_LOW_PRIORITY_DELAY).contains(&delay)
        {
            return Err(invalid(
                "low_priority_delay",
                "must be 0 (write at once) or 1ms to 10s",
            ));
        }
        for (i, rule) in self.channels.iter().enumerate() {
            if let Some(reason) = crate::engine::rules::pattern_error(&rule.pattern) {
                return Err(invalid(
                    "channels.pattern",
                    format!("rule {}: {reason}", i + 1),
                ));
            }
            if rule.history.is_some() && self.history.size == 0 {
                return Err(invalid(
                    "channels.history",
                    format!("rule {}: history is off (history.size = 0)", i + 1),
                ));
            }
            if rule
                .throttle
                .is_some_and(|t| !(MIN_THROTTLE..=MAX_THROTTLE).contains(&t))
            {
                return Err(invalid(
                    "channels.throttle",
                    format!("rule {}: must be 1ms to 1h", i + 1),
                ));
            }
            if rule.history.is_some_and(|size| size > MAX_HISTORY_SIZE) {
                return Err(invalid(
                    "channels.history",
                    format!("rule {}: must be at most {MAX_HISTORY_SIZE}", i + 1),
                ));
            }
        }
        if self.max_subscriptions_per_connection == 0 {
            return Err(invalid(
                "max_subscriptions_per_connection",
                "must be at least 1",
            ));
        }
        for (field, d) in [
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("handshake_timeout", self.handshake_timeout),
            ("body_timeout", self.body_timeout),
            ("host.status_interval", self.host.status_interval),
            ("host.storage_interval", self.host.storage_interval),
            ("engine.poll_interval", self.engine.poll_interval),
            ("engine.timeout", self.engine.timeout),
            ("auth.timeout", self.auth.timeout),
            ("history.max_age", self.history.max_age),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        // Timers are armed as `now + duration`: past about 292 billion years that
        // overflows. Nothing sensible waits longer than a decade.
        for (field, d) in [
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("shutdown_timeout", self.shutdown_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("auth.leeway", self.auth.leeway),
            ("auth.timeout", self.auth.timeout),
            ("auth.max_backoff", self.auth.max_backoff),
            ("history.max_age", self.history.max_age),
            ("host.status_interval", self.host.status_interval),
            ("host.storage_interval", self.host.storage_interval),
            ("engine.poll_interval", self.engine.poll_interval),
            ("engine.timeout", self.engine.timeout),
            ("engine.breaker_reset", self.engine.breaker_reset),
            (
                "engine.error_report_interval",
                self.engine.error_report_interval,
            ),
            (
                "engine.recovery_probe_interval",
                self.engine.recovery_probe_interval,
            ),
        ] {
            if d > MAX_DURATION {
                return Err(invalid(field, "must be at most 10 years"));
            }
        }
        let prefix = &self.cluster.subject_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "cluster.subject_prefix",
                "must be 1 to 64 of A-Z a-z 0-9 _ - (one NATS token, also the stream's name)",
            ));
        }
        if self.max_publish_body_size < 128 {
            return Err(invalid(
                "max_publish_body_size",
                "must be at least 128 bytes",
            ));
        }
        if self.default_subscriptions.len() > self.max_subscriptions_per_connection {
            return Err(invalid(
                "default_subscriptions",
                "more entries than max_subscriptions_per_connection",
            ));
        }
        if self.max_inbound_per_minute == 0 || self.inbound_burst == 0 {
            return Err(invalid(
                "max_inbound_per_minute",
                "max_inbound_per_minute and inbound_burst must be at least 1",
            ));
        }
        if self.engine.breaker_threshold == 0 {
            return Err(invalid("engine.breaker_threshold", "must be at least 1"));
        }
        if let Some(url) = &self.engine.url {
            crate::upstream::rpc::RpcClient::new(url, self.engine.timeout)
                .map_err(|e| invalid("engine.url", e))?;
        }
        for name in &self.default_subscriptions {
            channel::validate(name)
                .map_err(|e| invalid("default_subscriptions", format!("{name:?}: {e}")))?;
        }
        let room = &self.socketio.default_room;
        if !room.is_empty() {
            channel::validate(room)
                .map_err(|e| invalid("socketio.default_room", format!("{room:?}: {e}")))?;
        }
        self.validate_hooks()?;
        self.validate_auth()
    }

    /// The `[auth]` checks, secure-by-default included.
    fn validate_hooks(&self) -> Result<(), ConfigError> {
        let hooks = &self.hooks;
        let hour = Duration::from_secs(3600);
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&hooks.timeout) {
            return Err(invalid("hooks.timeout", "must be 1ms to 60s"));
        }
        if hooks.cache > MAX_DURATION {
            return Err(invalid("hooks.cache", "must be at most 10 years"));
        }
        if hooks.connect_headers.len() > MAX_CONNECT_HEADERS {
            return Err(invalid(
                "hooks.connect_headers",
                format!("names at most {MAX_CONNECT_HEADERS} headers"),
            ));
        }
        if let Some(bad) = hooks
            .connect_headers
            .iter()
            .find(|name| hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err())
        {
            return Err(invalid(
                "hooks.connect_headers",
                format!("{bad:?} is not a header name"),
            ));
        }
        if hooks.breaker_reset > hour {
            return Err(invalid("hooks.breaker_reset", "must be at most 1h"));
        }
        if !(1..=10_000).contains(&hooks.webhook_batch_size) {
            return Err(invalid("hooks.webhook_batch_size", "must be 1 to 10000"));
        }
        if !(Duration::from_millis(1)..=hour).contains(&hooks.webhook_interval) {
            return Err(invalid("hooks.webhook_interval", "must be 1ms to 1h"));
        }
        if hooks.webhook_retry_for > Duration::from_secs(24 * 3600) {
            return Err(invalid("hooks.webhook_retry_for", "must be at most 24h"));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if let Some(secret) = &auth.jwt_secret {
            if secret.len() < 32 {
                return Err(invalid(
                    "auth.jwt_secret",
                    "must be at least 32 bytes (RFC 7518 §3.2: a key as long as the hash)",
                ));
            }
            if secret.trim().is_empty() {
                return Err(invalid(
                    "auth.jwt_secret",
                    "is only whitespace: an empty setting, not a secret",
                ));
            }
            if secret.trim() != secret {
                tracing::warn!(
                    "auth.jwt_secret begins or ends with whitespace; make sure the token issuer signs with exactly the same bytes"
                );
            }
            if weak(secret) {
                tracing::warn!(
                    "auth.jwt_secret repeats a few characters; use random bytes (head -c 32 /dev/urandom | base64)"
                );
            }
        }
        for key in &auth.publish_keys {
            if key.len() < MIN_KEY_LEN {
                return Err(invalid(
                    "auth.publish_keys",
                    format!("each key must be at least {MIN_KEY_LEN} bytes"),
                ));
            }
            // Such a key could never be presented: HTTP strips the whitespace around a
            // header's value and forbids control characters in it.
            if key.trim() != key || key.chars().any(char::is_control) {
                return Err(invalid(
                    "auth.publish_keys",
                    "a key may not begin or end with whitespace nor hold control characters: no client could send it",
                ));
            }
            if weak(key) {
                tracing::warn!(
                    "a publish key repeats a few characters; use random bytes (head -c 24 /dev/urandom | base64)"
                );
            }
        }
        crate::auth::origin::OriginPolicy::new(&auth.allowed_origins)
            .map_err(|e| invalid("auth.allowed_origins", e.to_string()))?;
        crate::auth::host::HostPolicy::new(&auth.allowed_hosts, self.listen)
            .map_err(|e| invalid("auth.allowed_hosts", e.to_string()))?;
        if self.listen.ip().is_loopback() || auth.allow_anonymous {
            return Ok(());
        }
        let missing: Vec<&str> = [
            (!auth.has_token_auth() && self.hooks.connect_url.is_none()).then_some(
                "client tokens (auth.jwt_secret or auth.jwt_public_key_file, or hooks.connect_url)",
            ),
            auth.publish_keys
                .is_empty()
                .then_some("publish keys (auth.publish_keys)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(invalid(
            "auth",
            format!(
                "{} is not a loopback address and there are no {}; configure them, or set auth.allow_anonymous = true (--auth-allow-anonymous) to serve without authentication",
                self.listen,
                missing.join(" and no ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn connect_headers_must_be_header_names() {
        let mut c: Config =
            toml::from_str("[hooks]\nconnect_headers = [\"Cookie\", \"x-tenant\"]\n").unwrap();
        c.validate().unwrap();
        c.hooks.connect_headers.push("not a header".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("hooks.connect_headers"), "{err}");
        assert!(
            err.contains("\"not a header\" is not a header name"),
            "{err}"
        );
        c.hooks.connect_headers = (0..=MAX_CONNECT_HEADERS)
            .map(|n| format!("x-{n}"))
            .collect();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("at most 32"), "{err}");
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let c: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nping_interval = \"5s\"\nslow_consumer = \"drop\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.client_queue_capacity, 256);
    }

    #[test]
    fn sections_read_from_toml() {
        let c: Config = toml::from_str(
            "[engine]\nurl = \"http://127.0.0.1:5000/api/v1\"\nbreaker_reset = \"2m\"\n[host]\nstorage_interval = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(
            c.engine.url.as_deref(),
            Some("http://127.0.0.1:5000/api/v1")
        );
        assert_eq!(c.engine.breaker_reset, Duration::from_secs(120));
        assert_eq!(c.engine.breaker_threshold, 5);
        assert_eq!(c.host.storage_interval, Duration::from_secs(60));
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.engine.url = Some("ftp://x".into());
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("engine.url"));
    }

    #[test]
    fn public_addresses_need_auth_or_an_explicit_opt_out() {
        let public = Config {
            listen: "0.0.0.0:12080".parse().unwrap(),
            ..Config::default()
        };
        let err = public.validate().unwrap_err().to_string();
        assert!(
            err.contains("auth.jwt_secret") && err.contains("publish_keys"),
            "{err}"
        );

        let mut open = public.clone();
        open.auth.allow_anonymous = true;
        open.validate().unwrap();

        let mut secured = public.clone();
        secured.auth.jwt_secret = Some("x".repeat(32));
        secured.auth.publish_keys = vec!["k".repeat(16)];
        secured.validate().unwrap();

        let mut half = public;
        half.auth.jwt_secret = Some("x".repeat(32));
        let err = half.validate().unwrap_err().to_string();
        assert!(
            err.contains("publish_keys") && !err.contains("jwt_secret"),
            "{err}"
        );
    }

    #[test]
    fn weak_secrets_are_refused_and_never_printed() {
        let mut c = Config::default();
        c.auth.jwt_secret = Some("short".into());
        assert!(c.validate().unwrap_err().to_string().contains("32 bytes"));
        c.auth.jwt_secret = Some("s".repeat(40));
        c.auth.publish_keys = vec!["tiny".into()];
        assert!(c.validate().unwrap_err().to_string().contains("16 bytes"));
        c.auth.publish_keys = vec!["k".repeat(20)];
        let shown = format!("{c:?}");
        assert!(!shown.contains(&"s".repeat(40)) && !shown.contains(&"k".repeat(20)));
    }

    #[test]
    fn secrets_no_client_could_use_are_refused() {
        let mut c = Config::default();
        c.auth.jwt_secret = Some(" ".repeat(32));
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("auth.jwt_secret") && err.contains("whitespace"),
            "{err}"
        );
        c.auth.jwt_secret = Some("\t\n".repeat(20));
        assert!(c.validate().is_err());
        c.auth.jwt_secret = None;
        for key in [
            " ".repeat(20),
            format!(" {}", "k".repeat(20)),
            format!("{}\n", "k".repeat(20)),
            format!("{}\u{7}{}", "k".repeat(10), "k".repeat(10)),
        ] {
            c.auth.publish_keys = vec![key.clone()];
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("auth.publish_keys"), "{key:?}: {err}");
        }
        c.auth.publish_keys = vec!["a1b2c3d4e5f6g7h8i9".into()];
        c.validate().unwrap();
        assert!(weak(&"x".repeat(32)) && !weak("a1b2c3d4e5f6g7h8i9"));
    }

    #[test]
    fn durations_too_long_to_arm_are_refused() {
        let far = Duration::from_secs(u64::MAX / 2);
        let c = Config {
            ping_interval: far,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ping_interval"));
        let mut c = Config::default();
        c.engine.breaker_reset = MAX_DURATION + Duration::from_secs(1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("engine.breaker_reset"));
        c.engine.breaker_reset = MAX_DURATION;
        c.validate().unwrap();
    }

    #[test]
    fn the_low_priority_delay_is_zero_or_1ms_to_10s() {
        for ms in [0, 1, 50, 10_000] {
            let c = Config {
                low_priority_delay: Duration::from_millis(ms),
                ..Config::default()
            };
            c.validate().unwrap();
        }
        for bad in [Duration::from_micros(500), Duration::from_millis(10_001)] {
            let c = Config {
                low_priority_delay: bad,
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("low_priority_delay"), "{e}");
        }
    }

    #[test]
    fn the_unsent_limit_is_zero_or_a_sane_size() {
        for ok in [0, 1024, 128 * 1024, MAX_SOCKET_UNSENT_LIMIT] {
            let c = Config {
                socket_unsent_limit: ok,
                ..Config::default()
            };
            c.validate().unwrap();
        }
        for bad in [1, 1023, MAX_SOCKET_UNSENT_LIMIT + 1] {
            let c = Config {
                socket_unsent_limit: bad,
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("socket_unsent_limit"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config {
            client_queue_capacity: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("client_queue_capacity"));
        let c = Config {
            default_subscriptions: vec!["bad name".into()],
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_subscriptions"));
    }
}
