"""CPU peers on the 1.8B shape: our fp32 engine, our llama.cpp engine (Q8_0 / Q4_K_M), plain llama-cpp-python
``Llama`` on the same GGUF files, and plain transformers ``generate()``, interleaved round by round.

Each (round, peer) runs in a fresh child process (so peak RSS is its own), with ``--threads`` threads:
decode tok/s over ``--decode`` greedy tokens (forced to run to length), prefill tok/s of a ``--prefill``-token
prompt (its time to first token), the time to first token of a follow-up turn after ``--history`` tokens of
history (engines that keep the previous turn's K/V prefill only the new turn), and peak RSS.
Medians over the rounds; ratios against plain llama.cpp at the same width.

    python bench/cpu_peers.py --rounds 3 --torch-rounds 1   # writes bench/results/cpu_peers.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _common import DATA, checkpoint, machine, measure_bandwidth, param_count, shapes, write_results

PEERS = ["ours fp32", "ours llama.cpp Q8_0", "ours llama.cpp Q4_K_M", "llama.cpp Q8_0", "llama.cpp Q4_K_M", "hf fp32"]
FILLER = "The quick brown fox jumps over the lazy dog near the river bank. "


def _prompt_ids(engine_tok, n: int) -> list[int]:
    """A ChatML prompt of exactly ``n`` tokens (a user message of filler text, cut to length)."""
    from qwen_core.prompt import PromptBuilder

    builder = PromptBuilder(engine_tok)
    body = engine_tok.encode(FILLER * (n // 8 + 8))
    head = builder.plan("", [], "You are a helpful assistant.", 10**6).ids
    tail = head[-5:]  # "<|im_end|>\n<|im_start|>assistant\n"
    ids = head[:-5] + body
    return ids[: n - len(tail)] + tail


def _child(peer: str, ckpt: str, a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from qwen_core.tokenizer import QwenTokenizer

    tok = QwenTokenizer(f"{ckpt}/qwen.tiktoken")
    decode_prompt = _prompt_ids(tok, 32)
    prefill_prompt = _prompt_ids(tok, a.prefill)
    history = _prompt_ids(tok, a.history)
    follow = tok.encode("<|im_end|>".join([]) + "A follow-up question about the same text, please.")
    started = time.perf_counter()
    if peer.startswith("ours"):
        from qwen_core import load_engine

        precision = {"fp32": "fp32", "Q8_0": "int8", "Q4_K_M": "int4"}[peer.split()[-1]]
        engine = load_engine(ckpt, precision, "cpu", cpu_engine="torch" if precision == "fp32" else "auto",
                             data_dir=DATA, cpu_threads=a.threads)  # fmt: skip
        load_s = time.perf_counter() - started
        greedy = engine.settings(do_sample=False, repetition_penalty=1.0)

        def run(ids, n):
            with engine.stream_prompt(ids, greedy.merged(max_new_tokens=n, min_tokens=n, ignore_eos=True)) as s:
                s.text()
            return s.result.time_to_first_token_s, s.result.elapsed_s, s.result.token_ids
    elif peer.startswith("llama.cpp"):
        from llama_cpp import Llama

        from qwen_core.llamacpp import GgufCache

        gguf = GgufCache(DATA, ckpt).path(peer.split()[-1].lower())
        llm = Llama(model_path=str(gguf), n_ctx=8192, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                    verbose=False)  # fmt: skip
        load_s = time.perf_counter() - started

        def run(ids, n):
            t0, first, out = time.perf_counter(), None, []
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
                first = first or time.perf_counter() - t0
                out.append(token)
                if len(out) == n:
                    break
            return first, time.perf_counter() - t0, out
    else:
        from qwen_core import load_engine

        model = load_engine(ckpt, "fp32", "cpu", cpu_engine="torch", max_batch=0).model
        load_s = time.perf_counter() - started

        def run(ids, n):
            from transformers import TextStreamer

            class _First(TextStreamer):  # records when the first generated token arrives
                first = None
                seen = 0

                def put(self, value):
                    self.seen += 1
                    if self.seen == 2 and self.first is None:
                        self.first = time.perf_counter()

                def end(self):
                    pass

            streamer = _First(None)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     streamer=streamer, pad_token_id=151643)  # fmt: skip
            first = (streamer.first or time.perf_counter()) - t0
            return first, time.perf_counter() - t0, out[0, len(ids) :].tolist()

    ttft, elapsed, _ = run(decode_prompt, a.decode)
    decode_tps = (a.decode - 1) / (elapsed - ttft)
    ttft_p, _, _ = run(prefill_prompt, 1)
    _, _, reply = run(history, 8)  # the first turn: its K/V stays where the engine keeps it
    turn2 = history + list(reply) + [151645, 198, 151644] + tok.encode("user\n") + follow
    turn2 += [151645, 198, 151644] + tok.encode("assistant\n")
    ttft_follow, _, _ = run(turn2, 1)
    return {
        "peer": peer,
        "load s": round(load_s, 1),
        "decode tok/s": round(decode_tps, 2),
        "prefill tok/s": round(a.prefill / ttft_p, 1),
        "follow-up TTFT s": round(ttft_follow, 2),
        "peak RSS GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1.8b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-rounds", type=int, default=None, help="rounds for the fp32 torch peers (slow)")
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--history", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--child", default=None)
    ap.add_argument("--name", default="cpu_peers")
    a = ap.parse_args()
    ckpt = str(checkpoint(a.shape, "bfloat16"))
    if a.child:
        print("RESULT " + json.dumps(_child(a.child, ckpt, a)), flush=True)
        return
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    torch_rounds = a.rounds if a.torch_rounds is None else a.torch_rounds
    bandwidth = measure_bandwidth("cpu", 0.5)
    results: dict[str, list[dict]] = {p: [] for p in peers}
    loads: list[tuple] = []
    for r in range(a.rounds):
        for peer in peers:
            if "fp32" in peer and r >= torch_rounds:
                continue
            args = [sys.executable, __file__, "--child", peer, "--shape", a.shape, "--decode", str(a.decode)]
            args += ["--prefill", str(a.prefill), "--history", str(a.history), "--threads", str(a.threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            out = subprocess.run(args, capture_output=True, text=True, env=env)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{peer} failed:\n{out.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(line[7:])
            row["loadavg"] = round(os.getloadavg()[0], 1)
            results[peer].append(row)
            loads.append((r, peer, os.getloadavg()))
            print(f"round {r + 1} {json.dumps(row)}", flush=True)
    shape = shapes()[a.shape]
    inner = 1 - shape.vocab_size * shape.hidden_size / param_count(shape)  # the embedding table is not read
    rows = []
    for peer, runs in results.items():
        if not runs:
            continue
        row = {"peer": peer, "rounds": len(runs)}
        for key in ("decode tok/s", "prefill tok/s", "follow-up TTFT s", "peak RSS GB", "load s"):
            row[key] = round(statistics.median(x[key] for x in runs), 2)
        bits = {"fp32": 32, "Q8_0": 8.5, "Q4_K_M": 4.85}[peer.split()[-1]]  # bits per weight as stored
        per_token = param_count(shape) * inner * bits / 8
        row["% of bandwidth"] = round(100 * row["decode tok/s"] * per_token / (bandwidth["limit GB/s"] * 1e9), 1)
        row["loadavg (1 min)"] = statistics.median(x["loadavg"] for x in runs)
        rows.append(row)
    for row in rows:
        width = row["peer"].split()[-1]
        plain = next((x for x in rows if x["peer"] == f"llama.cpp {width}"), None)
        if plain and row["peer"].startswith("ours"):
            row["× plain llama.cpp"] = round(row["decode tok/s"] / plain["decode tok/s"], 3)
    cols = ["peer", "rounds", "decode tok/s", "× plain llama.cpp", "% of bandwidth", "prefill tok/s"]
    cols += ["follow-up TTFT s", "peak RSS GB", "load s", "loadavg (1 min)"]
    note = f"{a.threads} threads; decode {a.decode}, prefill {a.prefill}, history {a.history} tokens"
    extra = {"bandwidth": bandwidth, "runs": results, "machine_at_start": machine(), "uptime": _uptime()}
    print(write_results(a.name, rows, cols, notes=note, extra=extra))


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
