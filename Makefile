# policyserve — the commands README.md documents. Dependencies install into
# ~/.cache/policyserve (scripts/install-deps.sh) and are loaded from its env.sh.
SHELL := /bin/bash
ENV := $(or $(POLICYSERVE_CACHE),$(HOME)/.cache/policyserve)/env.sh
WITH_ENV := source $(ENV) &&

.PHONY: deps build tune test lint crds models bench

deps:
	scripts/install-deps.sh

build: deps
	$(WITH_ENV) cargo build --workspace --release

## The main job: the agent tunes the shipped policy model for this machine and prints the figures.
tune: deps
	$(WITH_ENV) cargo build -q --release -p policyserve-agent && \
	  target/release/policyserve-agent tune --model models/policy-mlp.onnx \
	    --variant int8=models/policy-mlp.int8.onnx --p99-ms 2 --rps 5000 --memory 512Mi --budget 20s

## Run every test: unit tests, then the apiserver tests on a fresh local control plane.
test: deps
	$(WITH_ENV) scripts/with-control-plane.sh cargo test --workspace

## Benchmarks of docs/benchmarks.md (engine vs ONNX Runtime, tuner, serving load vs KServe).
## Needs the bench requirements: "$$POLICYSERVE_PYTHON" -m pip install -r scripts/requirements-bench.txt
bench: deps
	scripts/bench.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Regenerate charts/policyserve/crds from the Rust types.
crds:
	cargo run -q -p policyserve-crds --bin crdgen

## Regenerate models/ (Python onnx + onnxruntime from the deps virtualenv).
models: deps
	$(WITH_ENV) "$$POLICYSERVE_PYTHON" models/make_models.py
