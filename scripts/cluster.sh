#!/usr/bin/env bash
# A local Kubernetes 1.20 cluster with real nodes on this machine: the control plane of
# control-plane.sh plus kube-controller-manager, kube-scheduler and kube-proxy, and per node a
# containerd (runc, CNI bridge) and a kubelet registered as a Node. Pods run the images
# scripts/build-images.sh makes from this checkout; `up` installs the chart with them.
#
#   scripts/cluster.sh up [--no-chart]   # start everything (and helm install the chart)
#   scripts/cluster.sh down              # stop everything, leave no process, mount or device
#   scripts/cluster.sh status            # what runs
#   scripts/cluster.sh node-stop N       # node N goes away (kubelet, containerd, its pods)
#   scripts/cluster.sh node-start N      # and comes back, as after a reboot
#   scripts/cluster.sh env               # the export line again
#
# The machine has one network namespace, so every node shares it: node N gets the bridge
# psbr<N-1> with the pod CIDR 10.244.<N-1>.0/24, whose host address 10.244.<N-1>.1 is also its
# InternalIP; the apiserver listens on and advertises 10.244.0.1, the host side of node 1's
# bridge, which pods reach directly and through the `kubernetes` Service (10.0.0.1, kube-proxy
# in iptables mode). Each node's containerd and kubelet run in a mount namespace of their own
# (a private /run and /var/log; kubelet's and the sandboxes' mounts stay in it and vanish with
# it), with their own roots, socket, cgroup root and ports. There is no cluster DNS.
#
# Processes are started in their own sessions and ended by the PIDs recorded under
# $CLUSTER_DIR/pids; `down` also restores the sysctls kubelet, kube-proxy and the CNI bridge
# plugin change (kernel.panic*, vm.overcommit_memory, ip_forward, ...).
#
# Environment:
#   CLUSTER_DIR    state, certificates, logs (default: $POLICYSERVE_CACHE/cluster)
#   CLUSTER_NODES  number of nodes, 1 or 2 (default 2)
#   IMAGE_PROFILE  debug (default) or release binaries in the images (scripts/build-images.sh)
#   KUBEBUILDER_ASSETS  where kube-apiserver, etcd, kubelet, ... are (set by env.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/scripts"
CACHE="${POLICYSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/policyserve}"
DIR="${CLUSTER_DIR:-$CACHE/cluster}"
NODES="${CLUSTER_NODES:-2}"
ASSETS="${KUBEBUILDER_ASSETS:-${CP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-control-plane}/bin}"
RELEASE=policyserve
NAMESPACE=policyserve-system
POD_NETWORK=10.244.0.0/16
API_ADDRESS=10.244.0.1
PAUSE_IMAGE=localhost/policyserve-pause:3.2
IMAGE_TAG=local
TIMEOUT="${CLUSTER_TIMEOUT:-180}"
# Sysctls kubelet (kernel tunables), kube-proxy (route_localnet) and the bridge plugin
# (ip_forward) write; saved on `up`, restored on `down`.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
         net.bridge.bridge-nf-call-iptables)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

node_name() { echo "ps-node-$1"; }
bridge() { echo "psbr$(( $1 - 1 ))"; }
node_address() { echo "10.244.$(( $1 - 1 )).1"; }
node_subnet() { echo "10.244.$(( $1 - 1 )).0/24"; }
node_dir() { echo "$DIR/node-$1"; }

# Whether PID runs: exists and is not a zombie (once `up` has exited, its children belong to
# PID 1, which reaps them in its own time).
running() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
pid_alive() { [ -f "$DIR/pids/$1.pid" ] && running "$(cat "$DIR/pids/$1.pid")"; }

# start NAME COMMAND...: runs COMMAND in its own session, logs to logs/NAME.log, records its PID.
start() {
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
}

# stop NAME: SIGTERM the recorded PID, SIGKILL after 10 s.
stop() {
  local f="$DIR/pids/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$f"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${seconds}s waiting for $what"
    sleep 0.5
  done
}

kubectl_admin() { kubectl --kubeconfig "$DIR/kubeconfig" "$@"; }

print_env() { echo "export KUBECONFIG=$DIR/kubeconfig"; }

