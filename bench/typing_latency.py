"""Typing latency in a long chat, in a real browser (issue #15 item 3).

Starts ``app.py`` on a tiny random-weight checkpoint, imports a 40-turn chat (~145 KB of text)
into a fresh Chromium page, then types characters into the message box one at a time and
measures, per key, in the page's own clock:

* ``echo``: key press → the character is in the box, a frame is painted and the main thread
  is free again (what "typing lags" means to the user);
* ``idle``: key press → every request the key caused has been answered and the page is idle
  (the context meter updated), i.e. nothing more is in flight;
* ``bytes up``: request bytes the page sent for that key.

    python bench/typing_latency.py [--keys 20] [--turns 40] [--label after]

Writes ``bench/results/typing_latency_<label>.json`` and ``.md`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine

sys.path.insert(0, str(ROOT / "tests" / "browser"))

# Counts the page's requests (fetch and XHR) in flight and the bytes each sends.
_INSTRUMENT_JS = """
() => {
  if (window.__qc) return;
  const qc = window.__qc = {inflight: 0, lastEnd: 0, lastStart: 0, bytes: 0};
  const body = (b) => (typeof b === 'string' ? b.length : b && b.size ? b.size : b && b.byteLength ? b.byteLength : 0);
  const orig = window.fetch;
  window.fetch = function (input, init) {
    qc.inflight++; qc.lastStart = performance.now(); qc.bytes += body(init && init.body);
    return orig.apply(this, arguments).then(async (r) => {
      // An event's answer can be a stream (SSE): count it done once its body is read.
      if (r.headers.get('content-type') && r.headers.get('content-type').includes('event-stream')) {
        qc.inflight--; qc.lastEnd = performance.now(); return r;
      }
      const clone = r.clone(); try { await clone.arrayBuffer(); } catch (e) {}
      qc.inflight--; qc.lastEnd = performance.now(); return r;
    }, (e) => { qc.inflight--; qc.lastEnd = performance.now(); throw e; });
  };
}
"""

# Resolves with the timings of the next key press (arm it, then press the key).
_MEASURE_JS = """
(quietMs) => new Promise((resolve) => {
  const qc = window.__qc, box = document.querySelector('#message textarea');
  let t0 = null, echo = null, before = 0;
  document.addEventListener('keydown', () => { t0 = performance.now(); before = qc.bytes; }, {capture: true, once: true});
  const meter = document.querySelector('#meter');
  const meterText = meter ? meter.innerText : '';
  const tick = () => {
    if (t0 === null) return requestAnimationFrame(tick);
    if (echo === null) {  // painted with the new character, then a macrotask: the main thread is free
      requestAnimationFrame(() => setTimeout(() => { echo = performance.now() - t0; }, 0));
      echo = -1;
    }
    const now = performance.now();
    const settled = echo > 0 && qc.inflight === 0 && qc.lastEnd > t0 && now - Math.max(qc.lastEnd, qc.lastStart) >= quietMs;
    if (settled || now - t0 > 30000) {
      resolve({echo, idle: qc.lastEnd - t0, bytes: qc.bytes - before, meterChanged: meter && meter.innerText !== meterText,
               timedOut: !settled});
      return;
    }
    setTimeout(tick, 5);
  };
  requestAnimationFrame(tick);
})
"""


def long_chat(turns: int, chars: int = 1800) -> dict:
    """A conversation of ``turns`` exchanges, ``chars`` characters per message (varied text)."""
    words = "alpha beta gamma delta epsilon zeta theta lambda sigma omega context window tokens".split()
    msgs = []
    for t in range(turns):
        for role in ("user", "assistant"):
            text = " ".join(words[(t * 7 + i) % len(words)] for i in range(chars // 6))[:chars]
            msgs.append({"role": role, "content": f"{role} {t}: {text}"})
    return {"title": f"{turns}-turn chat", "messages": msgs}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--label", default="now")
    ap.add_argument("--quiet-ms", type=int, default=300, help="no request for this long = idle")
    args = ap.parse_args(argv)

    from conftest import CHROMIUM, CHROMIUM_ARGS, AppServer
    from playwright.sync_api import expect, sync_playwright
    from qwen1_checkpoint import Shape, write_checkpoint

    base = Path(tempfile.mkdtemp(prefix="typing-latency-"))
    model = write_checkpoint(base / "tiny-qwen", Shape(), "float32")
    server = AppServer(model, base / "data", base)
    chat = long_chat(args.turns)
    chat_path = base / "long.json"
    chat_path.write_text(json.dumps(chat), encoding="utf-8")
    server.start()
    print(f"app at {server.url}", flush=True)
    samples = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            page.locator("#meter [data-dropped]").wait_for(state="attached")
            with page.expect_file_chooser() as chooser:
                page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
            chooser.value.set_files(str(chat_path))
            expect(page.locator("#chat [data-testid=user]")).to_have_count(args.turns, timeout=120_000)
            page.wait_for_timeout(2000)  # the import's own events
            page.evaluate(_INSTRUMENT_JS)
            box = page.locator("#message textarea")
            box.click()
            for i in range(args.keys + 2):  # the first two warm up
                # Armed in the page first (evaluating the promise itself would wait for the key).
                page.evaluate(f"(q) => {{ window.__qcNext = ({_MEASURE_JS})(q); }}", args.quiet_ms)
                page.keyboard.press("abcdefghij"[i % 10])
                result = page.evaluate("() => window.__qcNext")
                print(f"key {i}: {result}", flush=True)
                if i >= 2:
                    samples.append(result)
            browser.close()
    finally:
        server.stop()

    echo = [s["echo"] for s in samples]
    idle = [s["idle"] for s in samples]
    summary = {
        "label": args.label,
        "turns": args.turns,
        "chat_chars": sum(len(m["content"]) for m in chat["messages"]),
        "keys": len(samples),
        "echo_ms": {"median": round(statistics.median(echo), 1), "p90": round(pct(echo, 0.9), 1)},
        "idle_ms": {"median": round(statistics.median(idle), 1), "p90": round(pct(idle, 0.9), 1)},
        "bytes_up_per_key": {"median": statistics.median(s["bytes"] for s in samples)},
        "meter_updated": sum(bool(s["meterChanged"]) for s in samples),
        "timed_out": sum(bool(s["timedOut"]) for s in samples),
        "machine": machine("typing latency"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"typing_latency_{args.label}.json"
    out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
    md = out.with_suffix(".md")
    m = summary["machine"]
    md.write_text(
        f"# Typing latency, {args.turns}-turn chat ({summary['chat_chars']:,} characters) — {args.label}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {m['cores']} cores, "
        f"load average at start {m['loadavg at start (1/5/15 min)']}, at end {m['loadavg at end']}\n\n"
        "| per key | median | p90 |\n|---|---|---|\n"
        f"| key → echoed, main thread free (ms) | {summary['echo_ms']['median']} | {summary['echo_ms']['p90']} |\n"
        f"| key → last request answered, idle (ms) | {summary['idle_ms']['median']} | {summary['idle_ms']['p90']} |\n"
        f"| bytes sent | {summary['bytes_up_per_key']['median']:,} | |\n\n"
        f"{summary['keys']} keys; meter updated after {summary['meter_updated']}; timed out {summary['timed_out']}.\n"
    )
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
