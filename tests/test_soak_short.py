"""A short soak in CI: ``bench/soak.py`` with 8 clients for 20 s (the long one is in docs/RELIABILITY.md).

The soak starts the real app, drives it over loopback with /v1 (streamed, non-streamed,
cancelled), Gradio ``/chat`` (some cancelled) and UI users (persona switches, Stop,
reconnects that reload the server-side chats), then checks every reply against the engine's
greedy reply for the same prompt. This test asserts on its JSON report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_loses_and_mixes_nothing(tmp_path):
    cmd = [sys.executable, "bench/soak.py", "--clients", "8", "--seconds", "20", "--no-restart",
           "--reconnect-every", "2", "--name", "soak_short", "--results-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = tmp_path / "soak_short.json"
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report.read_text())
    summary = (tmp_path / "soak_short.md").read_text()
    assert proc.returncode == 0 and r["passed"], summary
    counts, replies, conv = r["counts"], r["replies"], r["conversations"]
    # every kind of client got replies through, and every reply was checked
    for kind in ("v1 stream", "v1 json", "gradio /chat", "ui turn"):
        assert counts.get(kind, 0) > 0, (kind, summary)
    assert replies["checked"] == r["requests_completed"] > 0
    assert replies["partial"] > 0  # cancellations and stops happened, and were checked as prefixes
    assert (replies["wrong"], replies["mixed"], r["errors"], r["hung_clients"]) == (0, 0, 0, []), summary
    assert counts.get("ui reconnects", 0) > 0 and conv["lost_on_reconnect"] == conv["lost_at_end"] == 0, summary
    assert r["scheduler_after"]["active"] == r["scheduler_after"]["waiting"] == 0
    assert len(r["rss_samples"]) >= 5 and r["latency"]["all"]["p99_s"] is not None
