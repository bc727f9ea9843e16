#!/usr/bin/env bash
# Fuzzes the public API against its own OpenAPI document (docs/openapi.json)
# with Schemathesis: starts a one-manager cluster on loopback (no worker:
# submitted tasks stay pending), then sends requests generated from the
# document, valid ones and invalid ones, and checks every answer:
#
#   not_a_server_error          no 5xx
#   status_code_conformance     the status is one the operation documents
#   content_type_conformance    the Content-Type is the documented one
#   response_schema_conformance the body matches the documented schema
#   response_headers_conformance documented headers are there and valid
#   positive_data_acceptance    a request valid by the schema is not refused
#                               with a 400: the schema states every rule of
#                               a field the server enforces (a 422 is a rule
#                               across fields, which JSON Schema cannot
#                               state: deploy/schemathesis.toml)...
#   negative_data_rejection     ...and a request invalid by it is refused
#                               (4xx): the server enforces every rule stated
#   missing_required_header, ignored_auth (401 without the token),
#   unsupported_method (405 for a method the path does not have)
#
# Left out of the run, because they would wreck the one-manager cluster it
# tests or never answer: membership changes (POST /v1/cluster/members,
# DELETE /v1/cluster/members/{id}), leader transfer (POST
# /v1/cluster/leader), restore (POST /v1/snapshot/restore: replaces the
# state) and the event stream (GET /v1/events: an SSE answer never ends).
#
# tests/run.sh runs it with 25 cases per operation and phase (about a
# minute) after the Rust tests, on the goat they built. Run it with more
# after changing the API, a handler's checks or a schema:
#
#   deploy/fuzz-api.sh                  (from anywhere; builds goat if needed)
#   GOAT_FUZZ_MAX_EXAMPLES=150 GOAT_FUZZ_SEED=2 deploy/fuzz-api.sh
#
# Env: GOAT_BIN                the goat binary to run (default: build
#                              target/debug/goat)
#      GOAT_FUZZ_MAX_EXAMPLES  cases per operation and phase (default 50)
#      GOAT_FUZZ_SEED          the generator's seed (default 1: reproducible)
#      GOAT_FUZZ_PORT          the manager's port (default: a free one)
#      GOAT_FUZZ_REPORT        where the reports go (default target/fuzz-api)
# Extra arguments go to `st run` (e.g. --include-path-regex '/v1/tasks').
# Exits non-zero when Schemathesis finds a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Pinned: a new release may add checks; move the pin on purpose.
SCHEMATHESIS_VERSION='schemathesis==4.32.5'
MAX_EXAMPLES="${GOAT_FUZZ_MAX_EXAMPLES:-50}"
SEED="${GOAT_FUZZ_SEED:-1}"
REPORT="${GOAT_FUZZ_REPORT:-$ROOT/target/fuzz-api}"

installed="$(python3 -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed" != "${SCHEMATHESIS_VERSION#*==}" ]; then
  echo "==> installing Schemathesis ($SCHEMATHESIS_VERSION)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$SCHEMATHESIS_VERSION"
fi

if [ -n "${GOAT_BIN:-}" ]; then
  GOAT="$GOAT_BIN"
else
  GOAT="$ROOT/target/debug/goat"
  echo "==> building goat (debug)"
  (cd "$ROOT" && nice -n 10 cargo build --quiet --bin goat)
fi

# A free loopback port: bind 0 and read what the kernel chose.
PORT="${GOAT_FUZZ_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
ADDR="127.0.0.1:$PORT"
TOKEN="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
DATA="$(mktemp -d)"
MANAGER_PID=""
cleanup() {
  if [ -n "$MANAGER_PID" ]; then
    kill "$MANAGER_PID" 2>/dev/null || true
    wait "$MANAGER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

mkdir -p "$REPORT"
echo "==> starting a one-manager cluster on $ADDR (log: $REPORT/manager.log)"
GOAT_TOKEN="$TOKEN" RUST_LOG="${RUST_LOG:-warn}" "$GOAT" manager --id 1 --listen "$ADDR" \
  --data-dir "$DATA" --peers "1=$ADDR" >"$REPORT/manager.log" 2>&1 &
MANAGER_PID=$!
for _ in $(seq 1 100); do
  if curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/v1/cluster" 2>/dev/null | grep -q '"leader":1'; then
    break
  fi
  kill -0 "$MANAGER_PID" 2>/dev/null || { cat "$REPORT/manager.log"; exit 1; }
  sleep 0.2
done

echo "==> Schemathesis against docs/openapi.json (seed $SEED, $MAX_EXAMPLES cases per operation and phase)"
# From the report folder: Schemathesis keeps its cache (.schemathesis/) in
# the working directory.
cd "$REPORT"
status=0
# Through the module rather than the `st` script: a fresh install's
# scripts may not be on PATH yet.
python3 -m schemathesis.cli --no-color --config-file "$ROOT/deploy/schemathesis.toml" run "$ROOT/docs/openapi.json" \
  --url "http://$ADDR" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --exclude-checks use_after_free,ensure_resource_availability,object_level_authorization \
  --mode all \
  --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --request-timeout 40 \
  --suppress-health-check all \
  --exclude-path '/v1/cluster/members' \
  --exclude-path '/v1/cluster/members/{id}' \
  --exclude-path '/v1/cluster/leader' \
  --exclude-path '/v1/snapshot/restore' \
  --exclude-path '/v1/events' \
  --report junit,ndjson --report-dir "$REPORT" \
  "$@" || status=$?
kill -0 "$MANAGER_PID" 2>/dev/null || { echo "the manager died during the run:"; tail -50 "$REPORT/manager.log"; status=1; }
exit "$status"
