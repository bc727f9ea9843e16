# Sourced by up.sh and down.sh: runs whichever compose this machine has
# (`docker compose` v2, or the standalone `docker-compose`, e.g. Debian's
# 1.29) on deploy/compose/docker-compose.yml.
COMPOSE_FILE_PATH="$ROOT/deploy/compose/docker-compose.yml"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-goat}"

if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  echo "error: neither 'docker compose' nor 'docker-compose' is installed" >&2
  echo "       (Debian: apt-get install docker-compose)" >&2
  exit 1
fi

compose() {
  "${COMPOSE_CMD[@]}" --file "$COMPOSE_FILE_PATH" --project-name "$COMPOSE_PROJECT_NAME" "$@"
}

compose_version() {
  "${COMPOSE_CMD[@]}" version 2>/dev/null | head -1
}
