#!/usr/bin/env bash
# Installs the TypeScript client's dev dependencies from package-lock.json (npm ci, which
# also builds it) when missing, and rebuilds dist/ from src/ otherwise. Run by
# tests/js_client.rs; idempotent.
set -euo pipefail
cd "$(dirname "$0")"

exec 9>.setup.lock
flock 9

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "installing the TypeScript client's dev dependencies (npm ci)" >&2
    npm ci --no-audit --no-fund --silent >&2
else
    npm run --silent build >/dev/null
fi
