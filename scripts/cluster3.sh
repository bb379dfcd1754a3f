#!/usr/bin/env bash
# Start a local 3-member Strata cluster in the foreground (the Procfile's
# members), logs in ./cluster3-logs/. Ctrl-C stops the members it started.
#   ./scripts/cluster3.sh            # build (release) and run
#   etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 endpoint status -w table
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p store --bin strata
mkdir -p cluster3-logs
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name="${line%%:*}"
  cmd="${line#*: }"
  bash -c "exec $cmd" >"cluster3-logs/$name.log" 2>&1 &
  pids+=("$!")
  echo "started $name (pid $!), log cluster3-logs/$name.log"
done < Procfile
echo "client URLs: http://127.0.0.1:2379 http://127.0.0.1:22379 http://127.0.0.1:32379 (Ctrl-C to stop)"
wait
