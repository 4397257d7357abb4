#!/usr/bin/env bash
# Builds the operator, agent and pause images as OCI archives without a Docker engine, and
# optionally imports them into containerd. Used by the local cluster (scripts/cluster.sh); the
# Dockerfiles remain the way to build images for a registry.
#
#   scripts/build-images.sh                       # build $IMAGES_DIR/{operator,agent,pause}.tar
#   scripts/build-images.sh --import SOCKET...    # build, then import into each containerd
#   scripts/build-images.sh --import-only SOCKET...  # import what an earlier run built
#
# Each image has the runtime layout of the final stage of Dockerfile.operator / Dockerfile.agent
# (distroless cc, nonroot): the binary in /usr/local/bin, user 65532:65532, the agent's ONNX
# Runtime in /usr/local/lib/onnxruntime with ORT_DYLIB_PATH, WORKDIR /var/cache/policyserve,
# nothing written to the root filesystem. distroless cannot be pulled here, so the base root is
# made from the Debian bookworm packages distroless cc is made of: libc6, libgcc-s1, libstdc++6
# and ca-certificates (apt-get download + dpkg-deb -x), plus the nonroot user. The sandbox
# ("pause") image is Kubernetes' own pause.c from the source package control-plane.sh builds
# from, linked statically.
#
# Environment:
#   IMAGE_PROFILE  cargo profile of the binaries: debug (default: what `cargo test` builds,
#                  stripped of debug info here) or release
#   IMAGE_BUILD=0  use the binaries already in target/<profile> instead of running cargo build
#   IMAGE_TAG      tag of the operator and agent images (default: local)
#   IMAGES_DIR     where the archives go (default: $POLICYSERVE_CACHE/images)
#   ORT_DYLIB_PATH the ONNX Runtime library to ship (set by ~/.cache/policyserve/env.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${POLICYSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/policyserve}"
CP_CACHE="${CP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-control-plane}"
PROFILE="${IMAGE_PROFILE:-debug}"
TAG="${IMAGE_TAG:-local}"
OUT="${IMAGES_DIR:-$CACHE/images}"
# The names the chart is pointed at (charts' image.repository); `localhost/` keeps them from
# being read as Docker Hub names.
OPERATOR_IMAGE=localhost/policyserve-operator
AGENT_IMAGE=localhost/policyserve-agent
PAUSE_IMAGE=localhost/policyserve-pause
PAUSE_TAG=3.2
BASE_PACKAGES=(libc6 libgcc-s1 libstdc++6 ca-certificates)

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in umoci dpkg-deb apt-get gcc objcopy tar ctr; do
  command -v "$tool" >/dev/null || die "needs '$tool' (make deps installs umoci; gcc, binutils and apt come with Debian)"
done
[ -n "${ORT_DYLIB_PATH:-}" ] && [ -f "$ORT_DYLIB_PATH" ] ||
  die "ORT_DYLIB_PATH must name libonnxruntime.so (run make deps and source ~/.cache/policyserve/env.sh)"

