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

# free_ports N: prints N distinct free 127.0.0.1 TCP ports, space-separated,
# chosen from 20000-32767, below the kernel's ephemeral range: a port that
# bind(0) hands out and the caller releases can be taken by an outgoing
# connection (a client's, a member's to its peers) before the server binds
# it. Ask for all of one cluster's ports in one call (the ports are
# released before they are printed).
free_ports() {
  python3 - "${1:-1}" <<'PY'
import random, socket, sys
want, held, tried = int(sys.argv[1]), [], 0
p = random.randrange(20000, 32768)
while len(held) < want:
    if tried == 12768:
        sys.exit("free_ports: not enough free ports in 20000-32767")
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        held.append(s)
    except OSError:
        s.close()
    p, tried = 20000 + (p - 20000 + 1) % 12768, tried + 1
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}
