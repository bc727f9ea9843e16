#!/usr/bin/env bash
# Stops and removes what deploy/up.sh started: the compose services, the
# task containers its workers started, and the network. The data volumes
# (and deploy/.goat-token) are kept unless --volumes is given.
#
#   deploy/down.sh               # keep the data
#   deploy/down.sh --volumes     # forget it too
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/compose.sh
source "$ROOT/deploy/compose.sh"
# `down` does not read the token, but compose checks the variable is set.
export GOAT_TOKEN="${GOAT_TOKEN:-unused-by-down}"
export GOAT_TLS_DIR="${GOAT_TLS_DIR:-/nonexistent-unused-by-down}"

volumes=()
for arg in "$@"; do
  case "$arg" in
    --volumes|-v) volumes=(--volumes) ;;
    *) echo "usage: deploy/down.sh [--volumes]" >&2; exit 2 ;;
  esac
done

# Stop the workers first so they start nothing more, then remove their
# tasks' containers (not compose's: the workers created them).
compose stop worker1 worker2 >/dev/null 2>&1 || true
for worker in worker1 worker2; do
  ids=$(docker ps -aq --filter "label=goat.node=$COMPOSE_PROJECT_NAME-$worker")
  if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi
done
compose down --remove-orphans "${volumes[@]}"
if [ ${#volumes[@]} -gt 0 ] && [ -z "${GOAT_TOKEN_FILE:-}" ] && [ "$COMPOSE_PROJECT_NAME" = goat ]; then
  rm -f "$ROOT/deploy/.goat-token"
fi
echo "==> project $COMPOSE_PROJECT_NAME is down${volumes:+ (data removed)}"
