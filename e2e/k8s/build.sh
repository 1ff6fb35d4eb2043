#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the modules pinned in go.mod into a cache
# directory outside the repository, keyed on go.sum, and prints that directory.
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local CGO_ENABLED=0
K8S=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
OUT=${K8S_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mcpgate-k8s/$K8S-$(sha256sum go.sum | cut -c1-12)}
MINOR=$(echo "$K8S" | cut -d. -f2)
V="-X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR"
V="$V -X k8s.io/client-go/pkg/version.gitVersion=$K8S -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$MINOR"
mkdir -p "$OUT"
build() { # name ldflags package
  [ -x "$OUT/$1" ] && return 0
  go build -trimpath -tags selinux,notest -ldflags "-s -w $2" -o "$OUT/$1.tmp" "$3" >&2
  mv "$OUT/$1.tmp" "$OUT/$1"
}
build etcd "" go.etcd.io/etcd/server/v3
build kube-apiserver "$V" k8s.io/kubernetes/cmd/kube-apiserver
build kubectl "$V" k8s.io/kubernetes/cmd/kubectl
# The garbage collector: ownerReferences (what uninstall relies on) are enforced by it.
build kube-controller-manager "$V" k8s.io/kubernetes/cmd/kube-controller-manager
echo "$OUT"
