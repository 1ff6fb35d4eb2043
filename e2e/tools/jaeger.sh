#!/usr/bin/env bash
# Builds Jaeger (the trace backend the tracing tests export to over OTLP) from the module
# pinned in e2e/tools/jaeger/go.mod into a cache directory outside the repository, keyed on
# its go.sum, and prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/jaeger"
export GOTOOLCHAIN=local CGO_ENABLED=0
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/mcpgate-tools/jaeger-$(sha256sum go.sum | cut -c1-12)
if [ ! -x "$OUT/jaeger" ]; then
  mkdir -p "$OUT"
  go build -trimpath -ldflags "-s -w" -o "$OUT/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
  mv "$OUT/jaeger.tmp" "$OUT/jaeger"
fi
echo "$OUT/jaeger"
