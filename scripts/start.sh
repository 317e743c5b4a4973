#!/usr/bin/env bash
# Set everything up and start the chat app. Flags go to app.py, e.g. --model ./models/Qwen-1_8B-Chat
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python app.py "$@"
