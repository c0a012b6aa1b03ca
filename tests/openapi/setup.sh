#!/usr/bin/env bash
# Installs the OpenAPI validator the tests use (openapi-spec-validator from PyPI, pinned in
# requirements.txt) into .venv, when missing. Idempotent and quiet when it is there; run
# by tests/control.rs.
set -euo pipefail
cd "$(dirname "$0")"

exec 9>.setup.lock
flock 9

if ! .venv/bin/python -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        echo "installing python3-venv (apt-get)" >&2
        if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    fi
    echo "installing openapi-spec-validator into tests/openapi/.venv (pip)" >&2
    rm -rf .venv
    python3 -m venv .venv >&2
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt >&2
fi
