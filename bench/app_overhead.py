"""What the app adds on top of the engine: time to first token, tokens/s and bytes on the wire.

    python bench/app_overhead.py                  # tiny model (fastest decode: overhead shows most)
    python bench/app_overhead.py --shape 1.8b     # a 1.8B-shaped checkpoint (slow on CPU)
    python bench/app_overhead.py --small          # a minute: shorter replies

Same prompt, greedy, fixed length, in one run: the engine alone (in this process, loaded from the
same checkpoint), then the real app (``python app.py`` on loopback) through the OpenAI-compatible
``/v1/chat/completions`` stream, the Gradio ``/chat`` API endpoint and the UI's own chat event (the
browser's submit + respond, spoken in Gradio's queue protocol). Goals: >= 90 % of the engine's
tokens/s, < 50 ms added to the first token. Then one long reply through each path: bytes on the wire
per token, and per update for the first and the last stretch of the reply (growth = re-sending).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from _clients import GradioQueue, Trace, stream_v1
from _common import DATA, checkpoint, write_results

SYSTEM = "You are a helpful assistant."


def engine_trace(engine, prompt: str, gen: dict) -> tuple[Trace, int]:
    """One reply from the engine alone, timed like a client; returns it and its token count."""
    trace = Trace()
    stream = engine.stream_chat(prompt, [], SYSTEM, **gen)
    for piece in stream:
        trace.add(len(piece.encode()))
        trace.text += piece
    trace.ended = time.perf_counter()
    return trace, stream.result.completion_tokens


def find_prompt(engine, gen: dict, tries: int = 40) -> str:
    """A prompt whose greedy reply runs its full length (random weights may hit a stop token early)."""
    for i in range(tries):
        prompt = f"Please write a very long story about the sea, chapter {i}."
        trace, tokens = engine_trace(engine, prompt, gen)
        if tokens == gen["max_new_tokens"] and len(trace.update_times) >= 0.9 * tokens:
            return prompt
    raise SystemExit("no prompt found whose greedy reply runs to max_new_tokens; try another --seed-text")


def paths(app_url: str, gq: GradioQueue, n: int) -> dict:
    """Client calls per path, all greedy with the same length."""
    v1 = dict(temperature=0, max_tokens=n, repetition_penalty=1.0)
    api = {"temperature": 0, "max_new_tokens": n, "repetition_penalty": 1.0}
    ui = [0.0, 0.8, 0, 1.0, n, -1, 6144]  # temperature, top_p, top_k, rep. penalty, max new, seed, window
    return {
        "/v1/chat/completions": lambda p: stream_v1(app_url, [{"role": "user", "content": p}], **v1),
        "Gradio /chat API": lambda p: gq.chat_api(p, SYSTEM, api),
        "Gradio UI chat event": lambda p: gq.ui_chat(p, SYSTEM, ui),
    }


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its threads so far."""
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    """Engine alone and the app's three paths, interleaved when both fit in memory; speed and wire rows."""
    from server_process import AppProcess

    from qwen_core import load_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "1.8b", "7b"], default="tiny")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-tokens", type=int, help="reply length of the speed runs (256)")
    ap.add_argument("--repeat", type=int, help="speed runs per path, median kept (5)")
    ap.add_argument("--reply-tokens", type=int, help="bytes-on-the-wire reply length (2000; 0: skip)")
    ap.add_argument("--history-turns", type=int, help="turns of earlier chat in the long-chat UI row (40)")
    ap.add_argument("--small", action="store_true", help="64-token speed runs x3, a 400-token wire run")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    for key, full, small in (
        ("max_tokens", 256, 64),
        ("repeat", 5, 3),
        ("reply_tokens", 2000, 400),
        ("history_turns", 40, 10),
    ):
        if getattr(args, key) is None:  # explicit flags win over --small
            setattr(args, key, small if args.small else full)
    ckpt = checkpoint(args.shape, "bfloat16")
    speed_gen = dict(do_sample=False, repetition_penalty=1.0, max_new_tokens=args.max_tokens)
    wire_gen = dict(speed_gen, max_new_tokens=args.reply_tokens)
    engine = load_engine(str(ckpt), args.precision, args.device, data_dir=DATA)
    precision = engine.info.precision
    loaded = engine.info.n_params * (4 if precision == "fp32" else 2)
    interleave = args.device == "cpu" and psutil.virtual_memory().available > 2.2 * loaded + 2e9
    engine.chat("hi", do_sample=False, max_new_tokens=4)  # warm-up
    prompt = find_prompt(engine, speed_gen)
    wire_prompt = find_prompt(engine, wire_gen) if args.reply_tokens else None
    me = psutil.Process()
    wrows: list[dict] = []
    runs: dict[str, list] = {"engine alone": []}
    wire: dict[str, Trace] = {}

    def timed(name: str, call, proc: psutil.Process) -> None:
        c0, m0 = cpu_s(proc), cpu_s(me)
        trace = call(prompt)
        runs.setdefault(name, []).append((trace, args.max_tokens, cpu_s(proc) - c0, cpu_s(me) - m0))

    def engine_call(p: str) -> Trace:
        return engine_trace(engine, p, speed_gen)[0]

    if not interleave:  # the engine alone first, then free its memory for the app
        for _ in range(args.repeat):
            timed("engine alone", engine_call, me)
        if wire_prompt:
            wire["engine alone"] = engine_trace(engine, wire_prompt, wire_gen)[0]
        engine.unload()
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        # The app gets a throw-away data dir that shares the benches' converted GGUF files.
        (DATA / "gguf").mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "gguf").symlink_to((DATA / "gguf").resolve(), target_is_directory=True)
        app = AppProcess(
            ["--model", str(ckpt), "--precision", precision, "--device", args.device, "--data-dir", str(Path(tmp))]
        )
        try:
            server = psutil.Process(app.proc.pid)
            gq = GradioQueue(app.url)
            calls = paths(app.url, gq, args.max_tokens)
            for call in calls.values():
                call("hi")  # warm-up (first Gradio event, HTTP connections)
            for _ in range(args.repeat):  # round-robin, so a change in the machine's load hits every path alike
                if interleave:
                    timed("engine alone", engine_call, me)
                for name, call in calls.items():
                    timed(name, call, server)
            if interleave:
                if wire_prompt:
                    wire["engine alone"] = engine_trace(engine, wire_prompt, wire_gen)[0]
                engine.unload()
            if wire_prompt:
                wrows = wire_phase(app.url, gq, server, wire, wire_prompt, args)
        finally:
            app.stop()
    rows = speed_rows(runs)
    engine_text = runs["engine alone"][0][0].text.strip()
    for row, items in zip(rows, runs.values(), strict=True):  # the app's replies are the engine's, token for token
        row["same text as engine"] = all(t.text.strip() == engine_text for t, *_ in items)
    notes = (
        f"{args.shape} model ({precision}, {args.device}), greedy, same prompt on every path"
        + (", paths interleaved run by run" if interleave else ", engine alone first, then the app")
        + f". Speed: {args.max_tokens}-token replies, median of {args.repeat}; TTFT from the request (the UI: from "
        "its submit call) to the first content; tok/s from the first to the last content update. server CPU "
        "ms/token: the serving process's CPU time per token (engine alone: this process's); client CPU: this "
        "process's."
    )
    if args.reply_tokens:
        notes += (
            f" Wire: one {args.reply_tokens}-token reply; an update is one SSE message carrying content (about one "
            "token); first/last k: the first and last k updates."
        )
    steps = [
        {
            "path": name,
            **{k: round(1000 * statistics.median(t.marks[k] for t, *_ in items), 1) for k in items[0][0].marks},
        }
        for name, items in runs.items()
        if items[0][0].marks
    ]
    for row in steps:
        row["first content"] = next(r["TTFT ms"] for r in rows if r["path"] == row["path"])
    sections = [
        ("Bytes on the wire", wrows, None),
        ("Where the Gradio paths' TTFT goes (ms after the request)", steps, None),
    ]
    name = f"app_overhead_{args.shape}_{args.device.split(':')[0]}" + ("_small" if args.small else "")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(write_results(name, rows, cols, notes, sections, note=args.note).read_text())


