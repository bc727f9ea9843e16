#!/usr/bin/env bash
# Starts Goat on this Docker host with compose: three managers (manager1..3,
# ids 1..3) and two workers on a private network, the managers' APIs on
# 127.0.0.1:7101-7103, data in named volumes.
#
# Builds what it needs first (Debian packages, the static binary and the
# images goat:latest and goat-echo:latest; no registry), generates the
# cluster token once (deploy/.goat-token, kept across runs, ignored by git)
# and waits until there is a leader and both workers are ready.
#
#   deploy/up.sh                 # project "goat"
#   COMPOSE_PROJECT_NAME=demo GOAT_API_PORT1=8101 ... deploy/up.sh
# Env: GOAT_SKIP_BUILD=1 skips the image build (they must exist).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/compose.sh
source "$ROOT/deploy/compose.sh"

if [ "${GOAT_SKIP_BUILD:-0}" != 1 ]; then
  GOAT_SKIP_ETCD=1 bash "$ROOT/deploy/install-deps.sh"
  bash "$ROOT/deploy/build-images.sh"
fi

TOKEN_FILE="${GOAT_TOKEN_FILE:-$ROOT/deploy/.goat-token}"
if [ -z "${GOAT_TOKEN:-}" ]; then
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
    echo "==> generated the cluster token in $TOKEN_FILE (keep it)"
  fi
  GOAT_TOKEN="$(cat "$TOKEN_FILE")"
fi
export GOAT_TOKEN

echo "==> starting project $COMPOSE_PROJECT_NAME with $(compose_version)"
compose up -d --remove-orphans

API="http://${GOAT_API_BIND:-127.0.0.1}:${GOAT_API_PORT1:-7101}"
echo "==> waiting for a leader and two ready workers"
leader="" ready=0
for _ in $(seq 1 150); do
  leader=$(curl -s -m 1 "$API/v1/health" | sed -n 's/.*"leader":\([0-9]*\).*/\1/p' || true)
  ready=$(curl -s -m 2 "$API/v1/nodes?stale=true" | grep -o '"name":"[^"]*","status":"ready"' | wc -l || true)
  [ -n "$leader" ] && [ "$ready" -ge 2 ] && break
  sleep 0.2
done
if [ -z "$leader" ] || [ "$ready" -lt 2 ]; then
  echo "error: no leader or fewer than two ready workers (leader=${leader:-none}, ready=$ready); logs:" >&2
  compose logs --tail 20 >&2
  exit 1
fi
cat <<EOM
==> Goat is up: leader manager$leader, $ready workers ready.
    APIs: 127.0.0.1:${GOAT_API_PORT1:-7101} :${GOAT_API_PORT2:-7102} :${GOAT_API_PORT3:-7103} (any of them)
    curl -s $API/v1/cluster
    curl -s $API/v1/cluster/verify
    target/static/x86_64-unknown-linux-gnu/release/goat drill kill-leader
    deploy/down.sh [--volumes]
EOM
