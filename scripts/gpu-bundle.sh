#!/usr/bin/env bash
# Assembles the folder scripts/gpu-check.sh runs from on a GPU machine that has no package
# registry and accepts only a small upload.
#
#   scripts/gpu-bundle.sh [--out DIR] [--with-gpu-libs [--only-sm N]] [--tar]
#
#   DIR/policyserve-agent     release build, stripped
#   DIR/models/               policy-mlp.onnx, policy-mlp-large.onnx
#   DIR/ort-cpu/              libonnxruntime.so.1.31.1 (CPU build, from `make deps`)
#   DIR/ort-gpu/              with --with-gpu-libs: onnxruntime-gpu 1.31.1's libonnxruntime.so
#                             and libonnxruntime_providers_{shared,cuda,tensorrt}.so (~300 MB);
#                             --only-sm 90 zeroes the CUDA provider's code for every other GPU
#                             architecture (scripts/prune-cubins.py): 60 MB as .tar.xz
#   DIR/gpu-check.sh, DIR/MANIFEST (sizes; the CUDA, cuDNN and TensorRT libraries the providers
#                             need, read from their ELF NEEDED entries)
#
# Environment: POLICYSERVE_CACHE (default ~/.cache/policyserve), CARGO_TARGET_DIR.
set -euo pipefail

ORT_VERSION=1.31.1
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${POLICYSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/policyserve}"
OUT="$ROOT/target/gpu-bundle"
WITH_GPU=no
ONLY_SM=
TAR=no
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --with-gpu-libs) WITH_GPU=yes; shift ;;
    --only-sm) ONLY_SM="$2"; shift 2 ;;
    --tar) TAR=yes; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { printf '[gpu-bundle] %s\n' "$*" >&2; }
size() { wc -c < "$1" | tr -d ' '; }
needed() { # the shared libraries an ELF file names
  if command -v readelf >/dev/null 2>&1; then
    readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
  else
    objdump -p "$1" | awk '$1 == "NEEDED" {print $2}'
  fi
}

rm -rf "$OUT"
mkdir -p "$OUT/models" "$OUT/ort-cpu"

log "release build of the agent"
(cd "$ROOT" && cargo build --release --locked -q -p policyserve-agent)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
install -m 0755 "$TARGET/release/policyserve-agent" "$OUT/policyserve-agent"
strip "$OUT/policyserve-agent"

cp "$ROOT/models/policy-mlp.onnx" "$ROOT/models/policy-mlp-large.onnx" "$OUT/models/"
CPU_LIB="${ORT_DYLIB_PATH:-$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION}"
[ -f "$CPU_LIB" ] || { log "no CPU ONNX Runtime at $CPU_LIB: run make deps"; exit 1; }
cp "$CPU_LIB" "$OUT/ort-cpu/libonnxruntime.so.$ORT_VERSION"
install -m 0755 "$HERE/gpu-check.sh" "$OUT/gpu-check.sh"

{
  echo "policyserve GPU check bundle, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "bytes      file"
  (cd "$OUT" && find . -type f ! -name MANIFEST | sort | while read -r f; do printf '%-10s %s\n' "$(size "$f")" "${f#./}"; done)
} > "$OUT/MANIFEST"

if [ "$WITH_GPU" = yes ]; then
  wheels="$CACHE/onnxruntime-gpu"
  if ! ls "$wheels"/onnxruntime_gpu-"$ORT_VERSION"-*.whl >/dev/null 2>&1; then
    log "downloading onnxruntime-gpu $ORT_VERSION (about 250 MB)"
    mkdir -p "$wheels"
    python3 -m pip download -q "onnxruntime-gpu==$ORT_VERSION" --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$wheels"
  fi
  wheel="$(ls "$wheels"/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -n1)"
  mkdir -p "$OUT/ort-gpu"
  unzip -q -j -o "$wheel" 'onnxruntime/capi/libonnxruntime.so.*' \
    'onnxruntime/capi/libonnxruntime_providers_*.so' -d "$OUT/ort-gpu"
  if [ -n "$ONLY_SM" ]; then
    cuda="$OUT/ort-gpu/libonnxruntime_providers_cuda.so"
    python3 "$HERE/prune-cubins.py" "$cuda" "$cuda.pruned" "$ONLY_SM" >&2
    mv "$cuda.pruned" "$cuda"
  fi
  {
    echo
    echo "GPU libraries (onnxruntime-gpu $ORT_VERSION)${ONLY_SM:+, CUDA code for sm_$ONLY_SM only}"
    for f in "$OUT"/ort-gpu/*; do
      printf '%-10s ort-gpu/%s\n' "$(size "$f")" "$(basename "$f")"
      printf '           needs: %s\n' "$(needed "$f" | grep -Ev '^((libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+)\.so|ld-linux)' | tr '\n' ' ')"
    done
    cudart="$(needed "$OUT/ort-gpu/libonnxruntime_providers_cuda.so" | sed -n 's/^libcudart\.so\.\([0-9]*\)$/\1/p')"
    echo "CUDA provider built against CUDA ${cudart:-unknown} (libcudart.so.${cudart:-?})"
  } >> "$OUT/MANIFEST"
fi

if [ "$TAR" = yes ]; then
  tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
  printf '\ncompressed bundle: %s bytes (%s)\n' "$(size "$OUT.tar.gz")" "$OUT.tar.gz" >> "$OUT/MANIFEST"
fi
cat "$OUT/MANIFEST"
echo
echo "on the GPU machine: bash $(basename "$OUT")/gpu-check.sh   (GPU_CHECK_BUDGET=4m by default)"
