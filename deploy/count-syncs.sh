#!/usr/bin/env bash
# Counts the disk syncs one manager makes per acknowledged write: starts a
# single-manager cluster, attaches `strace -f -c` to all its threads, sends N
# `POST /v1/tasks` one after the other (each waits for its 201, so each is
# one acknowledged Raft batch), detaches and prints strace's table of
# fsync/fdatasync/sync_file_range/msync calls.
#
#   deploy/count-syncs.sh [N]          (GOAT_BIN=path/to/goat, default target/release/goat)
#
# No worker runs, so apart from sled's once-a-second background flush every
# sync belongs to one of the N writes. Needs strace (deploy/install-deps.sh).
set -euo pipefail
n=${1:-50}
bin=${GOAT_BIN:-target/release/goat}
port=${GOAT_SYNC_PORT:-7391}
dir=$(mktemp -d)
token=count-syncs-token
auth="authorization: Bearer $token"

"$bin" manager --id 1 --listen "127.0.0.1:$port" --peers "1=127.0.0.1:$port" \
  --data-dir "$dir/data" --token "$token" >"$dir/manager.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -sf -H "$auth" "http://127.0.0.1:$port/v1/tasks" >/dev/null 2>&1 && break
  sleep 0.2
done
# Traced only around the writes: start-up syncs are not counted.
strace -f -c -o "$dir/strace.txt" -e trace=fsync,fdatasync,sync_file_range,msync -p "$pid" 2>/dev/null &
tracer=$!
sleep 1
ok=0
started=$(date +%s.%N)
for i in $(seq "$n"); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" -H 'content-type: application/json' \
    -d "{\"name\":\"sync-$i\",\"image\":\"goat-echo:latest\"}" "http://127.0.0.1:$port/v1/tasks")
  if [ "$code" = 201 ]; then ok=$((ok + 1)); fi
done
took=$(echo "$(date +%s.%N) - $started" | bc)
kill -INT "$tracer"
wait "$tracer" 2>/dev/null || true
echo "acknowledged: $ok of $n POST /v1/tasks in ${took}s (traced from 1 s before the first)"
cat "$dir/strace.txt"
