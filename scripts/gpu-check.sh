#!/usr/bin/env bash
# Checks the agent's GPU path on a machine with an NVIDIA GPU, using only the files of a bundle
# (scripts/gpu-bundle.sh makes one): no package registry, no build, no Python.
#
#   gpu-check.sh [BUNDLE]          BUNDLE defaults to this script's folder
#
# The bundle holds policyserve-agent (stripped release build), models/*.onnx, ort-cpu/ (the CPU
# ONNX Runtime library) and, when they fit the upload, ort-gpu/ (onnxruntime-gpu's library with
# libonnxruntime_providers_{shared,cuda,tensorrt}.so).
#
# It prints nvidia-smi, runs `detect` (table and JSON), then `tune` on policy-mlp and
# policy-mlp-large with the CPU library and, when a GPU and the GPU libraries are there, with the
# GPU library and the GPUAccelerated profile (TensorRT -> CUDA -> CPU), and prints the best
# figures per model and provider side by side. Providers that cannot load fall back, and the
# reasons are printed. Without a GPU it runs the CPU part and says "no GPU: GPU part skipped".
#
# Environment:
#   GPU_CHECK_BUDGET   search time all tune runs share (default 4m; 90s, 2m, 2s, or seconds)
#   GPU_CHECK_OUT      where outputs go (default ./gpu-check-out)
#   GPU_CHECK_CPU_PROFILE  profile of the CPU runs (default HighPerformanceCPU)
#   ORT_GPU_DIR        a folder with the GPU libraries, instead of BUNDLE/ort-gpu
#   GPU_CHECK_FORCE_GPU_PART=1  run the GPU tune without a GPU too (it shows the fallbacks)
# Each tune run is also cut by `timeout` at twice its share plus 60 s (model loads, TensorRT
# engine builds), so the whole script stays within about 2 x budget + 5 min at worst.
set -uo pipefail

BUNDLE="$(cd "${1:-$(dirname "$0")}" && pwd)"
OUT="${GPU_CHECK_OUT:-$PWD/gpu-check-out}"
CPU_PROFILE="${GPU_CHECK_CPU_PROFILE:-HighPerformanceCPU}"
MODELS=(policy-mlp policy-mlp-large)
AGENT="$BUNDLE/policyserve-agent"
mkdir -p "$OUT"

say() { printf '\n=== %s\n' "$*"; }
seconds() { # 90s, 2m, 1h, 45 -> seconds
  local v="$1"
  case "$v" in
    *ms) echo 1 ;;
    *s) echo "${v%s}" ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *h) echo $(( ${v%h} * 3600 )) ;;
    *) echo "$v" ;;
  esac
}

[ -x "$AGENT" ] || { echo "no agent binary at $AGENT" >&2; exit 2; }
CPU_LIB="$(ls "$BUNDLE"/ort-cpu/libonnxruntime.so* 2>/dev/null | head -n1)"
[ -n "$CPU_LIB" ] || { echo "no CPU ONNX Runtime library in $BUNDLE/ort-cpu" >&2; exit 2; }
BUDGET_S="$(seconds "${GPU_CHECK_BUDGET:-4m}")"
case "$BUDGET_S" in ''|*[!0-9]*) echo "GPU_CHECK_BUDGET: not a duration: ${GPU_CHECK_BUDGET:-}" >&2; exit 2 ;; esac
STARTED=$(date +%s)

say "machine"
uname -a
echo "bundle: $BUNDLE"
"$AGENT" --version

# A GPU: the driver's device nodes and nvidia-smi answering.
GPU=yes
GPU_REASON=""
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /proc/driver/nvidia/version ]; then
  GPU=no; GPU_REASON="no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia)"
elif command -v nvidia-smi >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
  GPU=no; GPU_REASON="nvidia-smi finds no GPU: $(nvidia-smi -L 2>&1 | head -n1)"
fi
say "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,mig.mode.current --format=csv 2>&1 | tee -a "$OUT/nvidia-smi.txt"
else
  echo "nvidia-smi not found"
fi

say "detect"
"$AGENT" detect 2>&1 | tee "$OUT/detect.txt"
"$AGENT" detect --output json > "$OUT/detect.json" 2> "$OUT/detect.log"
echo "(JSON in $OUT/detect.json)"

# The GPU libraries: ORT_GPU_DIR, else the bundle's.
GPU_DIR="${ORT_GPU_DIR:-$BUNDLE/ort-gpu}"
GPU_LIB="$(ls "$GPU_DIR"/libonnxruntime.so* 2>/dev/null | head -n1)"
RUN_GPU=no
if [ "$GPU" = no ] && [ "${GPU_CHECK_FORCE_GPU_PART:-0}" != 1 ]; then
  :
