#!/usr/bin/env bash
# Goat's main job on one machine: three managers (a Raft group) and one
# worker on loopback, with the echo application submitted as a task and
# published on port 7777. Runs in the foreground; Ctrl-C stops everything
# (the managers' data stays in $GOAT_DEV_DIR, the echo container is stopped).
#
#   deploy/local-cluster.sh            # build, start, submit the echo task
#   GOAT_DEV_DIR=/tmp/goat deploy/local-cluster.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${GOAT_DEV_DIR:-$(mktemp -d /tmp/goat-dev.XXXXXX)}"
ECHO_PORT="${GOAT_ECHO_PORT:-7777}"
export GOAT_TOKEN="${GOAT_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

GOAT_SKIP_ETCD=1 bash "$ROOT/deploy/install-deps.sh"
bash "$ROOT/deploy/build-images.sh"
(cd "$ROOT" && cargo build --release --bin goat)
GOAT="$ROOT/target/release/goat"

PEERS="1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
pids=()
cleanup() {
  echo
  echo "==> stopping the echo task and the cluster"
  if [ -n "${TASK_ID:-}" ]; then curl -s -X DELETE "127.0.0.1:7101/v1/tasks/$TASK_ID" >/dev/null || true; sleep 2; fi
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "==> data kept in $DIR"
}
trap cleanup EXIT INT TERM

mkdir -p "$DIR"
for id in 1 2 3; do
  "$GOAT" manager --id "$id" --listen "127.0.0.1:710$id" --peers "$PEERS" --data-dir "$DIR/manager$id" \
    2>"$DIR/manager$id.log" &
  pids+=($!)
done
"$GOAT" worker --name local-worker --managers 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 \
  --data-dir "$DIR/worker" 2>"$DIR/worker.log" &
pids+=($!)

echo "==> waiting for a leader"
for _ in $(seq 1 100); do
  leader=$(curl -s 127.0.0.1:7101/v1/health | sed -n 's/.*"leader":\([0-9]*\).*/\1/p')
  [ -n "$leader" ] && break
  sleep 0.2
done
echo "    leader: manager $leader"

TASK_ID=$(curl -s -X POST 127.0.0.1:7102/v1/tasks -d "{
  \"name\": \"echo\", \"image\": \"goat-echo:latest\", \"cpu\": 0.1, \"memory\": 33554432,
  \"ports\": [{\"container\": 7777, \"host\": $ECHO_PORT}],
  \"health_check\": {\"path\": \"/health\", \"port\": 7777, \"interval\": \"1s\"}
}" | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
echo "==> submitted the echo task $TASK_ID; waiting for it to run"
for _ in $(seq 1 150); do
  state=$(curl -s "127.0.0.1:7103/v1/tasks/$TASK_ID" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
  [ "$state" = running ] && break
  sleep 0.2
done

cat <<EOM

Goat is running: managers on 127.0.0.1:7101, :7102, :7103 (API on each), one worker.
Logs and data: $DIR
Echo task $TASK_ID is $state. Try:

  curl -X POST localhost:$ECHO_PORT/ -d '{"Msg":"Hello, world!"}'
  curl -s localhost:7101/v1/tasks/$TASK_ID
  curl -s localhost:7102/v1/cluster

Press Ctrl-C to stop.
EOM
wait
