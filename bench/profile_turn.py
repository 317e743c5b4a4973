"""Where a cached follow-up turn's first-token time goes in the decode worker (1.8B shape, bf16, CPU).

    python bench/profile_turn.py [--model 1.8b] [--history 1000] [--new 100] [--turns 4]

A prompt of ``--history`` random tokens is answered once (its K/V go into the prefix cache), then
``--turns`` follow-ups each add ``--new`` tokens to the previous prompt. Then the last prompt is regenerated twice
(TTFT against the decode step of that reply). Per turn: the TTFT and the wall time of the worker's pieces (the prefix-cache lookup and its copy, the model forward of the new
tokens, storing them, the first token's sampling), timed by wrapping those methods. Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import random
import time

from _common import checkpoint
from engine_speed import NoStops


def _timed(cls, name: str, label: str, times: dict) -> None:
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.setdefault(label, []).append(time.perf_counter() - started)

    setattr(cls, name, wrapper)


def main() -> None:
    import qwen_core.batching as batching
    import qwen_core.prefix_cache as prefix_cache
    from qwen_core import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="1.8b", choices=("tiny", "1.8b"))
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--turns", type=int, default=4)
    args = ap.parse_args()
    dtype, precision = ("float32", "fp32") if args.model == "tiny" else ("bfloat16", "bf16")
    engine = load_engine(str(checkpoint(args.model, dtype)), precision=precision, device="cpu", prefix_cache_mb=4096)
    engine.tokenizer = NoStops(engine.tokenizer, engine.model.config.vocab_size - 1)
    times: dict[str, list[float]] = {}
    for cls, name, label in (
        (prefix_cache.PrefixCache, "match", "lookup + copy of the cached K/V"),
        (batching.Batcher, "_feed_prompt", "model forward of the new tokens"),
        (prefix_cache.PrefixCache, "insert", "storing K/V"),
        (batching.Batcher, "_take_all", "sampling"),
    ):
        _timed(cls, name, label, times)
    rng = random.Random(1)
    settings = engine.settings(do_sample=False, max_new_tokens=2)
    prompt = [rng.randrange(151643) for _ in range(args.history)]
    engine.stream_prompt(prompt, settings).text()
    for turn in range(args.turns):
        times.clear()
        prompt = prompt + [rng.randrange(151643) for _ in range(args.new)]
        with engine.stream_prompt(prompt, settings) as stream:
            stream.text()
            ttft = stream.result.time_to_first_token_s
        parts = ", ".join(f"{k} {1e3 * v[0]:.1f}" for k, v in times.items())
        print(f"follow-up {turn + 1}: prompt {len(prompt)} tokens, TTFT {1e3 * ttft:.0f} ms; first call ms: {parts}")
    # Regenerate: the last prompt again (all of it is cached; its last token is fed again).
    long = engine.settings(do_sample=False, max_new_tokens=9)
    for attempt in range(2):
        times.clear()
        with engine.stream_prompt(prompt, long) as stream:
            stream.text()
            result = stream.result
        step = (result.elapsed_s - result.time_to_first_token_s) / max(1, len(result.token_ids) - 1)
        parts = ", ".join(f"{k} {1e3 * v[0]:.1f}" for k, v in times.items())
        print(
            f"regenerate {attempt + 1}: TTFT {1e3 * result.time_to_first_token_s:.0f} ms = "
            f"{result.time_to_first_token_s / step:.2f} decode steps of {1e3 * step:.0f} ms; first call ms: {parts}"
        )
    engine.unload_worker()


if __name__ == "__main__":
    main()
