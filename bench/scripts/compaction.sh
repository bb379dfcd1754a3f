#!/usr/bin/env bash
# What a large compaction costs the requests running beside it.
#
#   bench/scripts/compaction.sh [keys]
#
# For each server given (default: Strata, then etcd 3.5), on a fresh
# single-member data dir with default flags (fsync on; the quota raised to
# 8 GiB so the load fits both):
#   1. write `keys` keys twice with etcd's benchmark tool (sequential 8-byte
#      keys, 256-byte values, 50 connections, 200 clients), so every key
#      has one revision to drop;
#   2. start a sequential probe (etcd's benchmark, put 1/1, 4000 puts);
#   3. `etcdctl compaction <revision>` and its wall time (the call returns
#      once the compaction is applied; Strata and etcd then finish dropping
#      history in the background);
#   4. `etcdctl compaction --physical` at the next revision, which waits
#      for that background work (wall time, 10 min bound);
#   5. the probe's slowest put, p99 and requests/s.
#
# STRATA (default target/release/strata), ETCD (default etcd 3.5.1 from
# scripts/peers.env), ETCDCTL and BENCHMARK pick the binaries; SERVERS
# ("strata etcd" by default) which ones run. Servers listen on free
# 127.0.0.1 ports and are killed by PID on exit.
set -euo pipefail
KEYS=${1:-1000000}
# shellcheck source=bench/scripts/env.sh
source "$(dirname "$0")/env.sh"
SERVERS=${SERVERS:-strata etcd}
D=$(mktemp -d); pid=""; probe=""
cleanup() {
  for p in $pid $probe; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

for tag in $SERVERS; do
  case $tag in strata) bin=$STRATA ;; etcd) bin=$ETCD ;; *) echo "unknown server $tag" >&2; exit 2 ;; esac
  read -r cp pp < <(free_ports 2); ep=127.0.0.1:$cp
  "$bin" --name m0 --data-dir "$D/$tag" --quota-backend-bytes 8589934592 \
    --listen-client-urls "http://$ep" --advertise-client-urls "http://$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "m0=http://127.0.0.1:$pp" >"$D/$tag.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do "$ETCDCTL" --endpoints="$ep" put warm x >/dev/null 2>&1 && break; sleep 0.1; done
  for _ in 1 2; do
    "$BENCHMARK" --endpoints "$ep" --conns 50 --clients 200 put --key-size 8 --sequential-keys \
      --key-space-size "$KEYS" --val-size 256 --total "$KEYS" >/dev/null 2>&1
  done
  rev=$("$ETCDCTL" --endpoints="$ep" endpoint status -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
  "$BENCHMARK" --endpoints "$ep" --conns 1 --clients 1 put --key-size 8 --val-size 256 --total 4000 \
    >"$D/$tag.probe" 2>&1 &
  probe=$!
  sleep 0.5
  t=$(date +%s%N)
  "$ETCDCTL" --endpoints="$ep" --command-timeout=600s compaction "$rev" >/dev/null
  call=$(ms_since "$t")
  t=$(date +%s%N)
  "$ETCDCTL" --endpoints="$ep" --command-timeout=600s compaction --physical $((rev + 1)) >/dev/null
  physical=$(ms_since "$t")
  wait "$probe"; probe=""
  slowest=$(awk '/Slowest:/ {printf "%.1f", $2 * 1000}' "$D/$tag.probe")
  p99=$(awk '/ 99% in/ {printf "%.1f", $3 * 1000}' "$D/$tag.probe")
  rps=$(awk '/Requests\/sec:/ {printf "%.0f", $2}' "$D/$tag.probe")
  printf '%-7s keys=%s compaction call %6s ms, then physical %6s ms; probe: slowest put %7s ms, p99 %5s ms, %5s req/s\n' \
    "$tag" "$KEYS" "$call" "$physical" "$slowest" "$p99" "$rps"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  rm -rf "${D:?}/$tag"
done
