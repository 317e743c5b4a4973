"""Start-up imports only what the chosen checkpoint needs (issue 15, item 10): loading an fp32
checkpoint brings in neither torchao nor the GPTQ stack. Run in a fresh interpreter, since
other tests in this process may have imported anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qwen1_checkpoint import Shape, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
UNNEEDED = ("torchao", "gptqmodel", "optimum", "auto_gptq", "flash_attn")

_PROBE = """
import json, sys
from qwen_core import load_engine
engine = load_engine(sys.argv[1], precision="auto", device="cpu")
reply = engine.chat("hi", do_sample=False, max_new_tokens=2)
unneeded = json.loads(sys.argv[2])
print(json.dumps({"loaded": sorted(m for m in unneeded if m in sys.modules), "reply": isinstance(reply, str)}))
"""


def test_fp32_checkpoint_imports_no_quantization_backend(tmp_path):
    model = write_checkpoint(tmp_path / "tiny-qwen", Shape(), "float32")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model), json.dumps(UNNEEDED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"loaded": [], "reply": True}, result
