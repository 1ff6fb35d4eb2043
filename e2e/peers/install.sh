#!/usr/bin/env bash
# Creates (or reuses) the Python environment with the MCP peers and prints its python path.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${MCPGATE_VENV:-$root/.cache/venv}
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$root/e2e/peers/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/e2e/peers/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
