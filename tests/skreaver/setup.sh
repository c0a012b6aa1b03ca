#!/usr/bin/env bash
# Installs what the Skreaver sample tests need when it is missing: a virtualenv in .venv
# with the `websockets` package the guide's Python sample imports (pinned in
# requirements.txt). Idempotent and quiet when all is there; run by tests/skreaver.rs.
set -euo pipefail
cd "$(dirname "$0")"

# Parallel tests: one installs at a time, the others find it done.
exec 9>.setup.lock
flock 9

if ! .venv/bin/python -c 'import websockets' >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        echo "installing python3-venv (apt-get)" >&2
        if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    fi
    echo "installing websockets into tests/skreaver/.venv (pip)" >&2
    rm -rf .venv
    python3 -m venv .venv >&2
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt >&2
fi
