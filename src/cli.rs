//! Command-line options: one flag per config key, each also read from `SIGMAHUB_<KEY>`.
//!
//! Precedence is flag > environment > config file > default. clap resolves the first two
//! (a flag beats its environment variable); [`Cli::into_config`] lays the result over the
//! file, which already lies over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sigmahub::{Config, ConfigError, SlowConsumerPolicy};

/// sigmahub: a WebSocket event-streaming server speaking the SigmaVault WebSocket Protocol
/// v1.0. Clients connect to /ws, subscribe to channels, and receive every event published
/// on them; events are published with POST /api/v1/publish.
///
/// With no options it serves on 127.0.0.1:12080 with embedded defaults. Every option can
/// also be set as a SIGMAHUB_* environment variable or a key of the TOML file given with
/// --config; flags win over the environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(version, about, long_about, max_term_width = 100)]
pub(crate) struct Cli {
    /// TOML config file; its keys are the long option names with `_` for `-`.
    #[arg(long, env = "SIGMAHUB_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub(crate) print_config: bool,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sigmahub=debug`.
    #[arg(
        long,
        env = "SIGMAHUB_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub(crate) log: String,

    /// Log line format: `text` for people, `json` (one object per line) for log shippers.
    #[arg(
        long,
        env = "SIGMAHUB_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub(crate) log_format: LogFormat,

    /// Address to listen on [default: 127.0.0.1:12080].
    #[arg(long, env = "SIGMAHUB_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,

    /// Largest client message in bytes; larger ones close with 1009 [default: 65536].
    #[arg(long, env = "SIGMAHUB_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    max_message_size: Option<usize>,

    /// Frames that may wait in one client's queue [default: 256].
    #[arg(long, env = "SIGMAHUB_CLIENT_QUEUE_CAPACITY", value_name = "FRAMES")]
    client_queue_capacity: Option<usize>,

    /// Bytes that may wait in one client's queue (it holds at most this plus one frame)
    /// [default: 262144].
    #[arg(long, env = "SIGMAHUB_CLIENT_QUEUE_BYTES", value_name = "BYTES")]
    client_queue_bytes: Option<usize>,

    /// On a full client queue: close the client (4000) or drop frames and report them
    /// [default: close].
    #[arg(long, env = "SIGMAHUB_SLOW_CONSUMER", value_enum)]
    slow_consumer: Option<SlowConsumerPolicy>,

