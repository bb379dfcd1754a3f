#!/usr/bin/env bash
# Where the CPU of one benchmark run goes: the load generator vs the server.
#   bench/scripts/cpu-split.sh [-c client] [-r reps] [-s "strata etcd"] [-g [-k dir]] -- <benchmark args>
# e.g.
#   bench/scripts/cpu-split.sh -r 2 -- --conns 10 --clients 100 put --key-size 8 --sequential-keys --val-size 256 --total 40000
# For each rep, starts a fresh single-member STRATA (default
# target/release/strata) then ETCD (etcd 3.5.1 from scripts/peers.env) on
# free 127.0.0.1 ports, runs the client (-c; default etcd's `benchmark`,
# strata-bench takes the same arguments) once against it, and prints the
# CPU seconds (user+system) each process spent during the run, from
# /proc/<pid>/stat before/after for the server and rusage for the client,
# with CPU microseconds per request. -g runs each server under
# `valgrind --tool=callgrind` with instrumentation switched on only for the
# run, and prints instructions per request instead of (meaningless) CPU
# seconds for the server; use a small --total with it (valgrind is ~50×
# slower), and `-s strata`: etcd's Go runtime does not get through a run
# under valgrind. -k keeps the callgrind profiles in dir. -s picks the
# servers (default both). Servers are killed by PID on exit; temp dirs are removed.
set -euo pipefail
# shellcheck source=bench/scripts/env.sh
source "$(dirname "$0")/env.sh"
CLIENT="" REPS=1 GRIND=0 KEEP="" SIDES="strata etcd"
while getopts "c:r:gk:s:" o; do
  case $o in
    c) CLIENT=$OPTARG ;; r) REPS=$OPTARG ;; g) GRIND=1 ;; k) KEEP=$OPTARG ;; s) SIDES=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
CLIENT=${CLIENT:-$("$ROOT/bench/scripts/install-etcd-benchmark.sh")}
ARGS=("$@")
D=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
TCK=$(getconf CLK_TCK)

# Server CPU ticks so far (utime + stime, fields 14 and 15 of /proc/pid/stat).
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

# run <bin> <tag>: prints "requests client_cpu_s server_cpu_s server_instr rps".
run() {
  local bin=$1 tag=$2 cp pp pre=() out t0 t1 instr=0
  # run is a subshell (its output is read by the caller): stop its server
  # whichever way it exits.
  trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null' EXIT
  read -r cp pp < <(free_ports 2)
  [ "$GRIND" = 1 ] && pre=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$D/$tag.cg")
  "${pre[@]}" "$bin" --name m0 --data-dir "$D/$tag" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "m0=http://127.0.0.1:$pp" >"$D/$tag.log" 2>&1 &
  pid=$!
  local ok=0
  for _ in $(seq 600); do
    "$ETCDCTL" --endpoints="127.0.0.1:$cp" --command-timeout=2s put foo bar >/dev/null 2>&1 && { ok=1; break; }
    sleep 0.1
  done
  [ $ok = 1 ] || { echo "$tag: server did not come up" >&2; tail -5 "$D/$tag.log" >&2; exit 1; }
  [ "$GRIND" = 1 ] && callgrind_control -i on "$pid" >/dev/null
  t0=$(ticks "$pid")
  /usr/bin/time -f '%U %S' -o "$D/$tag.time" "$CLIENT" --endpoints "127.0.0.1:$cp" "${ARGS[@]}" \
    >"$D/$tag.out" 2>&1 </dev/null
  t1=$(ticks "$pid")
  if [ "$GRIND" = 1 ]; then
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    instr=$(cat "$D"/"$tag".cg* | awk '/^totals:/ {s += $2} END {print s + 0}')
    [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp "$D"/"$tag".cg* "$KEEP"/
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; pid=""
  local rps n
  rps=$(tr -d '\r' <"$D/$tag.out" | awk '/Requests\/sec:/ {for (i = 1; i <= NF; i++) if ($i + 0 > 0) {print $i; exit}}')
  n=$(printf '%s\n' "${ARGS[@]}" | awk 'p {print; exit} /^--total$/ {p = 1}')
  [ -n "$rps" ] || { echo "$tag: no result:" >&2; tail -20 "$D/$tag.out" >&2; exit 1; }
  read -r cu cs <"$D/$tag.time"
  echo "$n $(awk -v a="$cu" -v b="$cs" 'BEGIN {print a + b}') $(awk -v a="$t0" -v b="$t1" -v t="$TCK" 'BEGIN {print (b - a) / t}') $instr $rps"
}

echo "client: $CLIENT ${ARGS[*]}"
for r in $(seq "$REPS"); do
  for side in $SIDES; do
    bin=$STRATA; [ $side = etcd ] && bin=$ETCD
    read -r n ccpu scpu instr rps < <(run "$bin" "$side$r")
    if [ "$GRIND" = 1 ]; then
      awk -v s=$side -v r="$r" -v n="$n" -v i="$instr" -v c="$ccpu" \
        'BEGIN {printf "rep %d %-6s: server %.0f instructions/request (%d requests); client %.0f us/request\n", r, s, i / n, n, c * 1e6 / n}'
    else
      awk -v s=$side -v r="$r" -v n="$n" -v c="$ccpu" -v v="$scpu" -v q="$rps" \
        'BEGIN {printf "rep %d %-6s: %9.1f req/s  server %.2f s (%.0f us/req)  client %.2f s (%.0f us/req)  client share %.0f%%\n", r, s, q, v, v * 1e6 / n, c, c * 1e6 / n, 100 * c / (c + v)}'
    fi
  done
done
