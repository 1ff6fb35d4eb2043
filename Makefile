# The only entry point: CI calls these same targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: demo test unit e2e lint gen check-gen bench soak control-plane images

## demo: a real MCP server, the operator's standalone rendering and the gateway in front
demo:
	scripts/demo.sh

## test: everything CI runs: generated files, lints, unit tests, end-to-end tests on a real control plane
test: check-gen lint unit e2e

unit:
	$(CARGO) test --workspace --all-targets

## e2e: builds (or reuses) kube-apiserver, kube-controller-manager, etcd, kubectl, helm and Jaeger, then runs the tests that start them
e2e:
	$(CARGO) build -p mcpgate-operator -p mcpgate-proxy
	# One assignment each: a tool that fails to build stops here, not as an empty path later.
	MCPGATE_K8S_BIN_DIR="$$(e2e/k8s/build.sh)"; MCPGATE_PYTHON="$$(e2e/peers/install.sh)"; \
	  MCPGATE_HELM="$$(e2e/tools/helm.sh)"; MCPGATE_JAEGER="$$(e2e/tools/jaeger.sh)"; \
	export MCPGATE_K8S_BIN_DIR MCPGATE_PYTHON MCPGATE_HELM MCPGATE_JAEGER; \
	$(CARGO) test -p mcpgate-e2e -- --ignored --test-threads=1

control-plane:
	e2e/k8s/build.sh

## images: the operator and proxy images the chart runs (static binaries, checked reproducible)
images:
	images/build.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

gen:
	$(CARGO) run -q -p mcpgate-crds --bin crdgen -- crds > crds/yaml/crds.yaml
	$(CARGO) run -q -p mcpgate-crds --bin crdgen -- config-schema > crds/yaml/gateway-config.schema.json
	cp crds/yaml/crds.yaml charts/mcpgate/files/crds.yaml

check-gen:
	$(CARGO) run -q -p mcpgate-crds --bin crdgen -- crds | diff -u crds/yaml/crds.yaml - \
	  || { echo "crds/yaml/crds.yaml is stale: run 'make gen' and commit"; exit 1; }
	$(CARGO) run -q -p mcpgate-crds --bin crdgen -- config-schema | diff -u crds/yaml/gateway-config.schema.json - \
	  || { echo "crds/yaml/gateway-config.schema.json is stale: run 'make gen' and commit"; exit 1; }
	diff -u crds/yaml/crds.yaml charts/mcpgate/files/crds.yaml \
	  || { echo "charts/mcpgate/files/crds.yaml is stale: run 'make gen' and commit"; exit 1; }

## bench: proxy req/s, latency, CPU and memory vs a direct call, authentication cost per call; operator render and converge time, peak RSS
bench:
	$(CARGO) build --release -p mcpgate-operator -p mcpgate-proxy -p mcpgate-e2e
	MCPGATE_K8S_BIN_DIR="$$(e2e/k8s/build.sh)"; MCPGATE_PYTHON="$$(e2e/peers/install.sh)"; \
	export MCPGATE_K8S_BIN_DIR MCPGATE_PYTHON; \
	./target/release/proxy-bench; \
	./target/release/operator-bench

## soak: 20 minutes of mixed traffic through one proxy, RSS, open FDs and p99 printed every minute (MCPGATE_SOAK_MINUTES to change; not in CI)
soak:
	$(CARGO) build --release -p mcpgate-proxy -p mcpgate-e2e
	./target/release/soak
