#!/usr/bin/env bash
# Drive the REAL etcdctl against an etcd-compatible server binary.
#
#   store/tests/etcdctl/run.sh <server-binary>
#
# The server is started with etcd-style flags on free 127.0.0.1 ports, a fresh
# data dir, and is always killed (by PID) at exit. Each check prints
# PASS/FAIL/SKIP <name>; the script exits 1 if any check failed.
#
# Env:
#   ETCDCTL           etcdctl to use (default: etcdctl 3.4 at /usr/bin/etcdctl)
#   MEMBERS=3         start a static 3-member cluster instead of one server.
#                     Each check then reads via one member, writes (put, del,
#                     txn, compaction, lease grant/revoke/keep-alive) via
#                     another and watches on the third, rotating per check;
#                     endpoint.status/hashkv and member.list query all three.
#   STRATA_KEEP_TMP=1 keep the temp dir (server log, data dir) for debugging
#   VERBOSE=1         print each check's log even when it passes
#
# Note: jq 1.6 parses numbers as doubles, so 64-bit IDs (lease, member,
# cluster) are never read through jq; they are taken from text output or
# grepped raw out of the JSON.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=/dev/null
[ -f "$ROOT/scripts/peers.env" ] && . "$ROOT/scripts/peers.env"

if [ $# -ne 1 ]; then
  echo "usage: $0 <server-binary>" >&2
  exit 2
fi
SERVER="$1"
case "$SERVER" in
  */*) [ -x "$SERVER" ] || { echo "not found/executable: $SERVER" >&2; exit 2; }
       SERVER="$(cd "$(dirname "$SERVER")" && pwd)/$(basename "$SERVER")" ;;
esac
ETCDCTL="${ETCDCTL:-${ETCDCTL34_BIN:-/usr/bin/etcdctl}}"
for t in "$SERVER" "$ETCDCTL"; do
  command -v "$t" >/dev/null 2>&1 || { echo "not found/executable: $t" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required (scripts/install-peers.sh)" >&2; exit 2; }
MEMBERS="${MEMBERS:-1}"
case "$MEMBERS" in 1|3) ;; *) echo "MEMBERS must be 1 or 3, got: $MEMBERS" >&2; exit 2 ;; esac

# etcdctl 3.4 refuses --endpoints together with ETCDCTL_ENDPOINTS; drop all.
for v in $(compgen -e | grep '^ETCDCTL_' || true); do unset "$v"; done

T0=${EPOCHREALTIME/./}
TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-etcdctl.XXXXXX")"
SRV_PID=""
SRV_PIDS=()   # all server PIDs (3-member mode)
export TMP

cleanup() {
  local rc=$?
  # background watchers started by checks (recorded by PID)
  if [ -f "$TMP/bg.pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$TMP/bg.pids"
  fi
  if [ -n "$SRV_PID" ] && kill -0 "$SRV_PID" 2>/dev/null; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
  fi
  stop_members
  if [ "${STRATA_KEEP_TMP:-0}" = 1 ]; then
    echo "kept temp dir: $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
stop_members() { # TERM all members started in 3-member mode, then KILL stragglers
  local p
  [ ${#SRV_PIDS[@]} -gt 0 ] || return 0
  for p in "${SRV_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${SRV_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || break
    sleep 0.1
  done
  for p in "${SRV_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  SRV_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports below the kernel's ephemeral range (32768-60999): a port bound to 0
# and released is in that range, where an outgoing connection can take it
# before the server binds it.
free_ports() { # free_ports [n]: prints n (default two) free 127.0.0.1 TCP ports
  local n="${1:-2}"
  if command -v python3 >/dev/null; then
    python3 - "$n" <<'EOF'
import random, socket, sys
ss, p = [], random.randrange(20000, 32768)
while len(ss) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); ss.append(s)
    except OSError:
        s.close()
    p = 20000 + (p - 20000 + 1) % 12768
print(" ".join(str(s.getsockname()[1]) for s in ss))
EOF
  else
    local a i ok
    while :; do
      a=$((20000 + RANDOM % 12700)); ok=1
      for ((i = 0; i < n; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$((a + i))") 2>/dev/null && { ok=0; break; }
      done
      [ $ok = 1 ] || continue
      for ((i = 0; i < n; i++)); do printf '%s%s' "$((a + i))" "$([ $i -lt $((n - 1)) ] && echo ' ')"; done
      echo; return
    done
  fi
}

# Endpoints: EP (reads, admin), EPW (writes), EPB (background watches). With
# one member they are all the same; with MEMBERS=3 run_check rotates them so
# that each check uses three different members.
# etcdctl against our server, always time-bounded.
ctl() {
  local ep="$EP"
  case "${1:-}" in
    put|del|txn|compaction) ep="$EPW" ;;
    lease) case "${2:-}" in grant|revoke|keep-alive) ep="$EPW" ;; esac ;;
  esac
  timeout -k 2 15 "$ETCDCTL" --endpoints="$ep" --dial-timeout=2s --command-timeout=5s "$@"
}
# etcdctl against every member at once (3-member mode)
ctl_all() { timeout -k 2 15 "$ETCDCTL" --endpoints="$ALL_EPS" --dial-timeout=2s --command-timeout=5s "$@"; }
# etcdctl against one given endpoint
ctl_at() { local ep="$1"; shift; timeout -k 2 15 "$ETCDCTL" --endpoints="$ep" --dial-timeout=2s --command-timeout=5s "$@"; }
# long-running etcdctl (watch) in the background; sets BG_PID to etcdctl's own
# PID (not a subshell's, so killing it leaves no orphan) and records it for cleanup.
ctl_bg() { # ctl_bg <outfile> <args...>
  local out="$1"; shift
  "$ETCDCTL" --endpoints="$EPB" --dial-timeout=2s "$@" >"$out" 2>"$out.err" &
  BG_PID=$!
  echo "$BG_PID" >>"$TMP/bg.pids"
}

# ---------------------------------------------------------------- start server
start_server() {
  read -r P Q < <(free_ports)
  EP="127.0.0.1:$P"
  CLIENT_URL="http://127.0.0.1:$P"
  PEER_URL="http://127.0.0.1:$Q"
  rm -rf "$TMP/d"
  "$SERVER" --name s1 --data-dir "$TMP/d" \
    --listen-client-urls "$CLIENT_URL" --advertise-client-urls "$CLIENT_URL" \
    --listen-peer-urls "$PEER_URL" --initial-advertise-peer-urls "$PEER_URL" \
    --initial-cluster "s1=$PEER_URL" >"$TMP/server.log" 2>&1 &
  SRV_PID=$!
  local deadline=$((SECONDS + 20))
  while [ $SECONDS -lt $deadline ]; do
    sleep 0.2
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
      wait "$SRV_PID" 2>/dev/null; SRV_PID=""
      return 1
    fi
    # readiness = a linearizable get succeeds. (`endpoint health` also needs the
    # Alarm RPC; it is checked separately so a gap there is one FAIL, not "never up".)
    if "$ETCDCTL" --endpoints="$EP" --dial-timeout=1s --command-timeout=2s get strata-ready-probe >/dev/null 2>&1; then
      return 0
    fi
  done
  return 2
}

# 3-member mode: members s1..s3, a shared --initial-cluster and token.
# Ready = a put succeeds through every member (so each one can serve).
start_members() {
  local ports i
  read -r -a ports < <(free_ports 6)
  EPS=(); CLIENT_URLS=(); PEER_URLS=(); SRV_PIDS=()
  local cluster=""
  for i in 0 1 2; do
    EPS[i]="127.0.0.1:${ports[2*i]}"
    CLIENT_URLS[i]="http://127.0.0.1:${ports[2*i]}"
    PEER_URLS[i]="http://127.0.0.1:${ports[2*i+1]}"
    cluster+="${cluster:+,}s$((i + 1))=${PEER_URLS[i]}"
  done
  ALL_EPS="${EPS[0]},${EPS[1]},${EPS[2]}"
  for i in 0 1 2; do
    rm -rf "$TMP/d$((i + 1))"
    "$SERVER" --name "s$((i + 1))" --data-dir "$TMP/d$((i + 1))" \
      --listen-client-urls "${CLIENT_URLS[i]}" --advertise-client-urls "${CLIENT_URLS[i]}" \
      --listen-peer-urls "${PEER_URLS[i]}" --initial-advertise-peer-urls "${PEER_URLS[i]}" \
      --initial-cluster "$cluster" --initial-cluster-token strata-etcdctl-3 \
      >"$TMP/server.s$((i + 1)).log" 2>&1 &
    SRV_PIDS[i]=$!
  done
  local deadline=$((SECONDS + 30)) ok=(0 0 0) p
  while [ $SECONDS -lt $deadline ]; do
    sleep 0.2
    for p in "${SRV_PIDS[@]}"; do
      kill -0 "$p" 2>/dev/null || { stop_members; return 1; }
    done
    for i in 0 1 2; do
      [ "${ok[i]}" = 1 ] && continue
      "$ETCDCTL" --endpoints="${EPS[i]}" --dial-timeout=1s --command-timeout=2s put strata-ready-probe "s$((i + 1))" >/dev/null 2>&1 && ok[i]=1
    done
    [ "${ok[*]}" = "1 1 1" ] && return 0
  done
  return 2
}

started=0
for attempt in 1 2 3; do
  if [ "$MEMBERS" = 3 ]; then start_members; else start_server; fi; rc=$?
  if [ $rc -eq 0 ]; then started=1; break; fi
  if [ $rc -eq 2 ]; then break; fi  # alive but never healthy: don't retry
  echo "server exited during startup (attempt $attempt)" >&2
  # a taken port is the only reason worth a retry
  cat "$TMP"/server*.log 2>/dev/null | grep -qi 'address already in use' || break
done
server_logs() { # server_logs <lines>: tail of every server log
  local f
  if [ "$MEMBERS" = 1 ]; then tail -n "$1" "$TMP/server.log"; return; fi
  for f in "$TMP"/server.s*.log; do echo "== $(basename "$f")"; tail -n "$1" "$f"; done
}
if [ $started -ne 1 ]; then
  if [ $rc -eq 2 ]; then
    echo "FAIL startup: server not healthy within $([ "$MEMBERS" = 3 ] && echo 30 || echo 20)s ($SERVER)" >&2
  else
    echo "FAIL startup: server exited before becoming healthy ($SERVER)" >&2
  fi
  echo "---- server log (tail) ----" >&2; server_logs 40 >&2
  exit 1
fi
if [ "$MEMBERS" = 3 ]; then
  for i in 0 1 2; do
    echo "member s$((i + 1)): $SERVER (pid ${SRV_PIDS[i]}) client=${CLIENT_URLS[i]} peer=${PEER_URLS[i]}"
  done
  EP="${EPS[0]}"
else
  echo "server: $SERVER (pid $SRV_PID) client=$CLIENT_URL peer=$PEER_URL"
  EPS=("$EP"); ALL_EPS="$EP"
fi
EPW="$EP"; EPB="$EP"
echo "etcdctl: $ETCDCTL ($("$ETCDCTL" version 2>/dev/null | head -n1))"

# ---------------------------------------------------------------- assertion helpers
# (checks run in a subshell with `set -e`; any failing assertion ends the check)
fail() { echo "ASSERT: $*" >&2; return 1; }
eq() { # eq <what> <got> <want>
  if [ "$2" != "$3" ]; then
    printf 'ASSERT %s:\n--- got ---\n%s\n--- want ---\n%s\n' "$1" "$2" "$3" >&2; return 1
  fi
}
contains() { # contains <what> <haystack> <needle>
  case "$2" in *"$3"*) ;; *) printf 'ASSERT %s: %q does not contain %q\n' "$1" "$2" "$3" >&2; return 1 ;; esac
}
matches() { # matches <what> <string> <ERE>
  if ! [[ "$2" =~ $3 ]]; then printf 'ASSERT %s: %q !~ /%s/\n' "$1" "$2" "$3" >&2; return 1; fi
}
# must_fail <what> <needle> <cmd...>: command exits non-zero and its output contains needle
must_fail() {
  local what="$1" needle="$2" out rc; shift 2
  set +e; out="$("$@" 2>&1)"; rc=$?; set -e
  [ $rc -ne 0 ] || { printf 'ASSERT %s: expected failure, got rc=0, output: %s\n' "$what" "$out" >&2; return 1; }
  contains "$what" "$out" "$needle"
}
rev_now() { ctl get "strata-probe-nonexistent" -w json | jq -r '.header.revision'; }
put_rev() { ctl put "$1" "$2" -w json | jq -r '.header.revision'; } # put, print its revision
hexnorm() { printf '%x' "0x$1"; } # hex id without zero padding (3.4 pads lease ids to 16)
b64() { printf '%s' "$1" | base64 -w0; }
wait_lines() { # wait_lines <file> <n> <secs>: until file has >= n lines
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 0
}

wait_for() { # wait_for <secs> <cmd...>: poll until cmd succeeds (returns 0 either way)
  local deadline=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $deadline ]; do "$@" && return 0; sleep 0.1; done
  return 0
}

server_responsive() {
  if [ "$MEMBERS" = 3 ]; then
    local i
    for i in 0 1 2; do
      kill -0 "${SRV_PIDS[i]}" 2>/dev/null &&
        timeout -k 1 5 "$ETCDCTL" --endpoints="${EPS[i]}" --dial-timeout=1s --command-timeout=2s get strata-ready-probe >/dev/null 2>&1 ||
        return 1
    done
    return 0
  fi
  kill -0 "$SRV_PID" 2>/dev/null &&
    timeout -k 1 5 "$ETCDCTL" --endpoints="$EP" --dial-timeout=1s --command-timeout=2s get strata-ready-probe >/dev/null 2>&1
}

PASSES=0; FAILS=0; SKIPS=0; FAILED_NAMES=(); ABORTED=0; CHECK_NO=0
run_check() { # run_check <name> <function>
  local name="$1" fn="$2" rc log="$TMP/check.$1.log" t0 ms
  if [ $ABORTED = 1 ]; then # fail fast instead of timing out on every call
    FAILS=$((FAILS + 1)); FAILED_NAMES+=("$name"); echo "FAIL $name (not run: server dead/unresponsive)"
    return
  fi
  if [ "$MEMBERS" = 3 ]; then # rotate: read / write / watch via three different members
    EP="${EPS[CHECK_NO % 3]}"; EPW="${EPS[(CHECK_NO + 1) % 3]}"; EPB="${EPS[(CHECK_NO + 2) % 3]}"
    CHECK_NO=$((CHECK_NO + 1))
    echo "endpoints: read/admin=$EP write=$EPW watch=$EPB" >"$log.eps"
  fi
  t0=${EPOCHREALTIME/./}
  # The ERR trap names the command that ended the check (a failing
  # assignment or pipeline would otherwise end it without a word); it stays
  # quiet inside must_fail's `set +e` section.
  ( set -eE
    trap 'rc=$?; [[ $- == *e* ]] && echo "check ended at line $LINENO (exit $rc): $BASH_COMMAND" >&2' ERR
    [ -f "$log.eps" ] && cat "$log.eps"; "$fn" ) >"$log" 2>&1
  rc=$?
  ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
  if [ $rc -eq 0 ]; then
    PASSES=$((PASSES + 1)); echo "PASS $name (${ms} ms)"
    [ "${VERBOSE:-0}" = 1 ] && sed 's/^/    /' "$log"
  elif [ $rc -eq 77 ]; then
    SKIPS=$((SKIPS + 1)); echo "SKIP $name: $(tail -n1 "$log")"
  else
    FAILS=$((FAILS + 1)); FAILED_NAMES+=("$name"); echo "FAIL $name (${ms} ms)"
    sed 's/^/    /' "$log" | tail -n 40
    if ! server_responsive; then
      ABORTED=1; echo "server dead or unresponsive after $name: remaining checks are not run"
    fi
  fi
}
skip() { echo "$*"; exit 77; }

# ================================================================= checks
c_endpoint_health() { # Get("health") + AlarmList with no alarms
  local out; out="$(ctl endpoint health 2>&1)"
  contains "endpoint health" "$out" "$EP is healthy: successfully committed proposal"
  out="$(ctl endpoint health -w json 2>/dev/null)"
  eq "endpoint health json" "$(jq -r '.[0].health' <<<"$out")" true
}

c_put_get() {
  local out r
  eq "put output" "$(ctl put kv/k1 hello)" "OK"
  eq "get text" "$(ctl get kv/k1)" $'kv/k1\nhello'
  eq "get --print-value-only" "$(ctl get kv/k1 --print-value-only)" "hello"
  eq "get missing key prints nothing" "$(ctl get kv/missing)" ""
  r="$(put_rev kv/k2 world)"
  out="$(ctl get kv/k2 -w json)"
  eq "json count" "$(jq -r .count <<<"$out")" 1
  eq "json key" "$(jq -r '.kvs[0].key' <<<"$out")" "$(b64 kv/k2)"
  eq "json value" "$(jq -r '.kvs[0].value|@base64d' <<<"$out")" "world"
  eq "json version" "$(jq -r '.kvs[0].version' <<<"$out")" 1
  eq "json create_revision" "$(jq -r '.kvs[0].create_revision' <<<"$out")" "$r"
  eq "json mod_revision" "$(jq -r '.kvs[0].mod_revision' <<<"$out")" "$r"
  eq "json header.revision" "$(jq -r '.header.revision' <<<"$out")" "$r"
  # overwrite bumps version and mod_revision, keeps create_revision
  local r2; r2="$(put_rev kv/k2 world2)"
  [ "$r2" -eq $((r + 1)) ] || fail "revision after put: $r2, want $((r + 1))"
  out="$(ctl get kv/k2 -w json)"
  eq "json version after overwrite" "$(jq -r '.kvs[0].version' <<<"$out")" 2
  eq "json create_revision after overwrite" "$(jq -r '.kvs[0].create_revision' <<<"$out")" "$r"
  eq "json mod_revision after overwrite" "$(jq -r '.kvs[0].mod_revision' <<<"$out")" "$r2"
}

c_get_prefix() {
  ctl put pf/a 1 >/dev/null; ctl put pf/b 2 >/dev/null; ctl put pf/c 3 >/dev/null; ctl put pg 4 >/dev/null
  eq "get --prefix" "$(ctl get pf/ --prefix)" $'pf/a\n1\npf/b\n2\npf/c\n3'
  eq "get range [pf/a, pf/c)" "$(ctl get pf/a pf/c)" $'pf/a\n1\npf/b\n2'
  eq "get --from-key pf/c" "$(ctl get pf/c --from-key --keys-only | grep -v '^$' | head -n 2)" $'pf/c\npg'
}

c_get_keys_only() {
  eq "get --prefix --keys-only (text)" "$(ctl get pf/ --prefix --keys-only)" $'pf/a\n\npf/b\n\npf/c'
  local out; out="$(ctl get pf/ --prefix --keys-only -w json)"
  eq "keys-only json keys" "$(jq -r '[.kvs[].key|@base64d]|join(",")' <<<"$out")" "pf/a,pf/b,pf/c"
  eq "keys-only json has no values" "$(jq -r '[.kvs[]|select(has("value"))]|length' <<<"$out")" 0
}

c_get_limit() {
  eq "get --limit=2 (text)" "$(ctl get pf/ --prefix --limit=2)" $'pf/a\n1\npf/b\n2'
  local out; out="$(ctl get pf/ --prefix --limit=2 -w json)"
  eq "limit json kvs length" "$(jq -r '.kvs|length' <<<"$out")" 2
  eq "limit json count (total)" "$(jq -r '.count' <<<"$out")" 3
  eq "limit json more" "$(jq -r '.more' <<<"$out")" true
  out="$(ctl get pf/ --prefix --limit=3 -w json)"
  eq "limit=3 json more" "$(jq -r '.more // false' <<<"$out")" false
}

c_get_rev() {
  local r1 r2
  r1="$(put_rev rv/k v1)"
  r2="$(put_rev rv/k v2)"
  ctl put rv/k v3 >/dev/null
  eq "get --rev=r1" "$(ctl get rv/k --rev="$r1" --print-value-only)" "v1"
  eq "get --rev=r2" "$(ctl get rv/k --rev="$r2" --print-value-only)" "v2"
  eq "get latest" "$(ctl get rv/k --print-value-only)" "v3"
  eq "get --rev before creation" "$(ctl get rv/k --rev=$((r1 - 1)))" ""
  local out; out="$(ctl get rv/k --rev="$r1" -w json)"
  eq "old rev json version" "$(jq -r '.kvs[0].version' <<<"$out")" 1
  eq "old rev json mod_revision" "$(jq -r '.kvs[0].mod_revision' <<<"$out")" "$r1"
}

c_get_sort() {
  # created in order a,b,c ; values c<a<b ; then a modified last
  ctl put so/a 2 >/dev/null; ctl put so/b 3 >/dev/null; ctl put so/c 1 >/dev/null
  ctl put so/a 5 >/dev/null
  k() { ctl get so/ --prefix --keys-only "$@" | grep -v '^$' | tr '\n' ' '; }
  eq "sort KEY ASCEND"     "$(k --sort-by=KEY --order=ASCEND)"     "so/a so/b so/c "
  eq "sort KEY DESCEND"    "$(k --sort-by=KEY --order=DESCEND)"    "so/c so/b so/a "
  eq "sort VALUE ASCEND"   "$(k --sort-by=VALUE --order=ASCEND)"   "so/c so/b so/a "
  eq "sort VALUE DESCEND"  "$(k --sort-by=VALUE --order=DESCEND)"  "so/a so/b so/c "
  eq "sort CREATE DESCEND" "$(k --sort-by=CREATE --order=DESCEND)" "so/c so/b so/a "
  eq "sort MODIFY ASCEND"  "$(k --sort-by=MODIFY --order=ASCEND)"  "so/b so/c so/a "
  eq "sort MODIFY DESCEND" "$(k --sort-by=MODIFY --order=DESCEND)" "so/a so/c so/b "
  eq "sort VERSION DESCEND first" "$(k --sort-by=VERSION --order=DESCEND | cut -d' ' -f1)" "so/a"
  eq "order DESCEND (default sort KEY)" "$(k --order=DESCEND)" "so/c so/b so/a "
  eq "sort + limit" "$(k --sort-by=VALUE --order=ASCEND --limit=1)" "so/c "
}

c_get_count_only() {
  if ! "$ETCDCTL" get --help 2>&1 | grep -q -- '--count-only'; then
    skip "this etcdctl has no 'get --count-only' (3.4); Range count is asserted in kv.get_limit instead"
  fi
  # etcdctl 3.5 accepts --count-only only with -w fields
  local out; out="$(ctl get pf/ --prefix --count-only -w fields)"
  contains "count-only fields Count" "$out" '"Count" : 3'
  if grep -q '"Key"' <<<"$out"; then fail "count-only returned kvs: $out"; fi
}

c_del() {
  ctl put dl/a 1 >/dev/null; ctl put dl/b 2 >/dev/null
  ctl put dp/1 x >/dev/null; ctl put dp/2 y >/dev/null; ctl put dp/3 z >/dev/null; ctl put dq keep >/dev/null
  eq "del existing" "$(ctl del dl/a)" "1"
  eq "del missing" "$(ctl del dl/nonexistent)" "0"
  eq "get after del" "$(ctl get dl/a)" ""
  eq "del --prev-kv" "$(ctl del dl/b --prev-kv)" $'1\ndl/b\n2'
  local out; out="$(ctl del dp/ --prefix --prev-kv -w json)"
  eq "del --prefix json deleted" "$(jq -r '.deleted' <<<"$out")" 3
  eq "del --prefix json prev_kvs" "$(jq -r '[.prev_kvs[]|(.key|@base64d)+"="+(.value|@base64d)]|join(",")' <<<"$out")" "dp/1=x,dp/2=y,dp/3=z"
  eq "prefix gone" "$(ctl get dp/ --prefix)" ""
  eq "sibling kept" "$(ctl get dq --print-value-only)" "keep"
  ctl put dr/1 a >/dev/null; ctl put dr/2 b >/dev/null
  eq "del --prefix count" "$(ctl del dr/ --prefix)" "2"
}

c_txn() {
  local out
  # create-if-absent: success branch
  out="$(printf 'mod("tx/k") = "0"\n\nput tx/k v1\n\nget tx/k\n\n' | ctl txn)"
  eq "txn mod=0 success" "$out" $'SUCCESS\n\nOK'
  # same txn again: failure branch (get)
  out="$(printf 'mod("tx/k") = "0"\n\nput tx/k v1\n\nget tx/k\n\n' | ctl txn)"
  eq "txn mod=0 failure" "$out" $'FAILURE\n\ntx/k\nv1'
  # value compare, success with multiple ops
  out="$(printf 'value("tx/k") = "v1"\n\nput tx/k v2\nput tx/other o\n\nput tx/k bad\n\n' | ctl txn)"
  eq "txn value= success" "$out" $'SUCCESS\n\nOK\n\nOK'
  eq "value after success" "$(ctl get tx/k --print-value-only)" "v2"
  # value compare fails -> failure branch deletes
  out="$(printf 'value("tx/k") = "nope"\n\nput tx/k bad\n\ndel tx/other\n\n' | ctl txn)"
  eq "txn value= failure" "$out" $'FAILURE\n\n1'
  eq "value untouched on failure" "$(ctl get tx/k --print-value-only)" "v2"
  eq "failure op applied" "$(ctl get tx/other)" ""
  # multiple compares (AND), version/create compares, json output
  local cr; cr="$(ctl get tx/k -w json | jq -r '.kvs[0].create_revision')"
  out="$(printf 'version("tx/k") = "2"\ncreate("tx/k") = "%s"\nvalue("tx/k") != "zz"\n\nget tx/k\n\n\n' "$cr" | ctl txn -w json)"
  eq "txn json succeeded" "$(jq -r '.succeeded' <<<"$out")" true
  # 3.4 names the oneof field ResponseRange, 3.5 response_range: accept either
  eq "txn json range value" "$(jq -r '.responses[0].Response | (.ResponseRange // .response_range) | .kvs[0].value | @base64d' <<<"$out")" "v2"
  out="$(printf 'version("tx/k") > "5"\n\n\n\n\n' | ctl txn -w json)"
  eq "txn json failed" "$(jq -r '.succeeded // false' <<<"$out")" false
  # empty txn (no compares) -> success
  eq "txn no compares" "$(printf '\nput tx/e 1\n\n\n' | ctl txn)" $'SUCCESS\n\nOK'
}

c_watch_live() {
  local f="$TMP/watch_live.out" wp
  : >"$f"
  ctl_bg "$f" watch wl/ --prefix; wp=$BG_PID
  # sync: keep putting a sentinel until the watcher has reported it
  local i
  for i in $(seq 50); do
    ctl put wl/sync "$i" >/dev/null
    grep -q '^wl/sync$' "$f" && break
    sleep 0.1
  done
  grep -q '^wl/sync$' "$f" || fail "watch never reported sentinel; stderr: $(cat "$f.err")"
  local n0; n0="$(wc -l <"$f")"
  ctl put wl/a 1 >/dev/null
  ctl put wl/b 2 >/dev/null
  ctl put wx/outside 9 >/dev/null   # not under the prefix
  ctl del wl/a >/dev/null
  ctl put wl/b 3 >/dev/null
  wait_lines "$f" $((n0 + 12)) 5
  kill "$wp" 2>/dev/null || true; wait "$wp" 2>/dev/null || true
  eq "live watch events" "$(tail -n +$((n0 + 1)) "$f")" $'PUT\nwl/a\n1\nPUT\nwl/b\n2\nDELETE\nwl/a\n\nPUT\nwl/b\n3'
}

c_watch_history() {
  local r1 r2 r3 r4 f="$TMP/watch_hist.out" wp
  r1="$(put_rev wh/k a)"
  r2="$(put_rev wh/k b)"
  r3="$(ctl del wh/k -w json | jq -r .header.revision)"
  r4="$(put_rev wh/k c)"
  ctl put wh/zz other >/dev/null
  # text, exact key, from r1
  ctl_bg "$f" watch wh/k --rev="$r1"; wp=$BG_PID
  wait_lines "$f" 12 5
  kill "$wp" 2>/dev/null || true; wait "$wp" 2>/dev/null || true
  eq "history replay from r1" "$(grep -v '^{"level"' "$f")" $'PUT\nwh/k\na\nPUT\nwh/k\nb\nDELETE\nwh/k\n\nPUT\nwh/k\nc'
  # json, from r2 (skips r1): event types and mod_revisions in order
  ctl_bg "$f.json" watch wh/k --rev="$r2" -w json; wp=$BG_PID
  # events may arrive batched in one response (one JSON line): count events
  wait_for 5 bash -c '[ "$(jq -s "[.[].Events|length]|add // 0" "$1" 2>/dev/null || echo 0)" -ge 3 ]' _ "$f.json"
  kill "$wp" 2>/dev/null || true; wait "$wp" 2>/dev/null || true
  eq "history json (type:mod_revision)" \
    "$(jq -r '.Events[] | "\(if .type == 1 then "DELETE" else "PUT" end):\(.kv.mod_revision)"' "$f.json" | tr '\n' ' ')" \
    "PUT:$r2 DELETE:$r3 PUT:$r4 "
  eq "history json values" "$(jq -r '.Events[] | .kv.value // "" | @base64d' "$f.json" | tr '\n' ' ')" "b  c "
}

c_lease() {
  local out id ttl
  out="$(ctl lease grant 60)"
  matches "lease grant" "$out" '^lease ([0-9a-f]+) granted with TTL\(60s\)$'
  id="${BASH_REMATCH[1]}"
  eq "put --lease" "$(ctl put ls/k1 v --lease="$id")" "OK"
  eq "put --lease 2" "$(ctl put ls/k2 v --lease="$id")" "OK"
  ctl put ls/free v >/dev/null
  # lease id on the key (JSON: compare as hex via raw digits, jq would round it)
  local raw; raw="$(ctl get ls/k1 -w json | grep -o '"lease":[0-9]*' | cut -d: -f2)"
  eq "kv.lease" "$(printf '%x' "$raw")" "$(hexnorm "$id")"
  out="$(ctl lease timetolive "$id" --keys)"
  # etcd lists attached keys in unspecified (Go map) order
  matches "timetolive --keys" "$out" "^lease $id granted with TTL\\(60s\\), remaining\\(([0-9]+)s\\), attached keys\\(\\[([^]]*)\\]\\)$"
  ttl="${BASH_REMATCH[1]}"
  eq "timetolive attached keys" "$(tr ' ' '\n' <<<"${BASH_REMATCH[2]}" | sort | tr '\n' ' ')" "ls/k1 ls/k2 "
  { [ "$ttl" -ge 50 ] && [ "$ttl" -le 60 ]; } || fail "remaining ttl $ttl not in [50,60]"
  out="$(ctl lease timetolive "$id" --keys -w json)"
  eq "timetolive json granted-ttl" "$(jq -r '."granted-ttl"' <<<"$out")" 60
  eq "timetolive json keys" "$(jq -r '[.keys[]|@base64d]|sort|join(",")' <<<"$out")" "ls/k1,ls/k2"
  out="$(ctl lease list)"
  matches "lease list header" "$(head -n1 <<<"$out")" '^found [0-9]+ leases$'
  sed 1d <<<"$out" | while read -r l; do hexnorm "$l"; echo; done | grep -qx "$(hexnorm "$id")" || fail "lease list lacks $id: $out"
  eq "keep-alive --once" "$(ctl lease keep-alive --once "$id")" "lease $id keepalived with TTL(60)"
  eq "revoke" "$(ctl lease revoke "$id")" "lease $id revoked"
  eq "attached key deleted" "$(ctl get ls/k1)" ""
  eq "attached key 2 deleted" "$(ctl get ls/k2)" ""
  eq "unattached key kept" "$(ctl get ls/free --print-value-only)" "v"
  eq "timetolive after revoke" "$(ctl lease timetolive "$id")" "lease $id already expired"
  if ctl lease list | sed 1d | while read -r l; do hexnorm "$l"; echo; done | grep -qx "$(hexnorm "$id")"; then fail "revoked lease still listed"; fi
}

c_lease_expiry() {
  local out id
  out="$(ctl lease grant 2)"
  matches "lease grant 2" "$out" '^lease ([0-9a-f]+) granted with TTL\(2s\)$'
  id="${BASH_REMATCH[1]}"
  ctl put le/k v --lease="$id" >/dev/null
  eq "key present" "$(ctl get le/k --print-value-only)" "v"
  local deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ]; do
    [ -z "$(ctl get le/k)" ] && break
    sleep 0.25
  done
  eq "key gone after lease expiry" "$(ctl get le/k)" ""
  eq "timetolive expired" "$(ctl lease timetolive "$id")" "lease $id already expired"
}

c_compaction() {
  local r
  r="$(put_rev cp/k x)"
  ctl put cp/k y >/dev/null
  ctl put cp/k z >/dev/null
  eq "compaction output" "$(ctl compaction $((r + 1)))" "compacted revision $((r + 1))"
  must_fail "get --rev below compaction" "required revision has been compacted" ctl get cp/k --rev="$r"
  eq "get --rev at compaction rev" "$(ctl get cp/k --rev=$((r + 1)) --print-value-only)" "y"
  eq "get latest" "$(ctl get cp/k --print-value-only)" "z"
  must_fail "compact again at same rev" "required revision has been compacted" ctl compaction $((r + 1))
  local out; out="$(ctl watch cp/k --rev="$r" 2>&1 || true)"
  contains "watch from compacted rev is canceled" "$out" "required revision has been compacted"
}

c_endpoint_status() {
  [ "$MEMBERS" = 3 ] && { c_endpoint_status3; return; }
  local out cur
  cur="$(rev_now)"
  out="$(ctl endpoint status -w json)"
  eq "status endpoint" "$(jq -r '.[0].Endpoint' <<<"$out")" "$EP"
  eq "status header.revision" "$(jq -r '.[0].Status.header.revision' <<<"$out")" "$cur"
  local v; v="$(jq -r '.[0].Status.version // ""' <<<"$out")"
  [ -n "$v" ] || fail "empty version: $out"
  matches "version looks like x.y.z" "$v" '^[0-9]+\.[0-9]+\.[0-9]+'
  [ "$(jq -r '.[0].Status.raftIndex' <<<"$out")" -gt 0 ] || fail "raftIndex not > 0"
  [ "$(jq -r '.[0].Status.raftTerm' <<<"$out")" -gt 0 ] || fail "raftTerm not > 0"
  [ "$(jq -r '.[0].Status.dbSize' <<<"$out")" -gt 0 ] || fail "dbSize not > 0"
  # single node: leader == this member (raw digits; jq would round 64-bit ids)
  local mid leader
  mid="$(grep -o '"member_id":[0-9]*' <<<"$out" | head -n1 | cut -d: -f2)"
  leader="$(grep -o '"leader":[0-9]*' <<<"$out" | cut -d: -f2)"
  [ -n "$mid" ] && [ "$mid" != 0 ] || fail "no member_id"
  eq "leader is self" "$leader" "$mid"
  # text table: endpoint, id(hex), version, size, is_leader=true, ...
  out="$(ctl endpoint status)"
  matches "status text" "$out" "^$EP, 0*$(printf '%x' "$mid"), $v, [^,]+, true, false, "
}

c_endpoint_hashkv() {
  [ "$MEMBERS" = 3 ] && { c_endpoint_hashkv3; return; }
  local h1 h2 h3 out
  out="$(ctl endpoint hashkv)"
  matches "hashkv text" "$out" "^$EP, [0-9]+$"
  h1="${out##*, }"
  h2="$(ctl endpoint hashkv -w json | jq -r '.[0].HashKV.hash')"
  eq "hashkv stable without writes" "$h2" "$h1"
  ctl put hk/k v >/dev/null
  h3="$(ctl endpoint hashkv | sed 's/.*, //')"
  [ "$h3" != "$h1" ] || fail "hashkv unchanged after a write ($h1)"
}

c_member_list() {
  [ "$MEMBERS" = 3 ] && { c_member_list3; return; }
  local out raw id
  out="$(ctl member list -w json)"
  eq "member count" "$(jq -r '.members|length' <<<"$out")" 1
  eq "member name" "$(jq -r '.members[0].name' <<<"$out")" "s1"
  eq "member peerURLs" "$(jq -r '.members[0].peerURLs|join(",")' <<<"$out")" "$PEER_URL"
  eq "member clientURLs" "$(jq -r '.members[0].clientURLs|join(",")' <<<"$out")" "$CLIENT_URL"
  raw="$(grep -o '"ID":[0-9]*' <<<"$out" | head -n1 | cut -d: -f2)"
  [ -n "$raw" ] && [ "$raw" != 0 ] || fail "no member ID"
  id="$(printf '%x' "$raw")"
  # text: "<hex id>, started, s1, <peer>, <client>, <isLearner>"; tolerate zero-padded id
  local txt; txt="$(ctl member list)"
  eq "member list text id" "$(hexnorm "${txt%%,*}")" "$id"
  eq "member list text" "${txt#*, }" "started, s1, $PEER_URL, $CLIENT_URL, false"
  local st; st="$(ctl endpoint status -w json | grep -o '"member_id":[0-9]*' | head -n1 | cut -d: -f2)"
  eq "member id == status member_id" "$raw" "$st"
}

# ---- 3-member variants (only the expectations that depend on the member count)
read_each() { # a linearizable read through every member (each has applied everything committed)
  local e; for e in "${EPS[@]}"; do ctl_at "$e" get strata-probe-nonexistent >/dev/null; done
}

c_endpoint_status3() {
  local out cur n
  ctl put st/k v >/dev/null   # via EPW
  cur="$(rev_now)"
  read_each
  out="$(ctl_all endpoint status -w json)"
  eq "status entries" "$(jq -r 'length' <<<"$out")" 3
  eq "status endpoints" "$(jq -r '[.[].Endpoint]|sort|join(",")' <<<"$out")" "$(tr ' ' '\n' <<<"${EPS[*]}" | sort | paste -sd,)"
  eq "status header.revision (all)" "$(jq -r '[.[].Status.header.revision]|join(",")' <<<"$out")" "$cur,$cur,$cur"
  eq "status versions non-empty" "$(jq -r '[.[].Status.version // ""|select(. != "")]|length' <<<"$out")" 3
  eq "status raftTerm > 0 (all)" "$(jq -r '[.[].Status.raftTerm|select(. > 0)]|length' <<<"$out")" 3
  eq "status dbSize > 0 (all)" "$(jq -r '[.[].Status.dbSize|select(. > 0)]|length' <<<"$out")" 3
  # member_id / leader as raw digits (jq would round 64-bit ids), in entry order
  local mids leaders
  mids="$(grep -o '"member_id":[0-9]*' <<<"$out" | cut -d: -f2)"
  leaders="$(grep -o '"leader":[0-9]*' <<<"$out" | cut -d: -f2)"
  eq "distinct member_ids" "$(sort -u <<<"$mids" | grep -vc '^0*$')" 3
  eq "all members agree on the leader" "$(sort -u <<<"$leaders" | wc -l)" 1
  n="$(paste -d' ' <(echo "$mids") <(echo "$leaders") | awk '$1 == $2' | wc -l)"
  eq "exactly one member reports itself leader (json)" "$n" 1
  # text table: endpoint, id, version, size, is_leader, is_learner, ...
  out="$(ctl_all endpoint status)"
  eq "status text lines" "$(wc -l <<<"$out")" 3
  eq "exactly one is_leader=true (text)" "$(grep -cE '^[^,]+, [^,]+, [^,]+, [^,]+, true, false, ' <<<"$out")" 1
  eq "two is_leader=false (text)" "$(grep -cE '^[^,]+, [^,]+, [^,]+, [^,]+, false, false, ' <<<"$out")" 2
}

c_endpoint_hashkv3() {
  local out h1 h2
  read_each
  out="$(ctl_all endpoint hashkv -w json)"
  eq "hashkv entries" "$(jq -r 'length' <<<"$out")" 3
  eq "hashkv same on all members" "$(jq -r '[.[].HashKV.hash]|unique|length' <<<"$out")" 1
  h1="$(jq -r '.[0].HashKV.hash' <<<"$out")"
  out="$(ctl_all endpoint hashkv)"
  eq "hashkv text lines" "$(grep -cE '^[^,]+, [0-9]+$' <<<"$out")" 3
  eq "hashkv text same hash" "$(sed 's/.*, //' <<<"$out" | sort -u)" "$h1"
  ctl put hk/k v >/dev/null   # via EPW
  read_each
  out="$(ctl_all endpoint hashkv -w json)"
  eq "hashkv same on all members after a write" "$(jq -r '[.[].HashKV.hash]|unique|length' <<<"$out")" 1
  h2="$(jq -r '.[0].HashKV.hash' <<<"$out")"
  [ "$h2" != "$h1" ] || fail "hashkv unchanged after a write ($h1)"
}

c_member_list3() {
  local out want i
  # client URLs are published shortly after startup
  members_published() {
    [ "$(ctl member list -w json 2>/dev/null | jq -r '[.members[]|select((.clientURLs // [])|length > 0)]|length')" = 3 ]
  }
  wait_for 10 members_published
  out="$(ctl member list -w json)"
  eq "member count" "$(jq -r '.members|length' <<<"$out")" 3
  want=""
  for i in 0 1 2; do want+="s$((i + 1)) ${PEER_URLS[i]} ${CLIENT_URLS[i]}"$'\n'; done
  eq "members (name peerURLs clientURLs)" \
    "$(jq -r '.members[]|"\(.name) \(.peerURLs|join(",")) \((.clientURLs // [])|join(","))"' <<<"$out" | sort)" "${want%$'\n'}"
  # member IDs (raw digits) == the member_ids the three endpoints report
  local ids sts
  ids="$(grep -o '"ID":[0-9]*' <<<"$out" | cut -d: -f2 | sort)"
  sts="$(ctl_all endpoint status -w json | grep -o '"member_id":[0-9]*' | cut -d: -f2 | sort)"
  eq "member ids == status member_ids" "$ids" "$sts"
  # text: "<hex id>, started, sN, <peer>, <client>, false"; tolerate zero-padded ids
  local txt l got="" wantt=""
  txt="$(ctl member list)"
  while IFS= read -r l; do got+="$(hexnorm "${l%%,*}"), ${l#*, }"$'\n'; done <<<"$txt"
  for i in 0 1 2; do
    local raw # raw digits straight from etcdctl's JSON (jq would round them)
    raw="$(grep -o "\"ID\":[0-9]*,\"name\":\"s$((i + 1))\"" <<<"$out" | cut -d: -f2 | cut -d, -f1)"
    [ -n "$raw" ] || fail "no ID for s$((i + 1)) in: $out"
    wantt+="$(printf '%x' "$raw"), started, s$((i + 1)), ${PEER_URLS[i]}, ${CLIENT_URLS[i]}, false"$'\n'
  done
  eq "member list text" "$(sort <<<"$got")" "$(sort <<<"$wantt")"
}

c_snapshot() {
  local out
  out="$(ctl snapshot save "$TMP/snap.db" 2>&1)"
  contains "snapshot save" "$out" "Snapshot saved at $TMP/snap.db"
  [ -s "$TMP/snap.db" ] || fail "snapshot file missing or empty"
  echo "snapshot size: $(stat -c %s "$TMP/snap.db")"
}

c_defrag() {
  eq "defrag" "$(ctl defrag 2>&1 | grep -v '^{"level"')" "Finished defragmenting etcd member[$EP]"
}

c_alarm_list() {
  eq "alarm list (empty)" "$(ctl alarm list)" ""
}

# The JSON gateway (/v3/*) with curl: a put through one member, the value
# read back through another, and a streamed watch on the third.
c_gateway() {
  command -v curl >/dev/null || skip "curl not installed"
  local f="$TMP/gw_watch.out" wp k v r
  k="$(b64 gw/k)"; v="$(b64 hello)"
  : >"$f"
  curl -sN -X POST "http://$EPB/v3/watch" \
    -d "{\"create_request\":{\"key\":\"$k\",\"prev_kv\":true}}" >"$f" 2>"$f.err" &
  wp=$!; echo "$wp" >>"$TMP/bg.pids"
  wait_lines "$f" 1 5
  matches "watch created" "$(head -n1 "$f")" '^\{"result":\{"header":\{.*\},"created":true\}\}$'
  r="$(curl -s -X POST "http://$EPW/v3/kv/put" -d "{\"key\":\"$k\",\"value\":\"$v\"}")"
  matches "put" "$r" '^\{"header":\{"cluster_id":"[0-9]+","member_id":"[0-9]+","revision":"[0-9]+","raft_term":"[0-9]+"\}\}$'
  r="$(curl -s -X POST "http://$EP/v3/kv/range" -d "{\"key\":\"$k\"}")"
  eq "range value" "$(jq -r '.kvs[0].value' <<<"$r" | base64 -d)" "hello"
  eq "range count" "$(jq -r '.count' <<<"$r")" "1"
  curl -s -X POST "http://$EPW/v3/kv/put" -d "{\"key\":\"$k\",\"value\":\"$(b64 again)\"}" >/dev/null
  wait_lines "$f" 3 5
  kill "$wp" 2>/dev/null || true; wait "$wp" 2>/dev/null || true
  eq "watch event" "$(sed -n 2p "$f" | jq -r '.result.events[0].kv.value' | base64 -d)" "hello"
  eq "watch prev_kv" "$(sed -n 3p "$f" | jq -r '.result.events[0].prev_kv.value' | base64 -d)" "hello"
  r="$(curl -s -w ' %{http_code}' -X POST "http://$EP/v3/kv/range" -d '{"key":')"
  eq "malformed body" "$r" '{"error":"unexpected EOF","code":3,"message":"unexpected EOF"} 400'
}

c_err_future_rev() {
  local cur; cur="$(rev_now)"
  must_fail "get --rev future" "required revision is a future revision" ctl get kv/k1 --rev=$((cur + 1000))
}

c_err_lease_not_found() {
  must_fail "revoke unknown lease" "requested lease not found" ctl lease revoke 7fffdeadbeef1234
  must_fail "keep-alive unknown lease" "requested lease not found" ctl lease keep-alive --once 7fffdeadbeef1234
}

c_err_txn_dup_key() {
  local out rc
  set +e
  out="$(printf '\nput dup/k 1\nput dup/k 2\n\n\n' | ctl txn 2>&1)"; rc=$?
  set -e
  [ $rc -ne 0 ] || fail "txn with duplicate key succeeded: $out"
  contains "txn duplicate put" "$out" "duplicate key given in txn request"
  eq "nothing written" "$(ctl get dup/k)" ""
}

# 3-member mode only: etcdctl member add --learner, start the new member
# with the ETCD_* lines etcdctl prints, promote it, use it, remove it.
c_member_reconfig() {
  [ "$MEMBERS" = 3 ] || skip "needs MEMBERS=3"
  local ports out hex pid
  read -r -a ports < <(free_ports 2)
  local purl="http://127.0.0.1:${ports[1]}" curl="http://127.0.0.1:${ports[0]}" ep4="127.0.0.1:${ports[0]}"
  out="$(ctl member add s4 --peer-urls="$purl" --learner)"
  echo "$out"
  contains "member add" "$out" "added to cluster"
  contains "member add state" "$out" 'ETCD_INITIAL_CLUSTER_STATE="existing"'
  # etcdctl prints the ID with %16x: an ID below 2^60 is space-padded
  # ("Member  dc2a46157592bec added"), so split on runs of blanks.
  hex="$(awk '$1 == "Member" && $3 == "added" { print $2 }' <<<"$out")"
  [ -n "$hex" ] || fail "no member ID in: $out"
  eq "learner listed unstarted" "$(ctl member list | grep -c "unstarted, , $purl, , true")" 1
  ( eval "$(grep '^ETCD_' <<<"$out" | sed 's/^/export /')"
    exec "$SERVER" --data-dir "$TMP/d4" --listen-peer-urls "$purl" \
      --listen-client-urls "$curl" --advertise-client-urls "$curl" ) >"$TMP/server.s4.log" 2>&1 &
  pid=$!; echo "$pid" >>"$TMP/bg.pids"
  s4_up() { timeout -k 1 5 "$ETCDCTL" --endpoints="$ep4" --command-timeout=2s endpoint status -w json 2>/dev/null | grep -Eq '"(is_learner|isLearner)":true'; }
  wait_for 20 s4_up
  s4_up || { tail -n 20 "$TMP/server.s4.log"; fail "s4 never served as a learner"; }
  must_fail "learner refuses writes" "rpc not supported for learner" \
    timeout -k 1 5 "$ETCDCTL" --endpoints="$ep4" --command-timeout=2s put kv/x y
  promoted() { ctl member promote "$hex" 2>&1 | grep -q "promoted in cluster"; }
  wait_for 15 promoted
  # The list shows s4's name and client URL once s4 has published them
  # (a raft proposal of its own, racing the promotion).
  listed() { ctl member list | grep -q "$purl, $curl, false"; }
  wait_for 10 listed
  listed || { ctl member list; fail "member promote never succeeded"; }
  eq "four started voters" "$(ctl member list | grep -c ', started, s[1-4], .*, false$')" 4
  timeout -k 1 5 "$ETCDCTL" --endpoints="$ep4" --command-timeout=3s put kv/from-s4 yes >/dev/null
  eq "write through s4 read elsewhere" "$(ctl get kv/from-s4 --print-value-only)" "yes"
  out="$(ctl member remove "$hex")"
  contains "member remove" "$out" "removed from cluster"
  s4_gone() { ! kill -0 "$pid" 2>/dev/null; }
  wait_for 15 s4_gone
  s4_gone || fail "removed member s4 kept running"
  grep -q "permanently removed" "$TMP/server.s4.log" || fail "s4 did not say it was removed"
  eq "three members left" "$(ctl member list | wc -l)" 3
}

# Auth (RBAC): root, a role with a prefix permission, a user; auth enable
# (etcdctl 3.5 creates the root role itself when it is missing), --user,
# permission denied, root-only management, auth disable. Runs last-but-one:
# it leaves auth disabled and removes what it added.
c_auth() {
  local R="--user=root:rootpw" A="--user=alice:alicepw"
  must_fail "auth enable without root" "root user does not exist" ctl auth enable
  eq "user add root" "$(ctl user add root:rootpw)" "User root created"
  eq "role add" "$(ctl role add kvrw)" "Role kvrw created"
  eq "grant prefix" "$(ctl role grant-permission kvrw readwrite au/ --prefix)" "Role kvrw updated"
  eq "grant from-key" "$(ctl role grant-permission kvrw read zz --from-key)" "Role kvrw updated"
  eq "user add alice" "$(ctl user add alice:alicepw)" "User alice created"
  eq "grant role" "$(ctl user grant-role alice kvrw)" "Role kvrw is granted to user alice"
  if ctl role get root >/dev/null 2>&1; then :; else
    # etcdctl 3.4 does not create the root role on auth enable.
    ctl role add root >/dev/null
  fi
  ctl user grant-role root root >/dev/null
  eq "auth enable" "$(ctl auth enable)" "Authentication Enabled"
  must_fail "no credentials" "user name is empty" ctl get au/k
  ctl $A put au/k v >/dev/null
  eq "alice reads her prefix" "$(ctl $A get au/k --print-value-only)" "v"
  eq "alice reads from-key" "$(ctl $A get zz --from-key --keys-only)" ""
  must_fail "alice writes elsewhere" "permission denied" ctl $A put other v
  must_fail "alice writes read-only range" "permission denied" ctl $A put zz1 v
  must_fail "wrong password" "authentication failed, invalid user ID or password" ctl --user=alice:bad get au/k
  must_fail "alice is not root" "permission denied" ctl $A user list
  eq "root lists users" "$(ctl $R user list | tr '\n' ' ')" "alice root "
  local rg; rg="$(ctl $R role get kvrw)"
  contains "role get" "$rg" "[au/, au0) (prefix au/)"
  contains "role get from-key" "$rg" "[zz, <open ended>"
  eq "user get" "$(ctl $R user get alice | tr '\n' ' ')" "User: alice Roles: kvrw "
  must_fail "root cannot be deleted" "invalid auth management" ctl $R user delete root
  must_fail "root keeps root role" "invalid auth management" ctl $R user revoke-role root root
  eq "auth disable" "$(ctl $R auth disable)" "Authentication Disabled"
  eq "anonymous again" "$(ctl get au/k --print-value-only)" "v"
  ctl user delete alice >/dev/null
  ctl user delete root >/dev/null
  ctl role delete kvrw >/dev/null
  ctl role delete root >/dev/null
  eq "no users left" "$(ctl user list)" ""
}

# ================================================================= run
run_check endpoint.health       c_endpoint_health
run_check kv.put_get            c_put_get
run_check kv.get_prefix         c_get_prefix
run_check kv.get_keys_only      c_get_keys_only
run_check kv.get_limit          c_get_limit
run_check kv.get_rev            c_get_rev
run_check kv.get_sort           c_get_sort
run_check kv.get_count_only     c_get_count_only
run_check kv.del                c_del
run_check txn                   c_txn
run_check watch.live_prefix     c_watch_live
run_check watch.history         c_watch_history
run_check lease                 c_lease
run_check lease.expiry          c_lease_expiry
run_check err.future_revision   c_err_future_rev
run_check err.lease_not_found   c_err_lease_not_found
run_check err.txn_duplicate_key c_err_txn_dup_key
run_check compaction            c_compaction
run_check endpoint.status       c_endpoint_status
run_check endpoint.hashkv       c_endpoint_hashkv
run_check member.list           c_member_list
run_check snapshot.save         c_snapshot
run_check defrag                c_defrag
run_check alarm.list            c_alarm_list
run_check auth                  c_auth
run_check member.reconfig       c_member_reconfig
run_check gateway               c_gateway

if [ "$MEMBERS" = 3 ]; then
  for i in 0 1 2; do
    if ! kill -0 "${SRV_PIDS[i]}" 2>/dev/null; then
      FAILS=$((FAILS + 1)); FAILED_NAMES+=("server.alive.s$((i + 1))"); echo "FAIL server.alive: member s$((i + 1)) exited during the run"
    fi
  done
elif ! kill -0 "$SRV_PID" 2>/dev/null; then
  FAILS=$((FAILS + 1)); FAILED_NAMES+=("server.alive"); echo "FAIL server.alive: server exited during the run"
fi
if [ $FAILS -gt 0 ]; then
  echo "---- server log (tail) ----"; server_logs 30
  echo "failed: ${FAILED_NAMES[*]}"
fi
printf '%d passed, %d failed, %d skipped\n' "$PASSES" "$FAILS" "$SKIPS"
T1=${EPOCHREALTIME/./}; echo "elapsed: $(( (T1 - T0) / 1000 )) ms"
[ $FAILS -eq 0 ]
