"""Shared fixtures: tiny Qwen-1 checkpoints in the original layout, written once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qwen1_checkpoint import Shape, write_checkpoint

# seq_length 16 puts every prompt of a real chat past the trained context, so dynamic
# NTK and LogN are exercised by ordinary tests; rope base 1e6 like Qwen-72B.
LONG = Shape(seq_length=16, rotary_emb_base=1e6)


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    """fp32, unsharded, rope base 1e4, seq_length 8192."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-fp32"), Shape(), "float32", shards=1, seed=0)


@pytest.fixture(scope="session")
def long_ckpt_dir(tmp_path_factory) -> Path:
    """fp32, 3 shards with an index, rope base 1e6, seq_length 16."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-long"), LONG, "float32", shards=3, seed=1)


@pytest.fixture(scope="session")
def bf16_ckpt_dir(tmp_path_factory) -> Path:
    """bf16, 2 shards, seq_length 16."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-bf16"), LONG, "bfloat16", shards=2, seed=2)


@pytest.fixture(scope="session")
def engine(ckpt_dir):
    """The tiny fp32 engine on CPU (loaded through the real loader)."""
    from qwen_core import load_engine

    return load_engine(str(ckpt_dir), precision="auto", device="cpu")


@pytest.fixture(scope="session")
def long_engine(long_ckpt_dir):
    """The tiny engine whose every prompt runs past its trained context."""
    from qwen_core import load_engine

    return load_engine(str(long_ckpt_dir), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def app(ckpt_dir, tmp_path_factory):
    """``python app.py`` on the tiny checkpoint, one per test module (modules that need other
    flags define their own ``app``)."""
    from server_process import AppProcess

    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(tmp_path_factory.mktemp("data"))],
        env={"OMP_NUM_THREADS": "1"},
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def manager(engine, ckpt_dir):
    """A model manager holding the tiny engine (for the UI's service)."""
    from qwen_core.manager import ModelManager, ModelSpec

    m = ModelManager(lambda *a, **k: engine, [])
    m.start(ModelSpec(str(ckpt_dir), device="cpu"))
    return m


@pytest.fixture(scope="session")
def tokenizer(ckpt_dir):
    """The real Qwen vocabulary, read from the checkpoint folder."""
    from qwen_core.tokenizer import QwenTokenizer

    return QwenTokenizer(ckpt_dir / "qwen.tiktoken")
