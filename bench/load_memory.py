"""Peak resident memory of loading a Qwen-1 checkpoint on CPU, against its weight bytes.

    python bench/load_memory.py                 # 1.8B shape, bf16 and fp32 (writes ~11 GB to a temp dir)
    python bench/load_memory.py --shape tiny    # seconds, for a smoke run

Each load runs in a fresh process; peak RSS (ru_maxrss) minus the RSS after imports
is the load's own cost. Goal (issue: core): at most 1.3x the weight bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, write_results

CHILD = r"""
import json, resource, sys, time, psutil, gc
sys.path.insert(0, {root!r})
import torch, transformers  # imports first: their memory is not the load's
from qwen_core import load_engine
import qwen_core.modeling, qwen_core.generation
gc.collect()
base = psutil.Process().memory_info().rss
t = time.perf_counter()
engine = load_engine({path!r}, precision={precision!r}, device="cpu")
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
after = psutil.Process().memory_info().rss
engine.chat("hi", do_sample=False, max_new_tokens=2)  # touches every weight
touched = psutil.Process().memory_info().rss
peak_reply = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(base=base, peak=peak, after=after, touched=touched, peak_reply=peak_reply, secs=secs)))
"""


def measure(path: Path, precision: str) -> dict:
    """Load ``path`` in a child process and return its memory figures."""
    code = CHILD.format(root=str(ROOT), path=str(path), precision=precision)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Write the checkpoints, load each, report."""
    from qwen1_checkpoint import QWEN_1_8B, Shape, write_checkpoint

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", choices=["tiny", "1.8b"], default="1.8b")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    args = ap.parse_args()
    shape = QWEN_1_8B if args.shape == "1.8b" else Shape()
    rows = []
    for dtype in args.dtypes.split(","):
        precision = {"bfloat16": "bf16", "float32": "fp32"}[dtype]
        with tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp:
            folder = write_checkpoint(Path(tmp) / "ckpt", shape, dtype, shards=2 if args.shape == "1.8b" else 1)
            weight_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            m = measure(folder, precision)
        load_cost = m["peak"] - m["base"]
        rows.append(
            {
                "shape": args.shape,
                "checkpoint dtype": dtype,
                "loaded as": precision,
                "weight GB": round(weight_bytes / 1e9, 2),
                "RSS after imports GB": round(m["base"] / 1e9, 2),
                "peak RSS GB": round(m["peak"] / 1e9, 2),
                "load peak / weights": round(load_cost / weight_bytes, 3),
                "RSS after load GB": round(m["after"] / 1e9, 2),
                "RSS after 1st reply GB": round(m["touched"] / 1e9, 2),
                "peak incl. 1st reply / weights": round((m["peak_reply"] - m["base"]) / weight_bytes, 3),
                "load s": round(m["secs"], 1),
            }
        )
        print(rows[-1], flush=True)
    cols = list(rows[0])
    notes = (
        "load peak = peak RSS during load_engine minus RSS after importing torch/transformers/qwen_core. "
        "Weights stay memory-mapped from the safetensors files where the dtype matches, so RSS grows "
        "as a first reply touches them; the last columns include that first reply."
    )
    print(write_results(f"load_memory_{args.shape}", rows, cols, notes).read_text())


if __name__ == "__main__":
    main()
