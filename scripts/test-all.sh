#!/usr/bin/env bash
# Run Strata's whole test suite, installing whatever the tests need first.
#   ./scripts/test-all.sh
# Steps: install peers (etcd 3.4/3.5, etcdctl, protoc, iproute2, iptables,
# kube-apiserver 1.20.2 built from Debian's source, about 8 minutes the first
# time, and kubectl),
# format and lint checks, unit + integration + differential + crash tests,
# the jepsen suite (network namespaces: needs root), one untimed run
# of every criterion benchmark, then the etcdctl script test against Strata
# with etcdctl 3.4 and 3.5. The corruption-check tests run a second time
# with the `failpoints` feature, with the fault-injection tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo; echo "==> $*"; }

step "installing test peers"
./scripts/install-peers.sh
# shellcheck source=scripts/peers.env
source scripts/peers.env
# etcd's own benchmark tool (the comparison runner's neutral generator).
bench/scripts/install-etcd-benchmark.sh
# The jepsen suite builds network namespaces, veths and iptables rules.
if ! command -v ip >/dev/null || ! command -v iptables >/dev/null; then
  apt-get install -y iproute2 iptables || { apt-get update && apt-get install -y iproute2 iptables; }
fi
# kube-apiserver and kubectl for the Kubernetes end-to-end test (cached).
# The first build takes minutes: it runs in the background, beside the Rust
# builds below, and the jepsen step waits for it. No apt-get after this point
# (the build may hold the dpkg lock).
command -v openssl >/dev/null || apt-get install -y openssl || { apt-get update && apt-get install -y openssl; }
kube_out="$(mktemp)"
kube_log="$(mktemp)"
scripts/install-kube.sh >"$kube_out" 2>"$kube_log" &
kube_pid=$!

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy (store with failpoints)"
cargo clippy -p store --all-targets --features failpoints -- -D warnings

step "cargo test (unit, integration, differential, crash)"
cargo test --workspace --exclude jepsen

# Needs root (namespaces) and target/debug/strata, built by the step above.
step "waiting for kube-apiserver and kubectl (scripts/install-kube.sh)"
if ! wait "$kube_pid"; then
  cat "$kube_log" >&2
  echo "scripts/install-kube.sh failed" >&2
  exit 1
fi
cat "$kube_log" >&2
eval "$(cat "$kube_out")"
export KUBE_APISERVER KUBECTL
echo "KUBE_APISERVER=$KUBE_APISERVER KUBECTL=$KUBECTL"

step "jepsen: checkers, the fault-injection suite and kube-apiserver end to end on a 3-node Strata"
STRATA_BIN="$PWD/target/debug/strata" cargo test -p jepsen

# Criterion runs each benchmark once, untimed, when started without
# `--bench` (test mode; inputs are smaller there), printing "Testing
# <name>" and "Success". `--bench '*'` selects the benchmark targets only
# (`--benches` would also rerun the library's unit tests).
step "benchmarks, once each in test mode (cargo test -p store --bench '*')"
cargo test -p store --bench '*'

step "etcdctl script test (etcdctl 3.4)"
ETCDCTL="$ETCDCTL34_BIN" store/tests/etcdctl/run.sh target/debug/strata

step "etcdctl script test (etcdctl 3.5)"
ETCDCTL="$ETCDCTL35_BIN" store/tests/etcdctl/run.sh target/debug/strata

step "etcdctl script test, 3 members (etcdctl 3.4)"
MEMBERS=3 ETCDCTL="$ETCDCTL34_BIN" store/tests/etcdctl/run.sh target/debug/strata

step "etcdctl script test, 3 members (etcdctl 3.5)"
MEMBERS=3 ETCDCTL="$ETCDCTL35_BIN" store/tests/etcdctl/run.sh target/debug/strata

# Last: this rebuilds target/debug/strata with failpoints compiled in, and
# the etcdctl script tests above must run the default build.
step "cargo test: corruption checks and fault injection with failpoints"
cargo test -p store --features failpoints --lib failpoints
cargo test -p store --features failpoints --test it -- corrupt failpoints::

echo
echo "all tests passed"
