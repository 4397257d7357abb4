#!/usr/bin/env bash
# control-plane.sh - a local, envtest-like Kubernetes 1.20 control plane (real kube-apiserver
# backed by real etcd, and for the cluster tier the scheduler, controller manager, kubelet and
# kube-proxy) built only from Debian packages; `start` honours KUBEBUILDER_ASSETS.
#
#   control-plane.sh install   # fetch sources/binaries with apt and build kube-apiserver, kube-scheduler,
#                              # kube-controller-manager, kubelet and kube-proxy (idempotent)
#   control-plane.sh start     # start etcd + kube-apiserver on free loopback ports, write a kubeconfig
#   control-plane.sh restart   # stop both and start them again keeping port, certificates, token
#                              # and etcd data (a control-plane reboot as clients see it)
#   control-plane.sh stop      # stop both and delete the etcd data
#   control-plane.sh status    # show whether it is running
#   control-plane.sh env       # print the export line again
#
# What it uses (all from Debian bookworm, through apt, no other network access):
#   - source package  kubernetes 1.20.5+really1.20.2-*  (full upstream v1.20.2 tree incl. vendor/)
#   - golang-1.19-go / golang-1.19-src                  (Go toolchain, unpacked, not installed)
#   - golang-github-modern-go-reflect2-dev 1.0.2        (replaces vendored reflect2 1.0.1, which
#                                                         is broken with Go >= 1.18)
#   - etcd-server 3.4.x                                 (unpacked, not installed)
# Nothing is installed into the system; everything lives under the cache directory.
#
# Environment:
#   CP_CACHE_DIR   cache/build directory   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/k8s-control-plane)
#   CP_RUN_DIR     runtime state directory (default: $CP_CACHE_DIR/run)
#   CP_DEBIAN_MIRROR  Debian mirror URI    (default: taken from the system's apt configuration)
#   CP_KEEP_BUILD=1   keep the Go build cache and extracted source after install
#   CP_KEEP_DATA=1    keep the etcd data directory on stop
#   CP_START_TIMEOUT  seconds to wait for readiness (default 120)
#   CP_ADDRESS     address kube-apiserver listens on and advertises, and the kubeconfig names
#                  (default 127.0.0.1; scripts/cluster.sh gives its pod bridge's host address)
#   CP_CLUSTER=1   a control plane for real nodes (scripts/cluster.sh): the ServiceAccount and
#                  NodeRestriction admission plugins on, Node + RBAC authorization, a client
#                  certificate for the apiserver's calls to kubelets (logs, exec), InternalIP
#                  first. Without it pods are never created, so ServiceAccount admission (which
#                  waits for the token controller of kube-controller-manager) stays off.
set -euo pipefail

CACHE="${CP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-control-plane}"
RUN="${CP_RUN_DIR:-$CACHE/run}"
BIN="$CACHE/bin"
# start runs the binaries of KUBEBUILDER_ASSETS (the envtest convention) when set.
ASSETS="${KUBEBUILDER_ASSETS:-$BIN}"
ADDRESS="${CP_ADDRESS:-127.0.0.1}"
CLUSTER="${CP_CLUSTER:-0}"
K8S_SUITE=bookworm
K8S_UPSTREAM=v1.20.2
GOVER=1.19

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- install
debian_mirror() {
  if [ -n "${CP_DEBIAN_MIRROR:-}" ]; then echo "$CP_DEBIAN_MIRROR"; return; fi
  local m=""
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    m=$(awk '/^URIs:/{for(i=2;i<=NF;i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
    [ -n "$m" ] && break
  done
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1=="deb" {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):.*\/debian\/?$/) {print $i; exit}}' | head -n1)
  fi
  [ -n "$m" ] || die "cannot find a Debian mirror in /etc/apt; set CP_DEBIAN_MIRROR"
  echo "$m"
}

