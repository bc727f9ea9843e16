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
#
# Every test cluster notes its managers' Raft term changes when it is dropped
# (goat::testing's Cluster): the summary after the tests counts them, so an
# unplanned election in a test that does not touch its leader shows up.
export GOAT_TEST_TERM_LOG="${GOAT_TEST_TERM_LOG:-$(mktemp -t goat-terms.XXXXXX)}"
status=0
cargo test --workspace --no-fail-fast -- --test-threads "${GOAT_TEST_THREADS:-2}" || status=$?

# The API against its OpenAPI document, on the goat the tests just built: a
# schema-driven fuzzer (Schemathesis, installed from PyPI by the script)
# sends valid and invalid requests to a one-manager cluster and fails on a
# 5xx, an answer off the document, a valid request refused with a 400 or an
# invalid one accepted (deploy/fuzz-api.sh; about a minute).
if [ "${GOAT_SKIP_FUZZ:-0}" != 1 ]; then
  echo
  echo "==> the API against docs/openapi.json (deploy/fuzz-api.sh, 25 cases per operation and phase)"
  GOAT_BIN="$ROOT/target/debug/goat" GOAT_FUZZ_MAX_EXAMPLES="${GOAT_FUZZ_MAX_EXAMPLES:-25}" \
    bash deploy/fuzz-api.sh || status=$?
fi
if [ -s "$GOAT_TEST_TERM_LOG" ]; then
  echo
  echo "Raft term changes per test cluster, per manager (only clusters with some; a test that kills, cuts off, pauses or hands over its leader expects them):"
  awk '{ n = 0; for (i = 2; i <= NF; i++) if ($i != "-") n += $i; if (n > 0) { print "  " $0; c++ } }
       END { printf "%d test clusters, %d with term changes\n", NR, c }' "$GOAT_TEST_TERM_LOG"
fi
exit "$status"
