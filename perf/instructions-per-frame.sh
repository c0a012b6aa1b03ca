#!/usr/bin/env bash
# Server instructions per delivered frame, counted by callgrind: repeatable whatever else
# the machine is doing, unlike CPU seconds. Runs the server under valgrind twice, with a
# short and a long fixed-rate load from sigmahub-perf, and prints the slope between the
# two, so start-up and connection costs cancel out. Kernel work (the writev itself) is not
# counted: this measures sigmahub's own code.
#
#   perf/instructions-per-frame.sh target/release/sigmahub [server flags...]
#   PERF_ARGS="--deflate --shape json1kb" perf/instructions-per-frame.sh …   (generator flags)
#
# Needs valgrind and a release build of sigmahub-perf. Takes about a minute.
set -euo pipefail
binary=${1:?usage: $0 SIGMAHUB_BINARY [server flags...]}
shift
cd "$(dirname "$0")/.."
perf_bin=${PERF_BIN:-target/release/sigmahub-perf}
addr=127.0.0.1:${PORT:-13090}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "<instructions> <frames delivered>".
run() {
    local duration=$1
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.$duration" "$binary" \
        --listen "$addr" --log warn --host-enabled false \
        --max-connections-per-ip 0 --connection-rate-per-ip 0 "${@:2}" 2>"$work/vg.$duration" &
    local pid=$!
    for _ in $(seq 1 300); do
        (echo >"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break
        sleep 0.1
    done
    # shellcheck disable=SC2086 # PERF_ARGS is a list of flags
    "$perf_bin" --server-pid "$pid" --addr "$addr" --clients 100 --rate 50 --batch 10 \
        --duration "$duration" ${PERF_ARGS:-} >"$work/perf.$duration" 2>/dev/null
    kill -TERM "$pid"
    wait "$pid"
    local instructions delivered
    instructions=$(awk '/^summary:/ {s += $2} END {print s}' "$work/cg.$duration")
    delivered=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['delivered'])" \
        "$work/perf.$duration")
    echo "$instructions $delivered"
}

read -r short_ir short_frames < <(run 10s "$@")
read -r long_ir long_frames < <(run 30s "$@")
python3 - "$short_ir" "$short_frames" "$long_ir" "$long_frames" <<'PY'
import sys
si, sf, li, lf = map(int, sys.argv[1:])
print(f"short run: {si:,} instructions, {sf:,} frames")
print(f"long run:  {li:,} instructions, {lf:,} frames")
print(f"instructions per delivered frame: {(li - si) / (lf - sf):.1f}")
PY