def wire_phase(url: str, gq: GradioQueue, server: psutil.Process, wire: dict, prompt: str, args) -> list[dict]:
    """One long reply through each path, then the UI with a long chat before it; one row each."""
    cpu: dict[str, float] = {}
    for name, call in paths(url, gq, args.reply_tokens).items():
        c0 = cpu_s(server)
        wire[name] = call(prompt)
        cpu[name] = cpu_s(server) - c0
    rows = wire_rows(wire, args.reply_tokens)
    for row in rows:
        if row["path"] in cpu:
            row["server CPU ms/token"] = round(1000 * cpu[row["path"]] / row["tokens"], 2)
    ui = [0.0, 0.8, 0, 1.0, args.reply_tokens, -1, 6144]
    history = [
        {"role": r, "content": f"Turn {i}: " + "a fairly long message about the weather. " * 12}
        for i in range(args.history_turns)
        for r in ("user", "assistant")
    ]
    c0 = cpu_s(server)
    long_chat = gq.ui_chat(prompt, SYSTEM, ui, history)
    long_cpu = cpu_s(server) - c0
    tokens = long_chat.completion_tokens or len(long_chat.update_bytes)
    rows.append(wire_row(f"Gradio UI chat event, {args.history_turns}-turn chat", long_chat, tokens))
    rows[-1]["server CPU ms/token"] = round(1000 * long_cpu / tokens, 2)
    return rows


