#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md in one run: builds in release, then
#   (A) engine vs raw ONNX Runtime (ort-rs) vs Python onnxruntime   agent/benches/engine.rs
#       tuner: quick search vs exhaustive                           agent/benches/tuner.rs
#   (B) serving load: the agent vs KServe's Python model server     agent/examples/loadgen.rs
# and prints the tables. Results (logs, JSON) go to $BENCH_OUT (default: a fresh temp dir).
#
# Knobs: WINDOW (s, per engine-bench window, default 1), REPEATS (engine rounds, 5),
# TUNER_WINDOW (s, 1), TUNER_REPEATS (3), STEP (s per load step, 5), QUICK=1 (a short smoke
# run), SKIP_A=1 / SKIP_B=1. Needs `make deps` and the bench requirements:
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

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

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

wait_for_port() { # port pid
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

rss() { # pid -> "VmHWM VmRSS" in MiB
  awk '/^VmHWM|^VmRSS/ {printf "%.1f ", $2 / 1024}' "/proc/$1/status"
}

LOADGEN=("$OUT/loadgen" --model policy --concurrency 1,2,4,8,16,32,64 --duration "$STEP"
  --warm-up "$WARM" --open-fraction 0.5 --threads 1)

serve_agent() { # label profile-file
  "$OUT/policyserve-agent" serve --model "policy=$ROOT/models/policy-mlp.onnx" \
    --grpc-addr 127.0.0.1:18001 --metrics-addr 127.0.0.1:18002 --profile "$2" \
    >"$OUT/agent-$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_for_port 18001 "$pid"
  "${LOADGEN[@]}" --target http://127.0.0.1:18001 --label "agent ($1)" --json "$OUT/load-$1.json" \
    | tee "$OUT/load-$1.md"
  echo "agent ($1) memory after the sweep, MiB (VmHWM VmRSS): $(rss "$pid")" | tee -a "$OUT/load-$1.md"
  rss "$pid" >"$OUT/rss-$1.txt"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

if [[ ${SKIP_B:-0} != 1 ]]; then
  echo "== (B) serving load"
  # The profile `tune` chooses on this machine for the goals (p99 < 1 ms, 80 MiB).
  "$OUT/policyserve-agent" tune --model models/policy-mlp.onnx --p99-ms 1 --memory 80Mi \
    --budget 20s --output json 2>"$OUT/tune.err" >"$OUT/tune.json"
  "$POLICYSERVE_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d["chosen"]["config"], open(sys.argv[2], "w"))' \
    "$OUT/tune.json" "$OUT/profile-tuned.json"
  echo "tuned profile: $(cat "$OUT/profile-tuned.json")"
  echo "fixed profile: $(tr -d ' \n' <bench/agent-profile.json)"
  serve_agent tuned "$OUT/profile-tuned.json"
  serve_agent fixed "$ROOT/bench/agent-profile.json"

  # KServe's Python server, default settings but for the ports (the defaults may be taken).
  "$POLICYSERVE_PYTHON" bench/kserve_server.py --model_name policy \
    --model_path models/policy-mlp.onnx --grpc_port 18081 --http_port 18080 \
    >"$OUT/kserve.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_for_port 18081 "$pid"
  "${LOADGEN[@]}" --target http://127.0.0.1:18081 --label "KServe Python" --json "$OUT/load-kserve.json" \
    | tee "$OUT/load-kserve.md"
  echo "KServe Python memory after the sweep, MiB (VmHWM VmRSS): $(rss "$pid")" | tee -a "$OUT/load-kserve.md"
  rss "$pid" >"$OUT/rss-kserve.txt"
  kill "$pid"
  wait "$pid" 2>/dev/null || true

  echo "== (B) goals"
  "$POLICYSERVE_PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/load-{name}.json"))
kserve = load("kserve")
c16 = lambda r: next(s["rps"] for s in r["steps"] if s["mode"] == "closed" and s["concurrency"] == 16)
for name in ("tuned", "fixed"):
    agent = load(name)
    open_step = next(s for s in agent["steps"] if s["mode"] == "open")
    hwm = float(open(f"{out}/rss-{name}.txt").read().split()[0])
    ratio = c16(agent) / c16(kserve)
    print(f"agent ({name}): c16 {c16(agent):.0f} rps vs KServe {c16(kserve):.0f} rps = {ratio:.1f}x "
          f"[goal >= 10x: {'met' if ratio >= 10 else 'MISSED'}]; "
          f"p99 at {open_step['target_rps']:.0f}/s (half of max {agent['max_rps']:.0f}) = {open_step['p99_ms']:.3f} ms "
          f"[goal < 1 ms: {'met' if open_step['p99_ms'] < 1 else 'MISSED'}]; "
          f"peak RSS {hwm:.1f} MiB [goal < 80 MiB: {'met' if hwm < 80 else 'MISSED'}]")
PY
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) · results in $OUT"
