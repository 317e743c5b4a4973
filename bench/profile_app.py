"""Where the app's own time goes while it streams a reply: py-spy samples the server's Python stacks.

    python bench/profile_app.py --path ui          # the UI's chat event (tiny model, 1000 tokens)
    python bench/profile_app.py --path v1          # /v1/chat/completions
    python bench/profile_app.py --path chat        # the Gradio /chat API endpoint

Starts the real app, streams one greedy reply while ``py-spy record`` samples every thread of the
server (needs ptrace: root, or CAP_SYS_PTRACE), and writes bench/results/profile_app_<path>.txt: the
share of samples per thread and the functions that take the most time outside the model's own
generate() thread (Gradio's queue, diffing, JSON, uvicorn, our handlers).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _clients import GradioQueue, stream_v1
from _common import RESULTS, checkpoint, machine

WAITS = ("select (", "wait (", "Queue.get (", "sleep (", "_wait_for_tstate_lock (")  # blocked, not working
PROMPT = "Please write a very long story about the sea, chapter 0."


def summarize(raw: Path, top: int = 40) -> str:
    """Per-thread shares and the heaviest functions (inclusive) outside the generate thread."""
    total = waiting = 0
    threads: collections.Counter = collections.Counter()
    outside: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        thread = re.sub(r"^thread \(\d+\):?\s*", "", frames[0]).strip() or frames[0]
        threads[thread] += n
        if "qwen-generate" in thread:
            continue
        if any(w in frames[-1] for w in WAITS):
            waiting += n
            continue
        leaf[frames[-1]] += n
        for frame in dict.fromkeys(re.sub(r":\d+\)", ")", f) for f in frames[1:]):
            outside[frame] += n
    other = total - sum(n for name, n in threads.items() if "qwen-generate" in name)
    lines = [
        f"samples: {total} (all threads; blocked waits py-spy still catches are counted apart below)",
        "",
        "## by thread",
    ]
    lines += [f"{n:7d} {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    lines += ["", f"## outside the generate thread ({other} samples, {waiting} of them blocked waiting): inclusive"]
    lines += [f"{n:7d} {100 * n / total:5.1f}%  {name}" for name, n in outside.most_common(top)]
    lines += ["", "## outside the generate thread: self (leaf frames), top 25"]
    lines += [f"{n:7d} {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(25)]
    return "\n".join(lines)


def main() -> None:
    """Start the app, sample it during one reply, summarise."""
    from server_process import AppProcess

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=["ui", "v1", "chat"], default="ui")
    ap.add_argument("--shape", choices=["tiny", "1.8b"], default="tiny")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--history-turns", type=int, default=0, help="earlier turns in the chat (ui path)")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    ckpt = checkpoint(args.shape, "bfloat16")
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        app = AppProcess(["--model", str(ckpt), "--device", "cpu", "--data-dir", tmp])
        raw = Path(tmp) / "stacks.txt"
        try:
            gq = GradioQueue(app.url)
            settings = {"temperature": 0, "max_new_tokens": args.tokens, "repetition_penalty": 1.0}
            ui = [0.0, 0.8, 0, 1.0, args.tokens, -1, 6144]
            history = [
                {"role": r, "content": f"Turn {i}: " + "a fairly long message about the weather. " * 12}
                for i in range(args.history_turns)
                for r in ("user", "assistant")
            ]
            calls = {
                "v1": lambda: stream_v1(
                    app.url,
                    [{"role": "user", "content": PROMPT}],
                    temperature=0,
                    max_tokens=args.tokens,
                    repetition_penalty=1.0,
                ),
                "chat": lambda: gq.chat_api(PROMPT, "You are a helpful assistant.", settings),
                "ui": lambda: gq.ui_chat(PROMPT, "You are a helpful assistant.", ui, history),
            }
            calls[args.path]()  # warm-up
            cmd = [spy, "record", "--pid", str(app.proc.pid), "--rate", str(args.rate), "--format", "raw"]
            sampler = subprocess.Popen([*cmd, "--threads", "--nonblocking", "-o", str(raw)], stderr=subprocess.PIPE)
            trace = calls[args.path]()
            sampler.send_signal(2)  # SIGINT: py-spy writes its file and exits
            sampler.wait(60)
        finally:
            app.stop()
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {sampler.stderr.read().decode()[-500:]}")
        tokens = trace.completion_tokens or len(trace.update_times)
        tps = trace.tokens_per_s(tokens)
        head = f"path {args.path}, {args.shape} model, {args.history_turns}-turn chat before it, {tokens} tokens, "
        head += f"{tps:.1f} tok/s client-side\n"
        text = f"machine: {machine(args.note)}\n{head}\n" + summarize(raw)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.history_turns}turns" if args.history_turns else ""
    (RESULTS / f"profile_app_{args.path}{suffix}.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