APTO=()
apt_setup() {
  local a="$CACHE/apt" mirror
  mirror=$(debian_mirror)
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/etc/preferences.d" "$a/etc/apt.conf.d"
  cat > "$a/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $K8S_SUITE main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $K8S_SUITE main
EOF
  APTO=(-o "Dir::Etc::SourceList=$a/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$a/etc/preferences.d"
        -o "Dir::State::Lists=$a/lists" -o "Dir::State::status=/dev/null" -o "Dir::Cache=$a/cache"
        -o "APT::Architecture=amd64" -o "APT::Architectures=amd64" -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1")
  if [ ! -f "$a/updated.stamp" ] || [ -n "$(find "$a/updated.stamp" -mmin +1440 2>/dev/null)" ]; then
    log "apt-get update (private lists for $K8S_SUITE incl. deb-src from $mirror)"
    apt-get -q "${APTO[@]}" update >"$a/update.log" 2>&1 || { cat "$a/update.log" >&2; die "apt-get update failed"; }
    touch "$a/updated.stamp"
  fi
}

fetch_debs() {
  # $1 = dest dir, rest = packages
  local d=$1; shift
  mkdir -p "$d"
  ( cd "$d" && apt-get -q "${APTO[@]}" download "$@" ) >&2
}

# What install builds (all from the same kubernetes source tree) and checks for.
K8S_BINARIES=(kube-apiserver kube-scheduler kube-controller-manager kubelet kube-proxy)

installed() {
  local b
  for b in etcd "${K8S_BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
  [ -f "$BIN/.installed" ]
}

cmd_install() {
  [ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported"
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "needs apt-get and dpkg-deb (Debian/Ubuntu host)"
  command -v openssl >/dev/null || die "needs openssl"
  mkdir -p "$CACHE" "$BIN"
  local t0; t0=$(date +%s)

  if installed; then
    log "already installed: $(cat "$BIN/.installed")"
    return 0
  fi
  apt_setup
  local dl="$CACHE/downloads"
  mkdir -p "$dl"

  # etcd -----------------------------------------------------------------
  if [ ! -x "$BIN/etcd" ]; then
    rm -f "$dl"/etcd-server_*.deb
    fetch_debs "$dl" etcd-server
    rm -rf "$CACHE/etcd-root"; mkdir -p "$CACHE/etcd-root"
    dpkg-deb -x "$dl"/etcd-server_*.deb "$CACHE/etcd-root"
    install -m 0755 "$CACHE/etcd-root/usr/bin/etcd" "$BIN/etcd"
    rm -rf "$CACHE/etcd-root"
  fi
  "$BIN/etcd" --version | head -n1 >&2

  # Go toolchain ----------------------------------------------------------
  local goroot="$CACHE/go/usr/lib/go-$GOVER"
  if [ ! -x "$goroot/bin/go" ]; then
    rm -f "$dl"/golang-$GOVER-*.deb
    fetch_debs "$dl" golang-$GOVER-go golang-$GOVER-src
    rm -rf "$CACHE/go"; mkdir -p "$CACHE/go"
    local deb; for deb in "$dl"/golang-$GOVER-*.deb; do dpkg-deb -x "$deb" "$CACHE/go"; done
  fi
  "$goroot/bin/go" version >&2

  # reflect2 1.0.2 (vendored 1.0.1 crashes at runtime with Go >= 1.18) -------
  local r2="$CACHE/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2"
  if [ ! -f "$r2/reflect2.go" ]; then
    rm -f "$dl"/golang-github-modern-go-reflect2-dev_*.deb
    fetch_debs "$dl" golang-github-modern-go-reflect2-dev
    rm -rf "$CACHE/reflect2"; mkdir -p "$CACHE/reflect2"
    dpkg-deb -x "$dl"/golang-github-modern-go-reflect2-dev_*.deb "$CACHE/reflect2"
  fi

  # kubernetes source -----------------------------------------------------
  local srcd="$CACHE/src"
  local tree="$CACHE/gopath/src/k8s.io/kubernetes"
  if [ ! -f "$tree/cmd/kube-apiserver/apiserver.go" ]; then
    mkdir -p "$srcd"
    if ! ls "$srcd"/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
      log "downloading Debian source package 'kubernetes' ($K8S_SUITE)"
      ( cd "$srcd" && apt-get -q "${APTO[@]}" source --download-only kubernetes ) >&2
    fi
    local orig; orig=$(ls "$srcd"/kubernetes_*.orig.tar.gz | head -n1)
    case "$orig" in *1.20.2*) ;; *) log "WARNING: unexpected source version $orig (expected 1.20.2)";; esac
    rm -rf "$CACHE/gopath"; mkdir -p "$CACHE/gopath/src/k8s.io"
    tar -xzf "$orig" -C "$CACHE/gopath/src/k8s.io"
    mv "$CACHE/gopath/src/k8s.io"/kubernetes-* "$tree"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
    cp "$r2"/*.go "$r2"/*.s "$tree/vendor/github.com/modern-go/reflect2/"
    rm -f "$tree/vendor/github.com/modern-go/reflect2/unsafe_link_gccgo.go"
  fi

  # build -----------------------------------------------------------------
  # Every binary comes from the one source tree in one run, so all but the first reuse the Go
  # build cache (kubelet takes ~30 s once kube-apiserver's packages are compiled).
  local ld="" p bd; bd=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
    ld="$ld -X $p.gitVersion=$K8S_UPSTREAM -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean -X $p.buildDate=$bd"
  done
  local -a goenv=(env GOROOT="$goroot" PATH="$goroot/bin:$PATH" GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache"
                  GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0)
  # pkg/generated/openapi/zz_generated.openapi.go is not shipped in the tarball; upstream's
  # 'make' generates it (Makefile.generated_files, gen_openapi). Same input selection here.
  if [ ! -f "$tree/pkg/generated/openapi/zz_generated.openapi.go" ]; then
    log "generating pkg/generated/openapi with openapi-gen"
    ( cd "$tree"
      "${goenv[@]}" go build -o "$CACHE/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
      dirs=$(find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) -type f -name '*.go' |
             sed 's|^./staging/src|vendor|; s|/[^/]*$||; s|^./||' | LC_ALL=C sort -u)
      inputs=$(for d in $dirs; do find -H "$d" -maxdepth 1 -type f -name '*.go'; done |
               xargs grep -l '^// *+k8s:' | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' |
               xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u |
               sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
      "${goenv[@]}" "$CACHE/openapi-gen" --logtostderr -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$CACHE/openapi_violations.report" >"$CACHE/openapi-gen.log" 2>&1 ||
        { tail -n 20 "$CACHE/openapi-gen.log" >&2; exit 1; }
      diff <(LC_ALL=C sort "$CACHE/openapi_violations.report") <(LC_ALL=C sort api/api-rules/violation_exceptions.list) >/dev/null ||
        log "WARNING: openapi API-rule report differs from upstream's known list (see $CACHE/openapi_violations.report)" )
  fi
  local b b0
  for b in "${K8S_BINARIES[@]}"; do
    if [ ! -x "$BIN/$b" ]; then
      log "building $b $K8S_UPSTREAM with go$GOVER (GOPATH mode, vendored deps) - takes a while"
      b0=$(date +%s)
      ( cd "$tree" &&
        "${goenv[@]}" go build -trimpath -ldflags "-s -w $ld" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b" )
      mv "$BIN/$b.tmp" "$BIN/$b"
      log "$b took $(( $(date +%s) - b0 ))s"
    fi
    "$BIN/$b" --version >&2 || die "$b does not run"
  done

  if [ "${CP_KEEP_BUILD:-0}" != 1 ]; then
    log "removing build intermediates (set CP_KEEP_BUILD=1 to keep)"
    chmod -R u+w "$CACHE/gocache" 2>/dev/null || true
    rm -rf "$CACHE/gocache" "$CACHE/gopath" "$CACHE/go" "$CACHE/reflect2" "$CACHE/openapi-gen"
  fi
  echo "${K8S_BINARIES[*]} $K8S_UPSTREAM (debian $K8S_SUITE src), $("$BIN/etcd" --version | head -n1)" > "$BIN/.installed"
  log "install done in $(( $(date +%s) - t0 ))s; binaries in $BIN"
}

# ---------------------------------------------------------------- start/stop
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && ! (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
free_ports() {
  # prints $1 distinct free loopback ports
  local want=$1 got="" p i
  for i in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    case " $got " in *" $p "*) continue;; esac
    if port_free "$p"; then got="$got $p"; fi
    [ "$(echo $got | wc -w)" -ge "$want" ] && { echo $got; return 0; }
  done
  die "no free ports found"
}

# A PID runs when it exists and is not a zombie: once `start` has exited, its servers belong to
# PID 1, which reaps them in its own time.
running() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
pid_alive() { [ -f "$1" ] && running "$(cat "$1")"; }

gen_certs() {
  local c="$RUN/certs"
  mkdir -p "$c"
  ( cd "$c"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.crt \
      -subj "/CN=k8s-control-plane-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:$ADDRESS,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1" > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" > admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    if [ "$CLUSTER" = 1 ]; then
      # The apiserver's identity towards kubelets (kubectl logs/exec): full access to their API.
      openssl req -newkey rsa:2048 -nodes -sha256 -keyout kubelet-client.key -out kubelet-client.csr \
        -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
      openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
        -extfile admin.ext -out kubelet-client.crt 2>/dev/null
    fi
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext )
}

b64() { base64 -w0 < "$1"; }

print_env() { echo "export KUBECONFIG=$RUN/kubeconfig"; }

cmd_start() {
  [ -x "$ASSETS/kube-apiserver" ] && [ -x "$ASSETS/etcd" ] || die "not installed; run: $0 install"
  local t; for t in openssl curl setsid base64 od; do command -v "$t" >/dev/null || die "start needs '$t'"; done
  if pid_alive "$RUN/apiserver.pid" && pid_alive "$RUN/etcd.pid"; then
    log "already running"; print_env; return 0
  fi
  cmd_stop >/dev/null 2>&1 || true
  mkdir -p "$RUN"
  local t0; t0=$(date +%s%N)
  local etcd_port peer_port api_port
  read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
  gen_certs
  local token; token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" > "$RUN/token.csv"
  chmod 600 "$RUN/token.csv"
  printf 'api_port=%s\netcd_port=%s\npeer_port=%s\naddress=%s\n' "$api_port" "$etcd_port" "$peer_port" "$ADDRESS" > "$RUN/ports"
  : > "$RUN/etcd.log"; : > "$RUN/apiserver.log"   # launch appends, so that a restart keeps both runs' logs
  launch "$etcd_port" "$peer_port" "$api_port"
  local ca; ca=$(b64 "$RUN/certs/ca.crt")
  cat > "$RUN/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$ADDRESS:$api_port
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
- name: admin-cert
  user:
    client-certificate-data: $(b64 "$RUN/certs/admin.crt")
    client-key-data: $(b64 "$RUN/certs/admin.key")
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
- name: local-cert
  context: {cluster: local, user: admin-cert, namespace: default}
current-context: local
EOF
  chmod 600 "$RUN/kubeconfig"

  wait_ready "$api_port" "$token" "$t0"
  log "logs: $RUN/apiserver.log $RUN/etcd.log"
  print_env
}

# Starts etcd and kube-apiserver in their own sessions on the given ports, with the certificates
# and token in $RUN (start makes them; restart reuses them).
launch() {
  local etcd_port=$1 peer_port=$2 api_port=$3
  local -a mode=(--authorization-mode RBAC --disable-admission-plugins ServiceAccount)
  if [ "$CLUSTER" = 1 ]; then
    mode=(--authorization-mode "Node,RBAC" --enable-admission-plugins NodeRestriction
          --kubelet-client-certificate "$RUN/certs/kubelet-client.crt" --kubelet-client-key "$RUN/certs/kubelet-client.key"
          --kubelet-preferred-address-types InternalIP)
  fi

  mkdir -p "$RUN/etcd-data"
  ( cd "$RUN" && exec setsid "$ASSETS/etcd" --name default --data-dir "$RUN/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "default=http://127.0.0.1:$peer_port" --initial-cluster-state new \
      --log-level warn --logger zap >>"$RUN/etcd.log" 2>&1 ) &
  echo $! > "$RUN/etcd.pid"

  ( cd "$RUN" && exec setsid "$ASSETS/kube-apiserver" \
      --etcd-servers "http://127.0.0.1:$etcd_port" \
      --bind-address "$ADDRESS" --advertise-address "$ADDRESS" --secure-port "$api_port" --insecure-port 0 \
      --tls-cert-file "$RUN/certs/apiserver.crt" --tls-private-key-file "$RUN/certs/apiserver.key" \
      --client-ca-file "$RUN/certs/ca.crt" --token-auth-file "$RUN/token.csv" \
      "${mode[@]}" --allow-privileged=true \
      --service-cluster-ip-range 10.0.0.0/24 \
      --service-account-issuer https://kubernetes.default.svc.cluster.local \
      --service-account-key-file "$RUN/certs/sa.pub" --service-account-signing-key-file "$RUN/certs/sa.key" \
      --cert-dir "$RUN/certs" --profiling=false \
      --v 1 >>"$RUN/apiserver.log" 2>&1 ) &
  echo $! > "$RUN/apiserver.pid"
}

# Waits for /readyz and the 'default' namespace (created asynchronously by the apiserver).
wait_ready() {
  local api_port=$1 token=$2 t0=$3
  local deadline=$(( $(date +%s) + ${CP_START_TIMEOUT:-120} ))
  until [ "$(curl -s --max-time 2 --cacert "$RUN/certs/ca.crt" -H "Authorization: Bearer $token" \
               "https://$ADDRESS:$api_port/readyz" 2>/dev/null)" = ok ]; do
    if ! pid_alive "$RUN/etcd.pid"; then tail -n 20 "$RUN/etcd.log" >&2; die "etcd exited"; fi
    if ! pid_alive "$RUN/apiserver.pid"; then tail -n 30 "$RUN/apiserver.log" >&2; die "kube-apiserver exited"; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then tail -n 30 "$RUN/apiserver.log" >&2; die "timed out waiting for /readyz"; fi
    sleep 0.2
  done
  until curl -sf --max-time 2 --cacert "$RUN/certs/ca.crt" -H "Authorization: Bearer $token" \
          "https://$ADDRESS:$api_port/api/v1/namespaces/default" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for namespace default"
    sleep 0.2
  done
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "kube-apiserver $K8S_UPSTREAM ready at https://$ADDRESS:$api_port in ${ms}ms"
}

# Stops both servers and starts them again on the same ports with the same certificates, token
# and etcd data: what a control-plane node's reboot looks like to clients (kubeconfigs stay
# valid; watches break and must resume).
cmd_restart() {
  [ -f "$RUN/ports" ] && [ -f "$RUN/token.csv" ] || die "nothing to restart in $RUN; run: $0 start"
  local t0; t0=$(date +%s%N)
  local api_port etcd_port peer_port
  api_port=$(sed -n 's/^api_port=//p' "$RUN/ports")
  etcd_port=$(sed -n 's/^etcd_port=//p' "$RUN/ports")
  peer_port=$(sed -n 's/^peer_port=//p' "$RUN/ports")
  local token; token=$(cut -d, -f1 "$RUN/token.csv")
  stop_pid "$RUN/apiserver.pid"
  stop_pid "$RUN/etcd.pid"
  local down_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  launch "$etcd_port" "$peer_port" "$api_port"
  wait_ready "$api_port" "$token" "$t0"
  log "restarted (stopping took ${down_ms}ms); same port, certificates, token and etcd data"
  print_env
}

stop_pid() {
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_stop() {
  stop_pid "$RUN/apiserver.pid"
  stop_pid "$RUN/etcd.pid"
  if [ "${CP_KEEP_DATA:-0}" != 1 ]; then rm -rf "$RUN/etcd-data"; fi
  log "stopped"
}

cmd_status() {
  if pid_alive "$RUN/apiserver.pid" && pid_alive "$RUN/etcd.pid"; then
    log "running: $(tr '\n' ' ' < "$RUN/ports")"; print_env
  else
    log "not running"; return 1
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start)   cmd_start ;;
  restart) cmd_restart ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  env)     print_env ;;
  *) echo "usage: $0 {install|start|restart|stop|status|env}" >&2; exit 2 ;;
esac
