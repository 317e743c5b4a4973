"""``load_engine``: from a folder or hub id to a ready :class:`~qwen_core.engine.Engine`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .checkpoint import CheckpointInfo, inspect_checkpoint, resolve_checkpoint
from .compiled import CompileSettings
from .engine import Engine, EngineInfo
from .errors import CheckpointError
from .placement import Placement, cpu_llamacpp_route, plan_placement
from .settings import GenerationSettings
from .tokenizer import VOCAB_FILE, QwenTokenizer

log = logging.getLogger(__name__)


def load_engine(
    model: str,
    precision: str = "auto",
    device: str = "auto",
    *,
    source: str = "huggingface",
    cache_dir: str | Path | None = None,
    offline: bool = False,
    attention: str = "auto",
    progress: Callable[[float, str], None] | None = None,
    max_batch: int = 16,
    compile: bool | CompileSettings = False,
    prefix_cache_mb: float | None = None,
    prefill_chunk: int = 512,
    data_dir: str | Path = "data",
    cpu_engine: str = "auto",
    cpu_threads: int | None = None,
) -> Engine:
    """Load a Qwen-1 chat checkpoint onto transformers' Qwen2 implementation.

    ``model`` is a folder or a hub id (``Qwen/Qwen-7B-Chat``; with ``source="modelscope"``,
    ``qwen/Qwen-7B-Chat``). ``precision``: auto, fp32, bf16, fp16, int8, int4.
    ``device``: auto, cpu, cuda, cuda:N. Impossible combinations raise
    :class:`~qwen_core.errors.UnsupportedCombination` before any weight is read.
    No code from the checkpoint is ever executed. ``max_batch``: replies decoded together
    in one batch (continuous batching); 0 gives every reply its own ``generate``.
    ``compile``: True or a :class:`~qwen_core.compiled.CompileSettings` runs replies one at a
    time through a static KV cache and ``torch.compile`` (CUDA graphs on a GPU), the fastest
    single stream; compiled at load. Where it cannot be had (GPTQ weights, a failed compile)
    the engine falls back to ``max_batch`` and says why in ``info.decode``.
    ``prefix_cache_mb``: memory for the batch's prefix cache (K/V reused across chat turns;
    None: 4 GB on CPU, at most a quarter of the free RAM; 20% of the free GPU memory on
    CUDA; 0: off). ``prefill_chunk``: most tokens of a joining prompt prefilled per decode
    step while other replies run, paced to about one step's time (0: whole prompts at once).

    On the CPU, ``int8`` / ``int4`` (and ``auto`` for real models when llama-cpp-python is installed)
    return a :class:`~qwen_core.llamacpp.LlamaCppEngine` instead (see
    :func:`~qwen_core.placement.cpu_llamacpp_route`): the checkpoint converted to GGUF once, cached
    under ``data_dir/gguf``. ``cpu_engine``: auto, torch (never llama.cpp) or llamacpp;
    ``cpu_threads``: llama.cpp's threads (default: every CPU this process may use).
    """
    _batch_options(prefix_cache_mb, prefill_chunk, "cpu")  # bad values are refused before any weight is read
    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    report(0.0, f"Locating {model}")
    path = resolve_checkpoint(model, source=source, cache_dir=cache_dir, offline=offline)
    ckpt = inspect_checkpoint(path)
    route = cpu_llamacpp_route(ckpt, precision, device, cpu_engine=cpu_engine)
    if route is not None:
        from .llamacpp import load_llamacpp_engine

        return load_llamacpp_engine(
            str(path), route[0], data_dir=data_dir, n_threads=cpu_threads, reason=route[1], progress=progress
        )
    _torch_threads()
    tokenizer = QwenTokenizer(path / VOCAB_FILE)
    placement = plan_placement(ckpt, precision, device, model_id=model, attention=attention)
    report(0.1, f"Loading {path.name} as {placement.precision} on {placement.device}")
    hf_model = _load_model(ckpt, placement)
    report(1.0, "Ready")
    defaults = GenerationSettings.from_generation_config(ckpt.generation_config)
    config = hf_model.config
    device_map = dict(getattr(hf_model, "hf_device_map", None) or {"": placement.device})
    info = EngineInfo(
        model_id=model,
        path=str(path),
        precision=placement.precision,
        dtype=str(placement.dtype).removeprefix("torch."),
        device=placement.device,
        device_map={k: str(v) for k, v in device_map.items()},
        attn_implementation=config._attn_implementation,
        n_params=ckpt.n_params,
        weight_bytes=ckpt.weight_bytes,
        context_length=config.max_position_embeddings,
        seq_length=config.qwen_seq_length,
        load_seconds=time.perf_counter() - started,
        decode="batched" if max_batch else "eager",
    )
    engine = Engine(hf_model, tokenizer, defaults, info, max_batch=max_batch)
    engine.batch_options = _batch_options(prefix_cache_mb, prefill_chunk, placement.device)
    if compile:
        _enable_compile(engine, compile if isinstance(compile, CompileSettings) else CompileSettings(), report)
    return engine


def _torch_threads() -> None:
    """Give torch a thread per CPU again if a llama.cpp engine loaded before had it take one."""
    import os

    import torch

    if torch.get_num_threads() == 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _batch_options(prefix_cache_mb: float | None, prefill_chunk: int, device: str) -> dict:
    """The Batcher's prefix-cache bound (bytes) and prefill chunk, checked."""
    if prefix_cache_mb is not None and not 0 <= prefix_cache_mb <= 2**20:
        raise ValueError("prefix_cache_mb must be between 0 (off) and 1048576 (1 TB)")
    if not 0 <= prefill_chunk <= 1_000_000:
        raise ValueError("prefill_chunk must be 0 (whole prompts) or a number of tokens up to 1000000")
    if prefix_cache_mb is None:
        from .prefix_cache import default_capacity_bytes

        capacity = default_capacity_bytes(device)
    else:
        capacity = int(prefix_cache_mb * 2**20)
    return {"prefix_cache_bytes": capacity, "prefill_chunk": prefill_chunk}


