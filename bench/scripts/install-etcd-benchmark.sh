#!/usr/bin/env bash
# Build etcd's own `benchmark` tool (tools/benchmark of etcd 3.4.23) from
# Debian's etcd source package, offline, with Debian's Go packages. It is the
# neutral second load generator of the comparison runner. Idempotent: does
# nothing when the binary is already cached.
#
#   bench/scripts/install-etcd-benchmark.sh     # prints the binary's path
#
# Cache: ${STRATA_CACHE:-$HOME/.cache/strata}/etcd-benchmark/benchmark
set -euo pipefail

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
OUT_DIR="$STRATA_CACHE/etcd-benchmark"
BIN="$OUT_DIR/benchmark"
log() { echo "install-etcd-benchmark: $*" >&2; }

if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
ensure_deb_src
apt_need golang-go golang-etcd-server-dev dpkg-dev

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading Debian's etcd source package"
debian_source etcd src
gp="$work/gopath"
mkdir -p "$gp/src/go.etcd.io/etcd/tools"
cp -r src/tools/benchmark "$gp/src/go.etcd.io/etcd/tools/"
log "building tools/benchmark"
(cd "$gp/src/go.etcd.io/etcd/tools/benchmark" &&
  GO111MODULE=off GOPROXY=off GOFLAGS=-mod=mod GOPATH="$gp:/usr/share/gocode" GOCACHE="$work/gocache" \
    go build -o benchmark . 2>&1 | tail -20)
mkdir -p "$OUT_DIR"
mv "$gp/src/go.etcd.io/etcd/tools/benchmark/benchmark" "$BIN"
echo "$BIN"
