#!/usr/bin/env bash
# apiext.sh - a current Kubernetes CRD server for the tests: Kubernetes 1.36's
# apiextensions-apiserver (the part of kube-apiserver that serves CRDs and custom resources) with
# etcd 3.5, built only from Debian packages. It checks what the 1.20 control plane cannot: CEL
# x-kubernetes-validations and their cost budget, validation ratcheting, server-side apply of
# custom resources, the status subresource, printer columns, defaulting.
#
#   apiext.sh install                 # build it once (~4 min on 2 cores, ~5 GB disk while building)
#   apiext.sh start CORE_KUBECONFIG   # etcd + apiextensions-apiserver on free loopback ports
#   apiext.sh stop
#   apiext.sh env                     # the export line for its kubeconfig
#
# Authentication and authorization (TokenReview, SubjectAccessReview) are delegated to a "core"
# apiserver, the 1.20 control plane of control-plane.sh; clients use the core's credentials.
#
# Limits: it serves group discovery (/apis/policyserve.io/v1alpha1) but answers 404 on /apis, so
# kubectl and helm cannot drive it: use kube-rs with an explicit ApiResource, or plain HTTP. It
# has no core types (Nodes, Services, Leases, ConfigMaps).
#
# How it is built: debootstrap a minimal Debian sid root into the cache; inside it, apt installs
# golang-go and golang-k8s-apiextensions-apiserver-dev (sources in /usr/share/gocode) and
# etcd-server; `go build` in GOPATH mode, as Debian builds Go packages. sid moves on: the version
# built is recorded in bin/VERSION, and anything older than Kubernetes 1.35 (package 0.35) fails
# the install and the start, so the tests never run on a server older than they claim.
# The sid Release file may look expired on this clock: apt runs with
# Acquire::Check-Valid-Until=false. etcd-server's postinst needs /proc, bind-mounted for the
# install only. The mirror is read from the system's apt configuration.
#
# Env: AX_CACHE (default ~/.cache/k8s-apiext), AX_RUN_DIR (default $AX_CACHE/run),
#      AX_KEEP_ROOT=1 keeps the sid root after install (it is removed by default).
set -euo pipefail

AX_CACHE="${AX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-apiext}"
AX_RUN_DIR="${AX_RUN_DIR:-$AX_CACHE/run}"
BIN="$AX_CACHE/bin"
MIN_MINOR=35
log() { echo "[apiext] $*" >&2; }

