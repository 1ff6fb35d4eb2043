#!/usr/bin/env bash
# Creates (or reuses) the test peers: the Python environment with the MCP SDKs (its python
# path is printed), the Node peers in .cache/npm (node_modules/.bin), and Debian's Chromium
# with its driver (the browser of the OAuth tests, e2e/peers/browser.py), and lua5.4 (runs
# the Argo CD health check, e2e/tests/gitops.rs). Only the python path goes to stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
peers=$root/e2e/peers

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
  || ! command -v lua5.4 >/dev/null; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    chromium chromium-driver lua5.4 >&2
fi

venv=${MCPGATE_VENV:-$root/.cache/venv}
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$peers/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$peers/requirements.txt" >&2
  echo "$want" > "$stamp"
fi

npm_dir=$root/.cache/npm
npm_stamp="$npm_dir/.lock.sha256"
npm_want=$(cat "$peers/package.json" "$peers/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ ! -d "$npm_dir/node_modules" ] || [ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_want" ]; then
  mkdir -p "$npm_dir"
  cp "$peers/package.json" "$peers/package-lock.json" "$npm_dir/"
  (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
  echo "$npm_want" > "$npm_stamp"
fi

echo "$venv/bin/python"
