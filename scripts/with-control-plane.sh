#!/usr/bin/env bash
# Runs a command against a fresh local control plane (kube-apiserver + etcd from
# KUBEBUILDER_ASSETS) and, beside it, a current CRD server (scripts/apiext.sh, Kubernetes 1.36's
# apiextensions-apiserver), with KUBECONFIG and APIEXT_KUBECONFIG exported; stops both afterwards.
#   scripts/with-control-plane.sh cargo test --workspace
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export CP_RUN_DIR; CP_RUN_DIR="$(mktemp -d -t policyserve-cp.XXXXXX)"
export AX_RUN_DIR="$CP_RUN_DIR/apiext"
trap '"$HERE/apiext.sh" stop >/dev/null 2>&1; "$HERE/control-plane.sh" stop >/dev/null 2>&1; rm -rf "$CP_RUN_DIR"' EXIT
"$HERE/control-plane.sh" start >/dev/null
export KUBECONFIG="$CP_RUN_DIR/kubeconfig"
"$HERE/apiext.sh" start "$KUBECONFIG" >/dev/null
export APIEXT_KUBECONFIG="$AX_RUN_DIR/kubeconfig"
"$@"
