"""Time to page: from starting ``python app.py`` to the first HTTP 200 of its page, for the tiny
model on CPU, with the phases the app logs on the way (imports, model load, UI build).

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
import urllib.request
from pathlib import Path

from _common import ROOT, free_port, write_results


def one_start(model: Path, data_dir: Path, timeout_s: float = 600) -> dict:
    """Start app.py once; seconds to the first log line about the model, to "Ready", and to the page."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--device", "cpu", "--port", str(port)]
    log_path = data_dir / f"app-{port}.log"
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
            if "ready" not in marks and "Ready" in text:
                marks["ready"] = now
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{text[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        marks["page"] = time.perf_counter() - started
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"no page within {timeout_s} s")
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
            rows.append({"run": run, "s to model loading": r.get("loading"), "s to ready": r.get("ready"),
                         "s to page": r.get("page")})  # fmt: skip
            print(rows[-1], flush=True)
    notes = (
        "Seconds from starting `python app.py --model TINY --device cpu` to: its first model-loading log line "
        "(imports done), the model ready, and the first HTTP 200 of the page. The page is served only once "
        "the model is loaded. The first run also fills the OS file cache."
    )
    path = write_results("startup_tiny_cpu", rows, ["run", "s to model loading", "s to ready", "s to page"], notes)
    print(path)


if __name__ == "__main__":
    main()
