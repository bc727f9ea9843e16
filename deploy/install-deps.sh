#!/usr/bin/env bash
# Installs what Goat's builds, tests and benchmarks need on a fresh machine
# of this project's kind (Debian, root, Docker Engine already running):
#   - file:         build-images.sh checks that the goat binary is static
#   - etcd-server:  the peer `goat-bench raft` measures against
#   - curl:         README examples and manual checks
#   - strace, bc:   deploy/count-syncs.sh (syncs per acknowledged write)
#   - iptables, nsenter (util-linux): the failover suite's one-way and
#                   asymmetric cuts, made inside a container's network
#                   namespace from the host
# Rust and Docker come with the machine. Safe to run again: it installs only
# what is missing.
set -euo pipefail

need=()
command -v file >/dev/null 2>&1 || need+=(file)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  need+=(docker-compose)
fi
if [ "${GOAT_SKIP_ETCD:-0}" != 1 ] && ! command -v etcd >/dev/null 2>&1; then
  need+=(etcd-server)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian's etcd-server package may start a system etcd; Goat's benchmark
  # runs its own members, so stop that one if a service manager started it.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
fi

command -v docker >/dev/null 2>&1 || { echo "error: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: the Docker engine is not answering" >&2; exit 1; }
echo "==> dependencies ready"
