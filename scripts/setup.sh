#!/usr/bin/env bash
# Create .venv and install the pinned dependencies (idempotent). Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.installed-$(cat requirements*.txt | sha1sum | cut -c1-12)${1:-}"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch alone first, pinned, so nothing later can pull a CUDA build.
  python -m pip install -q "torch==2.13.0"
  reqs=(-r requirements.txt -r requirements-gptq.txt)
  if [ "${1:-}" = "--dev" ]; then
    reqs+=(-r requirements-dev.txt)
  fi
  # torch==2.13.0 repeated so no requirement can swap it for another build.
  python -m pip install -q "torch==2.13.0" "${reqs[@]}"
  # The CPU int8/int4 engine (llama.cpp): a cached wheel installs in seconds; the first build takes
  # about 4 minutes on 2 quiet cores (docs/PERFORMANCE.md). QWEN_SKIP_LLAMACPP=1 skips it (the app then runs fp32 on CPU).
  if [ "${QWEN_SKIP_LLAMACPP:-0}" != 1 ]; then
    bash scripts/install_llamacpp.sh
  fi
  touch "$stamp"
fi