    /// Most channels one connection may subscribe to, defaults included [default: 50].
    #[arg(
        long,
        env = "SIGMAHUB_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N"
    )]
    max_subscriptions_per_connection: Option<usize>,

    /// Interval between WebSocket pings, e.g. `30s` [default: 30s].
    #[arg(long, env = "SIGMAHUB_PING_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    ping_interval: Option<Duration>,

    /// Time a client has to answer a ping before it is closed (4001) [default: 10s].
    #[arg(long, env = "SIGMAHUB_PONG_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pong_timeout: Option<Duration>,

    /// Interval between `heartbeat` events [default: 30s].
    #[arg(long, env = "SIGMAHUB_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    heartbeat_interval: Option<Duration>,

    /// Time clients get to drain their queues on shutdown [default: 5s].
    #[arg(long, env = "SIGMAHUB_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    shutdown_timeout: Option<Duration>,

    /// Largest publish request body in bytes [default: 1048576].
    #[arg(long, env = "SIGMAHUB_MAX_PUBLISH_BODY_SIZE", value_name = "BYTES")]
    max_publish_body_size: Option<usize>,

    /// Channels every client is subscribed to on connect, comma-separated
    /// [default: the 8 SigmaVault types].
    #[arg(
        long,
        env = "SIGMAHUB_DEFAULT_SUBSCRIPTIONS",
        value_delimiter = ',',
        value_name = "CHANNELS"
    )]
    default_subscriptions: Option<Vec<String>>,

    /// Longest a client may take to send its request head, upgrade included [default: 10s].
    #[arg(long, env = "SIGMAHUB_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    handshake_timeout: Option<Duration>,

    /// Longest a publish request's body may take to arrive (then 408) [default: 10s].
    #[arg(long, env = "SIGMAHUB_BODY_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    body_timeout: Option<Duration>,

    /// Most connections at once, HTTP and WebSocket, 0 for no limit [default: 100000].
    #[arg(long, env = "SIGMAHUB_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// Most connections (HTTP and WebSocket) from one client address, 0 for no limit
    /// [default: 10].
    #[arg(long, env = "SIGMAHUB_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<usize>,

    /// New WebSocket connections one address may open per minute, 0 for no limit
    /// [default: 60].
    #[arg(long, env = "SIGMAHUB_CONNECTION_RATE_PER_IP", value_name = "N")]
    connection_rate_per_ip: Option<u32>,

    /// New connections one address may open in a burst [default: 20].
    #[arg(long, env = "SIGMAHUB_CONNECTION_BURST_PER_IP", value_name = "N")]
    connection_burst_per_ip: Option<u32>,

    /// Reverse proxies (IP addresses, comma-separated) whose X-Forwarded-For is believed
    /// [default: none].
    #[arg(
        long,
        env = "SIGMAHUB_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "ADDRESSES"
    )]
    trusted_proxies: Option<Vec<std::net::IpAddr>>,

    /// Messages a connection may send per minute on average [default: 100].
    #[arg(long, env = "SIGMAHUB_MAX_INBOUND_PER_MINUTE", value_name = "N")]
    max_inbound_per_minute: Option<u32>,

    /// Messages a connection may send in a burst above that average [default: 10].
    #[arg(long, env = "SIGMAHUB_INBOUND_BURST", value_name = "N")]
    inbound_burst: Option<u32>,

    /// Events kept per channel for reconnecting clients; 0 turns history and offsets off
    /// [default: 100].
    #[arg(long, env = "SIGMAHUB_HISTORY_SIZE", value_name = "N")]
    history_size: Option<usize>,

    /// Longest an event is kept in a channel's history [default: 5m].
    #[arg(long, env = "SIGMAHUB_HISTORY_MAX_AGE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    history_max_age: Option<Duration>,

    /// Channels with a history beyond which idle ones are dropped [default: 10000].
    #[arg(long, env = "SIGMAHUB_HISTORY_MAX_CHANNELS", value_name = "N")]
    history_max_channels: Option<usize>,

    /// NATS server(s) for the cluster backplane, e.g. nats://127.0.0.1:4222; turns the
    /// cluster on (JetStream required) [default: none, a single node].
    #[arg(long, env = "SIGMAHUB_CLUSTER_NATS_URL", value_name = "URL")]
    cluster_nats_url: Option<String>,

    /// NATS credentials file (.creds) [default: none].
    #[arg(long, env = "SIGMAHUB_CLUSTER_CREDENTIALS_FILE", value_name = "FILE")]
    cluster_credentials_file: Option<PathBuf>,

    /// NATS token; prefer the environment variable [default: none].
    #[arg(
        long,
        env = "SIGMAHUB_CLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    cluster_token: Option<String>,

    /// First token of every NATS subject and the stream name [default: sigmahub].
    #[arg(long, env = "SIGMAHUB_CLUSTER_SUBJECT_PREFIX", value_name = "PREFIX")]
    cluster_subject_prefix: Option<String>,

    /// This node's name in NATS [default: host name and process id].
    #[arg(long, env = "SIGMAHUB_CLUSTER_NODE_NAME", value_name = "NAME")]
    cluster_node_name: Option<String>,

    /// Publish this machine's `system.status` and `storage.update` [default: true].
    #[arg(long, env = "SIGMAHUB_HOST_ENABLED", value_name = "BOOL")]
    host_enabled: Option<bool>,

    /// Interval between `system.status` events from this host [default: 5s].
    #[arg(long, env = "SIGMAHUB_HOST_STATUS_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    host_status_interval: Option<Duration>,

    /// Interval between `storage.update` events from this host [default: 30s].
    #[arg(long, env = "SIGMAHUB_HOST_STORAGE_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    host_storage_interval: Option<Duration>,

    /// Most clients subscribed to one channel, 0 for no limit [default: 0].
    #[arg(long, env = "SIGMAHUB_MAX_SUBSCRIBERS_PER_CHANNEL", value_name = "N")]
    max_subscribers_per_channel: Option<usize>,

    /// Close connections that send no message for this long (4005), 0 for never; pongs do
    /// not count [default: 0].
    #[arg(long, env = "SIGMAHUB_IDLE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    idle_timeout: Option<Duration>,

    /// Count per-frame metrics and serve GET /metrics [default: true].
    #[arg(long, env = "SIGMAHUB_METRICS", value_name = "BOOL")]
    metrics: Option<bool>,

    /// Serve the live dashboard at GET / [default: true].
    #[arg(long, env = "SIGMAHUB_DASHBOARD", value_name = "BOOL")]
    dashboard: Option<bool>,

    /// HS256 secret for client JWTs (at least 32 bytes); makes a token mandatory on /ws.
    /// Prefer the environment variable, so the secret stays out of `ps` [default: none].
    #[arg(
        long,
        env = "SIGMAHUB_AUTH_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    auth_jwt_secret: Option<String>,

    /// RS256 public key (PEM file) for client JWTs; makes a token mandatory on /ws
    /// [default: none].
    #[arg(long, env = "SIGMAHUB_AUTH_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    auth_jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim of client JWTs [default: not checked].
    #[arg(long, env = "SIGMAHUB_AUTH_ISSUER", value_name = "ISSUER")]
    auth_issuer: Option<String>,

    /// Required `aud` claim of client JWTs [default: none; tokens naming an audience are
    /// refused].
    #[arg(long, env = "SIGMAHUB_AUTH_AUDIENCE", value_name = "AUDIENCE")]
    auth_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf` [default: 30s].
    #[arg(long, env = "SIGMAHUB_AUTH_LEEWAY", value_parser = humantime::parse_duration, value_name = "DURATION")]
    auth_leeway: Option<Duration>,

    /// Time a client without a token has to send an `auth` message (4002) [default: 10s].
    #[arg(long, env = "SIGMAHUB_AUTH_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    auth_timeout: Option<Duration>,

    /// Keys for POST /api/v1/publish, comma-separated (several, for rotation; each at least
    /// 16 bytes) [default: none, publishing is open].
    #[arg(
        long,
        env = "SIGMAHUB_AUTH_PUBLISH_KEYS",
        value_delimiter = ',',
        value_name = "KEYS",
        hide_env_values = true
    )]
    auth_publish_keys: Option<Vec<String>>,

    /// Serve without authentication on a non-loopback address [default: false].
    #[arg(long, env = "SIGMAHUB_AUTH_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    auth_allow_anonymous: Option<bool>,

    /// Failed credentials in a row from one address before it is barred, each further
    /// failure doubling the bar; 0 for never [default: 5].
    #[arg(long, env = "SIGMAHUB_AUTH_BACKOFF_AFTER", value_name = "N")]
    auth_backoff_after: Option<u32>,

    /// Longest bar for failed credentials [default: 5m].
    #[arg(long, env = "SIGMAHUB_AUTH_MAX_BACKOFF", value_parser = humantime::parse_duration, value_name = "DURATION")]
    auth_max_backoff: Option<Duration>,

    /// Browser origins allowed to open WebSockets, comma-separated
    /// (https://app.example.com, https://*.example.com, *) [default: any]; the HTTP API
    /// answers browsers from these and its own origin only.
    #[arg(
        long,
        env = "SIGMAHUB_AUTH_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    auth_allowed_origins: Option<Vec<String>>,

    /// Host names the server answers to, comma-separated (`hub.example.com`,
    /// `*.example.com`, `*`); others get 421 [default: localhost names on a loopback
    /// address, any name elsewhere; IP addresses always].
    #[arg(
        long,
        env = "SIGMAHUB_AUTH_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    auth_allowed_hosts: Option<Vec<String>>,

    /// Base URL of a SigmaVault engine to poll over JSON-RPC (`{url}/rpc`), e.g.
    /// http://127.0.0.1:5000/api/v1 [default: none].
    #[arg(long, env = "SIGMAHUB_ENGINE_URL", value_name = "URL")]
    engine_url: Option<String>,

    /// Interval between calls of each engine method [default: 5s].
    #[arg(long, env = "SIGMAHUB_ENGINE_POLL_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    engine_poll_interval: Option<Duration>,

    /// Longest an engine call may take before it fails [default: 5s].
    #[arg(long, env = "SIGMAHUB_ENGINE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    engine_timeout: Option<Duration>,

    /// Consecutive failures of a method that open its circuit breaker [default: 5].
    #[arg(long, env = "SIGMAHUB_ENGINE_BREAKER_THRESHOLD", value_name = "N")]
    engine_breaker_threshold: Option<u32>,

    /// How long an open breaker waits before one trial call [default: 5m].
    #[arg(long, env = "SIGMAHUB_ENGINE_BREAKER_RESET", value_parser = humantime::parse_duration, value_name = "DURATION")]
    engine_breaker_reset: Option<Duration>,

    /// Least time between two `rpc_error` events of one method [default: 60s].
    #[arg(long, env = "SIGMAHUB_ENGINE_ERROR_REPORT_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    engine_error_report_interval: Option<Duration>,

    /// While a breaker is open, how often to probe the engine's health.check; 0 turns it
    /// off [default: 30s].
    #[arg(long, env = "SIGMAHUB_ENGINE_RECOVERY_PROBE_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    engine_recovery_probe_interval: Option<Duration>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the connection span's fields.
    Json,
}

impl Cli {
    /// The effective configuration: defaults, then the file, then environment and flags.
    pub(crate) fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = self.$field { config.$field = value; })*
            };
        }
        overlay!(
            listen,
            max_message_size,
            client_queue_capacity,
            client_queue_bytes,
            slow_consumer,
            max_subscriptions_per_connection,
            ping_interval,
            pong_timeout,
            heartbeat_interval,
            shutdown_timeout,
            max_publish_body_size,
            default_subscriptions,
            handshake_timeout,
            body_timeout,
            max_connections,
            max_connections_per_ip,
            connection_rate_per_ip,
            connection_burst_per_ip,
            trusted_proxies,
            max_inbound_per_minute,
            inbound_burst,
            max_subscribers_per_channel,
            idle_timeout,
            metrics,
            dashboard,
        );
        macro_rules! overlay_in {
            ($section:ident: $($flag:ident => $field:ident),* $(,)?) => {
                $(if let Some(value) = self.$flag { config.$section.$field = value; })*
            };
        }
        overlay_in!(history:
            history_size => size,
            history_max_age => max_age,
            history_max_channels => max_channels,
        );
        overlay_in!(host: host_enabled => enabled, host_status_interval => status_interval, host_storage_interval => storage_interval);
        overlay_in!(engine:
            engine_poll_interval => poll_interval,
            engine_timeout => timeout,
            engine_breaker_threshold => breaker_threshold,
            engine_breaker_reset => breaker_reset,
            engine_error_report_interval => error_report_interval,
            engine_recovery_probe_interval => recovery_probe_interval,
        );
        overlay_in!(auth:
            auth_leeway => leeway,
            auth_timeout => timeout,
            auth_publish_keys => publish_keys,
            auth_allow_anonymous => allow_anonymous,
            auth_backoff_after => backoff_after,
            auth_max_backoff => max_backoff,
            auth_allowed_origins => allowed_origins,
            auth_allowed_hosts => allowed_hosts,
        );
        if let Some(url) = self.engine_url {
            config.engine.url = Some(url);
        }
        macro_rules! overlay_some {
            ($section:ident: $($flag:ident => $field:ident),* $(,)?) => {
                $(if let Some(value) = self.$flag { config.$section.$field = Some(value); })*
            };
        }
        overlay_some!(cluster:
            cluster_nats_url => nats_url,
            cluster_credentials_file => credentials_file,
            cluster_token => token,
            cluster_node_name => node_name,
        );
        overlay_in!(cluster: cluster_subject_prefix => subject_prefix);
        overlay_some!(auth:
            auth_jwt_secret => jwt_secret,
            auth_jwt_public_key_file => jwt_public_key_file,
            auth_issuer => issuer,
            auth_audience => audience,
        );
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every config key has a flag of the same name (`_` -> `-`, `section.key` ->
    /// `section-key`) and a SIGMAHUB_ variable.
    #[test]
    fn every_config_key_has_a_flag_and_an_env_var() {
        let mut config = Config::default();
        config.engine.url = Some("http://127.0.0.1:5000/api/v1".into());
        config.auth.jwt_secret = Some("s".into());
        config.auth.jwt_public_key_file = Some("k.pem".into());
        config.auth.issuer = Some("i".into());
        config.auth.audience = Some("a".into());
        config.cluster.nats_url = Some("nats://127.0.0.1:4222".into());
        config.cluster.credentials_file = Some("n.creds".into());
        config.cluster.token = Some("t".into());
        config.cluster.node_name = Some("n".into());
        let table = toml::Table::try_from(config).unwrap();
        let mut keys = Vec::new();
        for (key, value) in &table {
            match value.as_table() {
                Some(section) => keys.extend(section.keys().map(|k| format!("{key}_{k}"))),
                None => keys.push(key.clone()),
            }
        }
        assert!(keys.contains(&"engine_url".to_string()));
        let command = Cli::command();
        for key in &keys {
            let long = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .unwrap_or_else(|| panic!("no --{long} flag for config key {key}"));
            let env = format!("SIGMAHUB_{}", key.to_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("sigmahub-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nclient_queue_capacity = 7\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "sigmahub",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2",
            "--default-subscriptions",
            "a,b",
        ])
        .unwrap();
        let config = cli.into_config().unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.client_queue_capacity, 7);
        assert_eq!(config.default_subscriptions, ["a", "b"]);
    }

    #[test]
    fn the_help_is_well_formed() {
        Cli::command().debug_assert();
    }
}
