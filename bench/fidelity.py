"""Fidelity of the CPU fast path on the 1.8B shape: llama.cpp Q8_0 / Q4_K_M against our fp32 engine (issue 16).

For ``--prompts`` ChatML prompts (English and Chinese questions, Qwen's default system prompt, built by our
prompt builder), the next-token logits of our llama.cpp engine (``--precision int8`` / ``int4``, the GGUF
files ``cpu_peers.py`` converted) against the fp32 torch engine on the same BF16 checkpoint:

- max |Δ logit| / max |logit| (the tests' measure, ``tests/test_llamacpp.py``): median and worst prompt;
- greedy agreement: the share of prompts whose top-1 token is the same;
- top-5 overlap and KL(fp32 ‖ fast) of the next-token distributions (mean over prompts).

With ``--gptq`` (the default), the same figures for Qwen's GPTQ Int8/Int4 layout of the same weights
(written by ``tests/qwen1_checkpoint.write_gptq_checkpoint``: auto-gptq v1, sym, group 128; the codes by
round-to-nearest, as there is no calibration data here, so this is the layout's rounding, not GPTQ's
error-compensating search): the GPTQ checkpoint's own dequantised weights against fp32 (what the
checkpoint itself gives up), and our llama.cpp engine on the GPTQ checkpoint (``--precision int8`` /
``int4``: dequantised and re-quantised to Q8_0 / Q4_K_M) against those dequantised weights (what the
conversion adds) and against fp32 (both together).

The checkpoint has random weights (``bench/_common.checkpoint``): their logits are nearly flat, so greedy
agreement here is a worst case (near-ties flip on any rounding), while the relative error is a property
of the kernels.

    python bench/fidelity.py [--prompts 32] [--no-gptq]   # writes bench/results/fidelity_1.8b_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, DATA, checkpoint, shapes, write_results

QUESTIONS = [
    "What is the capital of France?", "Explain photosynthesis in one sentence.", "Write a haiku about rain.",
    "How do I reverse a list in Python?", "Why is the sky blue?", "Give me three tips for better sleep.",
    "What is 17 times 23?", "Translate 'good morning' into German.", "Summarise the plot of Hamlet.",
    "What causes earthquakes?", "Name a prime number larger than 100.", "How does a bicycle stay upright?",
    "请介绍一下长城。", "北京今天的天气怎么样？", "用一句话解释什么是机器学习。", "给我讲一个关于猫的笑话。",
    "What is the difference between TCP and UDP?", "Recommend a book for a long flight.",
    "How many legs does a spider have?", "What is the boiling point of water in Fahrenheit?",
    "Describe the taste of a lemon.", "What year did the first person walk on the moon?",
    "写一首关于春天的短诗。", "如何学好数学？", "Why do cats purr?", "What is a black hole?",
    "List the planets of the solar system.", "How do vaccines work?", "What is the Pythagorean theorem?",
    "Suggest a name for a coffee shop.", "What does HTTP stand for?", "Tell me a fun fact about octopuses.",
]  # fmt: skip


def _stats(got, want) -> dict:
    import torch

    rel = ((got - want).abs().max() / want.abs().max()).item()
    p = torch.log_softmax(want, -1)
    q = torch.log_softmax(got, -1)
    kl = (p.exp() * (p - q)).sum().item()
    top5 = len(set(got.topk(5).indices.tolist()) & set(want.topk(5).indices.tolist())) / 5
    return {"rel": rel, "same_top1": int(got.argmax() == want.argmax()), "top5": top5, "kl": kl}


_THREADS = [2]


def _torch_engine(folder: Path):
    """Our fp32 torch engine on FOLDER (the reference every row is measured against)."""
    import torch

    from qwen_core import load_engine

    torch.set_num_threads(_THREADS[0])  # the llama.cpp loader leaves torch on one thread
    return load_engine(str(folder), "fp32", "cpu", cpu_engine="torch", max_batch=0)


def _torch_logits(folder: Path, prompts: list[list[int]], engine=None) -> list:
    """Next-token logits of our fp32 torch engine on FOLDER (or ENGINE) for each prompt."""
    import torch

    engine = engine or _torch_engine(folder)
    with torch.no_grad():
        out = [engine.model(torch.tensor([ids])).logits[0, -1].float() for ids in prompts]
    del engine
    gc.collect()
    return out


def _fast_logits(folder: Path, precision: str, prompts: list[list[int]], threads: int) -> list:
    """Next-token logits of our llama.cpp engine (GGUF converted and cached on first use)."""
    from qwen_core import load_engine

    engine = load_engine(str(folder), precision, "cpu", data_dir=DATA, cpu_threads=threads)
    try:
        return [engine.next_token_logits(ids) for ids in prompts]
    finally:
        engine.unload()


def _row(path: str, against: str, got: list, want: list) -> dict:
    """The table row of one comparison (medians and means over the prompts)."""
    per = [_stats(g, w) for g, w in zip(got, want, strict=True)]
    row = {
        "path": path,
        "against": against,
        "prompts": len(per),
        "rel err median": round(statistics.median(x["rel"] for x in per), 4),
        "rel err max": round(max(x["rel"] for x in per), 4),
        "greedy agreement": round(sum(x["same_top1"] for x in per) / len(per), 3),
        "top-5 overlap": round(statistics.mean(x["top5"] for x in per), 3),
        "KL mean": round(statistics.mean(x["kl"] for x in per), 5),
    }
    print(row, flush=True)
    return row


def gptq_checkpoint(shape_name: str, bits: int) -> tuple[Path, Path]:
    """The GPTQ Int<bits> checkpoint of ``checkpoint(shape_name)``'s weights and its dequantised fp32 twin."""
    from qwen1_checkpoint import write_gptq_checkpoint

    folder = CACHE / f"qwen1-{shape_name}-gptq-int{bits}"
    reference = CACHE / f"qwen1-{shape_name}-gptq-int{bits}-dequant"
    if not (folder / ".complete").exists():
        print(f"writing {folder} and {reference} ...", flush=True)
        # seed 0 as checkpoint() uses: the same random draws, before their bf16 rounding
        write_gptq_checkpoint(folder, reference, shapes()[shape_name], bits, seed=0)
        (folder / ".complete").write_text("ok\n")
    return folder, reference


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1.8b")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=True, help="the GPTQ rows too")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    _THREADS[0] = a.threads
    ckpt = str(checkpoint(a.shape, "bfloat16"))
    ref = _torch_engine(Path(ckpt))
    prompts = [ref.build_prompt(q, [], "You are a helpful assistant.") for q in QUESTIONS[: a.prompts]]
    want = _torch_logits(Path(ckpt), prompts, ref)
    del ref
    scale = statistics.median(w.abs().max().item() for w in want)
    spread = statistics.median((w.max() - w.topk(2).values[1]).item() for w in want)  # top-1 margin
    rows = []
    for precision, quant in (("int8", "Q8_0"), ("int4", "Q4_K_M")):
        got = _fast_logits(ckpt, precision, prompts, a.threads)
        rows.append(_row(f"llama.cpp {quant} (--precision {precision})", "fp32", got, want))
        if not a.gptq:
            continue
        bits = int(precision[3:])
        folder, reference = gptq_checkpoint(a.shape, bits)
        deq = _torch_logits(reference, prompts)
        rows.append(_row(f"GPTQ Int{bits} layout (RTN, g128), its dequantised weights", "fp32", deq, want))
        got = _fast_logits(folder, precision, prompts, a.threads)
        rows.append(_row(f"llama.cpp {quant} from the GPTQ Int{bits} checkpoint", "GPTQ dequantised", got, deq))
        rows.append(_row(f"llama.cpp {quant} from the GPTQ Int{bits} checkpoint", "fp32", got, want))
    cols = [
        "path",
        "against",
        "prompts",
        "rel err median",
        "rel err max",
        "greedy agreement",
        "top-5 overlap",
        "KL mean",
    ]
    note = (
        f"{a.shape} shape, random weights (bench/.cache), vs our fp32 torch engine; median max |logit| "
        f"{scale:.2f}, median top-1 margin {spread:.4f} (random weights: near-ties, so greedy agreement is a worst "
        f"case); {a.threads} threads"
    )
    print(write_results(f"fidelity_{a.shape}_cpu", rows, cols, notes=note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
