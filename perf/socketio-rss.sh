#!/usr/bin/env bash
# Server memory per idle Socket.IO client, by transport, measured with the real
# socket.io-client (tests/socketio/many.mjs; run tests/socketio/setup.sh once first):
# starts the given sigmahub binary, reads its RSS, connects N clients on one transport,
# each subscribed to one channel, holds them 10 s, reads the RSS again and prints the
# growth per client. Bounded: the clients give up after 120 s.
#
#   perf/socketio-rss.sh target/release/sigmahub 2000 polling
#   perf/socketio-rss.sh target/release/sigmahub 2000 websocket
set -euo pipefail
binary=$1 clients=${2:-2000} transport=${3:-polling}
root=$(cd "$(dirname "$0")/.." && pwd)
port=$((20000 + RANDOM % 20000))
"$binary" --listen "127.0.0.1:$port" --log warn --max-connections-per-ip 0 \
    --connection-rate-per-ip 0 --host-enabled false &
server=$!
trap 'kill $server 2>/dev/null; kill $load 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$server/status"; }
before=$(rss)
SIO_URL="http://127.0.0.1:$port" SIO_CLIENTS=$clients SIO_EVENTS=1000000 SIO_CHANNEL=idle \
    SIO_TIMEOUT_MS=120000 SIO_OPTIONS="{\"transports\":[\"$transport\"]}" \
    node "$root/tests/socketio/many.mjs" > /tmp/socketio-rss.$$ &
load=$!
for _ in $(seq 600); do
    grep -q ready /tmp/socketio-rss.$$ && break
    sleep 0.2
done
grep -q ready /tmp/socketio-rss.$$ || { echo "clients not ready" >&2; exit 1; }
sleep 10
after=$(rss)
polling=$(curl -s "127.0.0.1:$port/api/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["socketio_polling_sessions"])')
echo "{\"transport\":\"$transport\",\"clients\":$clients,\"polling_sessions\":$polling,\"rss_before\":$before,\"rss_after\":$after,\"bytes_per_client\":$(( (after - before) / clients ))}"
rm -f /tmp/socketio-rss.$$
