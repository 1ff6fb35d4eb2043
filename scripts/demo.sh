#!/usr/bin/env bash
# The local demo: a real MCP server (Python `mcp` SDK) on 127.0.0.1:3001, the operator's
# standalone rendering of config/standalone/, and the gateway on 127.0.0.1:8000 in front.
# Runs until Ctrl-C; with DEMO_ONCE=1 it makes one call through the gateway and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p mcpgate-operator -p mcpgate-proxy
py=$(e2e/peers/install.sh)
out=target/demo-config
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$py" e2e/peers/demo_server.py 3001 >target/demo-upstream.log 2>&1 & pids+=($!)
./target/release/mcpgate-operator standalone --watch --input config/standalone --output "$out" 2>target/demo-operator.log & pids+=($!)
./target/release/mcpgate-proxy --config-dir "$out" --listen 127.0.0.1:8000 --admin-listen 127.0.0.1:9090 --audit-log target/demo-audit.log 2>target/demo-proxy.log & pids+=($!)

ready() { curl -sf http://127.0.0.1:9090/readyz >/dev/null && curl -s -o /dev/null http://127.0.0.1:3001/mcp; }
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
echo "the audit trail records each call (target/demo-audit.log), e.g.:"
sleep 0.2
echo "  $(tail -n 1 target/demo-audit.log)"
echo
if [ "${DEMO_ONCE:-0}" = 1 ]; then exit 0; fi
echo "Ctrl-C stops the demo. Logs: target/demo-*.log"
wait
