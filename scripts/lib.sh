# Helpers shared by the install scripts (sourced, not run):
#   apt_need PKG...   install the Debian packages that are missing (quietly)
#   ensure_deb_src    add deb-src entries mirroring this machine's apt sources
#   debian_source PKG DIR
#                     download PKG's Debian source package into the current
#                     directory and unpack its upstream tarball into DIR
# Both need root or sudo; they do nothing when there is nothing to do.
# shellcheck shell=bash

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

apt_need() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "apt: installing ${need[*]}" >&2
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
      { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
  fi
}

ensure_deb_src() {
  local list=/etc/apt/sources.list.d/strata-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ /etc/apt/sources.list 2>/dev/null; then
    echo "adding deb-src entries ($list)" >&2
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | $SUDO tee "$list" >/dev/null
    $SUDO apt-get update -qq >/dev/null
  fi
}

debian_source() {
  local orig
  apt-get source --download-only "$1" >/dev/null 2>&1
  orig="$(ls "$1"_*.orig.tar.* | head -n1)"
  mkdir -p "$2" && tar -xf "$orig" -C "$2" --strip-components=1
}
