#!/usr/bin/env bash
# Installs what the browser tests need when it is missing: Debian's Chromium, and
# playwright-core from npm (pinned by package-lock.json). Idempotent and quiet when all is
# there; run by tests/dashboard.rs before it drives the browser.
set -euo pipefail
cd "$(dirname "$0")"

# The browser tests run in parallel: one installs at a time, the others wait and find it
# done (a second apt-get would fail on its lock, a second npm ci would delete the first's).
exec 9>.setup.lock
flock 9

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (apt-get)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi

wanted=$(node -p 'require("./package.json").dependencies["playwright-core"]')
installed=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$installed" != "$wanted" ]; then
    echo "installing playwright-core (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error >&2
fi
