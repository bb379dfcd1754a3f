#!/usr/bin/env bash
# Fetch etcd 3.5.16 (Debian trixie's etcd-server / etcd-client, which run
# on this bookworm machine) for the comparison runner. etcd 3.5.1, the
# PyPI build the tests use, acknowledges a write on a one-member cluster
# before its WAL fsync ends (etcd issue 14370, fixed in 3.4.21 and 3.5.5):
# against it, a single-member put compares a durable Strata with a
# non-durable etcd. 3.5.16 waits for the fsync, as Strata does.
#
# The packages come from the Debian archive this machine's apt already
# uses (the URI of /etc/apt/sources.list.d/debian.sources), suite trixie,
# through a private apt state: the system's own package lists and
# installed packages are left alone. Idempotent: does nothing when the
# binaries are cached.
#
#   bench/scripts/install-etcd-3.5.16.sh     # prints the etcd binary's path
#
# Cache: ${STRATA_CACHE:-$HOME/.cache/strata}/etcd-3.5.16/bin/{etcd,etcdctl,etcdutl}
set -euo pipefail

VERSION="3.5.16-4"
STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
OUT_DIR="$STRATA_CACHE/etcd-3.5.16"
BIN="$OUT_DIR/bin/etcd"
log() { echo "install-etcd-3.5.16: $*" >&2; }

if [ -x "$BIN" ] && [ -x "$OUT_DIR/bin/etcdctl" ]; then echo "$BIN"; exit 0; fi

sources=/etc/apt/sources.list.d/debian.sources
uri="$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null || true)"
[ -n "$uri" ] || { log "no Debian archive URI in $sources"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
cat >"$work/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o "Dir::Etc::SourceList=$work/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
log "fetching the trixie package lists (private apt state)"
apt-get "${apt_opts[@]}" update -qq >/dev/null
log "downloading etcd-server and etcd-client $VERSION"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "etcd-server=$VERSION" "etcd-client=$VERSION" >/dev/null)
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/root"; done
mkdir -p "$OUT_DIR/bin"
for b in etcd etcdctl etcdutl; do
  install -m 0755 "$work/root/usr/bin/$b" "$OUT_DIR/bin/$b"
done
"$BIN" --version | head -n1 >&2
echo "$BIN"
