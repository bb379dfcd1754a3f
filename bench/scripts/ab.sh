#!/usr/bin/env bash
# A/B one etcd `benchmark` command against Strata and etcd, interleaved.
#   bench/scripts/ab.sh [-n 1|3] [-r reps] [-f "server flags"] -- <benchmark args>
# e.g.
#   bench/scripts/ab.sh -n 1 -r 3 -- --conns 10 --clients 100 put --key-size 8 --sequential-keys --val-size 256 --total 40000
# Each rep starts a fresh cluster (new data dirs, free ports on 127.0.0.1
# below the ephemeral range, see free_ports in env.sh)
# of STRATA (default target/release/strata), runs the command, stops it,
# then does the same with ETCD (default etcd 3.5.1 from scripts/peers.env);
# both get the same flags (-f adds to both). --endpoints is filled in with
# every member's client URL (add --target-leader to the benchmark args to
# use only the leader). For `range`, key "foo" is written first.
# Prints each run's req/s, p50 and p99, then the medians (each column on
# its own; the lower middle value for an even rep count) and the ratio.
# For watch-latency, p50/p99 are the put-to-event latencies.
# Servers are killed by PID on exit; temp dirs are removed.
set -euo pipefail
# shellcheck source=bench/scripts/env.sh
source "$(dirname "$0")/env.sh"
BENCH=${BENCH:-$("$ROOT/bench/scripts/install-etcd-benchmark.sh")}
N=1 REPS=3 FLAGS=""
while getopts "n:r:f:" o; do
  case $o in
    n) N=$OPTARG ;; r) REPS=$OPTARG ;; f) FLAGS=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
D=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT


# start <bin> <tag>: start N members; sets $eps (comma-separated client addrs).
start() {
  local bin=$1 tag=$2 ic="" cps=() pps=() ports=()
  read -r -a ports < <(free_ports $((2 * N)))
  for i in $(seq 0 $((N - 1))); do
    cps+=("${ports[$((2 * i))]}"); pps+=("${ports[$((2 * i + 1))]}")
    ic+="m$i=http://127.0.0.1:${pps[$i]},"
  done
  ic=${ic%,}; eps=""; pids=()
  for i in $(seq 0 $((N - 1))); do
    # shellcheck disable=SC2086
    "$bin" --name "m$i" --data-dir "$D/$tag-m$i" \
      --listen-client-urls "http://127.0.0.1:${cps[$i]}" --advertise-client-urls "http://127.0.0.1:${cps[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pps[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pps[$i]}" \
      --initial-cluster "$ic" --initial-cluster-token "ab-$tag" $FLAGS >"$D/$tag-m$i.log" 2>&1 &
    pids+=("$!")
    eps+="127.0.0.1:${cps[$i]},"
  done
  eps=${eps%,}
  for _ in $(seq 200); do
    "$ETCDCTL" --endpoints="$eps" --command-timeout=1s put ab-warm x >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$tag: cluster did not come up" >&2; tail -5 "$D/$tag-m0.log" >&2; exit 1
}
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }

# run <bin> <tag>: one benchmark run; prints "rps p50ms p99ms".
run() {
  local bin=$1 tag=$2 out
  start "$bin" "$tag"
  if printf '%s\n' "${ARGS[@]}" | grep -qx range; then
    "$ETCDCTL" --endpoints="$eps" put foo bar >/dev/null
  fi
  out=$("$BENCH" --endpoints "$eps" "${ARGS[@]}" 2>&1 </dev/null | tr -d '\r')
  stop
  echo "$out" >"$D/$tag.out"
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec:/ {print $2; exit}')
  p50=$(echo "$out" | awk '/ 50% in / {printf "%.2f", $3*1000; exit}')
  p99=$(echo "$out" | awk '/ 99% in / {printf "%.2f", $3*1000; exit}')
  if [ -z "$rps" ]; then echo "$tag: no result:" >&2; echo "$out" | tail -20 >&2; exit 1; fi
  echo "$rps ${p50:-nan} ${p99:-nan}"
}
ARGS=("$@")
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
s_rps=() s_p50=() s_p99=() e_rps=() e_p50=() e_p99=()
echo "members=$N reps=$REPS flags='$FLAGS' benchmark: ${ARGS[*]}"
for r in $(seq "$REPS"); do
  read -r a b c < <(run "$STRATA" "s$r"); s_rps+=("$a"); s_p50+=("$b"); s_p99+=("$c")
  printf 'rep %d strata: %10.1f req/s  p50 %6s ms  p99 %6s ms\n' "$r" "$a" "$b" "$c"
  read -r a b c < <(run "$ETCD" "e$r"); e_rps+=("$a"); e_p50+=("$b"); e_p99+=("$c")
  printf 'rep %d etcd:   %10.1f req/s  p50 %6s ms  p99 %6s ms\n' "$r" "$a" "$b" "$c"
done
sr=$(printf '%s\n' "${s_rps[@]}" | median); er=$(printf '%s\n' "${e_rps[@]}" | median)
s50=$(printf '%s\n' "${s_p50[@]}" | median); e50=$(printf '%s\n' "${e_p50[@]}" | median)
s99=$(printf '%s\n' "${s_p99[@]}" | median); e99=$(printf '%s\n' "${e_p99[@]}" | median)
printf 'median strata: %.1f req/s p50 %s ms p99 %s ms\n' "$sr" "$s50" "$s99"
printf 'median etcd:   %.1f req/s p50 %s ms p99 %s ms\n' "$er" "$e50" "$e99"
awk -v a="$sr" -v b="$er" -v c="$s99" -v d="$e99" 'BEGIN {printf "ratio strata/etcd: throughput %.2f, p99 %.2f\n", a/b, c/d}'