# ---------------------------------------------------------------- up
preflight() {
  [ "$(id -u)" = 0 ] || die "needs root (bridges, mounts, containers)"
  local t
  for t in containerd containerd-shim-runc-v2 runc ctr umoci iptables ip unshare nsenter openssl kubectl helm; do
    command -v "$t" >/dev/null || die "needs '$t': run make deps (apt: containerd runc containernetworking-plugins umoci iptables)"
  done
  for t in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$t" ] || die "needs the CNI plugin /usr/lib/cni/$t (apt: containernetworking-plugins)"
  done
  for t in kube-apiserver etcd kube-controller-manager kube-scheduler kube-proxy kubelet; do
    [ -x "$ASSETS/$t" ] || die "no $t in $ASSETS: run make deps (scripts/control-plane.sh install)"
  done
  case "$NODES" in 1|2) ;; *) die "CLUSTER_NODES must be 1 or 2" ;; esac
  # The nodes see private /run, /var/log and /var/lib: the cluster's own folder must not be there.
  case "$DIR" in /run/*|/var/run/*|/var/log/*|/var/lib/*) die "CLUSTER_DIR must not be under /run, /var/log or /var/lib" ;; esac
  # kubelet 1.20 with cgroupfs on cgroup v1 is what this runs; v2 has not been tried.
  [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] ||
    die "needs cgroup v1 (/sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)); cgroup v2 is not supported by this script yet"
  # The pod network must be ours alone.
  if [ -n "$(ip -o -4 addr show to "$POD_NETWORK")" ] || [ -n "$(ip -4 route show to match 10.244.0.1 | grep -v '^default')" ]; then
    die "$POD_NETWORK is already in use on this machine (ip addr / ip route): another local cluster is up? (make cluster-down, or CLUSTER_DIR=<its folder> $0 down)"
  fi
}

save_sysctls() {
  local key
  for key in "${SYSCTLS[@]}"; do
    if [ -e "/proc/sys/${key//.//}" ]; then echo "$key=$(cat "/proc/sys/${key//.//}")"; fi
  done > "$DIR/sysctl.saved"
}

make_bridges() {
  local i br
  for i in $(seq 1 "$NODES"); do
    br=$(bridge "$i")
    ip link add "$br" type bridge
    ip addr add "$(node_address "$i")/24" dev "$br"
    ip link set "$br" up
  done
}

# cert NAME CN [ORG]: a client certificate signed by the cluster CA, and a kubeconfig using it.
client_kubeconfig() {
  local name=$1 cn=$2 org=${3:-} pki="$DIR/pki" subj
  subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=clientAuth" > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$CA.crt" -CAkey "$CA.key" -CAcreateserial -days 3650 -sha256 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
  cat > "$pki/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$API_ADDRESS:$API_PORT", certificate-authority: "$CA.crt"}
users:
- name: $name
  user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
- name: local
  context: {cluster: local, user: $name}
current-context: local
EOF
}

# A kubelet serving certificate for node N's address (the apiserver connects there for logs).
serving_cert() {
  local i=$1 pki="$DIR/pki" name; name=$(node_name "$i")
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$pki/$name-serving.key" -out "$pki/$name-serving.csr" \
    -subj "/CN=$name" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:$(node_address "$i"),DNS:$name" > "$pki/$name-serving.ext"
  openssl x509 -req -in "$pki/$name-serving.csr" -CA "$CA.crt" -CAkey "$CA.key" -CAcreateserial -days 3650 \
    -sha256 -extfile "$pki/$name-serving.ext" -out "$pki/$name-serving.crt" 2>/dev/null
  rm -f "$pki/$name-serving.csr" "$pki/$name-serving.ext"
}

start_controllers() {
  local pki="$DIR/pki" certs="$DIR/control-plane/certs"
  client_kubeconfig controller-manager system:kube-controller-manager
  client_kubeconfig scheduler system:kube-scheduler
  client_kubeconfig proxy system:kube-proxy
  # The real controllers: Deployment, ReplicaSet, DaemonSet, Endpoints, EndpointSlice,
  # ServiceAccount and its tokens, garbage collector, namespace, node lifecycle... Each
  # controller uses its own ServiceAccount's credentials, as kubeadm sets it up.
  start controller-manager "$ASSETS/kube-controller-manager" --kubeconfig "$pki/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$pki/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$pki/controller-manager.kubeconfig" \
    --use-service-account-credentials=true --service-account-private-key-file "$certs/sa.key" \
    --root-ca-file "$certs/ca.crt" --cluster-signing-cert-file "$certs/ca.crt" \
    --cluster-signing-key-file "$certs/ca.key" --leader-elect=false --port 0 --secure-port 0 \
    --flex-volume-plugin-dir "$DIR/flexvolume" \
    --node-monitor-grace-period 40s --v 1
  start scheduler "$ASSETS/kube-scheduler" --kubeconfig "$pki/scheduler.kubeconfig" \
    --authentication-kubeconfig "$pki/scheduler.kubeconfig" --authorization-kubeconfig "$pki/scheduler.kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0 --v 1
  # One kube-proxy serves every node: they share this machine's network namespace and iptables.
  # No conntrack or OOM-score tuning (it needs privileges root lacks here, and is not ours).
  start proxy "$ASSETS/kube-proxy" --kubeconfig "$pki/proxy.kubeconfig" --proxy-mode iptables \
    --hostname-override "$(node_name 1)" --cluster-cidr "$POD_NETWORK" --bind-address "$API_ADDRESS" \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --oom-score-adj 0 --v 1
}

containerd_config() {
  local i=$1 node; node=$(node_dir "$i")
  cat > "$node/containerd.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$node/containerd.sock"
[ttrpc]
  address = "$node/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is the locally built pause.
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: never lower an OOM score below the runtime's own.
  restrict_oom_score_adj = true
  # Network namespaces live under the state folder, not in /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "$(node_address "$i")"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni"
EOF
  mkdir -p "$node/cni"
  cat > "$node/cni/10-policyserve.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "policyserve-$(node_name "$i")",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(bridge "$i")",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$(node_subnet "$i")", "gateway": "$(node_address "$i")"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$node/cni-ipam"
      }
    }
  ]
}
EOF
}

# Whether process $1 has left this shell's mount namespace (unshare has run).
own_mount_namespace() { [ "$(readlink "/proc/$1/ns/mnt")" != "$(readlink /proc/$$/ns/mnt)" ]; }

start_node() {
  local i=$1 name node address
  name=$(node_name "$i"); node=$(node_dir "$i"); address=$(node_address "$i")
  mkdir -p "$node"/{containerd,kubelet,var-log,cni-ipam}
  containerd_config "$i"
  serving_cert "$i"
  client_kubeconfig "$name" "system:node:$name" system:nodes
  # The node's mount namespace, held by a sleeping process: a private /run (shim sockets),
  # /var/log (kubelet's /var/log/pods, which each kubelet would otherwise clean of the other's
  # pods) and /var/lib (paths kubelet and libcni fix: /var/lib/kubelet/device-plugins,
  # /var/lib/cni). Mounts made inside (kubelet's, each sandbox's shm, network namespaces) stay
  # inside and go with it.
  start "ns-$name" unshare --mount --propagation private sleep infinity
  local ns; ns=$(cat "$DIR/pids/ns-$name.pid")
  wait_for "the mount namespace of $name" 10 own_mount_namespace "$ns"
  nsenter -t "$ns" -m mount -t tmpfs -o mode=0755 tmpfs /run
  nsenter -t "$ns" -m mount -t tmpfs -o mode=0755 tmpfs /var/lib
  nsenter -t "$ns" -m mount --bind "$node/var-log" /var/log
  start "containerd-$name" nsenter -t "$ns" -m containerd --config "$node/containerd.toml"
  wait_for "containerd of $name" 30 ctr --address "$node/containerd.sock" version
  IMAGE_TAG="$IMAGE_TAG" "$HERE/build-images.sh" --import-only "$node/containerd.sock"
  cgroup_root "$name"
  start "kubelet-$name" nsenter -t "$ns" -m "$ASSETS/kubelet" \
    --kubeconfig "$DIR/pki/$name.kubeconfig" --hostname-override "$name" --node-ip "$address" \
    --container-runtime=remote --container-runtime-endpoint "unix://$node/containerd.sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" \
    --volume-plugin-dir "$node/kubelet/volume-plugins" \
    --address "$address" --port $(( 10250 + 10 * (i - 1) )) --read-only-port 0 \
    --healthz-bind-address 127.0.0.1 --healthz-port $(( 10248 + 10 * (i - 1) )) \
    --tls-cert-file "$DIR/pki/$name-serving.crt" --tls-private-key-file "$DIR/pki/$name-serving.key" \
    --anonymous-auth=false --authorization-mode Webhook --client-ca-file "$CA.crt" \
    --cgroup-driver cgroupfs --cgroups-per-qos=true --enforce-node-allocatable=pods --cgroup-root "/policyserve/$name" \
    --fail-swap-on=false --oom-score-adj 0 --make-iptables-util-chains=false \
    --eviction-hard 'memory.available<100Mi,nodefs.available<1Gi,imagefs.available<1Gi' \
    --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --v 1
}

# The node's cgroup root in every hierarchy (cgroup v1), where kubelet caps its pods at the
# node's allocatable memory and runc puts their containers; cpuset needs its CPUs and memory
# nodes copied from the parent before it takes tasks.
cgroup_root() {
  local name=$1 c
  for c in /sys/fs/cgroup/*/; do
    [ -f "$c/cgroup.procs" ] || continue
    mkdir -p "$c/policyserve/$name"
    if [ -f "$c/cpuset.cpus" ]; then
      cat "$c/cpuset.cpus" > "$c/policyserve/cpuset.cpus"; cat "$c/cpuset.mems" > "$c/policyserve/cpuset.mems"
      cat "$c/cpuset.cpus" > "$c/policyserve/$name/cpuset.cpus"; cat "$c/cpuset.mems" > "$c/policyserve/$name/cpuset.mems"
    fi
  done
}

