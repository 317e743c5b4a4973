"""Where the UI chat event's first-token time goes inside the server, phase by phase.

    python bench/profile_ui_event.py                 # tiny model, 30 rounds (bench/ui_ttft.py's client)

Runs the real app in a child process whose entry point (this file, ``--serve``) first wraps, keeping
their signatures: Gradio's ``Blocks.preprocess_data`` / ``postprocess_data`` (the event's inputs
turned into handler arguments, each yield turned into the update sent), ``Handlers.respond`` (the
handler's first yield) and ``ChatService.stream_reply``'s engine call and first piece. Each wrapper
prints one ``PROBE`` line to stderr; this script drives ``bench/ui_ttft.py``'s rounds against the
server, then reports the medians (ms) and writes bench/results/profile_ui_event.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serve(argv: list[str]) -> None:
    """The app, with timing wrappers (runs in the child process)."""
    sys.path.insert(0, str(ROOT))
    import gradio.blocks as blocks

    import qwen_core.engine as engine_mod
    import ui.handlers as handlers
    import ui.service as service

    marks: dict[str, float] = {}

    def probe(what: str, ms: float) -> None:
        print(f"PROBE {what} {ms:.3f}", file=sys.stderr, flush=True)

    respond = handlers.Handlers.respond

    @functools.wraps(respond)  # Gradio reads the signature (the gr.Request argument)
    def timed_respond(self, *args, **kwargs):
        marks.clear()
        marks["call"] = start = time.perf_counter()
        first = True
        for out in respond(self, *args, **kwargs):
            if first:
                probe("handler_first_yield", 1e3 * (time.perf_counter() - start))
                first = False
            yield out

    handlers.Handlers.respond = timed_respond
    stream_messages = engine_mod.Engine.stream_messages

    def timed_stream_messages(self, *args, **kwargs):
        stream = stream_messages(self, *args, **kwargs)
        if "call" in marks:
            probe("engine_call", 1e3 * (time.perf_counter() - marks["call"]))
        return stream

    engine_mod.Engine.stream_messages = timed_stream_messages
    coalesced = service.coalesced

    def timed_coalesced(stream, *args):
        for piece in coalesced(stream, *args):
            if "piece" not in marks and "call" in marks:
                marks["piece"] = time.perf_counter()
                probe("first_piece", 1e3 * (marks["piece"] - marks["call"]))
            yield piece

    service.coalesced = timed_coalesced
    for name in ("preprocess_data", "postprocess_data"):
        original = getattr(blocks.Blocks, name)

        def wrap(original=original, name=name):
            @functools.wraps(original)
            async def timed(self, block_fn, *args, **kwargs):
                start = time.perf_counter()
                result = await original(self, block_fn, *args, **kwargs)
                if getattr(block_fn, "name", "") == "respond":
                    first = name == "postprocess_data" and "post" not in marks
                    marks.setdefault("post" if name == "postprocess_data" else "pre", start)
                    label = {"preprocess_data": "preprocess", "postprocess_data": "postprocess"}[name]
                    probe(label + ("_first" if first else ""), 1e3 * (time.perf_counter() - start))
                return result

            return timed

        setattr(blocks.Blocks, name, wrap())
    sys.argv = ["app.py", *argv]
    import runpy

    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


def main() -> None:
    from _common import checkpoint, free_port, write_results
    from ui_ttft import rounds

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=8, help="tokens per reply (several updates each)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
        log = Path(tmp) / "server.log"
        serve = [sys.executable, __file__, "--serve", "--model", str(checkpoint("tiny", "bfloat16"))]
        serve += ["--device", "cpu", "--data-dir", tmp, "--host", "127.0.0.1", "--port", str(port)]
        with log.open("w") as out:
            proc = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}")
            runs = rounds(f"http://127.0.0.1:{port}", args.rounds, args.tokens)
        finally:
            proc.terminate()
            proc.wait(30)
        samples: dict[str, list[float]] = {}
        for m in re.finditer(r"^PROBE (\S+) ([\d.]+)$", log.read_text(), re.M):
            samples.setdefault(m.group(1), []).append(float(m.group(2)))
    order = ("preprocess", "engine_call", "handler_first_yield", "postprocess_first", "first_piece", "postprocess")
    meaning = {
        "preprocess": "the event's inputs into handler arguments (one thread hop per input)",
        "engine_call": "handler start -> the engine has the prompt",
        "first_piece": "handler start -> first text piece",
        "handler_first_yield": "handler start -> its first update (Stop, before any token)",
        "postprocess_first": "the first update into what is sent",
        "postprocess": "each later update into what is sent",
    }
    rows = [
        {"phase": k, "what": meaning[k], "median ms": round(statistics.median(samples[k]), 2), "n": len(samples[k])}
        for k in order
        if samples.get(k)
    ]
    client = {name: round(statistics.median(r["first token"] for r in rs), 1) for name, rs in runs.items()}
    rows.append({"phase": "client", "what": f"first token ms seen by the client per path: {client}", "median ms": ""})
    notes = (
        f"Tiny model, {args.rounds} rounds of bench/ui_ttft.py's three paths ({args.tokens}-token greedy replies); "
        "server-side phases of the UI chat event (respond), medians."
    )
    print(write_results("profile_ui_event", rows, list(rows[0]), notes, note=args.note).read_text())


def _wait_ready(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the app at {url} was not ready in {timeout:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2:])
    else:
        main()
