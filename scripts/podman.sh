#!/usr/bin/env bash
# Installs Podman (with runc, as these machines need) and serves its Docker-compatible API on
# a unix socket; prints the socket's address. Safe to run again.
# Socket: ${WARDEN_PODMAN_SOCKET:-/tmp/warden-podman.sock}
set -euo pipefail
SOCK="${WARDEN_PODMAN_SOCKET:-/tmp/warden-podman.sock}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  echo "installing podman and runc..." >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc >&2
fi
# crun fails on these VMs' hybrid cgroup layout; runc works. Raising rlimits fails, so default
# ulimits must stay within the current hard limits.
if ! grep -qs 'runtime = "runc"' /etc/containers/containers.conf; then
  $SUDO mkdir -p /etc/containers
  $SUDO tee /etc/containers/containers.conf >/dev/null <<'CONF'
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
CONF
fi
if ! curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  rm -f "$SOCK"
  nohup podman system service --time=0 "unix://$SOCK" >/tmp/warden-podman-service.log 2>&1 &
  for _ in $(seq 1 100); do
    curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null || { echo "podman service did not come up" >&2; exit 1; }
echo "unix://$SOCK"
