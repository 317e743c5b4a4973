"""Why 4-bit decode stays under the bandwidth goal on this CPU: plain llama.cpp, profiled (issue 16).

Two measurements of plain llama-cpp-python ``Llama`` on the GGUF files ``cpu_peers.py`` converts
(1.8B shape, random weights):

- **thread scaling**: decode tok/s at each ``--threads`` count (a ``cpu_peers.py`` child per run, rounds
  interleaved). A bandwidth-bound kernel barely gains from a second core (one core already nearly
  saturates the memory bus); a compute-bound one gains close to 2×.
- **where the time goes**: ``perf record`` of one decode run per width at the most threads, the top
  symbols by share of CPU samples (the dot-product kernels of each quantisation type vs the rest).

    python bench/profile_llamacpp.py            # writes bench/results/profile_llamacpp_1.8b_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import checkpoint, measure_bandwidth, param_count, shapes, write_results

PEERS_SCRIPT = Path(__file__).resolve().parent / "cpu_peers.py"
BITS = {"Q8_0": 8.5, "Q4_K_M": 4.85}  # bits per weight as stored (as cpu_peers.py counts them)


def child_args(peer: str, threads: int, decode: int) -> list[str]:
    """One cpu_peers.py child: decode DECODE tokens; tiny prefill/history so the decode dominates."""
    return [sys.executable, str(PEERS_SCRIPT), "--child", peer, "--decode", str(decode), "--prefill", "32",
            "--history", "32", "--threads", str(threads)]  # fmt: skip


def run_child(peer: str, threads: int, decode: int) -> dict:
    """Decode tok/s of plain llama.cpp at THREADS threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(child_args(peer, threads, decode), capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{peer} at {threads} threads failed:\n{out.stderr[-2000:]}")
    return json.loads(line[7:])


def perf_symbols(peer: str, threads: int, decode: int, top: int) -> list[dict]:
    """The TOP symbols of a perf profile of one decode run (share of all CPU samples)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        rec = ["perf", "record", "-F", "499", "-o", str(data), "--", *child_args(peer, threads, decode)]
        subprocess.run(rec, capture_output=True, text=True, env=env, check=True)
        rep = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,symbol"]
        text = subprocess.run(rep, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.+)", line)
        if m:
            rows.append({"peer": peer, "threads": threads, "% of samples": float(m[1]), "library": m[2],
                         "symbol": m[3].strip()[:70]})  # fmt: skip
    return rows[:top]


def main() -> None:
    """Thread scaling for each width, then one perf profile per width."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1.8b")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--decode", type=int, default=96)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    checkpoint(a.shape, "bfloat16")  # cpu_peers' children use the same checkpoint and GGUF cache
    threads = [int(t) for t in a.threads.split(",")]
    shape = shapes()[a.shape]
    inner = param_count(shape) - shape.vocab_size * shape.hidden_size  # the embedding table is not read
    bandwidth = measure_bandwidth("cpu", 0.5)
    runs: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        for quant in BITS:
            for t in threads:
                tps = run_child(f"llama.cpp {quant}", t, a.decode)["decode tok/s"]
                runs.setdefault((quant, t), []).append(tps)
                print(f"round {r + 1} {quant} {t} threads: {tps} tok/s, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for (quant, t), values in runs.items():
        tps = statistics.median(values)
        one = statistics.median(runs[(quant, threads[0])])
        rows.append({
            "GGUF": quant, "threads": t, "decode tok/s (median)": round(tps, 2), "rounds": values,
            f"× {threads[0]} thread": round(tps / one, 2),
            "% of bandwidth": round(100 * tps * inner * BITS[quant] / 8 / (bandwidth["limit GB/s"] * 1e9), 1),
        })  # fmt: skip
    sections = []
    if shutil.which("perf"):
        symbols = [s for quant in BITS for s in perf_symbols(f"llama.cpp {quant}", threads[-1], a.decode, a.top)]
        sections.append((f"perf: top {a.top} symbols of one decode run at {threads[-1]} threads", symbols, None))
    notes = (
        f"Plain llama-cpp-python on the {a.shape} shape's GGUF files, greedy decode of {a.decode} tokens, medians of "
        f"{a.rounds} rounds; bandwidth limit {bandwidth['limit GB/s']} GB/s (measured in this run). A kernel bound "
        "by memory gains little from a second thread; one bound by arithmetic nearly doubles."
    )
    extra = {"bandwidth": bandwidth}
    print(write_results(f"profile_llamacpp_{a.shape}_cpu", rows, list(rows[0]), notes, sections, extra).read_text())


if __name__ == "__main__":
    main()
