"""Where the UI chat event's first-token time goes, phase by phase, against ``/chat`` and ``/v1``.

    python bench/ui_ttft.py                  # tiny model, 30 rounds, 2-token greedy replies
    python bench/ui_ttft.py --spy            # and py-spy samples of the server during the UI rounds

Each round sends the same short prompt through the three paths in turn (so a change in the machine's
load hits each alike) and records, per path, when each protocol step completed: the UI's ``submit``
(``queue=False``: shows the message, returns the store), ``queue/join`` answered, Gradio's
``process_starts``, and the first content update. Medians over the rounds; the difference between the
UI event's and ``/chat``'s columns is what the UI's own handlers add. Prints a table and writes
bench/results/ui_ttft_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _clients import GradioQueue, stream_v1
from _common import RESULTS, checkpoint, write_results

SYSTEM = "You are a helpful assistant."
PHASES = ("submit answered", "queue/join answered", "process_starts")


def rounds(url: str, n: int, tokens: int) -> dict[str, list[dict]]:
    """``n`` rounds of the three paths; per path, one dict of phase -> ms per round."""
    gq = GradioQueue(url)
    ui = [0.0, 0.8, 0, 1.0, tokens, -1, 6144]  # temperature, top_p, top_k, rep. penalty, max new, seed, window
    api = {"temperature": 0, "max_new_tokens": tokens, "repetition_penalty": 1.0}
    calls = {
        "/v1": lambda: stream_v1(url, [{"role": "user", "content": "hi there"}], temperature=0, max_tokens=tokens),
        "/chat API": lambda: gq.chat_api("hi there", SYSTEM, api),
        "UI event": lambda: gq.ui_chat("hi there", SYSTEM, ui),
    }
    for call in calls.values():
        call()  # warm-up
    out: dict[str, list[dict]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            trace = call()
            row = {k: 1000 * v for k, v in trace.marks.items() if k in PHASES}
            row["first token"] = 1000 * (trace.ttft_s or float("nan"))
            row["end"] = 1000 * (trace.ended - trace.started)
            out[name].append(row)
    return out


def table(runs: dict[str, list[dict]]) -> list[dict]:
    """Median ms after the request per phase and path."""
    rows = []
    for name, samples in runs.items():
        row = {"path": name}
        for phase in (*PHASES, "first token", "end"):
            values = [s[phase] for s in samples if phase in s]
            row[f"{phase} ms"] = round(statistics.median(values), 1) if values else "–"
        rows.append(row)
    return rows


def main() -> None:
    """Start the app on the tiny checkpoint, time the rounds (optionally under py-spy), write the table."""
    from server_process import AppProcess

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--label", default="now")
    ap.add_argument("--spy", action="store_true", help="py-spy record the server during the rounds")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    ckpt = checkpoint("tiny", "bfloat16")
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        app = AppProcess(["--model", str(ckpt), "--device", "cpu", "--data-dir", tmp])
        spy = None
        try:
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if args.spy and Path(spy_bin).exists():
                flame = RESULTS / f"ui_ttft_{args.label}.collapsed.txt"
                spy = subprocess.Popen(
                    [spy_bin, "record", "-p", str(app.proc.pid), "-r", "100", "-f", "raw", "-o", str(flame)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            runs = rounds(app.url, args.rounds, args.tokens)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C, not on SIGTERM
                spy.wait(30)
            app.stop()
    rows = table(runs)
    notes = (
        f"Tiny model, {args.rounds} rounds of a {args.tokens}-token greedy reply per path, interleaved; "
        "medians of ms after the request. UI event = submit (queue=False) + respond (queued, streaming)."
    )
    print(write_results(f"ui_ttft_{args.label}", rows, list(rows[0]), notes, note=args.note).read_text())


if __name__ == "__main__":
    main()