# Fails unless bin/VERSION (the Debian package version, 0.MINOR.PATCH-REV) is 0.35 or newer.
require_version() {
  local version minor
  version=$(cat "$BIN/VERSION" 2>/dev/null || true)
  minor=$(echo "$version" | sed -n 's/^0\.\([0-9]*\)\..*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt "$MIN_MINOR" ]; then
    log "apiextensions-apiserver ${version:-of unknown version} is older than Kubernetes 1.$MIN_MINOR; rebuild: rm -rf $BIN && $0 install"
    exit 1
  fi
}

mirror() {
  local m=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    m=$(awk '/^URIs:/{for(i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/*.sources |
      grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb"{print $2}' /etc/apt/sources.list | grep -E '/debian/?$' | head -n1 || true)
  fi
  [ -n "$m" ] || { log "no Debian mirror found in /etc/apt"; exit 1; }
  echo "${m%/}"
}

cmd_install() {
  if [ -x "$BIN/apiextensions-apiserver" ] && [ -x "$BIN/etcd" ]; then
    require_version; log "already installed in $BIN ($(cat "$BIN/VERSION"))"; return
  fi
  local start root m
  start=$(date +%s); root="$AX_CACHE/sid-root"; m=$(mirror)
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  mkdir -p "$AX_CACHE" "$BIN"
  if [ ! -x "$root/usr/bin/apt-get" ]; then
    log "debootstrap Debian sid (minbase)"
    debootstrap --variant=minbase sid "$root" "$m" >"$AX_CACHE/debootstrap.log" 2>&1 ||
      { tail -n 5 "$AX_CACHE/debootstrap.log"; exit 1; }
  fi
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  mount --bind /proc "$root/proc"
  trap 'umount "$root/proc" 2>/dev/null || true' EXIT
  log "apt: golang-go, golang-k8s-apiextensions-apiserver-dev, etcd-server (sid)"
  chroot "$root" bash -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get -o Acquire::Check-Valid-Until=false update -qq &&
    apt-get -o Acquire::Check-Valid-Until=false install -y -qq --no-install-recommends \
      golang-go golang-k8s-apiextensions-apiserver-dev etcd-server' >"$AX_CACHE/apt.log" 2>&1 ||
    { tail -n 5 "$AX_CACHE/apt.log"; exit 1; }
  log "building apiextensions-apiserver (GOPATH mode)"
  chroot "$root" bash -c 'mkdir -p /opt/build && cd /opt/build && GO111MODULE=off GOPATH=/usr/share/gocode CGO_ENABLED=0 \
    go build -o /opt/build/apiextensions-apiserver k8s.io/apiextensions-apiserver' >"$AX_CACHE/build.log" 2>&1 ||
    { tail -n 20 "$AX_CACHE/build.log"; exit 1; }
  cp "$root/opt/build/apiextensions-apiserver" "$BIN/"
  cp "$root/usr/bin/etcd" "$BIN/etcd"
  chroot "$root" dpkg-query -W -f='${Version}\n' golang-k8s-apiextensions-apiserver-dev >"$BIN/VERSION"
  umount "$root/proc"; trap - EXIT
  [ "${AX_KEEP_ROOT:-0}" = 1 ] || rm -rf "$root"
  require_version
  log "installed in $(( $(date +%s) - start ))s: $BIN (apiextensions-apiserver $(cat "$BIN/VERSION"))"
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

cmd_start() {
  local core="${1:-${KUBECONFIG:-}}"
  [ -n "$core" ] && [ -f "$core" ] || { log "usage: apiext.sh start CORE_KUBECONFIG"; exit 2; }
  [ -x "$BIN/apiextensions-apiserver" ] || cmd_install
  require_version
  cmd_stop >/dev/null 2>&1 || true
  mkdir -p "$AX_RUN_DIR"
  local ep pp sp
  ep=$(free_port); pp=$(free_port); sp=$(free_port)
  "$BIN/etcd" --data-dir "$AX_RUN_DIR/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
    --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$pp" \
    >"$AX_RUN_DIR/etcd.log" 2>&1 &
  echo $! >"$AX_RUN_DIR/etcd.pid"
  "$BIN/apiextensions-apiserver" --etcd-servers "http://127.0.0.1:$ep" --bind-address 127.0.0.1 \
    --secure-port "$sp" --cert-dir "$AX_RUN_DIR/certs" --kubeconfig "$core" \
    --authentication-kubeconfig "$core" --authorization-kubeconfig "$core" \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook \
    >"$AX_RUN_DIR/apiserver.log" 2>&1 &
  echo $! >"$AX_RUN_DIR/apiserver.pid"
  # The same users as the core's kubeconfig, pointed at this server (self-signed serving cert).
  sed -e "s#server: https://[^ ]*#server: https://127.0.0.1:$sp#" \
      -e "s#certificate-authority-data: .*#insecure-skip-tls-verify: true#" "$core" >"$AX_RUN_DIR/kubeconfig"
  local i
  for i in $(seq 1 120); do
    if curl -skf "https://127.0.0.1:$sp/readyz" >/dev/null 2>&1; then
      log "apiextensions-apiserver $(cat "$BIN/VERSION") ready at https://127.0.0.1:$sp"
      echo "export APIEXT_KUBECONFIG=$AX_RUN_DIR/kubeconfig"; return
    fi
    sleep 0.5
  done
  log "not ready; see $AX_RUN_DIR/apiserver.log"; tail -n 5 "$AX_RUN_DIR/apiserver.log" >&2; exit 1
}

cmd_stop() {
  local f
  for f in apiserver etcd; do
    [ -f "$AX_RUN_DIR/$f.pid" ] && kill "$(cat "$AX_RUN_DIR/$f.pid")" 2>/dev/null || true
    rm -f "$AX_RUN_DIR/$f.pid"
  done
  rm -rf "$AX_RUN_DIR/etcd"
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  env) echo "export APIEXT_KUBECONFIG=$AX_RUN_DIR/kubeconfig" ;;
  *) sed -n '2,31p' "$0"; exit 2 ;;
esac
