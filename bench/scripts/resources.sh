#!/usr/bin/env bash
# Memory, disk, snapshot and restart cost of a single-member server holding
# a bulk-loaded key space, for Strata and etcd 3.5 side by side.
#
#   bench/scripts/resources.sh [keys] [rounds]
#
# Each round runs Strata, then etcd (A/B/A/B...), each on a fresh data dir
# with identical flags (defaults, fsync on; EXTRA_FLAGS, word-split, go to
# both). Per run:
#   1. load `keys` keys with etcd's benchmark tool: one Put each, sequential
#      16-byte keys, 256-byte values, 10 connections, 100 clients;
#   2. after a 3 s pause, VmRSS and VmHWM of the server (/proc/PID/status) and
#      `du -sb` of its data dir;
#   3. `etcdctl snapshot save` (wall time and file size);
#   4. SIGTERM, wait for the exit, start again on the same data dir and time
#      until a linearizable `etcdctl get` succeeds (the probe dials only once
#      the client port accepts connections, so grpc-go's reconnect backoff is
#      not in the time); VmRSS once it serves ("RSS2").
# Prints one line per run and the medians per server with Strata/etcd ratios.
#
# STRATA (default target/release/strata), ETCD (default etcd 3.5.1 from
# scripts/peers.env), ETCDCTL (default etcdctl 3.5.1) and BENCHMARK (default
# ~/.cache/strata/etcd-benchmark/benchmark) pick the binaries. Servers
# listen on free 127.0.0.1 ports and are killed by PID on exit.
set -euo pipefail
KEYS=${1:-200000}; ROUNDS=${2:-1}
# shellcheck source=bench/scripts/env.sh
source "$(dirname "$0")/env.sh"
for b in "$STRATA" "$ETCD" "$ETCDCTL" "$BENCHMARK"; do
  [ -x "$b" ] || { echo "missing binary: $b" >&2; exit 1; }
done
D=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
trap "exit 1" INT TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# start <binary> <data-dir>: start a member in the background, set $pid.
start() {
  "$1" --name s1 --data-dir "$2" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "s1=http://127.0.0.1:$pport" ${EXTRA_FLAGS:-} >>"$D/server.log" 2>&1 &
  pid=$!
}

# wait_serving: until a linearizable get answers (at most 10 minutes).
wait_serving() {
  local deadline=$(( $(date +%s) + 600 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/$cport") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "server exited; log:" >&2; tail -20 "$D/server.log" >&2; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "server did not open its port" >&2; exit 1; }
    sleep 0.01
  done
  until "$ETCDCTL" --endpoints="127.0.0.1:$cport" --dial-timeout=60s --command-timeout=60s \
      get probe >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "server did not serve" >&2; exit 1; }
    sleep 0.01
  done
}

# stop: SIGTERM and wait for the exit (killed after 60 s).
stop() {
  kill -TERM "$pid"
  for _ in $(seq 6000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

results=()
printf '%-7s %5s %8s %9s %9s %9s %9s %9s %9s %9s %10s %9s\n' server round keys "load s" "RSS MiB" "HWM MiB" \
  "disk MiB" "snap ms" "snap MiB" "stop ms" "restart ms" "RSS2 MiB"
for r in $(seq "$ROUNDS"); do
  for name in strata etcd; do
    bin=$STRATA; [ "$name" = etcd ] && bin=$ETCD
    read -r cport pport < <(free_ports 2)
    data="$D/$name.data"; rm -rf "$data"; : >"$D/server.log"
    start "$bin" "$data"; wait_serving
    t0=$(now_ms)
    "$BENCHMARK" --endpoints "127.0.0.1:$cport" --conns 10 --clients 100 put --key-size 16 --val-size 256 \
      --sequential-keys --key-space-size "$KEYS" --total "$KEYS" >"$D/load.txt" 2>&1
    load=$(( $(now_ms) - t0 ))
    sleep 3
    rss=$(kib "$pid" VmRSS); hwm=$(kib "$pid" VmHWM)
    disk=$(du -sb "$data" | cut -f1)
    t0=$(now_ms)
    "$ETCDCTL" --endpoints="127.0.0.1:$cport" --command-timeout=300s snapshot save "$D/snap.db" >/dev/null 2>&1
    snap=$(( $(now_ms) - t0 )); snapsz=$(stat -c %s "$D/snap.db"); rm -f "$D/snap.db"
    t0=$(now_ms); stop; stopt=$(( $(now_ms) - t0 ))
    t0=$(now_ms); start "$bin" "$data"; wait_serving; restart=$(( $(now_ms) - t0 ))
    rss2=$(kib "$pid" VmRSS)
    stop; rm -rf "$data"
    line=$(awk -v n="$name" -v r="$r" -v k="$KEYS" -v l="$load" -v rss="$rss" -v hwm="$hwm" -v d="$disk" \
      -v s="$snap" -v ss="$snapsz" -v st="$stopt" -v rs="$restart" -v r2="$rss2" 'BEGIN {
      printf "%-7s %5d %8d %9.1f %9.0f %9.0f %9.0f %9d %9.0f %9d %10d %9.0f", n, r, k, l/1000, rss/1024,
        hwm/1024, d/1048576, s, ss/1048576, st, rs, r2/1024 }')
    echo "$line"; results+=("$line")
  done
done

# Medians per server and Strata/etcd ratios of the medians.
printf '%s\n' "${results[@]}" | awk '
  { n[$1]++; for (c = 4; c <= 12; c++) v[$1, c, n[$1]] = $c }
  function med(s, c,   i, j, t, a, m) {
    m = n[s]; for (i = 1; i <= m; i++) a[i] = v[s, c, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    split("load s,RSS MiB,HWM MiB,disk MiB,snap ms,snap MiB,stop ms,restart ms,RSS2 MiB", h, ",")
    print ""; printf "%-12s %10s %10s %8s\n", "median", "strata", "etcd", "ratio"
    for (c = 4; c <= 12; c++) {
      a = med("strata", c); b = med("etcd", c)
      printf "%-12s %10.1f %10.1f %8.2f\n", h[c - 3], a, b, (b > 0 ? a / b : 0)
    }
  }'
