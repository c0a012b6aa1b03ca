#!/usr/bin/env bash
# A load run against a sigmahub cluster on this machine: starts its own nats-server (with
# JetStream, in a temporary directory, on a free port), then sigmahub-perf, which spawns
# NODES sigmahub nodes joined through it and one worker process of clients per node.
#
#   perf/cluster.sh [sigmahub-perf options...]
#   NODES=4 perf/cluster.sh --clients 19000 --rate 5 --batch 1 --duration 30s
#
# --clients is per node. Events are published to the first node. Everything stops by itself
# when the run ends; the nats-server and its store are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="${NODES:-4}"
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
cargo build --release --locked -q -p sigmahub -p sigmahub-perf

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port=$1
    while ! port_free "$port"; do port=$((port + 1)); done
    echo "$port"
}

store="$(mktemp -d)"
nats_port="$(free_port 14222)"
nats-server --jetstream --store_dir "$store" --addr 127.0.0.1 --port "$nats_port" >"$store/nats.log" 2>&1 &
nats_pid=$!
cleanup() { kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; rm -rf "$store"; }
trap cleanup EXIT
for _ in $(seq 100); do port_free "$nats_port" || break; sleep 0.1; done
port_free "$nats_port" && { cat "$store/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }

addrs=()
port=13081
for _ in $(seq "$nodes"); do
    port="$(free_port "$port")"
    addrs+=(--addr "127.0.0.1:$port")
    port=$((port + 1))
done

label=(--label "cluster-$nodes")
for arg in "$@"; do case "$arg" in --label|--label=*) label=() ;; esac; done

target/release/sigmahub-perf --spawn target/release/sigmahub "${addrs[@]}" \
    --server-arg=--log=warn --server-arg=--cluster-nats-url="nats://127.0.0.1:$nats_port" \
    --nats-pid "$nats_pid" "${label[@]}" "$@"
