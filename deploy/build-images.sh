#!/usr/bin/env bash
# Builds the static `goat` binary and the images `goat:latest` and
# `goat-echo:latest`, FROM scratch, without any registry.
#
# - The binary is linked statically (glibc, crt-static) so it runs in an
#   empty image. It has its own target dir (target/static) so it does not
#   invalidate the normal debug/release builds.
# - Each image is built from a throwaway context holding only the binary,
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
BIN="$TARGET_DIR/$TARGET/release/goat"

echo "==> building the static goat binary ($TARGET)"
(
  cd "$ROOT"
  RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --bin goat --target "$TARGET"
)

# A dynamically linked binary would not start FROM scratch: refuse it.
if command -v file >/dev/null 2>&1 && ! file "$BIN" | grep -Eq 'statically linked|static-pie linked'; then
  echo "error: $BIN is not statically linked: $(file "$BIN")" >&2
  exit 1
fi

CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
cp "$BIN" "$CONTEXT/goat"
# The release profile keeps line tables for backtraces; an image does not
# need them (strip is deterministic, so the docker cache still hits).
if command -v strip >/dev/null 2>&1; then
  strip "$CONTEXT/goat"
fi

build() {
  local tag="$1" dockerfile="$2" old new
  echo "==> building image $tag"
  old="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  docker build --quiet --tag "$tag" --file "$ROOT/deploy/images/$dockerfile" "$CONTEXT" >/dev/null
  new="$(docker image inspect --format '{{.Id}}' "$tag")"
  # Drop the image this tag replaced, unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  docker image inspect --format "    $tag {{.Id}} {{.Size}} bytes" "$tag"
}

build "${GOAT_IMAGE:-goat:latest}" goat.Dockerfile
build "${GOAT_ECHO_IMAGE:-goat-echo:latest}" goat-echo.Dockerfile
echo "==> done"
