//! Command-line options: one flag per config key, generated from the config struct.
//!
//! No setting is written here. Every key of [`Config`] becomes a flag and an environment
//! variable (`max_message_size` → `--max-message-size`, `SIGMAHUB_MAX_MESSAGE_SIZE`; a
//! section's key `auth.leeway` → `--auth-leeway`, `SIGMAHUB_AUTH_LEEWAY`). Its help is the
//! field's doc comment and its default what [`Config::default`] holds, both read from the
//! struct's JSON schema (`schemars`), so a key and its doc live in one place.
//!
//! Precedence is flag > environment > config file > default. clap resolves the first two;
//! [`Cli::into_config`] lays what they gave over the file's TOML table, and serde reads the
//! result over the defaults: every layer goes through the same parser.

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, PossibleValuesParser};
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser};
use serde_json::{Map, Value};
use sigmahub::{Config, ConfigError};

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
    /// TOML config file; its keys are the long option names with `_` for `-` (a section's
    /// keys under `[section]`).
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

    #[command(flatten)]
    settings: Settings,
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
        let mut table = match &self.config {
            Some(path) => Config::read_toml_file(path)?,
            None => toml::Table::new(),
        };
        for (key, value) in self.settings.given {
            // Alone first, so that a bad value is reported with the flag that gave it.
            let mut alone = toml::Table::new();
            key.set(&mut alone, value.clone());
            Config::from_toml_table(alone).map_err(|source| ConfigError::Setting {
                setting: format!("--{} ({})", key.flag(), key.env()),
                source: Box::new(source),
            })?;
            key.set(&mut table, value);
        }
        let config = Config::from_toml_table(table).map_err(|source| match &self.config {
            Some(path) => ConfigError::Parse {
                path: path.clone(),
                source: Box::new(source),
            },
            None => ConfigError::Setting {
                setting: "flags and environment".to_owned(),
                source: Box::new(source),
            },
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// The config keys given as flags or environment variables, with their values as TOML.
#[derive(Debug, Default)]
struct Settings {
    given: Vec<(Key, toml::Value)>,
}

/// One config key, as the schema describes it.
#[derive(Debug, Clone)]
struct Key {
    /// Its TOML section (`auth`), if it is in one.
    section: Option<String>,
    /// Its name in the section or at the top level.
    name: String,
    kind: Kind,
    /// Its doc comment.
    doc: String,
    /// What [`Config::default`] holds for it, as TOML; `None` for an unset option.
    default: Option<toml::Value>,
    /// Whether its value is a secret, never echoed from the environment.
    secret: bool,
    /// What the help calls its value, when the field says (`x-value-name`).
    value_name: Option<String>,
}

/// The shape of a key's value.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Integer,
    Bool,
    /// A humantime duration, `30s`, `5m`.
    Duration,
    String,
    /// One of these strings.
    OneOf(Vec<String>),
    /// A comma-separated list of strings.
    List,
}

impl Key {
    /// Every key of [`Config`], section by section, from its JSON schema.
    fn all() -> Vec<Key> {
        let generator = schemars::generate::SchemaSettings::default()
            .with(|s| s.inline_subschemas = true)
            .into_generator();
        let schema = generator.into_root_schema_for::<Config>();
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults are TOML");
        let mut keys = Vec::new();
        for (name, property) in properties(schema.as_value()) {
            // Settings a flag cannot say (tables of rules) are for the file only.
            if property.get("x-file-only").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            match properties_of(property) {
                Some(section) => {
                    let section_defaults = defaults.get(name).and_then(toml::Value::as_table);
                    for (field, property) in section {
                        let default = section_defaults.and_then(|t| t.get(field)).cloned();
                        keys.push(Key::new(Some(name), field, property, default));
                    }
                }
                None => keys.push(Key::new(None, name, property, defaults.get(name).cloned())),
            }
        }
        keys
    }

    fn new(
        section: Option<&str>,
        name: &str,
        property: &Value,
        default: Option<toml::Value>,
    ) -> Key {
        Key {
            section: section.map(str::to_owned),
            name: name.to_owned(),
            kind: Kind::of(property),
            doc: property
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            default,
            secret: property.get("x-secret").and_then(Value::as_bool) == Some(true),
            value_name: property
                .get("x-value-name")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    /// `section_name` or `name`: the flag's id, and its name with `-` for `_`.
    fn id(&self) -> String {
        match &self.section {
            Some(section) => format!("{section}_{}", self.name),
            None => self.name.clone(),
        }
    }

    fn flag(&self) -> String {
        self.id().replace('_', "-")
    }

    fn env(&self) -> String {
        format!("SIGMAHUB_{}", self.id().to_uppercase())
    }

    /// Puts `value` at this key in `table`.
    fn set(&self, table: &mut toml::Table, value: toml::Value) {
        let table = match &self.section {
            Some(section) => table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a config section is a table"),
            None => table,
        };
        table.insert(self.name.clone(), value);
    }

    /// The value given on the command line or in the environment, as TOML.
    fn value(&self, matches: &ArgMatches) -> Option<toml::Value> {
        let id = self.id();
        if self.kind == Kind::Bool {
            return matches
                .get_one::<bool>(&id)
                .map(|b| toml::Value::Boolean(*b));
        }
        let mut values = matches.get_many::<String>(&id)?.cloned();
        Some(match self.kind {
            // Not a number: left as a string for serde to refuse with the key's name.
            Kind::Integer => {
                let raw = values.next().unwrap_or_default();
                raw.parse()
                    .map_or(toml::Value::String(raw), toml::Value::Integer)
            }
            Kind::List => toml::Value::Array(values.map(toml::Value::String).collect()),
            _ => toml::Value::String(values.next().unwrap_or_default()),
        })
    }

    /// The flag.
    fn arg(&self) -> Arg {
        let mut arg = Arg::new(self.id())
            .long(self.flag())
            .env(self.env())
            .value_name(
                self.value_name
                    .clone()
                    .unwrap_or_else(|| self.kind.value_name().to_owned()),
            )
            .help(self.help())
            .long_help(self.long_help())
            .hide_env_values(self.secret)
            .action(ArgAction::Set);
        if let Some(section) = &self.section {
            arg = arg.help_heading(format!("[{section}] options"));
        }
        arg = match &self.kind {
            Kind::Bool => arg
                .num_args(0..=1)
                .default_missing_value("true")
                .value_parser(BoolishValueParser::new()),
            Kind::List => arg.value_delimiter(','),
            Kind::OneOf(values) => arg.value_parser(PossibleValuesParser::new(values)),
            _ => arg,
        };
        arg
    }

    /// The doc's first sentence, with the default.
    fn help(&self) -> String {
        let doc = self.doc.replace('\n', " ");
        let first = doc.split(". ").next().unwrap_or_default();
        format!(
            "{} [default: {}]",
            first.trim_end_matches('.'),
            self.shown_default()
        )
    }

    /// The whole doc, with the default.
    fn long_help(&self) -> String {
        let doc = self.doc.replace('\n', " ");
        format!("{doc}\n\n[default: {}]", self.shown_default())
    }

    fn shown_default(&self) -> String {
        match &self.default {
            None => "none".to_owned(),
            Some(toml::Value::String(s)) if s.is_empty() => "\"\"".to_owned(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Array(a)) if a.is_empty() => "none".to_owned(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        }
    }
}

impl Kind {
    fn of(property: &Value) -> Kind {
        if let Some(values) = one_of(property) {
            return Kind::OneOf(values);
        }
        if property.get("format").and_then(Value::as_str) == Some("duration") {
            return Kind::Duration;
        }
        let types: Vec<&str> = match property.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.contains(&"integer") {
            Kind::Integer
        } else if types.contains(&"boolean") {
            Kind::Bool
        } else if types.contains(&"array") {
            Kind::List
        } else {
            Kind::String
        }
    }

    fn value_name(&self) -> &'static str {
        match self {
            Kind::Integer => "N",
            Kind::Bool => "BOOL",
            Kind::Duration => "DURATION",
            Kind::String => "VALUE",
            Kind::OneOf(_) => "CHOICE",
            Kind::List => "LIST",
        }
    }
}

/// The `properties` of an object schema, in the schema's (alphabetical) order.
fn properties(schema: &Value) -> impl Iterator<Item = (&str, &Value)> {
    properties_of(schema)
        .into_iter()
        .flat_map(|map| map.iter().map(|(k, v)| (k.as_str(), v)))
}

fn properties_of(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The strings an enum schema allows (`enum`, or `oneOf` of `const`s).
fn one_of(property: &Value) -> Option<Vec<String>> {
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        return Some(
            values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        );
    }
    let variants = property.get("oneOf").and_then(Value::as_array)?;
    variants
        .iter()
        .map(|v| v.get("const").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

impl FromArgMatches for Settings {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = Key::all()
            .into_iter()
            .filter_map(|key| Some((key.clone(), key.value(matches)?)))
            .collect();
        Ok(Settings { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for Settings {
    fn augment_args(command: clap::Command) -> clap::Command {
        command.args(Key::all().iter().map(Key::arg))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn config_from(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("sigmahub").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    fn arg(long: &str) -> Arg {
        Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("no --{long}"))
            .clone()
    }

    /// Every config key has a flag of the same name (`_` -> `-`, `section.key` ->
    /// `section-key`) and a SIGMAHUB_ variable, except the file-only `[[channels]]`.
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
        keys.retain(|key| key != "channels");
        assert!(Cli::command()
            .get_arguments()
            .all(|a| a.get_long() != Some("channels")));
        for key in &keys {
            let arg = arg(&key.replace('_', "-"));
            let env = format!("SIGMAHUB_{}", key.to_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
        }
    }

    /// The flags of the hand-written CLI this one replaced, which scripts already use.
    #[test]
    fn the_flags_users_know_are_all_there() {
        let known =
            "listen max-message-size client-queue-capacity client-queue-bytes slow-consumer \
            max-subscriptions-per-connection ping-interval pong-timeout heartbeat-interval \
            shutdown-timeout max-publish-body-size default-subscriptions handshake-timeout \
            body-timeout max-connections max-connections-per-ip connection-rate-per-ip \
            connection-burst-per-ip trusted-proxies max-inbound-per-minute inbound-burst \
            history-size history-max-age history-max-channels cluster-nats-url \
            cluster-credentials-file cluster-token cluster-subject-prefix cluster-node-name \
            host-enabled host-status-interval host-storage-interval max-subscribers-per-channel \
            idle-timeout metrics dashboard auth-jwt-secret auth-jwt-public-key-file auth-issuer \
            auth-audience auth-leeway auth-timeout auth-publish-keys auth-allow-anonymous \
            auth-backoff-after auth-max-backoff auth-allowed-origins auth-allowed-hosts engine-url \
            engine-poll-interval engine-timeout engine-breaker-threshold engine-breaker-reset \
            engine-error-report-interval engine-recovery-probe-interval";
        for long in known.split_whitespace() {
            arg(long);
        }
        assert_eq!(known.split_whitespace().count(), 55);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("sigmahub-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nclient_queue_capacity = 7\n[history]\nsize = 3\n",
        )
        .unwrap();
        let config = config_from(&[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2",
            "--default-subscriptions",
            "a,b",
            "--history-max-age",
            "90s",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.client_queue_capacity, 7);
        assert_eq!(config.default_subscriptions, ["a", "b"]);
        assert_eq!(
            config.history.size, 3,
            "the file's key in the section stays"
        );
        assert_eq!(config.history.max_age, std::time::Duration::from_secs(90));
    }

    #[test]
    fn each_kind_of_value_is_read() {
        let config = config_from(&[
            "--auth-allow-anonymous",
            "--metrics",
            "false",
            "--slow-consumer",
            "drop",
            "--trusted-proxies",
            "10.0.0.1,10.0.0.2",
            "--max-connections",
            "7",
            "--engine-url",
            "http://127.0.0.1:5000/api/v1",
        ])
        .unwrap();
        assert!(config.auth.allow_anonymous, "a bare boolean flag is true");
        assert!(!config.metrics);
        assert_eq!(config.slow_consumer, sigmahub::SlowConsumerPolicy::Drop);
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.max_connections, 7);
        assert_eq!(
            config.engine.url.as_deref(),
            Some("http://127.0.0.1:5000/api/v1")
        );
        assert_eq!(config_from(&[]).unwrap(), Config::default());
    }

    #[test]
    fn a_bad_value_is_reported_with_its_flag() {
        for (args, flag) in [
            (&["--max-message-size", "lots"][..], "--max-message-size"),
            (&["--ping-interval", "5 parsecs"], "--ping-interval"),
            (&["--listen", "nowhere"], "--listen"),
            (
                &["--trusted-proxies", "10.0.0.1,not-an-ip"],
                "--trusted-proxies",
            ),
        ] {
            let e = config_from(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        let e = config_from(&["--slow-consumer", "panic"]).unwrap_err();
        assert!(e.contains("possible values: close, drop"), "{e}");
        let e = config_from(&["--max-message-size", "1"]).unwrap_err();
        assert!(
            e.contains("max_message_size"),
            "validated as a file's value is: {e}"
        );
    }

    #[test]
    fn the_help_is_the_config_struct_docs_with_its_defaults() {
        let ping = arg("ping-interval");
        let help = ping.get_long_help().unwrap().to_string();
        assert!(
            help.contains("Interval between WebSocket ping frames"),
            "{help}"
        );
        assert!(help.contains("[default: 30s]"), "{help}");
        assert_eq!(ping.get_value_names().unwrap()[0], "DURATION");
        assert_eq!(arg("listen").get_value_names().unwrap()[0], "ADDR:PORT");
        assert!(arg("cluster-token").is_hide_env_values_set());
        assert!(arg("auth-jwt-secret").is_hide_env_values_set());
        assert!(!arg("auth-leeway").is_hide_env_values_set());
        let short = arg("client-queue-capacity").get_help().unwrap().to_string();
        assert_eq!(
            short,
            "Frames that may wait in one client's queue [default: 256]"
        );
    }

    #[test]
    fn the_help_is_well_formed() {
        Cli::command().debug_assert();
    }
}
