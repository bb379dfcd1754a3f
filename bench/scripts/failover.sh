#!/usr/bin/env bash
# Failover time of a 3-member cluster: SIGKILL the leader, then time until
# the first successful write through a surviving member.
#   bench/scripts/failover.sh <server-binary> [trials]
# Works for strata and for real etcd (same flags). Prints one line per trial
# and the median, in milliseconds. Members listen on 127.0.0.1 only and are
# killed by PID on exit.
set -euo pipefail
BIN=$1; TRIALS=${2:-5}
ETCDCTL=${ETCDCTL:-etcdctl}
D=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
times=()
for t in $(seq "$TRIALS"); do
  pids=(); ic=""; eps=()
  for i in 0 1 2; do
    ic+="m$i=http://127.0.0.1:$((base + 10 + i)),"; eps+=("127.0.0.1:$((base + i))")
  done
  ic=${ic%,}
  for i in 0 1 2; do
    "$BIN" --name "m$i" --data-dir "$D/t$t-m$i" \
      --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$ic" --initial-cluster-token "fo-$t" >"$D/t$t-m$i.log" 2>&1 &
    pids+=("$!"); disown "$!"
  done
  all=$(IFS=,; echo "${eps[*]}")
  for _ in $(seq 100); do "$ETCDCTL" --endpoints="$all" --command-timeout=1s put warm x >/dev/null 2>&1 && break; sleep 0.1; done
  leader=""
  for i in 0 1 2; do
    if "$ETCDCTL" --endpoints="${eps[$i]}" endpoint status -w json 2>/dev/null | grep -q '"leader":\([0-9]*\),' ; then
      st=$("$ETCDCTL" --endpoints="${eps[$i]}" endpoint status -w json)
      l=$(echo "$st" | grep -o '"leader":[0-9]*' | cut -d: -f2); m=$(echo "$st" | grep -o '"member_id":[0-9]*' | cut -d: -f2)
      [ "$l" = "$m" ] && leader=$i
    fi
  done
  [ -n "$leader" ] || { echo "trial $t: no leader found" >&2; exit 1; }
  survivor=$(( (leader + 1) % 3 ))
  kill -9 "${pids[$leader]}"
  start=$(date +%s%N)
  until "$ETCDCTL" --endpoints="${eps[$survivor]}" --command-timeout=500ms put after-kill 1 >/dev/null 2>&1; do :; done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "trial $t: first write ${ms} ms after the leader kill"
  times+=("$ms")
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2
  base=$((base + 100))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: ${median} ms over $TRIALS trials"
