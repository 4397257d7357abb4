#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md in one run: builds in release, then
#   (A) engine vs raw ONNX Runtime (ort-rs) vs Python onnxruntime   agent/benches/engine.rs
#       tuner: quick search vs exhaustive                           agent/benches/tuner.rs
#   (B) serving load: the agent vs KServe's Python model server     scripts/bench-serving.sh
# and prints the tables. Results (logs, JSON) go to $BENCH_OUT (default: a fresh temp dir).
#
# Knobs: WINDOW (s, per engine-bench window, default 1), REPEATS (engine rounds, 5),
# TUNER_WINDOW (s, 1), TUNER_REPEATS (3), STEP (s per load step, 5), QUICK=1 (a short smoke
# run), SKIP_A=1 / SKIP_B=1, and bench-serving.sh's SERVER_CPUS / CLIENT_CPUS /
# CLIENT_THREADS (pinning on a machine with cores to spare). Needs `make deps` and the bench
# requirements:
#   "$POLICYSERVE_PYTHON" -m pip install -r scripts/requirements-bench.txt
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck disable=SC1091
source "${POLICYSERVE_CACHE:-$HOME/.cache/policyserve}/env.sh"
: "${POLICYSERVE_PYTHON:?run make deps}"

WINDOW=${WINDOW:-1} REPEATS=${REPEATS:-5}
TUNER_WINDOW=${TUNER_WINDOW:-1} TUNER_REPEATS=${TUNER_REPEATS:-3}
STEP=${STEP:-5} WARM=1
if [[ ${QUICK:-0} == 1 ]]; then
  WINDOW=0.3 REPEATS=1 TUNER_WINDOW=0.2 TUNER_REPEATS=1 STEP=1 WARM=0.3
fi
OUT=${BENCH_OUT:-$(mktemp -d -t policyserve-bench.XXXXXX)}
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

echo "== build (release)"
cargo build --release -q -p policyserve-agent --bin policyserve-agent --example loadgen
cargo bench -q -p policyserve-agent --no-run --bench engine --bench tuner 2>/dev/null
# Private copies: the target dir may be shared with other builds.
cp "$TARGET/release/policyserve-agent" "$TARGET/release/examples/loadgen" "$OUT/"

echo "== machine"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) · $(date -u +%FT%TZ) · results in $OUT"

if [[ ${SKIP_A:-0} != 1 ]]; then
  echo "== (A) engine vs ONNX Runtime"
  cargo bench -q -p policyserve-agent --bench engine -- --window "$WINDOW" --repeats "$REPEATS" \
    2>"$OUT/engine.err" | tee "$OUT/engine.md"
  echo "== (A) tuner: quick search vs exhaustive"
  cargo bench -q -p policyserve-agent --bench tuner -- --window "$TUNER_WINDOW" \
    --repeats "$TUNER_REPEATS" 2>"$OUT/tuner.err" | tee "$OUT/tuner.md"
fi

if [[ ${SKIP_B:-0} != 1 ]]; then
  echo "== (B) serving load"
  AGENT="$OUT/policyserve-agent" LOADGEN="$OUT/loadgen" PYTHON="$POLICYSERVE_PYTHON" \
    STEP="$STEP" WARM="$WARM" scripts/bench-serving.sh "$OUT"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) · results in $OUT"
