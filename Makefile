# policyserve — the commands README.md documents. Dependencies install into
# ~/.cache/policyserve (scripts/install-deps.sh) and are loaded from its env.sh.
SHELL := /bin/bash
ENV := $(or $(POLICYSERVE_CACHE),$(HOME)/.cache/policyserve)/env.sh
WITH_ENV := source $(ENV) &&

.PHONY: deps build demo tune test bench lint lint-rust lint-docker lint-chart docs docs-check crds models \
        images cluster cluster-down

deps:
	scripts/install-deps.sh

build: deps
	$(WITH_ENV) cargo build --workspace --release

## The main job: a local control plane with the operator and three agents serving the examples.
demo: deps
	scripts/demo.sh

## The agent alone: tunes the shipped policy model for this machine and prints the figures.
tune: deps
	$(WITH_ENV) cargo build -q --release -p policyserve-agent && \
	  target/release/policyserve-agent tune --model models/policy-mlp.onnx \
	    --variant int8=models/policy-mlp.int8.onnx --p99-ms 2 --rps 5000 --memory 512Mi --budget 20s

## Run every test: unit tests, the apiserver tests on a fresh local control plane, and the
## cluster tier (tests/tests/cluster_*.rs), which brings up its own cluster with real nodes.
test: deps
	$(WITH_ENV) scripts/with-control-plane.sh cargo test --workspace

## A local cluster with real nodes (kubelet, containerd, runc, CNI; docs/cluster.md) running the
## chart from images built from this checkout; its last line is `export KUBECONFIG=...`.
cluster: deps
	$(WITH_ENV) scripts/cluster.sh up

## Stop the local cluster; leaves no process, mount, network device or iptables rule.
cluster-down:
	$(WITH_ENV) scripts/cluster.sh down

## The operator, agent and pause images as OCI archives (no Docker engine), from target/debug.
images: deps
	$(WITH_ENV) scripts/build-images.sh

## Benchmarks of docs/benchmarks.md (engine vs ONNX Runtime, tuner, serving load vs KServe).
## Needs the bench requirements: "$$POLICYSERVE_PYTHON" -m pip install -r scripts/requirements-bench.txt
bench: deps
	scripts/bench.sh

## Every static check CI runs (after `make deps`).
lint: lint-rust lint-docker lint-chart docs-check

lint-rust:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Dockerfiles, with hadolint from the deps virtualenv (there is no Docker engine to build them).
lint-docker:
	$(WITH_ENV) "$$(dirname "$$POLICYSERVE_PYTHON")/hadolint" Dockerfile.operator Dockerfile.agent

lint-chart:
	$(WITH_ENV) helm lint --strict charts/policyserve

## Regenerate docs/crds.md from the CRDs (run after `make crds`); docs-check fails when stale.
docs:
	$(WITH_ENV) "$$POLICYSERVE_PYTHON" scripts/gen-crd-docs.py

docs-check:
	$(WITH_ENV) "$$POLICYSERVE_PYTHON" scripts/gen-crd-docs.py --check

## Regenerate charts/policyserve/crds from the Rust types.
crds:
	cargo run -q -p policyserve-crds --bin crdgen

## Regenerate models/ (Python onnx + onnxruntime from the deps virtualenv).
models: deps
	$(WITH_ENV) "$$POLICYSERVE_PYTHON" models/make_models.py
