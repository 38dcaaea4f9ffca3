#!/usr/bin/env bash
# Installs Podman (with runc, as these machines need) and serves its Docker-compatible API on a
# unix socket for warden's container tests. Prints two lines: the socket's address, and the
# pid of the service it started (empty when one was already serving).
#
# Nothing of the user's is changed: Podman reads warden's own containers.conf (through
# CONTAINERS_CONF, which the caller must export too) from the cache, and the socket and the
# service's log live there as well. The caller stops the service (scripts/test does, on exit).
# Cache: ${WARDEN_CACHE:-$HOME/.cache/warden}/podman
set -euo pipefail
DIR="${WARDEN_CACHE:-$HOME/.cache/warden}/podman"
SOCK="$DIR/api.sock"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  echo "installing podman and runc..." >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc >&2
fi
mkdir -p "$DIR"
# crun fails on these VMs' hybrid cgroup layout; runc works. Raising rlimits fails, so default
# ulimits must stay within the current hard limits.
cat > "$DIR/containers.conf" <<CONF
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=1000:1000"]
CONF
export CONTAINERS_CONF="$DIR/containers.conf"
PID=""
if ! curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  rm -f "$SOCK"
  podman system service --time=0 "unix://$SOCK" >"$DIR/service.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null || { echo "podman service did not come up" >&2; exit 1; }
echo "unix://$SOCK"
echo "$PID"
