"""Helpers shared by the benchmarks: machine description, limits, cached checkpoints, result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"  # gitignored: random-weight checkpoints written once
# The benches' data dir: converted GGUF files (--precision int8/int4 on CPU) under DATA/gguf, as in the
# app's, so the 1.8B conversion (~3.5 min) happens once for every bench.
DATA = CACHE / "data"
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the checkpoint writer and the app-process helper

START_LOADAVG = os.getloadavg()  # before this run adds its own load

# Qwen's model cards: HF transformers + remote code, one A100-80G, 1-token context (QWEN1_FACTS.md).
MODEL_CARD = {
    "1.8b": {"bf16 tok/s": 54.09, "int8 tok/s": 55.56, "int4 tok/s": 71.07, "peak GB gen 8192": 6.48},
    "7b": {"bf16 tok/s": 40.93, "int8 tok/s": 37.47, "int4 tok/s": 50.09, "peak GB gen 8192": 22.53},
}
# Datasheet figures: HBM bandwidth (bytes/s) and dense BF16 tensor FLOP/s, matched on the CUDA device name.
GPU_SPECS = [
    ("H200", 4.8e12, 989e12),
    ("H100 NVL", 3.9e12, 835e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 2.039e12, 312e12),  # A100-SXM4-80GB, the model cards' GPU
]
A100_BW = 2.039e12


def gpu_spec(name: str) -> tuple[float, float] | None:
    """(bandwidth B/s, bf16 FLOP/s) from the datasheet for a CUDA device name, or None."""
    return next(((bw, fl) for key, bw, fl in GPU_SPECS if key in name), None)


def machine(note: str = "") -> dict:
    """What the numbers were measured on, and how busy the machine was."""
    import psutil
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg at start (1/5/15 min)": [round(x, 2) for x in START_LOADAVG],
        "loadavg at end": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_mem_gb"] = round(props.total_memory / 1e9, 1)
        info["cuda"] = torch.version.cuda
    if note:
        info["note"] = note
    return info


def all_at_once(calls: list) -> tuple[list, float]:
    """Run the no-argument ``calls`` in threads started together; returns their results (in
    the order they finished) and the ``perf_counter`` time the first thread started."""
    results: list = []
    threads = [threading.Thread(target=lambda c=c: results.append(c())) for c in calls]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, started


def md_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of ``rows`` (missing cells empty)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(
    name: str,
    rows: list[dict],
    columns: list[str],
    notes: str = "",
    sections: list[tuple[str, list[dict], list[str] | None]] = (),
    extra: dict | None = None,
    note: str = "",
) -> Path:
    """Write ``bench/results/NAME.json`` and ``NAME.md`` (tables with the machine they came from)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    mach = machine(note)
    data = {"machine": mach, "rows": rows, "notes": notes, **(extra or {})}
    data["sections"] = {title: r for title, r, _ in sections}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    lines = [f"# {name}", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()), ""]
    if note:
        lines += [f"**Caveat: {note}**", ""]
    if notes:
        lines += [notes, ""]
    lines += md_table(rows, columns)
    for title, srows, scols in sections:
        if srows:
            lines += ["", f"## {title}", "", *md_table(srows, scols)]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- checkpoints ------------------------------------------------------------------------------


def shapes() -> dict:
    """Model shapes by name (tiny: the tests' 2-layer model)."""
    from qwen1_checkpoint import QWEN_1_8B, QWEN_7B, Shape

    return {"tiny": Shape(), "1.8b": QWEN_1_8B, "7b": QWEN_7B}


def checkpoint(shape_name: str, dtype: str = "bfloat16") -> Path:
    """A random-weight checkpoint in the original Qwen-1 layout, written once under ``bench/.cache``."""
    from qwen1_checkpoint import write_checkpoint

    shape = shapes()[shape_name]
    folder = CACHE / f"qwen1-{shape_name}-{dtype}"
    if (folder / ".complete").exists():
        return folder
    n = param_count(shape)
    need = n * (4 if dtype == "float32" else 2) * 1.05
    free = shutil.disk_usage(CACHE.parent if not CACHE.exists() else CACHE).free
    if need > free:
        raise SystemExit(f"writing the {shape_name} checkpoint needs {need / 1e9:.1f} GB; {free / 1e9:.1f} GB free")
    CACHE.mkdir(parents=True, exist_ok=True)
    shards = max(1, round(n * 2 / 2e9))  # ~2 GB shards (bf16), like the published repos
    print(f"writing {folder} ({n / 1e9:.2f} B params, {shards} shards) ...", flush=True)
    write_checkpoint(folder, shape, dtype, shards=shards)
    (folder / ".complete").write_text("ok\n")
    return folder


