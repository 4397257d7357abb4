#!/usr/bin/env bash
# Runs a command against a fresh local control plane (kube-apiserver + etcd from
# KUBEBUILDER_ASSETS), with KUBECONFIG exported, and stops the control plane afterwards.
#   scripts/with-control-plane.sh cargo test --workspace
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export CP_RUN_DIR; CP_RUN_DIR="$(mktemp -d -t policyserve-cp.XXXXXX)"
trap '"$HERE/control-plane.sh" stop >/dev/null 2>&1; rm -rf "$CP_RUN_DIR"' EXIT
"$HERE/control-plane.sh" start >/dev/null
export KUBECONFIG="$CP_RUN_DIR/kubeconfig"
"$@"