def speed_rows(runs: dict) -> list[dict]:
    """Median TTFT and tok/s per path, against the engine alone."""
    base = None
    rows = []
    for name, items in runs.items():
        ttft = statistics.median(t.ttft_s for t, *_ in items)
        tps = statistics.median(t.tokens_per_s(n) for t, n, *_ in items)
        row = {"path": name, "TTFT ms": round(1000 * ttft, 1), "tok/s": round(tps, 2)}
        row["server CPU ms/token"] = round(1000 * statistics.median(c / n for _, n, c, _ in items), 2)
        if name != "engine alone":
            row["client CPU ms/token"] = round(1000 * statistics.median(c / n for _, n, _, c in items), 2)
        if base is None:
            base = row
        else:
            row["added TTFT ms"] = round(row["TTFT ms"] - base["TTFT ms"], 1)
            row["% of engine tok/s"] = round(100 * tps / base["tok/s"], 1)
            row["goal met"] = "yes" if row["added TTFT ms"] < 50 and row["% of engine tok/s"] >= 90 else "NO"
        rows.append(row)
    return rows


def wire_row(name: str, trace: Trace, tokens: int) -> dict:
    """Bytes per token overall, bytes per update at the start and at the end of the reply."""
    updates = len(trace.update_bytes)
    k = max(1, min(500, updates // 4))
    first, last = trace.update_bytes[:k], trace.update_bytes[-k:]
    return {
        "path": name,
        "tokens": tokens,
        "updates": updates,
        "total bytes": trace.total_bytes,
        "bytes/token": round(trace.total_bytes / tokens, 1),
        "k": k,
        "bytes/update, first k": round(sum(first) / len(first), 1),
        "bytes/update, last k": round(sum(last) / len(last), 1),
        "growth last/first": round((sum(last) / len(last)) / (sum(first) / len(first)), 2),
        "reply chars": len(trace.text),
    }


def wire_rows(wire: dict, tokens: int) -> list[dict]:
    """One wire row per path (the engine's row is the text itself: the floor)."""
    rows = []
    for name, trace in wire.items():
        if name == "engine alone":
            trace.total_bytes = sum(trace.update_bytes)
            name = "engine alone (UTF-8 text only)"
        rows.append(wire_row(name, trace, trace.completion_tokens or tokens))
        rows[-1]["same text as engine"] = trace.text.strip() == wire["engine alone"].text.strip()
    return rows


if __name__ == "__main__":
    main()