WORK="$(mktemp -d -t policyserve-images.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# ------------------------------------------------------------------ base root
# The Debian packages are downloaded once and kept; the root is rebuilt each time (seconds).
base_root() {
  local debs="$CACHE/image-debs" root="$WORK/base" deb
  mkdir -p "$debs"
  if [ "$(find "$debs" -maxdepth 1 -name '*.deb' | wc -l)" -lt ${#BASE_PACKAGES[@]} ]; then
    log "downloading ${BASE_PACKAGES[*]} (Debian bookworm)"
    ( cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "${BASE_PACKAGES[@]}" ) >&2
  fi
  mkdir -p "$root"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$root"/usr/share/{doc,man,info,lintian,locale}
  # What ca-certificates' postinst (update-ca-certificates) would write.
  mkdir -p "$root/etc/ssl/certs"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
  # distroless' users: root and nonroot (65532), no shell.
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' > "$root/etc/group"
  mkdir -p "$root/home/nonroot" "$root/root" "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  ldconfig -r "$root" 2>/dev/null || true
}

# ------------------------------------------------------------------ images
# new_image NAME: an empty OCI layout in $WORK/NAME with tag $TAG holding the base root.
new_image() {
  local layout="$WORK/$1" tag=$2
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" "$WORK/base" /
}

# stripped BINARY: a copy without debug info (a debug build is ~250 MB, mostly DWARF).
stripped() {
  local name; name=$(basename "$1")
  mkdir -p "$WORK/bin"
  objcopy --strip-debug "$1" "$WORK/bin/$name"
  echo "$WORK/bin/$name"
}

export_image() {
  local layout="$WORK/$1" file="$OUT/$1.tar"
  tar -C "$layout" -cf "$file.tmp" .
  mv "$file.tmp" "$file"
  log "$file ($(du -h "$file" | cut -f1))"
}

build_pause() {
  local orig src="$WORK/pause-src"
  orig=$(find "$CP_CACHE/src" -maxdepth 1 -name 'kubernetes_*.orig.tar.gz' 2>/dev/null | head -n1 || true)
  [ -n "$orig" ] || die "no kubernetes source tarball in $CP_CACHE/src (run scripts/control-plane.sh install)"
  mkdir -p "$src/root"
  tar -xzf "$orig" -C "$src" --wildcards --strip-components=4 '*/build/pause/linux/pause.c'
  gcc -Os -Wall -Werror -static -DVERSION="$PAUSE_TAG-policyserve" -o "$src/root/pause" "$src/pause.c"
  strip "$src/root/pause"
  local layout="$WORK/pause"
  umoci init --layout "$layout"
  umoci new --image "$layout:$PAUSE_TAG"
  umoci insert --image "$layout:$PAUSE_TAG" "$src/root/pause" /pause
  umoci config --image "$layout:$PAUSE_TAG" --config.user 65535:65535 --config.entrypoint /pause
  export_image pause
}

build_operator() {
  local bin; bin=$(stripped "$ROOT/target/$PROFILE/policyserve-operator")
  new_image operator "$TAG"
  umoci insert --image "$WORK/operator:$TAG" "$bin" /usr/local/bin/policyserve-operator
  umoci config --image "$WORK/operator:$TAG" --config.user 65532:65532 \
    --config.workingdir /home/nonroot --config.exposedports 8080/tcp \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.entrypoint /usr/local/bin/policyserve-operator \
    --config.label org.opencontainers.image.title=policyserve-operator
  export_image operator
}

build_agent() {
  local bin lib="$WORK/onnxruntime" version
  bin=$(stripped "$ROOT/target/$PROFILE/policyserve-agent")
  version=$(basename "$(readlink -f "$ORT_DYLIB_PATH")")
  mkdir -p "$lib"
  cp "$(readlink -f "$ORT_DYLIB_PATH")" "$lib/$version"
  ln -s "$version" "$lib/libonnxruntime.so"
  mkdir -p "$WORK/workdir/var/cache/policyserve"
  new_image agent "$TAG"
  umoci insert --image "$WORK/agent:$TAG" "$bin" /usr/local/bin/policyserve-agent
  umoci insert --image "$WORK/agent:$TAG" "$lib" /usr/local/lib/onnxruntime
  umoci insert --image "$WORK/agent:$TAG" "$WORK/workdir/var/cache/policyserve" /var/cache/policyserve
  umoci config --image "$WORK/agent:$TAG" --config.user 65532:65532 \
    --config.workingdir /var/cache/policyserve --config.exposedports 8001/tcp --config.exposedports 8002/tcp \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.env ORT_DYLIB_PATH=/usr/local/lib/onnxruntime/libonnxruntime.so \
    --config.entrypoint /usr/local/bin/policyserve-agent --config.cmd run \
    --config.label org.opencontainers.image.title=policyserve-agent
  export_image agent
}

import_into() {
  local sock=$1
  [ -S "$sock" ] || die "no containerd socket at $sock"
  ctr --address "$sock" -n k8s.io images import --base-name "$PAUSE_IMAGE" "$OUT/pause.tar" >/dev/null
  ctr --address "$sock" -n k8s.io images import --base-name "$OPERATOR_IMAGE" "$OUT/operator.tar" >/dev/null
  ctr --address "$sock" -n k8s.io images import --base-name "$AGENT_IMAGE" "$OUT/agent.tar" >/dev/null
  log "imported $PAUSE_IMAGE:$PAUSE_TAG $OPERATOR_IMAGE:$TAG $AGENT_IMAGE:$TAG into $sock"
}

build_all() {
  local t0; t0=$(date +%s)
  if [ "${IMAGE_BUILD:-1}" = 0 ]; then
    local b
    for b in policyserve-operator policyserve-agent; do
      [ -x "$ROOT/target/$PROFILE/$b" ] || die "no target/$PROFILE/$b to put in an image (IMAGE_BUILD=0)"
    done
    log "using the binaries in target/$PROFILE as they are (IMAGE_BUILD=0)"
  elif [ "$PROFILE" = release ]; then
    log "cargo build --release (operator, agent)"
    ( cd "$ROOT" && cargo build -q --release -p policyserve-operator -p policyserve-agent )
  else
    log "cargo build (operator, agent; debug, as cargo test builds them)"
    ( cd "$ROOT" && cargo build -q -p policyserve-operator -p policyserve-agent )
  fi
  base_root
  build_pause
  build_operator
  build_agent
  log "built in $(( $(date +%s) - t0 ))s"
}

case "${1:-}" in
  "") build_all ;;
  --import) shift; build_all; for sock in "$@"; do import_into "$sock"; done ;;
  --import-only) shift; for sock in "$@"; do import_into "$sock"; done ;;
  *) echo "usage: $0 [--import|--import-only SOCKET...]" >&2; exit 2 ;;
esac
