//! The binary's options: documented in --help, layered flag > env > file > default.

use std::process::Command;

fn sigmahub(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sigmahub"));
    command.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGMAHUB_")) {
        command.env_remove(k);
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn help_documents_every_option() {
    let (ok, help, _) = sigmahub(&["--help"], &[]);
    assert!(ok);
    for flag in [
        "--listen",
        "--config",
        "--max-message-size",
        "--client-queue-capacity",
        "--slow-consumer",
        "--max-subscriptions-per-connection",
        "--ping-interval",
        "--pong-timeout",
        "--heartbeat-interval",
        "--shutdown-timeout",
        "--max-publish-body-size",
        "--default-subscriptions",
        "--print-config",
        "SIGMAHUB_LISTEN",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn defaults_need_no_file_and_listen_on_12080() {
    let (ok, config, _) = sigmahub(&["--print-config"], &[]);
    assert!(ok);
    assert!(config.contains("listen = \"127.0.0.1:12080\""), "{config}");
    assert!(config.contains("client_queue_capacity = 256"));
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = std::env::temp_dir().join(format!("sigmahub-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sigmahub.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1001\"\nclient_queue_capacity = 11\nmax_message_size = 1111\nping_interval = \"11s\"\n",
    )
    .unwrap();
    let (ok, config, err) = sigmahub(
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--listen",
            "127.0.0.1:3003",
        ],
        &[
            ("SIGMAHUB_LISTEN", "127.0.0.1:2002"),
            ("SIGMAHUB_CLIENT_QUEUE_CAPACITY", "22"),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        config.contains("listen = \"127.0.0.1:3003\""),
        "flag wins: {config}"
    );
    assert!(
        config.contains("client_queue_capacity = 22"),
        "env beats file: {config}"
    );
    assert!(
        config.contains("max_message_size = 1111"),
        "file beats default: {config}"
    );
    assert!(config.contains("ping_interval = \"11s\""), "{config}");
    assert!(
        config.contains("pong_timeout = \"10s\""),
        "default: {config}"
    );
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_crash() {
    let (ok, _, err) = sigmahub(&["--client-queue-capacity", "0", "--print-config"], &[]);
    assert!(!ok);
    assert!(err.contains("client_queue_capacity"), "{err}");
    let (ok, _, err) = sigmahub(&["--config", "/nonexistent/sigmahub.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/sigmahub.toml"), "{err}");
    let (ok, _, err) = sigmahub(&["--ping-interval", "soon"], &[]);
    assert!(!ok);
    assert!(err.contains("--ping-interval"), "{err}");
}

#[test]
fn a_public_address_without_auth_refuses_to_start() {
    let (ok, _, err) = sigmahub(&["--listen", "0.0.0.0:0", "--print-config"], &[]);
    assert!(!ok);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--auth-allow-anonymous"), "{err}");

    // Asked for explicitly, it starts (here: prints its config and exits).
    let (ok, config, err) = sigmahub(
        &[
            "--listen",
            "0.0.0.0:0",
            "--auth-allow-anonymous",
            "--print-config",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(config.contains("allow_anonymous = true"), "{config}");

    // With a JWT secret and publish keys, from the environment, it starts too, and never
    // prints them.
    let secret = "an-environment-secret-of-32-bytes";
    let key = "an-environment-publish-key";
    let (ok, config, err) = sigmahub(
        &["--listen", "0.0.0.0:0", "--print-config"],
        &[
            ("SIGMAHUB_AUTH_JWT_SECRET", secret),
            ("SIGMAHUB_AUTH_PUBLISH_KEYS", key),
        ],
    );
    assert!(ok, "{err}");
    assert!(config.contains("jwt_secret = \"<redacted>\""), "{config}");
    assert!(
        !config.contains(secret) && !config.contains(key),
        "{config}"
    );
}

/// Secrets no client could use, and a private key where the public one belongs, stop the
/// binary at start with a message that names the setting (the audit's server took them
/// without a word).
#[test]
fn unusable_secrets_and_a_private_key_are_refused_at_start() {
    let spaces = " ".repeat(32);
    let (ok, _, err) = sigmahub(
        &["--print-config"],
        &[("SIGMAHUB_AUTH_JWT_SECRET", &spaces)],
    );
    assert!(!ok);
    assert!(
        err.contains("auth.jwt_secret") && err.contains("whitespace"),
        "{err}"
    );
    let (ok, _, err) = sigmahub(
        &["--print-config"],
        &[("SIGMAHUB_AUTH_PUBLISH_KEYS", "                    ")],
    );
    assert!(!ok);
    assert!(err.contains("auth.publish_keys"), "{err}");
    let private = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/test-rsa-private.pem"
    );
    let (ok, _, err) = sigmahub(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth-jwt-public-key-file",
            private,
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("private key"), "{err}");
}

/// A duration too long to arm a timer with used to panic the server's first tick (the
/// same overflow as a token's exp past 2^63); it is a config error naming the setting.
#[test]
fn durations_too_long_to_arm_are_refused_at_start() {
    for flag in [
        "--ping-interval",
        "--shutdown-timeout",
        "--heartbeat-interval",
        "--auth-max-backoff",
    ] {
        let (ok, _, err) = sigmahub(&[flag, "500000000000y", "--print-config"], &[]);
        assert!(!ok, "{flag}");
        assert!(err.contains("at most 10 years"), "{flag}: {err}");
    }
}
