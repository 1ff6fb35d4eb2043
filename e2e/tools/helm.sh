#!/usr/bin/env bash
# Builds helm from its Go module into a cache directory outside the repository, keyed on the
# version, and prints the binary's path. `make e2e` passes it to the chart test.
set -euo pipefail
export GOTOOLCHAIN=local CGO_ENABLED=0
HELM_VERSION=${HELM_VERSION:-v3.22.0}
OUT=${XDG_CACHE_HOME:-$HOME/.cache}/mcpgate-tools/helm-$HELM_VERSION
if [ ! -x "$OUT/helm" ]; then
  mkdir -p "$OUT"
  # The version stamp helm's own release build sets; without it `helm version` says "v3".
  GOBIN="$OUT" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$OUT/helm"