write_values() {
  cat > "$DIR/values-local.yaml" <<EOF
# The chart on the local cluster: images from scripts/build-images.sh (imported into each
# node's containerd, never pulled) and this checkout's models/ as every node's model folder.
operator:
  image: {repository: localhost/policyserve-operator, tag: "$IMAGE_TAG", pullPolicy: Never}
agent:
  image: {repository: localhost/policyserve-agent, tag: "$IMAGE_TAG", pullPolicy: Never}
  hostModels: {enabled: true, path: "$ROOT/models"}
EOF
}

install_chart() {
  log "helm install $RELEASE (namespace $NAMESPACE)"
  # --server-side=false: Helm 4 would apply the CRDs server-side, which 1.20 refuses for the
  # CEL rules (README: Install with Helm).
  helm --kubeconfig "$DIR/kubeconfig" install "$RELEASE" "$ROOT/charts/policyserve" \
    --namespace "$NAMESPACE" --create-namespace --server-side=false -f "$DIR/values-local.yaml" >/dev/null
  kubectl_admin -n "$NAMESPACE" rollout status deployment --timeout "${TIMEOUT}s" >&2
  kubectl_admin -n "$NAMESPACE" rollout status daemonset --timeout "${TIMEOUT}s" >&2
}

# On a failed `up`: the last lines of each log, then everything down again.
up_failed() {
  log "up failed; logs in $DIR/logs"
  local f
  for f in "$DIR"/logs/*.log; do
    [ -s "$f" ] && { echo "==> $f" >&2; tail -n 5 "$f" >&2; }
  done
  cmd_down >/dev/null 2>&1 || true
}

cmd_up() {
  local chart=1
  [ "${1:-}" = --no-chart ] && chart=0
  if [ -f "$DIR/cluster.env" ] && pid_alive controller-manager; then
    log "already up"; print_env; return 0
  fi
  preflight
  local t0; t0=$(date +%s)
  cmd_down >/dev/null 2>&1 || true
  rm -rf "$DIR"
  mkdir -p "$DIR"/{pids,logs,pki}
  UP_OK=0
  trap 'if [ "$UP_OK" != 1 ]; then up_failed; fi' EXIT

  log "building the images (IMAGE_PROFILE=${IMAGE_PROFILE:-debug})"
  IMAGE_TAG="$IMAGE_TAG" "$HERE/build-images.sh"
  save_sysctls
  make_bridges
  log "control plane on $API_ADDRESS"
  CP_RUN_DIR="$DIR/control-plane" CP_ADDRESS="$API_ADDRESS" CP_CLUSTER=1 KUBEBUILDER_ASSETS="$ASSETS" \
    "$HERE/control-plane.sh" start >/dev/null
  cp "$DIR/control-plane/kubeconfig" "$DIR/kubeconfig"
  CA="$DIR/control-plane/certs/ca"
  API_PORT=$(sed -n 's/^api_port=//p' "$DIR/control-plane/ports")
  start_controllers
  local i names=()
  for i in $(seq 1 "$NODES"); do
    log "node $(node_name "$i"): containerd + kubelet on $(bridge "$i") $(node_subnet "$i")"
    start_node "$i"
    names+=("$(node_name "$i")")
  done
  wait_for "the Nodes to register" "$TIMEOUT" kubectl_admin get node "${names[@]}"
  kubectl_admin wait --for condition=Ready node "${names[@]}" --timeout "${TIMEOUT}s" >/dev/null
  # Pods need their namespace's ServiceAccount before the first one can be admitted.
  wait_for "ServiceAccount default/default" "$TIMEOUT" kubectl_admin -n default get serviceaccount default
  write_values
  {
    echo "KUBECONFIG=$DIR/kubeconfig"
    echo "VALUES=$DIR/values-local.yaml"
    echo "NODES=${names[*]}"
    echo "API_ADDRESS=$API_ADDRESS"
    echo "RELEASE=$RELEASE"
    echo "NAMESPACE=$NAMESPACE"
  } > "$DIR/cluster.env"
  if [ "$chart" = 1 ]; then install_chart; fi
  UP_OK=1
  log "up in $(( $(date +%s) - t0 ))s: ${names[*]}; logs in $DIR/logs"
  kubectl_admin get nodes -o wide >&2
  print_env
}

# ---------------------------------------------------------------- down
# PIDs of the processes in cgroup folders under /policyserve (containers of our pods).
cgroup_pids() {
  local c
  for c in /sys/fs/cgroup/*/policyserve; do
    [ -d "$c" ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

stop_node() {
  local i=$1 name node ns pid
  name=$(node_name "$i"); node=$(node_dir "$i")
  stop "kubelet-$name"
  if [ -S "$node/containerd.sock" ] && pid_alive "containerd-$name"; then
    local c="ctr --address $node/containerd.sock -n k8s.io" id
    for id in $($c tasks ls -q 2>/dev/null); do $c tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $($c tasks ls -q 2>/dev/null); do
      for _ in $(seq 1 20); do $c tasks delete "$id" >/dev/null 2>&1 && break; sleep 0.2; done
    done
    for id in $($c containers ls -q 2>/dev/null); do $c containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  stop "containerd-$name"
  # Its pods are gone without a CNI DEL: release their addresses.
  rm -rf "${node:?}/cni-ipam"/*
  # What outlived containerd in the node's namespace (shims, normally gone with their tasks).
  if pid_alive "ns-$name"; then
    ns=$(readlink "/proc/$(cat "$DIR/pids/ns-$name.pid")/ns/mnt")
    local proc
    for proc in /proc/[0-9]*; do
      pid=${proc#/proc/}
      [ "$pid" = "$(cat "$DIR/pids/ns-$name.pid")" ] && continue
      [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ns" ] && kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  stop "ns-$name"
}

# kube-proxy --cleanup leaves its canary chains (KUBE-PROXY-CANARY); only kube-proxy makes
# KUBE-* chains on this machine.
remove_kube_chains() {
  local table chain
  for table in mangle filter nat; do
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

remove_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/policyserve; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

restore_sysctls() {
  [ -f "$DIR/sysctl.saved" ] || return 0
  local line
  while IFS= read -r line; do
    echo "${line#*=}" > "/proc/sys/$(echo "${line%%=*}" | tr . /)" 2>/dev/null || log "could not restore $line"
  done < "$DIR/sysctl.saved"
  rm -f "$DIR/sysctl.saved"
}

# Reports what is left behind; fails when anything is.
check_clean() {
  local left=""
  local f
  for f in "$DIR"/pids/*.pid; do
    [ -f "$f" ] && running "$(cat "$f")" && left="$left process:$(basename "$f" .pid)"
  done
  [ -n "$(cgroup_pids)" ] && left="$left container-processes:$(cgroup_pids | tr '\n' ,)"
  findmnt -rn -o TARGET | grep -qF "$DIR" && left="$left mounts:$(findmnt -rn -o TARGET | grep -F "$DIR" | tr '\n' ' ')"
  local link
  for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    case "$link" in psbr*) left="$left device:$link" ;; esac
  done
  if [ -n "$(ip -o link show type veth 2>/dev/null | grep -E 'master psbr')" ]; then left="$left veth"; fi
  if command -v iptables-save >/dev/null && iptables-save 2>/dev/null | grep -q 'KUBE-'; then left="$left iptables:KUBE-*"; fi
  if [ -n "$left" ]; then log "left behind:$left"; return 1; fi
  log "clean: no process, mount, network device or iptables rule left"
}

cmd_down() {
  local i
  for i in 2 1; do stop_node "$i"; done
  stop proxy
  stop scheduler
  stop controller-manager
  if [ -x "$ASSETS/kube-proxy" ] && command -v iptables >/dev/null; then
    "$ASSETS/kube-proxy" --cleanup >/dev/null 2>&1 || true
    remove_kube_chains
  fi
  if [ -d "$DIR/control-plane" ]; then CP_RUN_DIR="$DIR/control-plane" "$HERE/control-plane.sh" stop >/dev/null 2>&1 || true; fi
  remove_cgroups
  for i in 1 2; do
    ip link show "$(bridge "$i")" >/dev/null 2>&1 && ip link del "$(bridge "$i")"
  done
  restore_sysctls
  check_clean
  # Keep the logs for a post-mortem; the rest (certificates, node roots) goes.
  if [ -d "$DIR" ]; then find "$DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +; fi
}

# Variables start_node needs, from a running cluster's state.
load_state() {
  [ -f "$DIR/cluster.env" ] || die "no cluster in $DIR (run: $0 up)"
  CA="$DIR/control-plane/certs/ca"
  API_PORT=$(sed -n 's/^api_port=//p' "$DIR/control-plane/ports")
}

node_index() {
  case "${1:-}" in 1|2) [ "$1" -le "$NODES_UP" ] || die "the cluster has $NODES_UP node(s)"; echo "$1" ;;
    *) die "which node? 1 or 2" ;; esac
}

cmd_node_stop() {
  load_state
  NODES_UP=$(wc -w <<<"$(sed -n 's/^NODES=//p' "$DIR/cluster.env")")
  local i; i=$(node_index "${1:-}")
  stop_node "$i"
  log "node $(node_name "$i") stopped (its Node turns NotReady after kube-controller-manager's 40 s grace period)"
}

cmd_node_start() {
  load_state
  NODES_UP=$(wc -w <<<"$(sed -n 's/^NODES=//p' "$DIR/cluster.env")")
  local i; i=$(node_index "${1:-}")
  pid_alive "kubelet-$(node_name "$i")" && { log "node $(node_name "$i") is running"; return 0; }
  start_node "$i"
  kubectl_admin wait --for condition=Ready node "$(node_name "$i")" --timeout "${TIMEOUT}s" >/dev/null
  log "node $(node_name "$i") Ready"
}

cmd_status() {
  local f any=0
  for f in "$DIR"/pids/*.pid; do
    [ -f "$f" ] || continue
    any=1
    if running "$(cat "$f")"; then echo "running  $(basename "$f" .pid) (pid $(cat "$f"))"
    else echo "exited   $(basename "$f" .pid)"; fi
  done
  [ "$any" = 1 ] || { log "not running"; return 1; }
  kubectl_admin get nodes -o wide 2>/dev/null || true
  print_env
}

case "${1:-}" in
  up)     shift; cmd_up "$@" ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  env)    print_env ;;
  node-stop)  shift; cmd_node_stop "$@" ;;
  node-start) shift; cmd_node_start "$@" ;;
  *) echo "usage: $0 {up [--no-chart]|down|status|env|node-stop N|node-start N}" >&2; exit 2 ;;
esac
