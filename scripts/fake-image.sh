#!/usr/bin/env bash
# Builds the container image localhost/warden-fake:latest holding the fake backend and the shared
# libraries it links (no registry is reachable, so `podman import` of a root file system).
# usage: scripts/fake-image.sh PATH/TO/fake-backend
set -euo pipefail
BIN="$1"
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp"
cp "$BIN" "$ROOT/bin/fake-backend"
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
tar -C "$ROOT" -c . | podman import --change 'ENTRYPOINT ["/bin/fake-backend"]' - localhost/warden-fake:latest >/dev/null
# The image each earlier run built is left untagged: drop those not in use.
podman image prune -f >/dev/null 2>&1 || true
echo localhost/warden-fake:latest
