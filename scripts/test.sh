#!/usr/bin/env bash
# Set everything up and run the whole test suite (what CI runs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
. .venv/bin/activate
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # Browser tests drive Debian's Chromium; nothing downloads a browser of its own.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
ruff check .
ruff format --check .
python -m pytest -q "$@"
# The remote backend against a real vLLM (CPU build, cached in ~/.cache/qwen-chat; docs/DEPLOY.md):
# only on a whole run (a targeted `scripts/test.sh -k ...` stays targeted); QWEN_SKIP_VLLM=1 skips it.
if [ "$#" -eq 0 ] && [ "${QWEN_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/test-vllm.sh
fi
# guidellm itself (its backend class, `guidellm run`) in a venv of its own, cached in ~/.cache/qwen-chat
# (it pins click~=8.4 and multidict<7, which .venv cannot take): also only on a whole run;
# QWEN_SKIP_GUIDELLM=1 skips it. Only the tests that need guidellm: the pytest run above sent its requests.
if [ "$#" -eq 0 ] && [ "${QWEN_SKIP_GUIDELLM:-0}" != 1 ]; then
  bash scripts/test-guidellm.sh -k "backend_class or cli_run"
fi
