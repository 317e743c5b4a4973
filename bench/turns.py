"""A 20-turn chat whose history grows to ~2,000 and ~6,000 tokens: TTFT per turn with and without the
prefix cache (KV reuse across turns), and how many prompt tokens each turn prefilled.

    python bench/turns.py                      # tiny model, histories of ~2,000 and ~6,000 tokens
    python bench/turns.py --model 1.8b --small # the Qwen-1.8B shape (random bf16 weights), shorter chats

Each turn sends the whole history again, as the app does. With the cache only the new turn (the last
reply's ``<|im_end|>``, the new user message) is prefilled. Goal (issue #14): a follow-up turn's TTFT is
at most 1.3x the TTFT of prefilling only its new tokens (a fresh prompt of that many tokens, cache off),
flat in history length; a regenerate (the same prompt again) costs about one decode step.
Greedy decoding, stop tokens disabled so every reply has the same length.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from _common import checkpoint, write_results
from engine_speed import NoStops

WORDS = "fox river code lamp stone cloud paper tiger music window garden rust ocean letter bread".split()


def _message(rng: random.Random, tokenizer, tokens: int) -> str:
    """Random words making about ``tokens`` tokens."""
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words))) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(8))
    return " ".join(words)


def _engine(path: str, precision: str, cache_mb: float):
    from qwen_core import load_engine

    engine = load_engine(path, precision=precision, device="cpu", max_batch=4, prefix_cache_mb=cache_mb)
    engine.tokenizer = NoStops(engine.tokenizer, engine.model.config.vocab_size - 1)  # before the worker exists
    return engine


def _ttft(engine, ids: list[int], new: int) -> tuple[float, float | None]:
    """(TTFT s, mean inter-token s) of a greedy reply of ``new`` tokens to ``ids``."""
    with engine.stream_prompt(ids, engine.settings(do_sample=False, max_new_tokens=new)) as stream:
        stream.text()
        res = stream.result
    rate = res.tokens_per_s
    return res.time_to_first_token_s, (1 / rate if rate else None)


def _suffix_forward(engine, ids: list[int], new: int) -> float:
    """Seconds of the bare model forward of the last ``new`` tokens of ``ids`` on top of the K/V of the
    rest (built first, untimed): what a cached turn cannot avoid, attention over the history included."""
    import torch
    from transformers import DynamicCache

    model, n = engine.model, len(ids)
    cache = DynamicCache(config=model.config)
    cache.qwen_prompt_alphas = model.prefill_alphas(n)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[: n - new]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        model(
            input_ids=torch.tensor([ids[n - new :]]),
            attention_mask=torch.ones((1, n), dtype=torch.long),
            position_ids=torch.arange(n - new, n)[None, :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return time.perf_counter() - start


def run_chat(path: str, precision: str, history_tokens: int, turns: int, reply: int, seed: int) -> list[dict]:
    """One chat, run with the cache on and off (same messages); a row per turn."""
    cached, plain = _engine(path, precision, 4096), _engine(path, precision, 0)
    rng = random.Random(seed)
    per_turn = max(8, history_tokens // turns - reply - 10)  # user tokens per turn (+ reply + ChatML)
    queries = [_message(rng, cached.tokenizer, per_turn) for _ in range(turns)]
    window = dict(max_window_size=10**6)  # keep the whole history: the point is a growing prompt
    for engine in (cached, plain):  # warm-up (first-call allocations, thread pools)
        _ttft(engine, [rng.randrange(151643) for _ in range(16)], 2)
    rows, history = [], []
    for turn, query in enumerate(queries):
        ids = cached.build_prompt(query, history, **window)
        before = cached.batcher.stats()["prefix_cache"]["tokens_prefilled"]
        t_on, step = _ttft(cached, ids, reply)
        prefilled = cached.batcher.stats()["prefix_cache"]["tokens_prefilled"] - before
        t_off, _ = _ttft(plain, ids, reply)
        # What prefilling only the new tokens costs: a fresh prompt of that many tokens, no cache.
        t_new, _ = _ttft(plain, [rng.randrange(151643) for _ in range(prefilled)], 1)
        t_suffix = _suffix_forward(plain, ids, prefilled) if prefilled < len(ids) else t_off
        rows.append(
            {
                "turn": turn + 1,
                "prompt tokens": len(ids),
                "prefilled (cache)": prefilled,
                "TTFT cache s": round(t_on, 4),
                "TTFT no cache s": round(t_off, 4),
                "TTFT new tokens only s": round(t_new, 4),
                "cache / new-only": round(t_on / t_new, 2) if t_new else None,
                "new tokens atop the history, bare forward s": round(t_suffix, 4),
                "cache / bare forward": round(t_on / t_suffix, 2) if t_suffix else None,
                "speed-up": round(t_off / t_on, 1) if t_on else None,
                "decode step s": round(step, 4) if step else None,
            }
        )
        print(rows[-1], flush=True)
        with cached.stream_chat(query, history, do_sample=False, max_new_tokens=reply, **window) as s:
            history.append((query, s.text()))  # the reply the app would keep (identical for both engines)
    # Regenerate: the last prompt again (the UI's Regenerate, or n > 1 choices).
    before = cached.batcher.stats()["prefix_cache"]["tokens_prefilled"]
    t_regen, step = _ttft(cached, ids, reply)
    rows.append(
        {
            "turn": "regenerate",
            "prompt tokens": len(ids),
            "prefilled (cache)": cached.batcher.stats()["prefix_cache"]["tokens_prefilled"] - before,
            "TTFT cache s": round(t_regen, 4),
            "TTFT no cache s": rows[-1]["TTFT no cache s"],
            "decode step s": round(step, 4) if step else None,
            "regenerate / decode step": round(t_regen / step, 2) if step else None,
        }
    )
    print(rows[-1], flush=True)
    cached.unload_worker()
    plain.unload_worker()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "1.8b"))
    ap.add_argument("--small", action="store_true", help="shorter chats (for the 1.8B shape on a CPU)")
    ap.add_argument("--histories", default=None, help="comma-separated history sizes in tokens (default 2000,6000)")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--reply", type=int, default=16, help="tokens per reply")
    args = ap.parse_args()
    import torch

    dtype, precision = ("float32", "fp32") if args.model == "tiny" else ("bfloat16", "bf16")
    path = str(checkpoint(args.model, dtype))
    histories = [int(h) for h in (args.histories or ("300" if args.small else "2000,6000")).split(",")]
    turns = min(args.turns, 4) if args.small else args.turns
    sections, summary = [], []
    started = time.perf_counter()
    for history in histories:
        rows = run_chat(path, precision, history, turns, args.reply, seed=history)
        follow = [r for r in rows[1:] if isinstance(r["turn"], int)]
        ratios = [r["cache / new-only"] for r in follow if r["cache / new-only"]]
        regen = rows[-1]
        summary.append(
            {
                "history tokens (last turn)": rows[-2]["prompt tokens"],
                "turns": turns,
                "follow-up TTFT cache s (median)": statistics.median(r["TTFT cache s"] for r in follow),
                "follow-up TTFT no cache s (last turn)": rows[-2]["TTFT no cache s"],
                "cache / new-only (median)": statistics.median(ratios) if ratios else None,
                "cache / new-only (max)": max(ratios) if ratios else None,
                "cache / bare forward (median)": statistics.median(r["cache / bare forward"] for r in follow),
                "cache TTFT first 5 / last 5 follow-ups": round(
                    statistics.mean(r["TTFT cache s"] for r in follow[:5])
                    / statistics.mean(r["TTFT cache s"] for r in follow[-5:]),
                    2,
                ),
                "regenerate TTFT s": regen["TTFT cache s"],
                "regenerate / decode step": regen.get("regenerate / decode step"),
                "regenerate prefilled": regen["prefilled (cache)"],
            }
        )
        sections.append((f"history ~{history} tokens: per turn", rows, None))
    name = f"turns_{args.model}_cpu" + ("_small" if args.small else "")
    notes = (
        f"{args.model} shape, random {dtype} weights, CPU, torch threads {torch.get_num_threads()}; "
        f"{turns} turns, {args.reply}-token greedy replies, stop tokens off; run took "
        f"{time.perf_counter() - started:.0f} s. 'TTFT new tokens only': a fresh prompt of as many tokens as "
        "the cached turn prefilled, cache off. 'bare forward': the model forward of the same new tokens on top of "
        "the history's K/V (attention over the history included), outside the engine. Goal: cache / new-only <= 1.3, flat in history length; "
        "regenerate ~ one decode step."
    )
    path_md = write_results(name, summary, list(summary[0]), notes=notes, sections=sections)
    print(f"wrote {path_md}")


if __name__ == "__main__":
    main()
