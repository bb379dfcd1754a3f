#!/usr/bin/env bash
# Start a real kube-apiserver on an etcd-compatible store (Strata or etcd),
# generating everything it needs on first use in DIR:
#
#   ca.{crt,key}          a private CA (clients and the serving cert)
#   apiserver.{crt,key}   serving cert for 127.0.0.1 / localhost / kubernetes.default
#   sa.{key,pub}          service-account token signing key pair
#   tokens.csv            a static bearer token for user "admin" in system:masters
#   kubeconfig            for kubectl: https://127.0.0.1:PORT, the CA and the token
#
#   scripts/kube-apiserver.sh --dir DIR --etcd-servers URL[,URL...] [--port 6443] [-- extra kube-apiserver flags]
#
# It execs kube-apiserver (so the PID is the apiserver's), with its log on
# stderr. KUBE_APISERVER names the binary (default: the one
# scripts/install-kube.sh caches). Example:
#
#   cargo run --release -p store --bin strata &          # 127.0.0.1:2379
#   scripts/kube-apiserver.sh --dir /tmp/kube --etcd-servers http://127.0.0.1:2379 &
#   KUBECONFIG=/tmp/kube/kubeconfig kubectl get ns
set -euo pipefail

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
BIN="${KUBE_APISERVER:-$STRATA_CACHE/kube/kube-apiserver}"
DIR="" ETCD="" PORT=6443
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --etcd-servers) ETCD="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "kube-apiserver.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$DIR" ] && [ -n "$ETCD" ] || { echo "kube-apiserver.sh: --dir and --etcd-servers are required" >&2; exit 2; }
[ -x "$BIN" ] || { echo "kube-apiserver.sh: no kube-apiserver at $BIN (run scripts/install-kube.sh)" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"

if [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=strata-kube-ca" 2>/dev/null
fi
if [ ! -s apiserver.crt ]; then
  cat >apiserver.ext <<EXT
subjectAltName = IP:127.0.0.1, IP:10.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage = serverAuth
EXT
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
    -days 3650 -extfile apiserver.ext 2>/dev/null
  rm -f apiserver.csr apiserver.ext
fi
if [ ! -s sa.key ]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
if [ ! -s tokens.csv ]; then
  token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "$token,admin,admin-uid,\"system:masters\"" >tokens.csv
fi
token="$(cut -d, -f1 tokens.csv)"
cat >kubeconfig <<KC
apiVersion: v1
kind: Config
clusters:
- name: strata
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $PWD/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: strata
  context:
    cluster: strata
    user: admin
current-context: strata
KC

# Releases before 1.24 open an unauthenticated port 8080 unless told not to;
# later ones no longer know the flag.
insecure=()
minor="$("$BIN" --version | sed -n 's/^Kubernetes v1\.\([0-9]*\)\..*/\1/p')"
if [ -n "$minor" ] && [ "$minor" -lt 24 ]; then insecure=(--insecure-port=0); fi

exec "$BIN" \
  --etcd-servers="$ETCD" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$PORT" "${insecure[@]}" \
  --tls-cert-file="$PWD/apiserver.crt" --tls-private-key-file="$PWD/apiserver.key" \
  --client-ca-file="$PWD/ca.crt" --token-auth-file="$PWD/tokens.csv" \
  --service-account-key-file="$PWD/sa.pub" --service-account-signing-key-file="$PWD/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.0.0.0/24 \
  --authorization-mode=Node,RBAC --endpoint-reconciler-type=none \
  --cert-dir="$PWD/certs" \
  "$@"
