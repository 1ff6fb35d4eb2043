#!/usr/bin/env bash
# Writes go.mod/go.sum pinning kube-apiserver, kube-controller-manager, kubectl and etcd from their published Go
# modules. Run once when changing K8S_VERSION; the result is committed.
# 1.33.4 is the newest 1.33 patch whose 31 staging modules are all served by the module proxy here.
set -euo pipefail
K8S=${K8S_VERSION:-1.33.4}; MIN=${K8S#1.}
STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
 cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
 cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
 kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
 mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller"
cd "$(dirname "$0")"
export GOTOOLCHAIN=local CGO_ENABLED=0
[ -f go.mod ] || go mod init mcpgate.dev/e2e/k8s-test-tools
go mod edit -go=1.24.0 -godebug=default=go1.24
for m in $STAGING; do go mod edit -replace=k8s.io/$m=k8s.io/$m@v0.$MIN; done
go get -tool k8s.io/kubernetes/cmd/kube-apiserver@v$K8S k8s.io/kubernetes/cmd/kubectl@v$K8S \
  k8s.io/kubernetes/cmd/kube-controller-manager@v$K8S
ETCD=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
go get -tool go.etcd.io/etcd/server/v3@"$ETCD"
go mod tidy
