"""A burst: n users send a prompt at the same moment. Time to first token of each, and the
largest gap the already-answering users see, per prefill configuration (engine alone, no HTTP).

    python bench/burst.py                                  # tiny model, 8 x 512 tokens
    python bench/burst.py --users 8 --prompt 512 --configs 0,512:1 --rounds 5

A config is ``CHUNK[:SHARE]`` as in bench/prefill_jitter.py (0: whole prompts, first come first
served). "FCFS ideal" is the sum of the prompts' own prefill times: the last user's TTFT if the
machine did nothing but prefill, in arrival order. A chunked configuration pays for the decode
steps it runs between chunks (the users already answering keep streaming); this bench shows the
price on the burst's TTFT next to what the answering users gain (their largest gap).
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


def run(path: str, chunk: int, share: float, users: int, prompt_len: int, new: int, seed: int) -> dict:
    """One burst of ``users`` prompts under ``prefill_chunk=chunk``, ``prefill_share=share``."""
    from qwen_core import load_engine

    engine = load_engine(path, device="cpu", max_batch=users, prefix_cache_mb=0, prefill_chunk=chunk)
    engine.batch_options["prefill_share"] = share  # before the worker exists
    engine.tokenizer = NoStops(engine.tokenizer, engine.model.config.vocab_size - 1)
    rng = random.Random(seed)
    settings = engine.settings(do_sample=False, max_new_tokens=new)
    engine.stream_prompt([rng.randrange(151643) for _ in range(prompt_len)], engine.settings(max_new_tokens=2)).text()
    one = engine.stream_prompt([rng.randrange(151643) for _ in range(prompt_len)], settings)
    one.text()
    alone = one.result.time_to_first_token_s  # one prompt's prefill, nothing else running
    prompts = [[rng.randrange(151643) for _ in range(prompt_len)] for _ in range(users)]
    arrivals: list[list[float]] = [[] for _ in range(users)]
    gate = threading.Barrier(users + 1)

    def read(i: int) -> None:
        gate.wait()
        for _piece in engine.stream_prompt(prompts[i], settings):
            arrivals[i].append(time.perf_counter())

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(600)
    ttfts = sorted(times[0] - started for times in arrivals if times)
    last_first = max(times[0] for times in arrivals)
    # The answering users' gaps while the burst was still being admitted.
    gaps = [b - a for times in arrivals for a, b in itertools.pairwise(times) if a < last_first]
    engine.unload_worker()
    return {
        "prefill chunk": chunk or "whole prompt",
        "prefill share (steps)": share if chunk else "",
        "users": users,
        "prompt tokens": prompt_len,
        "one prompt alone s": round(alone, 4),
        "FCFS ideal s": round(alone * users, 4),
        "TTFT mean s": round(statistics.mean(ttfts), 4),
        "TTFT max s": round(ttfts[-1], 4),
        "TTFT max / FCFS ideal": round(ttfts[-1] / (alone * users), 2),
        "largest gap while admitting s": round(max(gaps), 4) if gaps else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "1.8b"))
    ap.add_argument("--configs", default="0,512:1", help="CHUNK[:SHARE] list")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=32, help="tokens per reply")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, configs interleaved; medians reported")
    args = ap.parse_args()
    import torch

    dtype = "float32" if args.model == "tiny" else "bfloat16"
    path = str(checkpoint(args.model, dtype))
    configs = args.configs.split(",")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for config in configs if r % 2 == 0 else reversed(configs):
            chunk, _, share = config.partition(":")
            row = run(path, int(chunk), float(share or 1.0), args.users, args.prompt, args.new, seed=r)
            runs[config].append(row)
            print(row, flush=True)
    rows = []
    for config in configs:
        first = runs[config][0]
        med = {
            k: (statistics.median(x[k] for x in runs[config]) if isinstance(v, float) else v) for k, v in first.items()
        }
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in med.items()})
    notes = (
        f"{args.model} shape, random {dtype} weights, CPU, torch threads {torch.get_num_threads()}; {args.users} "
        f"prompts of {args.prompt} tokens submitted at once, {args.new} greedy tokens each; medians of "
        f"{args.rounds} rounds (configs interleaved)."
    )
    print(f"wrote {write_results(f'burst_{args.model}_cpu', rows, list(rows[0]), notes=notes)}")


if __name__ == "__main__":
    main()
