#!/usr/bin/env bash
# Runs Goat's whole test suite on this machine: unit tests, openraft's
# storage suite on the sled store, and the integration tests that start real
# managers and workers against the real Docker engine.
#
# It installs and builds what the tests need first: Debian packages
# (deploy/install-deps.sh) and the images goat:latest and goat-echo:latest
# (deploy/build-images.sh, FROM scratch, no registry).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

GOAT_SKIP_ETCD=1 bash deploy/install-deps.sh
bash deploy/build-images.sh
# The images were just built: the test binaries use them as they are instead
# of running build-images.sh again from inside `cargo test`, whose
# environment made cargo rebuild the static binaries from ring up (about as
# long as the first build).
export GOAT_REUSE_IMAGES=1

# Integration tests start several processes each; two at a time keeps this
# 2-core machine responsive enough for sub-second Raft timeouts.
cargo test --workspace --no-fail-fast -- --test-threads "${GOAT_TEST_THREADS:-2}"
