"""Aggregate tokens/s with 1, 4, 8 and 16 concurrent streams through the running app's /v1 API,
next to one-at-a-time serving (--concurrency 1) in the same run; the concurrent server
decodes all its replies in one continuous batch (qwen_core/batching.py).

    python bench/concurrency.py                  # tiny model on CPU (the default)
    python bench/concurrency.py --shape 1.8b     # a 1.8B-shaped random checkpoint (GPU machine)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import all_at_once, write_results


def stream_one(url: str, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to first content, total seconds) of one streamed request."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    started = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    return tokens, first or 0.0, time.perf_counter() - started


def run_wave(url: str, n: int, max_tokens: int) -> dict:
    """n streams at once; aggregate tokens/s over the wave's wall time."""
    results, started = all_at_once(
        [lambda i=i: stream_one(url, f"Request {i}: tell a story", max_tokens) for i in range(n)]
    )
    wall = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    return {
        "streams": n,
        "tokens": tokens,
        "wall s": round(wall, 2),
        "aggregate tok/s": round(tokens / wall, 1),
        "mean TTFT ms": round(1000 * sum(r[1] for r in results) / n),
        "per-stream tok/s": round(sum(r[0] / r[2] for r in results) / n, 1),
    }


def main() -> None:
    """Start the app with each concurrency setting and run waves of 1, 4, 8, 16 streams."""
    from qwen1_checkpoint import QWEN_1_8B, Shape, write_checkpoint
    from server_process import AppProcess

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", choices=["tiny", "1.8b"], default="tiny")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    shape = QWEN_1_8B if args.shape == "1.8b" else Shape()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        dtype = "bfloat16" if args.shape == "1.8b" else "float32"
        ckpt = write_checkpoint(Path(tmp) / "ckpt", shape, dtype)
        for mode, concurrency in (("one at a time", 1), ("continuous batching", 16)):
            app = AppProcess(
                ["--model", str(ckpt), "--device", args.device, "--concurrency", str(concurrency),
                 "--max-queue", "64", "--data-dir", str(Path(tmp) / "data")]
            )  # fmt: skip
            try:
                run_wave(app.url, 1, 8)  # warm-up
                for n in (1, 4, 8, 16):
                    row = {"serving": f"{mode} (--concurrency {concurrency})", **run_wave(app.url, n, args.max_tokens)}
                    rows.append(row)
                    print(row, flush=True)
            finally:
                app.stop()
    notes = (
        f"{args.shape} model, greedy, {args.max_tokens} new tokens per stream, streamed through /v1/chat/completions. "
        "One at a time: --concurrency 1 (each request waits for the one before). Continuous batching: "
        "--concurrency 16, every running reply is decoded in one batch step. Machine load at the start "
        "is in the header; other processes sharing the CPU lower every figure alike."
    )
    print(write_results(f"concurrency_{args.shape}_{args.device}", rows, list(rows[0]), notes).read_text())


if __name__ == "__main__":
    main()
