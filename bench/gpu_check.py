"""One GPU check that fits in 8 minutes on one H200/H100: prints a table and writes bench/results/gpu_check.json.

What it measures, for the 1.8B and 7B shapes in BF16 (random weights, Qwen-1's real architecture and
vocabulary; the weights are made on the GPU, no checkpoint is written for them):
  * single-stream greedy decode tok/s, through the batched step runner and the compiled one
    (static cache + torch.compile, CUDA graphs), against the HBM bandwidth limit;
  * aggregate decode tok/s with 16 streams in one batch;
  * the TTFT of a follow-up chat turn after ~2,000 tokens of history, with and without the prefix cache;
  * GPTQ Int4 (1.8B shape, Qwen's published format) through the real loader on gptqmodel's CUDA kernel;
  * ``--precision int8`` / ``int4`` on a BF16 1.8B checkpoint (bitsandbytes LLM.int8() / NF4 at load):
    decode tok/s and next-token logits against BF16 (max |Δ| over max |logit|, top-1 agreement);
  * whether FlashAttention-2 was used.
Every section is timed against a budget and skipped (with the reason in the table) when the time or
a library is missing, so one run always ends with a table.

    PYTHONUNBUFFERED=1 python bench/gpu_check.py            # on the GPU machine
    python bench/gpu_check.py --budget 420 --shapes 1.8b    # a shorter run

Needs a CUDA build of torch (README, "GPU" section); flash-attn, gptqmodel and bitsandbytes are optional.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]

from _common import RESULTS, decode_bytes, gpu_spec, machine, md_table, measure_bandwidth, shapes  # noqa: E402

STARTED = time.perf_counter()


def left(budget: float) -> float:
    return budget - (time.perf_counter() - STARTED)


def random_engine(shape, device: str, compile_settings=None, prefix_cache_mb=None):
    """An Engine over a random-weight model of ``shape`` made on ``device`` (the loader's own parts)."""
    import torch
    from qwen1_checkpoint import config_json, qwen_vocab_file

    from qwen_core.engine import Engine, EngineInfo
    from qwen_core.loader import _batch_options, _enable_compile
    from qwen_core.modeling import QwenV1ForCausalLM, qwen2_config_from_qwen
    from qwen_core.placement import flash_attention_available, visible_gpus
    from qwen_core.settings import GenerationSettings
    from qwen_core.tokenizer import QwenTokenizer

    gpu = device.startswith("cuda")
    attn = "flash_attention_2" if gpu and flash_attention_available(visible_gpus()) else "sdpa"
    config = qwen2_config_from_qwen(config_json(shape, "bfloat16"), torch.bfloat16)
    with torch.device(device):
        model = QwenV1ForCausalLM._from_config(config, attn_implementation=attn, dtype=torch.bfloat16)
    model.eval()
    info = EngineInfo(
        model_id=f"random {shape.hidden_size}x{shape.num_hidden_layers}",
        path="",
        precision="bf16",
        dtype="bfloat16",
        device=device,
        device_map={"": device},
        attn_implementation=model.config._attn_implementation,
        n_params=sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        context_length=config.max_position_embeddings,
        seq_length=config.qwen_seq_length,
        load_seconds=0.0,
        decode="batched",
    )
    engine = Engine(model, QwenTokenizer(qwen_vocab_file()), GenerationSettings(), info, max_batch=32)
    engine.batch_options = _batch_options(prefix_cache_mb, 512, device)
    if compile_settings is not None:
        _enable_compile(engine, compile_settings, lambda f, m: print(f"  {m}", flush=True))
    return engine


def greedy(engine, n: int):
    return engine.settings(do_sample=False, max_new_tokens=n, ignore_eos=True, repetition_penalty=1.0)


def decode_rate(engine, tokens: int = 128) -> float:
    """Single-stream decode tok/s: tokens after the first over the time after the first."""
    stream = engine.stream_prompt(list(range(1000, 1016)), greedy(engine, tokens))
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    return (stream.result.completion_tokens - 1) / (time.perf_counter() - first)


def aggregate_rate(engine, streams: int = 16, tokens: int = 128) -> float:
    results = []

    def one(i: int) -> None:
        s = engine.stream_prompt(list(range(2000 + i, 2016 + i)), greedy(engine, tokens))
        s.text()
        results.append(s.result.completion_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results) / (time.perf_counter() - started)


def ttft(engine, ids: list[int]) -> tuple[float, list[int]]:
    started = time.perf_counter()
    stream = engine.stream_prompt(ids, greedy(engine, 32))
    first = None
    for _ in stream:
        first = first or time.perf_counter() - started
    return first, stream.result.token_ids


def follow_up_ttft(engine, history: int = 2000) -> float:
    """TTFT of turn 2 after a turn 1 of ``history`` tokens (median of 3 chats)."""
    times = []
    for chat in range(3):
        ids = [(7 * i + chat) % 150000 + 100 for i in range(history)]
        _, reply = ttft(engine, ids)
        t, _ = ttft(engine, ids + reply + list(range(500, 530)))
        times.append(t)
    return statistics.median(times)


def gptq_row(budget: float, device: str) -> dict:
    """The 1.8B shape as Qwen's GPTQ Int4 checkpoint, through the real loader on CUDA."""
    from qwen1_checkpoint import QWEN_1_8B, write_gptq_checkpoint

    from qwen_core import load_engine

    row = {"model": "1.8b", "weights": "GPTQ int4", "runner": "batched"}
    try:
        import gptqmodel  # noqa: F401
    except ImportError as exc:
        return {**row, "note": f"skipped: gptqmodel not installed ({exc})"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_gptq_checkpoint(Path(tmp) / "int4", Path(tmp) / "ref", QWEN_1_8B, bits=4)
        if left(budget) < 60:
            return {**row, "note": "skipped: out of time"}
        engine = load_engine(str(folder), device=device)
        try:
            kernel = sorted({type(m).__name__ for m in engine.model.modules() if "Quant" in type(m).__name__})
            return {**row, "decode tok/s": round(decode_rate(engine), 1), "note": f"kernel: {', '.join(kernel)}"}
        finally:
            engine.unload()


def bitsandbytes_rows(budget: float, device: str) -> list[dict]:
    """A BF16 1.8B checkpoint loaded with --precision int8 / int4 (bitsandbytes), against its BF16 load."""
    import torch
    from qwen1_checkpoint import QWEN_1_8B, write_checkpoint

    from qwen_core import load_engine

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        return [{"model": "1.8b", "weights": "bnb int8/nf4", "note": f"skipped: bitsandbytes not installed ({exc})"}]
    prompts = [[(i * 7919 + k * 104729) % 150000 for i in range(n)] for k, n in enumerate((16, 64, 256, 1024))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(Path(tmp) / "bf16", QWEN_1_8B, "bfloat16", shards=2)
        ref = load_engine(str(folder), "bf16", device)
        with torch.no_grad():
            want = [ref.model(torch.tensor([ids], device=ref.model.device)).logits[0, -1].float() for ids in prompts]
        ref.unload()
        for precision, label in (("int8", "bnb int8"), ("int4", "bnb nf4")):
            if left(budget) < 60:
                rows.append({"model": "1.8b", "weights": label, "note": "skipped: out of time"})
                continue
            engine = load_engine(str(folder), precision, device)
            try:
                with torch.no_grad():
                    got = [engine.model(torch.tensor([ids], device=engine.model.device)).logits[0, -1].float()
                           for ids in prompts]  # fmt: skip
                rel = max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want, strict=True))
                same = sum(int(g.argmax() == w.argmax()) for g, w in zip(got, want, strict=True))
                rows.append({
                    "model": "1.8b", "weights": label, "runner": "batched", "decode tok/s": round(decode_rate(engine), 1),
                    "note": f"logits vs bf16: max rel {100 * rel:.1f} %, top-1 {same}/{len(prompts)}",
                })  # fmt: skip
            finally:
                engine.unload()
    return rows


def shape_rows(name: str, shape, device: str, bandwidth: float, budget: float) -> list[dict]:
    from qwen_core.compiled import CompileSettings

    rows = []
    engine = random_engine(shape, device)
    limit = bandwidth / decode_bytes(shape, 2, 2, 64)
    base = {"model": name, "weights": "bf16", "attention": engine.info.attn_implementation}
    single = decode_rate(engine)
    rows.append(
        {
            **base,
            "runner": "batched",
            "decode tok/s": round(single, 1),
            "% of bandwidth": round(100 * single / limit, 1),
        }
    )
    rows.append({**base, "runner": "batched, 16 streams", "aggregate tok/s": round(aggregate_rate(engine), 1)})
    cached = follow_up_ttft(engine)
    engine.unload_worker()  # the same weights, a new worker without the prefix cache
    engine.batch_options = {**engine.batch_options, "prefix_cache_bytes": 0}
    uncached = follow_up_ttft(engine)
    rows.append(
        {
            **base,
            "runner": "follow-up turn @2,000",
            "TTFT s (cache)": round(cached, 3),
            "TTFT s (no cache)": round(uncached, 3),
        }
    )
    engine.unload()
    if left(budget) < 150:
        rows.append({**base, "runner": "compiled", "note": "skipped: out of time"})
        return rows
    engine = random_engine(shape, device, CompileSettings())
    try:
        if not engine.info.decode.startswith("compiled"):
            rows.append({**base, "runner": "compiled", "note": engine.info.decode})
        else:
            rate = decode_rate(engine)
            rows.append(
                {
                    **base,
                    "runner": "compiled",
                    "decode tok/s": round(rate, 1),
                    "% of bandwidth": round(100 * rate / limit, 1),
                }
            )
    finally:
        engine.unload()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=460.0, help="seconds for the whole run (default fits 8 minutes)")
    ap.add_argument("--shapes", default="1.8b,7b")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (--shapes tiny)")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check runs on a GPU machine (see the README's GPU section)")
    gpu = args.device.startswith("cuda")
    bw = measure_bandwidth(args.device, gib=4.0 if gpu else 0.5)
    sheet = gpu_spec(torch.cuda.get_device_name(0)) if gpu else None
    bandwidth = bw["read GB/s"] * 1e9
    rows: list[dict] = []
    for name in args.shapes.split(","):
        if left(args.budget) < 90:
            rows.append({"model": name, "note": "skipped: out of time"})
            continue
        try:
            rows += shape_rows(name, shapes()[name], args.device, bandwidth, args.budget)
        except Exception as exc:  # noqa: BLE001 - the table says what failed; the run goes on
            rows.append({"model": name, "note": f"failed: {type(exc).__name__}: {exc}"[:200]})
        if gpu:
            torch.cuda.empty_cache()
    if gpu and left(args.budget) > 90:
        try:
            rows.append(gptq_row(args.budget, args.device))
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": "1.8b", "weights": "GPTQ int4", "note": f"failed: {type(exc).__name__}: {exc}"[:200]})
    if gpu and left(args.budget) > 120:
        try:
            rows += bitsandbytes_rows(args.budget, args.device)
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": "1.8b", "weights": "bnb", "note": f"failed: {type(exc).__name__}: {exc}"[:200]})
    columns = ["model", "weights", "runner", "attention", "decode tok/s", "% of bandwidth", "aggregate tok/s"]
    columns += ["TTFT s (cache)", "TTFT s (no cache)", "note"]
    print("\n".join(md_table(rows, columns)))
    print(
        f"measured read bandwidth {bw['read GB/s']} GB/s (datasheet {sheet[0] / 1e9 if sheet else '?'} GB/s); "
        f"{time.perf_counter() - STARTED:.0f} s in all"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine(), "bandwidth": bw, "rows": rows}
    (RESULTS / f"gpu_check{'' if gpu else '_cpu_smoke'}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
