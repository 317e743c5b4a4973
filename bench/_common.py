"""Helpers shared by the benchmarks: machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the checkpoint writer and the app-process helper


def machine() -> dict:
    """What the numbers were measured on."""
    import psutil
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, rows: list[dict], columns: list[str], notes: str = "") -> Path:
    """Write ``bench/results/NAME.json`` and ``NAME.md`` (a table with the machine)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    mach = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": mach, "rows": rows, "notes": notes}, indent=2))
    lines = [f"# {name}", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()), ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
