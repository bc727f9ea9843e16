#!/usr/bin/env bash
# Goat on one machine, from a fresh clone: installs what is missing, builds
# the images and the release binary, then runs `goat dev` in the foreground:
# three managers (127.0.0.1:7101-7103) and one worker, with the echo task
# published on port 7777. Ctrl-C stops everything (echo task first).
#
#   deploy/local-cluster.sh                        # defaults
#   deploy/local-cluster.sh --data-dir /tmp/goat   # keep data and logs
#   deploy/local-cluster.sh --port-base 8101 --echo-port 8777
#
# Every argument is passed to `goat dev` (see `goat dev --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

GOAT_SKIP_ETCD=1 bash "$ROOT/deploy/install-deps.sh"
bash "$ROOT/deploy/build-images.sh"
echo "==> building goat (release)"
(cd "$ROOT" && cargo build --release --quiet --bin goat)
cd "$ROOT"
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/goat" dev "$@"