elif [ -z "$GPU_LIB" ] || [ ! -f "$GPU_DIR/libonnxruntime_providers_shared.so" ]; then
  GPU_REASON="no GPU ONNX Runtime libraries in $GPU_DIR (onnxruntime-gpu's libonnxruntime.so and libonnxruntime_providers_*.so did not come with the bundle)"
else
  RUN_GPU=yes
  say "GPU provider libraries ($GPU_DIR)"
  for f in "$GPU_DIR"/libonnxruntime_providers_*.so; do
    printf '%s  %s bytes\n' "$(basename "$f")" "$(wc -c < "$f")"
    if command -v ldd >/dev/null 2>&1; then
      missing=$(LD_LIBRARY_PATH="$GPU_DIR:${LD_LIBRARY_PATH:-}" ldd "$f" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
      [ -n "$missing" ] && echo "  missing here: $missing(this provider will fall back)"
    fi
  done
fi

RUNS=${#MODELS[@]}
[ "$RUN_GPU" = yes ] && RUNS=$(( RUNS * 2 ))
PER_RUN=$(( BUDGET_S / RUNS )); [ "$PER_RUN" -ge 1 ] || PER_RUN=1
LIMIT=$(( PER_RUN * 2 + 60 ))
echo
echo "budget ${BUDGET_S}s for $RUNS tune runs: ${PER_RUN}s of search each, cut at ${LIMIT}s"

# tune NAME LIBRARY PROFILE MODEL: table to $OUT/NAME.txt, JSON to $OUT/NAME.json, logs to .log
tune() {
  local name="$1" lib="$2" profile="$3" model="$4"
  say "tune $model with $(basename "$(dirname "$lib")") ($profile)"
  LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}" ORT_DYLIB_PATH="$lib" \
    timeout --kill-after=10 "$LIMIT" "$AGENT" tune \
      --model "$BUNDLE/models/$model.onnx" --profile "$profile" --budget "${PER_RUN}s" \
      --tensorrt-cache "$OUT/tensorrt-cache" --json-out "$OUT/$name.json" \
      > "$OUT/$name.txt" 2> "$OUT/$name.log"
  local rc=$?
  cat "$OUT/$name.txt"
  # Each candidate logs its fallbacks; once per distinct reason is enough here.
  grep -i "falling back\|error" "$OUT/$name.log" | sed 's/^[^ ]* *//' | sort -u | head -n 20
  [ "$rc" -eq 0 ] || echo "tune $name exited $rc$([ "$rc" -eq 124 ] && echo ' (cut by timeout)')"
}

for model in "${MODELS[@]}"; do
  tune "cpu-$model" "$CPU_LIB" "$CPU_PROFILE" "$model"
done
if [ "$RUN_GPU" = yes ]; then
  for model in "${MODELS[@]}"; do
    tune "gpu-$model" "$GPU_LIB" GPUAccelerated "$model"
  done
fi

# Side by side: per model and library, the configurations swept over gRPC (capacity at the
# targets, what a client on this machine gets; the first is the one chosen). The JSON files
# hold every figure, the in-process ranking included.
say "side by side (capacity of the swept configurations; * = chosen)"
printf '%-18s %-4s %-18s %-5s %5s %4s %4s %12s %9s %9s %10s\n' \
  model lib "providers" prec batch thr inst "capacity rps" "p50 ms" "p99 ms" MiB
for file in "$OUT"/cpu-*.txt "$OUT"/gpu-*.txt; do
  [ -f "$file" ] || continue
  name="$(basename "$file" .txt)"
  awk -v lib="${name%%-*}" -v model="${name#*-}" '
    /^ranked .* swept .* over gRPC/ { in_swept = 1; next }
    /^chosen:/ { in_swept = 0 }
    !in_swept || $1 == "providers" || NF < 11 { next }
    {
      printf "%-18s %-4s %-18s %-5s %5s %4s %4s %12s %9s %9s %10s\n",
        model, lib, $1 (first++ ? "" : "*"), $2, $5, $3, $4, $8, $9, $10, $11
    }' "$file"
done
echo
echo "fallbacks of the chosen configurations:"
grep -H "fallback:" "$OUT"/*.txt 2>/dev/null | sed "s|$OUT/||" || true
grep -qs "fallback:" "$OUT"/*.txt || echo "  none"

say "summary"
echo "elapsed $(( $(date +%s) - STARTED ))s; outputs in $OUT"
if [ "$GPU" = no ]; then
  echo "no GPU: GPU part skipped ($GPU_REASON)"
elif [ "$RUN_GPU" = no ]; then
  echo "GPU present, GPU tune skipped: $GPU_REASON"
else
  echo "GPU part ran: see the gpu-* rows and fallbacks above"
fi
exit 0
