"""Loading the llama.cpp engine: checkpoint → cached GGUF (converted on first use) → ``llama_cpp.Llama``."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import inspect_checkpoint, resolve_checkpoint
from ..errors import QwenCoreError, UnsupportedCombination
from ..info import EngineInfo
from ..settings import GenerationSettings
from ..tokenizer import VOCAB_FILE, QwenTokenizer
from .cache import GgufCache, converter_dir
from .engine import LlamaCppEngine

log = logging.getLogger(__name__)

# What each --precision becomes in llama.cpp. Q4_K_M rather than Q4_0: llama.cpp's recommended 4-bit
# mix (attention V and half the FFN down projections at 6 bits) loses less for about the same speed.
FILE_TYPE = {"int8": "q8_0", "int4": "q4_k_m", "f16": "f16"}
LABEL = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "f16": "F16"}
# Real Qwen-1 models are 1.8B and up; below this a checkpoint is a test model and keeps the torch engine
# unless llama.cpp is asked for explicitly.
REAL_MODEL_PARAMS = 1_000_000_000


def llamacpp_available() -> bool:
    """Whether llama-cpp-python and llama.cpp's converter are installed (scripts/install_llamacpp.sh)."""
    return importlib.util.find_spec("llama_cpp") is not None and converter_dir() is not None


def require_llamacpp(precision: str) -> None:
    """Raise :class:`UnsupportedCombination` with the way out when the llama.cpp path cannot run here."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UnsupportedCombination(
            f"--precision {precision} on the CPU runs through llama.cpp, and llama-cpp-python is not installed. "
            "Run scripts/install_llamacpp.sh (builds it once, ~15-25 min on 2 cores; the wheel is cached), "
            "or use --precision fp32."
        )
    if converter_dir() is None:
        raise UnsupportedCombination(
            f"--precision {precision} on the CPU needs llama.cpp's GGUF converter, which is not installed. "
            "Run scripts/install_llamacpp.sh, or use --precision fp32."
        )


def model_params(config: dict) -> int:
    """Parameters of a Qwen-1 model from its config (GPTQ files store fewer elements than the model has)."""
    h, layers = int(config.get("hidden_size", 0)), int(config.get("num_hidden_layers", 0))
    vocab, i2 = int(config.get("vocab_size", 0)), int(config.get("intermediate_size", 0)) // 2
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i2)


def default_threads() -> int:
    """Every CPU this process may use (a 2-vCPU host: both; llama-cpp-python's own default takes half)."""
    return max(1, len(os.sched_getaffinity(0)))


def load_llamacpp_engine(
    model: str,
    precision: str = "int8",
    *,
    data_dir: str | Path = "data",
    source: str = "huggingface",
    cache_dir: str | Path | None = None,
    offline: bool = False,
    n_threads: int | None = None,
    n_ctx: int | None = None,
    reason: str = "",
    progress: Callable[[float, str], None] | None = None,
) -> LlamaCppEngine:
    """A :class:`LlamaCppEngine` for a Qwen-1 checkpoint (BF16/FP32 or GPTQ Int8/Int4), on the CPU.

    ``precision``: int8 (Q8_0) or int4 (Q4_K_M); f16 for comparisons. The GGUF files are made on first
    use and cached under ``data_dir/gguf`` (see :mod:`qwen_core.llamacpp.cache`). ``n_ctx``: tokens the
    context holds (default: the trained ``seq_length``, the most llama.cpp computes exactly for Qwen-1).
    ``reason``: why this path was chosen, shown with ``info.decode``.
    """
    if precision not in FILE_TYPE:
        raise UnsupportedCombination(f"llama.cpp runs int8 or int4 here, not {precision}")
    require_llamacpp(precision)
    from llama_cpp import Llama

    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    report(0.0, f"Locating {model}")
    path = resolve_checkpoint(model, source=source, cache_dir=cache_dir, offline=offline)
    ckpt = inspect_checkpoint(path)
    tokenizer = QwenTokenizer(path / VOCAB_FILE)
    seq_length = int(ckpt.config.get("seq_length") or 2048)
    n_ctx = min(int(n_ctx or seq_length), seq_length)
    threads = n_threads or default_threads()
    # torch only samples here (one 151,936-wide row per token): one thread. With its default (a
    # thread per core) torch's OpenMP team and llama.cpp's, each spinning after its parallel region,
    # fought over the 2 cores: measured 1.8B Q4_K_M decode 4.4 / 6.7 / 22.5 / 21.0 tok/s in four
    # consecutive replies, against 21.1 / 21.0 / 21.3 / 19.9 with one torch thread (plain
    # llama-cpp-python: 21.9-24.7). The torch loader gives torch its threads back.
    import torch

    torch.set_num_threads(1)
    cache = GgufCache(data_dir, path)
    file_type = FILE_TYPE[precision]
    llama = None
    for attempt in (1, 2):
        gguf = cache.path(file_type, report)
        report(0.9, f"Loading {gguf.name} into llama.cpp ({threads} threads)")
        try:
            llama = Llama(
                model_path=str(gguf),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
            break
        except (ValueError, RuntimeError) as exc:  # llama.cpp says only "Failed to load model from file"
            if attempt == 2:
                raise QwenCoreError(f"llama.cpp cannot load {gguf} even after converting it again: {exc}") from exc
            cache.forget(gguf, str(exc))
    label = LABEL[file_type]
    decode = f"llama.cpp ({label}, {threads} threads)" + (f": {reason}" if reason else "")
    if cache.warnings:
        decode += f" [{'; '.join(cache.warnings)}]"
    info = EngineInfo(
        model_id=model,
        path=str(path),
        precision=precision if precision != "f16" else "fp16",
        dtype=label,
        device="cpu",
        device_map={"": "cpu"},
        attn_implementation="llama.cpp",
        n_params=model_params(ckpt.config) or ckpt.n_params,
        weight_bytes=gguf.stat().st_size,
        context_length=n_ctx,
        seq_length=seq_length,
        load_seconds=time.perf_counter() - started,
        decode=decode,
    )
    defaults = GenerationSettings.from_generation_config(ckpt.generation_config)
    report(1.0, "Ready")
    log.info("Loaded %s as %s through llama.cpp from %s", model, label, gguf)
    engine = LlamaCppEngine(llama, tokenizer, defaults, info, gguf)
    hidden, layers = int(ckpt.config.get("hidden_size", 0)), int(ckpt.config.get("num_hidden_layers", 0))
    engine.worker.kv_bytes = 2 * layers * n_ctx * hidden * 2  # K and V, f16 (llama.cpp's default cache type)
    return engine