# --- limits -------------------------------------------------------------------------------------


def param_count(shape) -> int:
    """All parameters of a Qwen-1 shape (embedding and lm_head included)."""
    h, i2, v, n = shape.hidden_size, shape.intermediate_size // 2, shape.vocab_size, shape.num_hidden_layers
    per_layer = 3 * h * h + 3 * h + h * h + 3 * h * i2 + 2 * h
    return 2 * v * h + n * per_layer + h


def layer_params(shape) -> int:
    """Parameters every token multiplies through (all but the embedding and lm_head)."""
    return param_count(shape) - 2 * shape.vocab_size * shape.hidden_size


def decode_bytes(shape, weight_bytes: int, kv_bytes: int, position: float) -> float:
    """Bytes one decode step must read: every weight but the embedding table, plus the KV cache so far."""
    weights = (layer_params(shape) + shape.vocab_size * shape.hidden_size) * weight_bytes
    return weights + 2 * shape.num_hidden_layers * position * shape.hidden_size * kv_bytes


def prefill_flops(shape, length: int) -> float:
    """Useful FLOPs of a prefill: 2·params·L for the layers, causal attention, lm_head for the last token."""
    attention = 2 * shape.num_hidden_layers * length * length * shape.hidden_size  # QK^T + AV, causal half
    return 2 * layer_params(shape) * length + attention + 2 * shape.vocab_size * shape.hidden_size


def _best(fn, repeat: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(device: str = "cpu", gib: float = 1.0) -> dict:
    """Read bandwidth (sum of a buffer far larger than the caches), copy bandwidth, matvec bandwidth per dtype."""
    import torch
    import torch.nn.functional as F

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n = int(gib * 2**30 / 4)
    x = torch.ones(n, dtype=torch.float32, device=device)
    out = {"read GB/s": n * 4 / _best(lambda: x.sum(), 5, sync) / 1e9}
    y = torch.empty_like(x)
    out["copy GB/s (read+write)"] = 2 * n * 4 / _best(lambda: y.copy_(x), 5, sync) / 1e9
    x = y = None  # free before the matvec buffers
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = torch.ones(int(gib * 2**30 / 4 / 8192 / 2) * 2, 8192, dtype=dtype, device=device)
        v = torch.ones(1, 8192, dtype=dtype, device=device)
        secs = _best(lambda v=v, w=w: F.linear(v, w), 5, sync)
        out[f"matvec {name} GB/s"] = w.numel() * w.element_size() / secs / 1e9
        w = None
    out["limit GB/s"] = max(out["read GB/s"], out["matvec fp32 GB/s"])
    return {k: round(v, 2) for k, v in out.items()}


def measure_matmul(device: str, dtype_name: str) -> float:
    """Best measured GEMM FLOP/s in ``dtype`` over model-like ``F.linear`` shapes (the prefill's ceiling)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    for m in (2048, 8192) if device.startswith("cuda") else (512, 2048):
        for k, n in ((2048, 5504), (4096, 4096), (2048, 6144)):
            x = torch.ones(m, k, dtype=dtype, device=device)
            w = torch.ones(n, k, dtype=dtype, device=device)
            secs = _best(lambda x=x, w=w: F.linear(x, w), 4 if device.startswith("cuda") else 2, sync)
            best = max(best, 2 * m * k * n / secs)
    return best


class PeakMemory:
    """Peak resident memory (sampled every 10 ms) and CUDA peak allocation over a ``with`` block."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.peak_rss = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        import psutil
        import torch

        self._proc = psutil.Process()
        self.peak_rss = self._proc.memory_info().rss
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        self.cuda_peak = torch.cuda.max_memory_allocated() if self.device.startswith("cuda") else None

    def as_gb(self) -> float:
        """The figure to report: CUDA peak allocation on a GPU, peak RSS on the CPU."""
        return round((self.cuda_peak if self.cuda_peak is not None else self.peak_rss) / 1e9, 2)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    from server_process import free_port as _free

    return _free()
