"""#12 item 7: does a running /v1 stream keep streaming while many requests wait for a slot?

Starts ``python app.py --concurrency 1 --max-queue 64`` on a tiny checkpoint, opens one stream,
queues N more requests behind it, and times the running stream's remaining chunks (the first after
the queue filled, and the whole rest) against the same stream with nobody waiting.

    python bench/queued_stream.py [--waiters 45]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import _common  # noqa: F401 - puts the repo and tests/ on sys.path
import httpx
import openai
from qwen1_checkpoint import Shape, write_checkpoint
from server_process import AppProcess


def run(proc: AppProcess, model: str, waiters: int) -> tuple[float, float, int]:
    """(longest gap between chunks, the stream's duration, most requests seen waiting) of a running stream
    with ``waiters`` requests sent right after its first chunk."""
    c = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="x", max_retries=0, timeout=600)
    stream = iter(c.chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}], stream=True,
                                            temperature=0, max_tokens=200))  # fmt: skip
    next(stream)

    # One client made up front: 45 fresh clients would each build an SSL context in this process, and that
    # CPU (under the GIL) would delay reading the stream here, not on the server.
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=waiters + 1))

    def wait():
        try:
            body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
            http.post(f"{proc.url}/v1/chat/completions", json=body)
        except httpx.HTTPError:
            pass

    seen = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen[0] = max(seen[0], http.get(f"{proc.url}/readyz").json()["scheduler"]["waiting"])
            time.sleep(0.05)

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(waiters)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = last = time.perf_counter()
    for t in threads:
        t.start()
    gap = 0.0
    for _ in stream:
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    total = time.perf_counter() - started
    done.set()
    for t in threads:
        t.join(600)
    http.close()
    return gap, total, seen[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiters", type=int, default=45)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qwen-bench-"))
    ckpt = write_checkpoint(tmp / "tiny", Shape())
    proc = AppProcess(["--model", str(ckpt), "--device", "cpu", "--concurrency", "1", "--max-queue", "64",
                       "--data-dir", str(tmp / "data")], env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        for n in (0, args.waiters):
            gap, total, seen = run(proc, ckpt.name, n)
            print(f"{n:3d} sent ({seen:2d} seen waiting): longest gap between chunks {gap * 1000:7.1f} ms, "
                  f"stream {total * 1000:7.1f} ms")  # fmt: skip
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
