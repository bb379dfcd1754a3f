# Sourced by the bench scripts: ROOT (the repository), the peer binaries of
# scripts/peers.env, and the binaries a script runs unless the caller sets
# them: STRATA (target/release/strata), ETCD and ETCDCTL (etcd 3.5.1),
# BENCHMARK (etcd's benchmark tool, built by install-etcd-benchmark.sh).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
source "$ROOT/scripts/peers.env"
STRATA=${STRATA:-$ROOT/target/release/strata}
ETCD=${ETCD:-$ETCD35_BIN}
ETCDCTL=${ETCDCTL:-$ETCDCTL35_BIN}
BENCHMARK=${BENCHMARK:-$STRATA_CACHE/etcd-benchmark/benchmark}
