#!/usr/bin/env bash
# Every check and test of sigmahub: what CI runs, and what to run before every commit.
# Works on a fresh machine of ours with only the Rust toolchain; it installs anything else
# it needs. The test suites run last, so the closing lines are cargo's test summary.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "nats-server for the cluster tests (each test starts its own on a free port)"
if ! command -v nats-server >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server
fi
nats-server --version

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "benchmarks and the load generator build"
cargo bench --workspace --no-run --locked

step "fuzz targets build (fuzz/ is its own workspace; run them with cargo +nightly fuzz)"
cargo build --manifest-path fuzz/Cargo.toml --locked

step "the embedding examples run"
cargo run --locked --example embedded -- --once
cargo run --locked --example authorizer -- --once

step "tests"
cargo test --workspace --locked
