"""Send latency in a long chat with a large browser store, in a real browser (issue #15 item 3).

Starts ``app.py`` on a tiny random-weight checkpoint (its replies take milliseconds, so what is
measured is the page and its events), imports a 40-turn chat (~145 KB) ``--copies`` times (the
store grows by that much each time), then sends short messages and measures, in the page's own
clock, Enter → the reply chain is done (Stop disabled again, the meter recounted) and the request
bytes the page sent for it (POST bodies to ``/gradio_api/`` as they went on the wire).

    python bench/send_latency.py [--sends 5] [--copies 1 14] [--label now]

Writes ``bench/results/send_latency_<label>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine
from typing_latency import long_chat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "browser"))

_STORE_BYTES_JS = "() => (localStorage.getItem('qwen-chat-store-v1') || '').length"


def _import(page, path: Path, expect, turns: int) -> None:
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    expect(page.locator("#chat [data-testid=user]")).to_have_count(turns, timeout=120_000)


def start_app(prefix: str, turns: int):
    """The app on a tiny checkpoint in a fresh temporary folder, and a TURNS-turn chat file to import."""
    from conftest import AppServer
    from qwen1_checkpoint import Shape, write_checkpoint

    base = Path(tempfile.mkdtemp(prefix=prefix))
    model = write_checkpoint(base / "tiny-qwen", Shape(), "float32")
    server = AppServer(model, base / "data", base)
    chat_path = base / "long.json"
    chat_path.write_text(json.dumps(long_chat(turns)), encoding="utf-8")
    server.start()
    return server, chat_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sends", type=int, default=5)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 14])
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--label", default="now")
    args = ap.parse_args(argv)

    from chat_ui import ChatUI
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import expect, sync_playwright

    server, chat_path = start_app("send-latency-", args.turns)
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(120_000)
            sent_bytes = [0]  # what went on the wire (after the page's own fetch wrapper), by Playwright

            def count(request) -> None:
                if request.method == "POST" and "/gradio_api/" in request.url:
                    sent_bytes[0] += len(request.post_data_buffer or b"")

            page.on("request", count)
            ui = ChatUI.open(page, server.url)
            ui.max_new_tokens(4)
            imported = 0
            for copies in sorted(args.copies):
                while imported < copies:
                    _import(page, chat_path, expect, args.turns)
                    imported += 1
                page.wait_for_timeout(2000)  # the imports' own events
                times, sent = [], []
                for i in range(args.sends + 1):  # the first warms up
                    before = sent_bytes[0]
                    t0 = time.perf_counter()
                    ui.chat(f"short question {i}", turns=args.turns + 1 + i)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if i:
                        times.append(elapsed)
                        sent.append(sent_bytes[0] - before)
                # Undo the sends so the next size starts from the same chat.
                for _ in range(args.sends + 1):
                    ui.button("undo").click()
                    page.wait_for_timeout(300)
                rows.append(
                    {
                        "chats": copies,
                        "store_chars": page.evaluate(_STORE_BYTES_JS),
                        "send_ms": {"median": round(statistics.median(times)), "max": round(max(times))},
                        "bytes_up_per_send": {"median": round(statistics.median(sent))},
                    }
                )
                print(rows[-1], flush=True)
            browser.close()
    finally:
        server.stop()
    summary = {"label": args.label, "rows": rows, "machine": machine("send latency")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"send_latency_{args.label}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    m = summary["machine"]
    lines = [
        f"# Send latency with a large browser store — {args.label}\n",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {m['cores']} cores, load average at start "
        f"{m['loadavg at start (1/5/15 min)']}, at end {m['loadavg at end']}; tiny model, 4 new tokens\n",
        "| chats in the store | store (chars) | Enter → reply done, median (ms) | max (ms) | bytes sent per Send |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['chats']} | {r['store_chars']:,} | {r['send_ms']['median']} | {r['send_ms']['max']} | "
            f"{r['bytes_up_per_send']['median']:,} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
