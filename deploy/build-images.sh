#!/usr/bin/env bash
# Builds the static `goat` and `goat-echo` binaries and the images
# `goat:latest` (the orchestrator alone) and `goat-echo:latest` (the echo
# app alone), FROM scratch, without any registry.
#
# - `goat` is built without the `tools` feature: the benchmarks
#   (`goat-bench`) and their dependencies are not in it, nor is the echo
#   app (its own binary).
# - The binaries are linked statically (glibc, crt-static) so it runs in an
#   empty image. It has its own target dir (target/static) so it does not
#   invalidate the normal debug/release builds.
# - Each image is built from a throwaway context holding only its binary,
#   so `docker build` sends a few MB and caches well.
# - Idempotent: cargo and docker both skip work when nothing changed.
#
# Usage: deploy/build-images.sh        (from anywhere)
# Env:   GOAT_STATIC_TARGET_DIR  override the static target dir.
#        GOAT_IMAGE, GOAT_ECHO_IMAGE  the tags to build (goat:latest and
#        goat-echo:latest), so that two checkouts on one machine keep apart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="${GOAT_STATIC_TARGET_DIR:-$ROOT/target/static}"
RELEASE="$TARGET_DIR/$TARGET/release"

echo "==> building the static goat and goat-echo binaries ($TARGET)"
(
  cd "$ROOT"
  RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --no-default-features --bin goat --bin goat-echo --target "$TARGET"
)

CONTEXTS="$(mktemp -d)"
trap 'rm -rf "$CONTEXTS"' EXIT
# One context per image, holding only that image's binary.
for bin in goat goat-echo; do
  # A dynamically linked binary would not start FROM scratch: refuse it.
  if command -v file >/dev/null 2>&1 && ! file "$RELEASE/$bin" | grep -Eq 'statically linked|static-pie linked'; then
    echo "error: $RELEASE/$bin is not statically linked: $(file "$RELEASE/$bin")" >&2
    exit 1
  fi
  mkdir -p "$CONTEXTS/$bin"
  cp "$RELEASE/$bin" "$CONTEXTS/$bin/$bin"
  # The release profile keeps line tables for backtraces; an image does not
  # need them (strip is deterministic, so the docker cache still hits).
  if command -v strip >/dev/null 2>&1; then
    strip "$CONTEXTS/$bin/$bin"
  fi
done

build() {
  local tag="$1" dockerfile="$2" context="$3" old new
  echo "==> building image $tag"
  old="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  docker build --quiet --tag "$tag" --file "$ROOT/deploy/images/$dockerfile" "$context" >/dev/null
  new="$(docker image inspect --format '{{.Id}}' "$tag")"
  # Drop the image this tag replaced, unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  docker image inspect --format "    $tag {{.Id}} {{.Size}} bytes" "$tag"
}

build "${GOAT_IMAGE:-goat:latest}" goat.Dockerfile "$CONTEXTS/goat"
build "${GOAT_ECHO_IMAGE:-goat-echo:latest}" goat-echo.Dockerfile "$CONTEXTS/goat-echo"
echo "==> done"
