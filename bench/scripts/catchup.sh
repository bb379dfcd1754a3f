#!/usr/bin/env bash
# Catch-up time of a restarted follower in a 3-member cluster: SIGKILL one
# follower, write N keys (one Put each, so one raft entry each; 256-byte
# values) through the two survivors, restart the follower, and time from its
# restart until its own `endpoint status` (answered locally, no quorum
# needed) reports the leader's revision and an applied raft index at least
# the leader's. The restart itself (process start, replaying its own log,
# opening the client port) is part of the time; etcdctl is first run once
# the port accepts connections. Afterwards `endpoint hashkv` must agree on all three.
#   bench/scripts/catchup.sh <server-binary> [trials] [keys]
# EXTRA_FLAGS (word-split) go to every member, e.g. EXTRA_FLAGS="--snapshot-count 2000"
# to make the follower catch up through a snapshot instead of the log.
# Works for strata and for real etcd (same flags). Prints one line per trial
# and the median, in milliseconds. Members listen on 127.0.0.1 only and are
# killed by PID on exit.
# Needs jq and the `putload` load generator (cargo build --release -p bench
# --bin putload; override its path with PUTLOAD=...); ETCDCTL picks etcdctl.
set -euo pipefail
BIN=$1; TRIALS=${2:-3}; KEYS=${3:-20000}
ETCDCTL=${ETCDCTL:-etcdctl}
HERE=$(cd "$(dirname "$0")" && pwd)
PUTLOAD=${PUTLOAD:-$HERE/../../target/release/putload}
[ -x "$PUTLOAD" ] || { echo "no putload at $PUTLOAD: cargo build --release -p bench --bin putload" >&2; exit 1; }
D=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
times=()

# start_member <trial> <i>: (re)start member i of this trial in the background.
start_member() {
  local t=$1 i=$2
  "$BIN" --name "m$i" --data-dir "$D/t$t-m$i" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-cluster "$ic" --initial-cluster-token "cu-$t" ${EXTRA_FLAGS:-} >>"$D/t$t-m$i.log" 2>&1 &
  pids[$i]=$!; disown "$!"
}

# status <endpoint>: "<member_id> <leader> <revision> <raft_index> <raft_applied_index>", or nothing.
status() {
  "$ETCDCTL" --endpoints="$1" --command-timeout=1s endpoint status -w json 2>/dev/null |
    jq -r '.[0].Status | "\(.header.member_id) \(.leader) \(.header.revision) \(.raftIndex) \(.raftAppliedIndex // 0)"' 2>/dev/null || true
}

for t in $(seq "$TRIALS"); do
  pids=(); ic=""; eps=()
  for i in 0 1 2; do
    ic+="m$i=http://127.0.0.1:$((base + 10 + i)),"; eps+=("127.0.0.1:$((base + i))")
  done
  ic=${ic%,}
  for i in 0 1 2; do start_member "$t" "$i"; done
  all=$(IFS=,; echo "${eps[*]}")
  for _ in $(seq 100); do "$ETCDCTL" --endpoints="$all" --command-timeout=1s put warm x >/dev/null 2>&1 && break; sleep 0.1; done
  leader=""
  for i in 0 1 2; do
    st=($(status "${eps[$i]}"))
    [ "${#st[@]}" = 5 ] && [ "${st[1]}" = "${st[0]}" ] && leader=$i
  done
  [ -n "$leader" ] || { echo "trial $t: no leader found" >&2; exit 1; }
  follower=$(( (leader + 1) % 3 )); other=$(( (leader + 2) % 3 ))
  kill -9 "${pids[$follower]}"
  for _ in $(seq 40); do kill -0 "${pids[$follower]}" 2>/dev/null || break; sleep 0.05; done
  "$PUTLOAD" "${eps[$leader]},${eps[$other]}" "$KEYS" 256 64 "catchup/" >"$D/t$t-load.txt"
  st=()
  for _ in $(seq 50); do
    st=($(status "${eps[$leader]}"))
    [ "${#st[@]}" = 5 ] && break; sleep 0.1
  done
  [ "${#st[@]}" = 5 ] || { echo "trial $t: no status from the leader" >&2; exit 1; }
  rev=${st[2]}; idx=${st[3]}
  start=$(date +%s%N)
  start_member "$t" "$follower"
  # Ask etcdctl only once the client port accepts connections: a refused
  # first dial would put grpc-go's 1 s reconnect backoff into the time.
  until (exec 3<>"/dev/tcp/127.0.0.1/$((base + follower))") 2>/dev/null; do sleep 0.01; done
  while :; do
    st=($(status "${eps[$follower]}"))
    [ "${#st[@]}" = 5 ] && [ "${st[2]}" = "$rev" ] && [ "${st[4]}" -ge "$idx" ] && break
    if [ $(( ($(date +%s%N) - start) / 1000000000 )) -gt 120 ]; then
      echo "trial $t: follower not caught up after 120 s (status: ${st[*]}; leader revision $rev, raft index $idx)" >&2; exit 1
    fi
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  hashes=$("$ETCDCTL" --endpoints="$all" endpoint hashkv -w json | jq -r '.[].HashKV.hash' | sort -u | wc -l)
  [ "$hashes" = 1 ] || { echo "trial $t: hashkv differs after catch-up" >&2; exit 1; }
  # Strata logs "installed snapshot from the leader", etcd "applied snapshot".
  how=log; grep -Eq 'installed snapshot from the leader|applied snapshot' "$D/t$t-m$follower.log" && how=snapshot
  echo "trial $t: follower m$follower caught up (by $how) ${ms} ms after its restart ($(cat "$D/t$t-load.txt" | sed 's/^putload: //'); leader revision $rev, raft index $idx)"
  times+=("$ms")
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2
  base=$((base + 100))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: ${median} ms over $TRIALS trials of $KEYS keys"
