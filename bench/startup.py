"""Start-up: from starting ``python app.py`` to its first HTTP answer (the loading page) and to
ready (``/readyz`` 200: the chat page is served), for the tiny model on CPU, with the phases the
app logs on the way (imports, model load, UI build).

    python bench/startup.py             # 3 starts
    python bench/startup.py --runs 1
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import ROOT, free_port, write_results


def one_start(model: Path, data_dir: Path, timeout_s: float = 600) -> dict:
    """Start app.py once; seconds to its first HTTP answer, to the first log line about the model,
    to the model's "Ready", and to ``/readyz`` 200 (then the page itself must answer 200)."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--device", "cpu", "--port", str(port)]
    log_path = data_dir / f"app-{port}.log"
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cmd, "--data-dir", str(data_dir)], cwd=ROOT, env=env, stdout=log, stderr=log)
    marks: dict[str, float] = {}
    try:
        while time.perf_counter() - started < timeout_s:
            now = time.perf_counter() - started
            text = log_path.read_text(errors="replace")
            if "loading" not in marks and re.search(r"Locating|Loading", text):
                marks["loading"] = now
            if "loaded" not in marks and re.search(r"\bReady\b", text):
                marks["loaded"] = now
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{text[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as e:  # 503 while loading: an answer all the same
                status = e.code
            except OSError:
                status = None
            if status is not None:
                marks.setdefault("answer", time.perf_counter() - started)
            if status == 200:
                marks["ready"] = time.perf_counter() - started
                with urllib.request.urlopen(f"{url}/", timeout=30) as r:
                    assert r.status == 200, r.status  # the chat page, no longer the loading page
                break
            time.sleep(0.1 if status is None else 0.25)
        else:
            raise RuntimeError(f"not ready within {timeout_s} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {k: round(v, 1) for k, v in marks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from qwen1_checkpoint import Shape, write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = write_checkpoint(Path(tmp) / "tiny-qwen", Shape(), "float32")
        rows = []
        for run in range(1, args.runs + 1):
            r = one_start(model, Path(tmp))
            rows.append({"run": run, "s to first answer": r.get("answer"), "s to model loading": r.get("loading"),
                         "s to model loaded": r.get("loaded"), "s to ready": r.get("ready")})  # fmt: skip
            print(rows[-1], flush=True)
    notes = (
        "Seconds from starting `python app.py --model TINY --device cpu` to: its first HTTP answer (the "
        "loading page; `/readyz` 503 with the load's progress), its first model-loading log line (imports "
        "done), the model's `Ready` log line, and ready (`/readyz` 200; the chat page is served from then on). "
        "The first run also fills the OS file cache."
    )
    columns = ["run", "s to first answer", "s to model loading", "s to model loaded", "s to ready"]
    path = write_results("startup_tiny_cpu", rows, columns, notes)
    print(path)


if __name__ == "__main__":
    main()