def _enable_compile(engine: Engine, settings: CompileSettings, report) -> None:
    """Switch ``engine`` to the compiled single-stream decoder, compiling it now, or say why not."""
    fallback = engine.info.decode
    quantizer = getattr(engine.model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        reason = "not available for GPTQ weights"
    else:
        engine.compile = settings
        try:
            if settings.warmup:
                report(1.0, "Compiling the decode step (torch.compile; a minute or two)")
                seconds = engine.warm_up()
                log.info("Compiled the decode step (smallest cache bucket) in %.1f s", seconds)
            engine.info = replace(engine.info, decode=f"compiled ({settings.backend}, {settings.mode})")
            return
        except Exception as exc:  # noqa: BLE001 - the app keeps serving, uncompiled, and says why
            engine.unload_worker()
            engine.compile = None
            reason = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    log.warning("--compile: %s; decoding %s instead", reason, fallback)
    engine.info = replace(engine.info, decode=f"{fallback} ({reason})")


def _load_model(ckpt: CheckpointInfo, placement: Placement):
    from .modeling import QwenV1ForCausalLM, qwen2_config_from_qwen

    config = qwen2_config_from_qwen(ckpt.config, placement.dtype)
    extra = {}
    if ckpt.is_gptq:
        config.quantization_config = _gptq_config(ckpt, placement)
        config.dtype = placement.dtype
    elif placement.precision in ("int8", "int4"):  # CUDA (the planner): bitsandbytes at load
        # Passed to from_pretrained, not set on the config: transformers reads a config's
        # quantization_config as a dict (a BitsAndBytesConfig object there fails with
        # "'BitsAndBytesConfig' object has no attribute 'get'").
        extra["quantization_config"] = bitsandbytes_config(placement)
    model, loading = QwenV1ForCausalLM.from_pretrained(
        str(ckpt.path),
        config=config,
        **extra,
        dtype=placement.dtype,
        device_map=placement.device_map,
        attn_implementation=placement.attn_implementation,
        use_safetensors=True,
        output_loading_info=True,
    )
    missing = sorted(k for k in loading.get("missing_keys", ()) if "rotary" not in k)
    if missing:
        raise CheckpointError(
            f"{ckpt.path} lacks {len(missing)} weights the model needs (e.g. {', '.join(missing[:3])}): "
            "the checkpoint is incomplete or not a Qwen-1 chat model. Download it again."
        )
    mismatched = loading.get("mismatched_keys") or []
    if mismatched:
        raise CheckpointError(f"{ckpt.path}: weights with unexpected shapes: {list(mismatched)[:3]}")
    if ckpt.is_gptq and placement.device == "cpu":
        _eager_dequantize(model)
    # The folder's generation_config.json carries Qwen's sampling fields; the engine passes
    # its own settings per call, so the model keeps only what generate() must know.
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=[151645, 151644, 151643], pad_token_id=151643)
    model.eval()
    return model


def bitsandbytes_config(placement: Placement):
    """bitsandbytes' settings for ``--precision int8`` (LLM.int8()) or ``int4`` (NF4, as Qwen's model cards show)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_8bit=placement.precision == "int8",
        load_in_4bit=placement.precision == "int4",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=placement.dtype,
    )


def _gptq_config(ckpt: CheckpointInfo, placement: Placement) -> dict:
    q = dict(ckpt.quantize_config)
    q.update(ckpt.config.get("quantization_config") or {})
    return {
        "quant_method": "gptq",
        "bits": int(q.get("bits", ckpt.quant_bits)),
        "group_size": int(q.get("group_size", 128)),
        "desc_act": bool(q.get("desc_act", False)),
        "sym": bool(q.get("sym", True)),
        "damp_percent": float(q.get("damp_percent", 0.01)),
        "true_sequential": bool(q.get("true_sequential", True)),
        "static_groups": bool(q.get("static_groups", False)),
        # Qwen's checkpoints were written by auto-gptq: v1 zero points (stored = real - 1);
        # gptqmodel converts them to v2 at load.
        "checkpoint_format": q.get("checkpoint_format", "gptq"),
        # CPU: the exact pure-torch kernel; GPU: let gptqmodel pick (Marlin / ExLlama / Triton).
        "backend": "torch" if placement.device == "cpu" else "auto",
    }


def _eager_dequantize(model) -> None:
    """Undo gptqmodel's per-layer ``torch.compile`` of ``dequantize_weight`` on CPU.

    It recompiles for every weight shape, hits dynamo's recompile limit and then pays
    guard checks on every call: measured on the tiny Int4 test model, the first reply
    took 11.8 s and later 20-token replies 4.3 s, against 0.8 s eager.
    """
    import types

    for module in model.modules():
        if "dequantize_weight" in vars(module) and hasattr(type(module), "dequantize_weight"):
            module.dequantize_weight = types.MethodType(type(module).dequantize_weight, module)
