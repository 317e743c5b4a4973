"""``/healthz`` latency while 48 wrong-password Basic-auth requests for a real user arrive at once.

Password checks are scrypt (~0.1 s of CPU each): run on the event loop they froze the server
(``/healthz`` 36 ms -> 15 s in issue 12's measurement). They now run in a worker thread, one at a
time (``--hash-concurrency``), and failures beyond ``--login-attempts`` per user or address are
answered 429 without hashing. This prints the probe latencies in both settings: with the
default throttle, and with the throttle out of reach (``--login-attempts 10000``), where every
one of the 48 requests is hashed.

    python bench/auth_flood.py            # tiny model on CPU; writes bench/results/auth_flood.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

from _common import write_results

USER, PASSWORD = "ann", "ann-pw-1"


def _basic(password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()}


async def flood(url: str, n: int, gap_s: float = 0.02) -> dict:
    """Probe /healthz every ``gap_s`` while ``n`` wrong-password requests run; the figures."""
    import httpx

    probes: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as attack, httpx.AsyncClient(base_url=url) as probe:
        for _ in range(5):  # quiet baseline
            started = time.perf_counter()
            await probe.get("/healthz")
            probes.append(time.perf_counter() - started)
        quiet = statistics.median(probes)
        probes.clear()
        done = asyncio.Event()

        async def prober():
            while not done.is_set():
                started = time.perf_counter()
                (await probe.get("/healthz")).raise_for_status()
                probes.append(time.perf_counter() - started)
                await asyncio.sleep(gap_s)

        task = asyncio.create_task(prober())
        started = time.perf_counter()
        replies = await asyncio.gather(*(attack.get("/v1/models", headers=_basic(f"w{i}")) for i in range(n)))
        flood_s = time.perf_counter() - started
        done.set()
        await task
    statuses = [r.status_code for r in replies]
    return {
        "quiet /healthz ms": round(1000 * quiet, 1),
        "probes": len(probes),
        "median /healthz ms": round(1000 * statistics.median(probes), 1),
        "max /healthz ms": round(1000 * max(probes), 1),
        "flood s": round(flood_s, 2),
        "401": statuses.count(401),
        "429": statuses.count(429),
    }


def main() -> None:
    """Start the app twice (throttled, unthrottled) and flood each."""
    from qwen1_checkpoint import Shape, write_checkpoint
    from server_process import AppProcess

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=48)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        ckpt = write_checkpoint(Path(tmp) / "ckpt", Shape(), "float32")
        for label, attempts in (("throttled (--login-attempts 10)", "10"), ("every request hashed", "10000")):
            app = AppProcess(
                ["--model", str(ckpt), "--device", "cpu", "--data-dir", str(Path(tmp) / "data"),
                 "--auth", f"{USER}:{PASSWORD}", "--login-attempts", attempts]
            )  # fmt: skip
            try:
                row = {"setting": label, **asyncio.run(flood(app.url, args.requests))}
            finally:
                app.stop()
            print(row)
            rows.append(row)
    path = write_results("auth_flood", rows, list(rows[0]), notes=__doc__.split("\n\n")[0])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
