"""Where a Send's time goes in the page with a large store: the browser's own CPU profile (issue #15 item 3).

The set-up of ``send_latency.py`` (a tiny model, a 40-turn chat imported ``--copies`` times), then one
Send under Chromium's sampling profiler (CDP ``Profiler``): self time by function, with the script it
lives in, and the share that is idle (waiting on the server). Prints the table; nothing is written.

    python bench/profile_send.py [--copies 14] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send_latency import _import, start_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "browser"))


def _self_times(profile: dict) -> collections.Counter:
    """Self time (ms) per (function, script:line) from a CDP CPU profile."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    deltas = profile.get("timeDeltas") or []
    spent: collections.Counter = collections.Counter()
    for sample, delta in zip(profile.get("samples") or [], deltas[1:] + [0], strict=True):
        frame = nodes[sample]["callFrame"]
        script = (frame.get("url") or "").rsplit("/", 1)[-1].split("?")[0]
        name = frame.get("functionName") or "(anonymous)"
        spent[(name, f"{script}:{frame.get('lineNumber', 0) + 1}" if script else "")] += delta / 1000
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=14)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)

    from chat_ui import ChatUI
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import expect, sync_playwright

    server, chat_path = start_app("profile-send-", args.turns)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(120_000)
            ui = ChatUI.open(page, server.url)
            ui.max_new_tokens(4)
            for _ in range(args.copies):
                _import(page, chat_path, expect, args.turns)
            page.wait_for_timeout(2000)
            ui.chat("warm up", turns=args.turns + 1)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 200})
            cdp.send("Profiler.start")
            t0 = time.perf_counter()
            ui.chat("profiled question", turns=args.turns + 2)
            wall = (time.perf_counter() - t0) * 1000
            profile = cdp.send("Profiler.stop")["profile"]
            browser.close()
    finally:
        server.stop()
    spent = _self_times(profile)
    total = sum(spent.values())
    idle = sum(v for (name, _), v in spent.items() if name in ("(idle)", "(program)"))
    gc = sum(v for (name, _), v in spent.items() if name == "(garbage collector)")
    print(f"Send with {args.copies} chats: {wall:.0f} ms wall; profiled {total:.0f} ms, idle/program {idle:.0f} ms, "
          f"GC {gc:.0f} ms, scripts {total - idle - gc:.0f} ms")  # fmt: skip
    print("| self ms | function | script:line |\n|---|---|---|")
    for (name, where), ms in spent.most_common(args.top):
        print(f"| {ms:.0f} | {name} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
