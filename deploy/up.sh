#!/usr/bin/env bash
# Starts Goat on this Docker host with compose: three managers (manager1..3,
# ids 1..3) and two workers on a private network, the managers' APIs on
# 127.0.0.1:7101-7103, data in named volumes.
#
# Builds what it needs first (Debian packages, the static binary and the
# images goat:latest and goat-echo:latest; no registry), generates the
# cluster token once (deploy/.goat-token, kept across runs, ignored by git),
# the TLS certificates once per project (`goat tls init` into
# deploy/.goat-tls/PROJECT/certs; the CA's key beside it, not mounted), and
# waits until there is a leader and both workers are ready.
#
#   deploy/up.sh                 # project "goat"
#   COMPOSE_PROJECT_NAME=demo GOAT_API_PORT1=8101 ... deploy/up.sh
# Env: GOAT_SKIP_BUILD=1 skips the image build (they must exist);
#      GOAT_TLS_DIR=DIR keeps the certificates in DIR/certs instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/compose.sh
source "$ROOT/deploy/compose.sh"

if [ "${GOAT_SKIP_BUILD:-0}" != 1 ]; then
  GOAT_SKIP_ETCD=1 bash "$ROOT/deploy/install-deps.sh"
  bash "$ROOT/deploy/build-images.sh"
fi

TOKEN_FILE="${GOAT_TOKEN_FILE:-$ROOT/deploy/.goat-token}"
TOKEN_HINT='the cluster token you gave (GOAT_TOKEN)'
if [ -z "${GOAT_TOKEN:-}" ]; then
  TOKEN_HINT="\$(cat $TOKEN_FILE)"
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
    echo "==> generated the cluster token in $TOKEN_FILE (keep it)"
  fi
  GOAT_TOKEN="$(cat "$TOKEN_FILE")"
fi
export GOAT_TOKEN

TLS_HOME="${GOAT_TLS_HOME:-$ROOT/deploy/.goat-tls/$COMPOSE_PROJECT_NAME}"
export GOAT_TLS_DIR="$TLS_HOME/certs"
if [ ! -s "$GOAT_TLS_DIR/ca.crt" ]; then
  mkdir -p "$TLS_HOME"
  rm -rf "$GOAT_TLS_DIR"
  docker run --rm --user "$(id -u):$(id -g)" -v "$TLS_HOME:/out" "${GOAT_IMAGE:-goat:latest}" \
    tls init /out/certs --managers cluster-manager1,cluster-manager2,cluster-manager3 \
    --workers worker1,worker2 >/dev/null
  mv "$GOAT_TLS_DIR/ca.key" "$TLS_HOME/ca.key"
  echo "==> wrote the TLS certificates to $GOAT_TLS_DIR (the CA's key: $TLS_HOME/ca.key)"
fi
CURL=(curl -s --cacert "$GOAT_TLS_DIR/ca.crt" --cert "$GOAT_TLS_DIR/client.crt" --key "$GOAT_TLS_DIR/client.key")

# The tasks' ports are published on this host, and the workers run in
# containers: they advertise the cluster network's gateway (this host's
# address on it) so that /v1/services/NAME/endpoints lists addresses a
# client reaches, from the host or from a container on that network. The
# network exists once compose created it (`up --no-start`), before any
# container starts.
echo "==> starting project $COMPOSE_PROJECT_NAME with $(compose_version)"
if [ -z "${GOAT_WORKER_ADVERTISE:-}" ]; then
  compose up --no-start --remove-orphans >/dev/null
  GOAT_WORKER_ADVERTISE="$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' \
    "$COMPOSE_PROJECT_NAME-net" | awk '{print $1}')"
  echo "==> workers advertise $GOAT_WORKER_ADVERTISE (the gateway of $COMPOSE_PROJECT_NAME-net)"
fi
export GOAT_WORKER_ADVERTISE
compose up -d --remove-orphans

API="https://${GOAT_API_BIND:-127.0.0.1}:${GOAT_API_PORT1:-7101}"
echo "==> waiting for a leader and two ready workers"
leader="" ready=0
for _ in $(seq 1 150); do
  leader=$("${CURL[@]}" -m 1 "$API/v1/health" | sed -n 's/.*"leader":\([0-9]*\).*/\1/p' || true)
  ready=$("${CURL[@]}" -m 2 -H "Authorization: Bearer $GOAT_TOKEN" "$API/v1/nodes?stale=true" \
    | grep -o '"name":"[^"]*","status":"ready"' | wc -l || true)
  [ -n "$leader" ] && [ "$ready" -ge 2 ] && break
  sleep 0.2
done
if [ -z "$leader" ] || [ "$ready" -lt 2 ]; then
  echo "error: no leader or fewer than two ready workers (leader=${leader:-none}, ready=$ready); logs:" >&2
  compose logs --tail 20 >&2
  exit 1
fi
B="${GOAT_API_BIND:-127.0.0.1}"
cat <<EOM
==> Goat is up: leader manager$leader, $ready workers ready (TLS and tokens on).
    APIs: https://$B:${GOAT_API_PORT1:-7101} :${GOAT_API_PORT2:-7102} :${GOAT_API_PORT3:-7103} (any of them)
    To use them (the cluster token has every right; make narrower ones with goat token create):
    export GOAT_ADDR=$B:${GOAT_API_PORT1:-7101},$B:${GOAT_API_PORT2:-7102},$B:${GOAT_API_PORT3:-7103}
    export GOAT_TOKEN=$TOKEN_HINT
    export GOAT_TLS_CA=$GOAT_TLS_DIR/ca.crt GOAT_TLS_CERT=$GOAT_TLS_DIR/client.crt GOAT_TLS_KEY=$GOAT_TLS_DIR/client.key
    target/static/x86_64-unknown-linux-gnu/release/goat status
    curl -s --cacert \$GOAT_TLS_CA --cert \$GOAT_TLS_CERT --key \$GOAT_TLS_KEY -H "Authorization: Bearer \$GOAT_TOKEN" $API/v1/cluster
    target/static/x86_64-unknown-linux-gnu/release/goat drill kill-leader
    deploy/down.sh [--volumes]
EOM
