#!/usr/bin/env bash
# guidellm itself against `python app.py`: builds guidellm's venv once (cached), then runs
# tests/test_guidellm_requests.py with QWEN_GUIDELLM_PYTHON pointing at it, so the tests that run guidellm's
# backend class and `guidellm run` are not skipped. Extra args go to pytest.
#   scripts/test-guidellm.sh        # ~/.cache/qwen-chat/guidellm-venv-$GUIDELLM_VERSION, built on first use
#   QWEN_GUIDELLM_VENV=/path scripts/test-guidellm.sh
# guidellm lives in a venv of its own because 0.8.1 requires click~=8.4.0 and sanic (multidict<7), which
# would downgrade click 8.5.1 and multidict 7.2.1 in the app's pinned .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# The version whose requests tests/test_guidellm_requests.py reproduces by hand (read from its wheel).
GUIDELLM_VERSION=${GUIDELLM_VERSION:-0.8.1}
# The app's torch (scripts/setup.sh), a CPU build on local disk. guidellm 0.8.1 requires torch (any
# version); pinned, pip cannot resolve a (multi-GB) CUDA build for it instead.
TORCH_VERSION=2.13.0
VENV=${QWEN_GUIDELLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-chat/guidellm-venv-$GUIDELLM_VERSION}
PY=${PYTHON:-python3}
started=$(date +%s)

if [ ! -f "$VENV/.installed" ]; then
  echo "Building guidellm's venv in $VENV (once)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and alone, pinned, so no requirement can swap in a CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "guidellm==$GUIDELLM_VERSION"
  "$VENV/bin/python" -c "import torch, guidellm; assert '+cpu' in torch.__version__, torch.__version__"
  touch "$VENV/.installed"
  echo "guidellm venv built in $(($(date +%s) - started)) s" >&2
fi

# The app's own environment (the app, its tests) is the usual one.
bash scripts/setup.sh --dev
. .venv/bin/activate
tests_started=$(date +%s)
status=0
QWEN_GUIDELLM_PYTHON="$VENV/bin/python" python -m pytest -q tests/test_guidellm_requests.py "$@" || status=$?
echo "guidellm tests: exit $status in $(($(date +%s) - tests_started)) s" \
  "(whole script $(($(date +%s) - started)) s)" >&2
exit $status
