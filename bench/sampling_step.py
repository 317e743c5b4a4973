"""CPU cost of choosing one decode step's tokens (qwen_core.sampling.sample_rows), per row count and setting.

    python bench/sampling_step.py            # writes bench/results/sampling_step.{json,md}

Logits are synthetic [rows, 151,936] float32 shaped like a trained model's (a few dozen tokens
carry the mass, so top-p finds its nucleus among the best 512), with a 300-token history per row.
This is the part of a batched decode step that does not depend on the model's size.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import write_results

from qwen_core.sampling import RowSampler, SamplingPlan, sample_rows
from qwen_core.settings import GenerationSettings

VOCAB, N_VALID, STOPS = 151936, 151851, (151645, 151644, 151643)
CASES = {
    "checkpoint defaults (T=1, top_p=0.8, rep=1.1)": {},
    "greedy, rep=1.1": {"do_sample": False},
    "greedy, rep=1.0": {"do_sample": False, "repetition_penalty": 1.0},
    "defaults + presence/frequency + logprobs=5": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "logprobs": 5},
}


def measure(settings: GenerationSettings, rows: int, repeat: int) -> float:
    """Best-of-5 milliseconds per step."""
    gen = torch.Generator().manual_seed(0)
    samplers = [RowSampler(SamplingPlan(settings, r, N_VALID, STOPS), torch.device("cpu")) for r in range(rows)]
    history = torch.randint(0, 150000, (rows, 300), generator=gen)
    logits = torch.randn(rows, VOCAB, generator=gen) * 2
    logits[:, torch.randint(0, N_VALID, (40,), generator=gen)] += 12.0
    for _ in range(3):
        sample_rows(samplers, logits.clone(), lambda m: history[m])
    best = float("inf")
    for _ in range(5):
        copies = [logits.clone() for _ in range(repeat)]
        started = time.perf_counter()
        for scores in copies:
            sample_rows(samplers, scores, lambda m: history[m])
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    for name, kw in CASES.items():
        settings = GenerationSettings(**kw)
        for rows in (int(r) for r in args.rows.split(",")):
            ms = measure(settings, rows, args.repeat)
            out.append({"settings": name, "rows": rows, "ms/step": round(ms, 2), "ms/row": round(ms / rows, 2)})
            print(out[-1], flush=True)
    write_results("sampling_step", out, ["settings", "rows", "ms/step", "ms/row"], notes=__doc__.strip())


if __name__ == "__main__":
    main()
