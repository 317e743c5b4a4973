"""Where the time of a decode step goes: torch.profiler over a reply generated through the engine.

    python bench/profile_decode.py --model 1.8b --precision fp32      # CPU, ~1 min
    python bench/profile_decode.py --model tiny                       # per-token overhead, seconds
    python bench/profile_decode.py --model 1.8b --device cuda         # on a GPU

Writes bench/results/profile_decode_<model>_<precision>_<device>.{txt,json}: wall time per token,
time inside torch ops grouped (matmuls, attention, sampling, the rest) and time outside any op
(Python: generate()'s loop, logits processors, streamer), plus the top ops by self time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict

from _common import RESULTS, checkpoint, machine

GROUPS = [
    ("matmul (linear)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear", "mkldnn", "gemm", "gemv")),
    ("attention", ("attention", "flash", "softmax_backward")),
    ("sampling / logits", ("sort", "multinomial", "softmax", "cumsum", "topk", "scatter", "gather", "masked_fill")),
    ("kv cache / copies", ("aten::cat", "index_copy", "copy_", "aten::to", "contiguous", "clone")),
]


def group_of(name: str) -> str:
    """The group an aten op's time is booked to."""
    low = name.lower()
    return next((g for g, keys in GROUPS if any(k in low for k in keys)), "elementwise / norm / rope / other")


def main() -> None:
    """Generate a reply under the profiler and summarise it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from qwen_core import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="1.8b", choices=["tiny", "1.8b", "7b"])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated under the profiler")
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--engine-kwargs", default="{}")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    engine = load_engine(str(checkpoint(args.model)), args.precision, args.device, **json.loads(args.engine_kwargs))
    from engine_speed import NoStops

    engine.tokenizer = NoStops(engine.tokenizer, engine.model.config.vocab_size - 1)
    gen = dict(do_sample=False) if args.greedy else dict(seed=0)
    rng = random.Random(0)
    engine.stream_prompt([rng.randrange(151643)] * 4, engine.settings(max_new_tokens=4, **gen)).text()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    stamps = []
    try:  # ops run in the engine's worker thread
        config = {"experimental_config": torch._C._profiler._ExperimentalConfig(profile_all_threads=True)}
    except (AttributeError, TypeError):
        config = {}
    with profile(activities=activities, **config) as prof:
        stream = engine.stream_prompt([rng.randrange(151643)], engine.settings(max_new_tokens=args.tokens, **gen))
        for _ in stream:
            stamps.append(time.perf_counter())
    steps = len(stamps) - 1
    wall = stamps[-1] - stamps[0]
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::") and "mkldnn" not in evt.key:
            continue
        self_s = evt.self_cpu_time_total / 1e6
        groups[group_of(evt.key)] += self_s
        ops.append({"op": evt.key, "calls": evt.count, "self CPU s": round(self_s, 4)})
    ops.sort(key=lambda o: -o["self CPU s"])
    in_ops = sum(groups.values())
    # The first token (prefill of 1 token) is profiled too: scale op time to the decode steps' share.
    share = steps / len(stamps)
    per_token_ms = 1000 * wall / steps
    summary = {
        "model": args.model,
        "precision": engine.info.precision,
        "device": args.device,
        "tokens": len(stamps),
        "wall ms per token": round(per_token_ms, 2),
        "tok/s": round(steps / wall, 3),
        "ms per token by group": {g: round(1000 * s * share / steps, 2) for g, s in sorted(groups.items())},
        "ms per token outside torch ops (Python, waits)": round(per_token_ms - 1000 * in_ops * share / steps, 2),
    }
    name = f"profile_decode_{args.model}_{engine.info.precision}_{args.device.split(':')[0]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(args.note), "summary": summary, "top ops": ops[:30]}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    sort_by = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=30)
    text = json.dumps({"machine": data["machine"], "summary": summary}, indent=2) + "\n\n" + table
    (RESULTS / f"{name}.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
