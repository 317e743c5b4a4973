"""Running streams' inter-token gaps while a 4,000-token prompt joins the batch, with and without
chunked prefill.

    python bench/prefill_jitter.py                       # tiny model; whole-prompt prefill vs chunks
    python bench/prefill_jitter.py --configs 0,512:1,64:0 --prompt 4000 --streams 3

A config is ``CHUNK[:SHARE]``: ``prefill_chunk`` (most tokens per decode step, 0: whole prompts) and
``prefill_share`` (prefill time per step, in decode steps; 0: by tokens only; default 1, the engine's).

Three streams decode (greedy, stop tokens off); once each has produced some tokens a 4,000-token prompt
is submitted. Every token's arrival time is recorded per stream; the table gives the median, p99 and
largest gap between consecutive tokens of the running streams over the whole window in which the long
prompt was being prefilled (plus as many tokens after it), and the joining prompt's TTFT.
Goal (issue #14): with chunked prefill the p99 gap is at most 3x the median.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import threading
import time

from _common import checkpoint, write_results
from engine_speed import NoStops


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(path: str, chunk: int, share: float, prompt_len: int, streams: int, seed: int) -> dict:
    """One measurement with ``prefill_chunk=chunk`` (0: the whole prompt at once) and ``prefill_share``."""
    from qwen_core import load_engine

    engine = load_engine(path, device="cpu", max_batch=streams + 1, prefix_cache_mb=0, prefill_chunk=chunk)
    engine.batch_options["prefill_share"] = share  # before the worker exists
    engine.tokenizer = NoStops(engine.tokenizer, engine.model.config.vocab_size - 1)
    rng = random.Random(seed)
    settings = engine.settings(do_sample=False, max_new_tokens=30_000)
    engine.stream_prompt([rng.randrange(151643) for _ in range(32)], engine.settings(max_new_tokens=2)).text()
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    runners = [engine.stream_prompt([rng.randrange(151643) for _ in range(24)], settings) for _ in range(streams)]

    def read(i: int) -> None:
        for _piece in runners[i]:
            arrivals[i].append(time.perf_counter())

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    while min(len(a) for a in arrivals) < 40:  # steady decoding first
        time.sleep(0.01)
    joined = time.perf_counter()
    # Greedy like the running streams: the default top-p 0.8 over a random-weight model's flat
    # distribution finds no nucleus among the best few hundred tokens and sorts all 151,936 logits
    # (~18 ms here, inside the joiner's last chunk); a trained model's nucleus is a handful of tokens.
    joiner_settings = engine.settings(do_sample=False, max_new_tokens=1)
    joiner = engine.stream_prompt([rng.randrange(151643) for _ in range(prompt_len)], joiner_settings)
    joiner.text()
    first = joiner.result.time_to_first_token_s
    prefill_end = time.perf_counter()
    # As long again after the prefill, so the window holds the disturbed and the calm gaps.
    time.sleep(max(0.2, prefill_end - joined))
    for stream in runners:
        stream.cancel()  # (close() would read the stream too, racing the reader thread)
    for t in threads:
        t.join(30)
    end = time.perf_counter()
    gaps = [b - a for times in arrivals for a, b in itertools.pairwise(times) if joined <= a and b <= end]
    before = [b - a for times in arrivals for a, b in itertools.pairwise(times) if b < joined]
    chunks = engine.batcher.stats()["prefill_chunks"]
    engine.unload_worker()
    median = statistics.median(gaps)
    return {
        "prefill chunk": chunk or "whole prompt",
        "prefill share (steps)": share if chunk else "",
        "prompt tokens": prompt_len,
        "running streams": streams,
        "gaps measured": len(gaps),
        "median gap ms (calm, before)": round(statistics.median(before) * 1e3, 2),
        "median gap ms": round(median * 1e3, 2),
        "p99 gap ms": round(_percentile(gaps, 0.99) * 1e3, 2),
        "max gap ms": round(max(gaps) * 1e3, 1),
        "p99 / median": round(_percentile(gaps, 0.99) / median, 2),
        "p99 / median calm (noise floor)": round(_percentile(before, 0.99) / statistics.median(before), 2),
        "joiner TTFT s": round(first, 3),
        "prefill chunks": chunks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "1.8b"))
    ap.add_argument("--configs", default="0,512:0,64:0,512:1,512:2", help="CHUNK[:SHARE] list (see above)")
    ap.add_argument("--prompt", type=int, default=4000)
    ap.add_argument("--streams", type=int, default=3)
    args = ap.parse_args()
    import torch

    dtype = "float32" if args.model == "tiny" else "bfloat16"
    path = str(checkpoint(args.model, dtype))
    rows = []
    for config in args.configs.split(","):
        chunk, _, share = config.partition(":")
        rows.append(run(path, int(chunk), float(share or 1.0), args.prompt, args.streams, seed=len(rows)))
        print(rows[-1], flush=True)
    notes = (
        f"{args.model} shape, random {dtype} weights, CPU, torch threads {torch.get_num_threads()}. Gaps: between "
        "consecutive tokens of the running streams from the moment the long prompt was submitted until as long "
        "again after its first token. Goal: p99 / median <= 3 with chunked prefill."
    )
    print(f"wrote {write_results(f'prefill_jitter_{args.model}_cpu', rows, list(rows[0]), notes=notes)}")


if __name__ == "__main__":
    main()
