"""Engine speed on random-weight checkpoints with the exact Qwen-1.8B / Qwen-7B shapes, in the original
layout (the whole loading path runs): load time, prefill time, decode tok/s, peak memory, each against
its physical limit and next to the model cards' figures.

    python bench/engine_speed.py                            # 1.8b and 7b, prefill 512/2048, 2048 new tokens
    python bench/engine_speed.py --models 1.8b --precisions fp32,bf16
    python bench/engine_speed.py --small                    # minutes: tiny + 1.8b, short prompts, 32 tokens

Each (model, precision) runs in a fresh process (clean memory peaks). Decode: 1-token context, stop
tokens disabled, the checkpoint's sampling defaults with seed 0 (as the model cards' script ran them)
unless --greedy. Limits: decode = bandwidth / bytes per token (weights but the embedding + KV cache);
prefill = measured best GEMM FLOP/s of this device in the same dtype. On a GPU the datasheet bandwidth
and FLOP/s are reported too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import (
    A100_BW,
    MODEL_CARD,
    PeakMemory,
    checkpoint,
    decode_bytes,
    gpu_spec,
    measure_bandwidth,
    measure_matmul,
    prefill_flops,
    shapes,
    write_results,
)

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


class NoStops:
    """The engine's tokenizer, but its only stop id is a padded-vocabulary id the sampler can never pick.

    qwen_core has no public switch to ignore stop tokens (vLLM's ``ignore_eos``); ReplyStream reads them
    from ``tokenizer.stop_ids``. The run checks that every reply really reached its length.
    """

    def __init__(self, tokenizer, never: int):
        self._tok, self._never = tokenizer, never

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self) -> int:
        return len(self._tok)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self._never,)


def run_child(spec: dict) -> dict:
    """Load one model and measure it (runs in its own process)."""
    import random

    import torch

    from qwen_core import load_engine

    device = spec["device"]
    with PeakMemory(device) as mem:
        t = time.perf_counter()
        engine = load_engine(spec["path"], precision=spec["precision"], device=device, **spec["engine_kwargs"])
        wall = time.perf_counter() - t
    info = engine.info
    out = {"load s": round(info.load_seconds, 2), "load wall s": round(wall, 2), "load peak GB": mem.as_gb()}
    out.update(precision=info.precision, dtype=info.dtype, attention=info.attn_implementation, decode=info.decode)
    gen = dict(do_sample=False) if spec["greedy"] else dict(seed=0)
    gemm_dtype = info.precision if info.precision in BYTES else "fp32"
    gemm = measure_matmul(device, gemm_dtype)
    rng = random.Random(0)
    engine.stream_prompt([rng.randrange(151643)] * 4, engine.settings(max_new_tokens=4, **gen)).text()  # warm-up
    for length in spec["prompt_lengths"]:
        ids = [rng.randrange(151643) for _ in range(length)]
        times = []
        with PeakMemory(device) as mem:
            for _ in range(spec["repeat"]):
                stream = engine.stream_prompt(ids, engine.settings(max_new_tokens=1, **gen))
                stream.text()
                times.append(stream.result.time_to_first_token_s)
        out[f"prefill {length} s"] = round(min(times), 3)
        out[f"prefill {length} peak GB"] = mem.as_gb()
    out["bandwidth"] = measure_bandwidth(device)  # in this process, right before decode
    gemm = max(gemm, measure_matmul(device, gemm_dtype))  # again: the best of two, on a busy machine
    out["matmul GFLOP/s"] = round(gemm / 1e9, 1)
    real = engine.tokenizer
    engine.tokenizer = NoStops(real, engine.model.config.vocab_size - 1)
    stamps: list[float] = []
    try:
        # A few tokens of a reply as long as the measured one: a compiled engine compiles that
        # cache size's graph here, not inside the measurement.
        warm = engine.stream_prompt([rng.randrange(151643)], engine.settings(max_new_tokens=spec["new_tokens"], **gen))
        for i, _ in enumerate(warm):
            if i == 2:
                warm.cancel()
        with PeakMemory(device) as mem:
            stream = engine.stream_prompt(
                [rng.randrange(151643)], engine.settings(max_new_tokens=spec["new_tokens"], **gen)
            )
            for _ in stream:
                stamps.append(time.perf_counter())
        if spec["peak_tokens"]:  # the model cards' memory figure: peak while generating N tokens
            with PeakMemory(device) as peak:
                settings = engine.settings(max_new_tokens=spec["peak_tokens"], **gen)
                engine.stream_prompt([rng.randrange(151643)], settings).text()
            out[f"peak GB gen {spec['peak_tokens']}"] = peak.as_gb()
    finally:
        engine.tokenizer = real
    res = stream.result
    if res.completion_tokens != spec["new_tokens"] or res.finish_reason != "length":
        raise SystemExit(
            f"decode ended early ({res.finish_reason}, {res.completion_tokens} tokens): stops not disabled"
        )
    half = len(stamps) // 2
    out.update(
        {
            "decode tok/s": round(res.tokens_per_s, 3),
            "decode TTFT s": round(res.time_to_first_token_s, 3),
            "decode tok/s 1st half": round((half - 1) / (stamps[half - 1] - stamps[0]), 3) if half > 1 else None,
            "decode tok/s 2nd half": round((len(stamps) - half) / (stamps[-1] - stamps[half - 1]), 3) if half else None,
            "decode peak GB": mem.as_gb(),
        }
    )
    if device.startswith("cuda"):
        out["cuda reserved GB"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    return out


def summarize(model: str, spec: dict, m: dict) -> dict:
    """One results row: figures, fractions of their limits, model-card numbers."""
    shape = shapes()[model]
    wb = BYTES.get(m["precision"], 2)
    per_token = decode_bytes(shape, wb, wb, 1 + spec["new_tokens"] / 2)
    bw = m["bandwidth"]["limit GB/s"] * 1e9
    row = {"model": model, "precision": m["precision"], "device": spec["device"], "decode": m.get("decode", "")}
    row["load s"] = m["load s"]
    row["load peak GB"] = m["load peak GB"]
    for length in spec["prompt_lengths"]:
        secs = m[f"prefill {length} s"]
        row[f"prefill {length} s"] = secs
        row[f"prefill {length} GFLOP/s"] = round(prefill_flops(shape, length) / secs / 1e9, 1)
        row[f"prefill {length} % FLOP limit"] = round(
            100 * prefill_flops(shape, length) / secs / (m["matmul GFLOP/s"] * 1e9), 1
        )
    row.update({"new tokens": spec["new_tokens"], "decode tok/s": m["decode tok/s"]})
    row["tok/s 1st / 2nd half"] = f"{m['decode tok/s 1st half']} / {m['decode tok/s 2nd half']}"
    row["decode limit tok/s"] = round(bw / per_token, 2)
    row["decode % BW limit"] = round(100 * m["decode tok/s"] * per_token / bw, 1)
    row["decode peak GB"] = m["decode peak GB"]
    if spec["peak_tokens"]:
        row[f"peak GB gen {spec['peak_tokens']}"] = m[f"peak GB gen {spec['peak_tokens']}"]
    spec_gpu = gpu_spec(spec.get("gpu", ""))
    if spec_gpu:
        row["decode % datasheet BW"] = round(100 * m["decode tok/s"] * per_token / spec_gpu[0], 1)
    card = MODEL_CARD.get(model)
    if card:
        card_bytes = decode_bytes(shape, 2, 2, 1 + 2048 / 2)
        row["model card bf16 tok/s (A100)"] = card["bf16 tok/s"]
        row["model card % A100 BW"] = round(100 * card["bf16 tok/s"] * card_bytes / A100_BW, 1)
        row["model card peak GB gen 8192"] = card["peak GB gen 8192"]
    return row


def main() -> None:
    """Write/reuse the checkpoints, measure each model in a child process, write the results."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated: tiny, 1.8b, 7b (default 1.8b,7b)")
    ap.add_argument("--precisions", default="auto", help="comma-separated: auto, fp32, bf16, fp16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt-lengths", help="comma-separated (512,2048)")
    ap.add_argument("--new-tokens", type=int, help="decode length (2048)")
    ap.add_argument("--repeat", type=int, help="prefill repetitions, best kept (2)")
    ap.add_argument("--peak-tokens", type=int, help="also the peak memory generating N tokens (GPU: 8192; CPU: 0=off)")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of the checkpoint's sampling")
    ap.add_argument("--engine-kwargs", default="{}", help="JSON passed to load_engine, e.g. '{\"compile\": true}'")
    ap.add_argument("--small", action="store_true", help="quick run: tiny,1.8b, prompts 64,256, 32 new tokens")
    ap.add_argument("--note", default="", help="caveat printed with the results (e.g. a shared machine)")
    ap.add_argument("--name", default=None, help="results file name (default engine_speed_<device>[_small])")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    defaults = {"models": ("1.8b,7b", "tiny,1.8b"), "prompt_lengths": ("512,2048", "64,256")}
    defaults.update(new_tokens=(2048, 32), repeat=(2, 1))
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:  # explicit flags win over --small
            setattr(args, key, small if args.small else full)
    device = args.device
    if args.peak_tokens is None:
        args.peak_tokens = 8192 if device.startswith("cuda") and not args.small else 0
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else ""
    rows, raw = [], []
    for model in args.models.split(","):
        path = checkpoint(model, "bfloat16")  # the published checkpoints are BF16
        for precision in args.precisions.split(","):
            spec = {
                "path": str(path),
                "precision": precision,
                "device": device,
                "gpu": gpu,
                "prompt_lengths": [int(x) for x in args.prompt_lengths.split(",")],
                "new_tokens": args.new_tokens,
                "repeat": args.repeat,
                "greedy": args.greedy,
                "peak_tokens": args.peak_tokens,
                "engine_kwargs": json.loads(args.engine_kwargs),
            }
            print(f"== {model} {precision} on {device}", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                rows.append({"model": model, "precision": precision, "device": device, "error": proc.stderr[-300:]})
                continue
            m = json.loads(lines[-1][7:])
            raw.append({"model": model, "spec": spec, "measured": m})
            rows.append(summarize(model, spec, m))
            print(json.dumps(rows[-1]), flush=True)
    name = args.name or f"engine_speed_{device.split(':')[0]}" + ("_small" if args.small else "")
    notes = (
        "Random-weight checkpoints with the exact shapes, BF16 on disk, loaded through load_engine. prefill = time "
        "to first token of a max_new_tokens=1 reply to an L-token prompt (best of --repeat). decode = tokens/s "
        "after the first token, 1-token context, stop tokens disabled. % BW limit = achieved bytes/s (weights but "
        "the embedding, plus the mean KV cache) / this device's measured bandwidth (see raw.bandwidth); % FLOP "
        "limit = useful FLOPs / measured best GEMM FLOP/s in the same dtype. Model-card figures are Qwen's, on an "
        "A100-80G with HF transformers + remote code; their % of the A100's 2.04 TB/s is computed the same way."
    )
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(write_results(name, rows, cols, notes, extra={"raw": raw}, note=args.note).read_text())


if __name__ == "__main__":
    main()
