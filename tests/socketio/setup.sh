#!/usr/bin/env bash
# Installs the real Socket.IO clients the tests drive, when missing: socket.io-client from
# npm (pinned in package-lock.json) into node_modules, and python-socketio from PyPI
# (pinned in requirements.txt) into .venv. Idempotent and quiet when all is there; run by
# tests/socketio.rs.
set -euo pipefail
cd "$(dirname "$0")"

# Parallel tests: one installs at a time, the others find it done.
exec 9>.setup.lock
flock 9

if [ ! -f node_modules/socket.io-client/package.json ]; then
    echo "installing socket.io-client into tests/socketio/node_modules (npm ci)" >&2
    npm ci --no-audit --no-fund --silent >&2
fi
if ! .venv/bin/python -c 'import socketio, websocket' >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        echo "installing python3-venv (apt-get)" >&2
        if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    fi
    echo "installing python-socketio into tests/socketio/.venv (pip)" >&2
    rm -rf .venv
    python3 -m venv .venv >&2
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt >&2
fi
