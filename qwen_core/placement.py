"""Choose dtype, device map and attention for a checkpoint, or refuse with the reason and a way out.

Every refusal happens before a single weight is read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from .catalog import GpuInfo, find_variant, nearest_fitting, sibling
from .checkpoint import CheckpointInfo
from .errors import UnsupportedCombination

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Loading + a first 2K-token reply need a little more than the weights: Qwen's published
# peaks are weights + 0.5 GB (1.8B) to + 1.6 GB (7B); 72B BF16 peaks at 144.69 GB.
RUNTIME_OVERHEAD = 1.02
RUNTIME_EXTRA_BYTES = 1_000_000_000


@dataclass(frozen=True)
class Placement:
    """Where and how the model is loaded."""

    precision: str  # fp32 / bf16 / fp16 / int8 / int4
    dtype: torch.dtype
    device: str  # "cpu", "cuda:0", or "cuda" for several GPUs
    device_map: dict | str
    attn_implementation: str
    gpus: tuple[GpuInfo, ...] = ()


def visible_gpus() -> list[GpuInfo]:
    """The CUDA GPUs torch sees, with their free memory."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(i, props.name, free, total, (props.major, props.minor)))
    return gpus


def cpu_available_bytes() -> int:
    """Memory the OS can still give this process."""
    import psutil

    return int(psutil.virtual_memory().available)


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AMX or AVX512-BF16); elsewhere bf16 matmuls are emulated."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def gptq_backend_available() -> bool:
    """Whether transformers' GPTQ path (gptqmodel + optimum) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("gptqmodel", "optimum"))


def flash_attention_available(gpus: list[GpuInfo]) -> bool:
    """FlashAttention-2 needs the package and an Ampere-or-newer GPU."""
    return (
        bool(gpus) and importlib.util.find_spec("flash_attn") is not None and min(g.capability for g in gpus) >= (8, 0)
    )


def _resolve_device(device: str, gpus: list[GpuInfo]) -> tuple[str, list[GpuInfo]]:
    device = (device or "auto").strip().lower()
    if device == "auto":
        return ("cuda" if gpus else "cpu"), gpus
    if device == "cpu":
        return "cpu", []
    if device == "cuda" or device.startswith("cuda:"):
        if not gpus:
            raise UnsupportedCombination(
                f"--device {device}: no CUDA GPU is visible (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}). Use --device cpu, or install a CUDA build of torch."
            )
        if device == "cuda":
            return "cuda", gpus
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            raise UnsupportedCombination(f"--device {device}: write cuda:N with N a GPU number") from None
        if not 0 <= index < len(gpus):
            raise UnsupportedCombination(f"--device {device}: only GPUs 0..{len(gpus) - 1} are visible.")
        return f"cuda:{index}", [gpus[index]]
    raise UnsupportedCombination(f"--device {device}: use auto, cpu, cuda or cuda:N.")


def _nearest_name(ckpt: CheckpointInfo, precision: str, model_id: str | None) -> str:
    variant = find_variant(model_id or "") or find_variant(ckpt.path.name)
    other = sibling(variant, precision) if variant else None
    return other.hf_id if other else f"the {precision} checkpoint of the same model"


def _gptq_precision(ckpt: CheckpointInfo, precision: str, device: str, model_id: str | None) -> str:
    bits_name = f"int{ckpt.quant_bits}"
    if precision not in ("auto", bits_name):
        target = "bf16" if precision in DTYPES else precision
        raise UnsupportedCombination(
            f"This checkpoint is GPTQ {bits_name.capitalize()}; it cannot run as {precision}. "
            f"Load {_nearest_name(ckpt, target, model_id)} for {precision}, or use --precision {bits_name}."
        )
    if not gptq_backend_available():
        raise UnsupportedCombination(
            f"{bits_name.capitalize()} (GPTQ) needs the gptqmodel and optimum packages, which are not installed. "
            "Install them (pip install -r requirements-gptq.txt), or load the BF16 checkpoint "
            f"{_nearest_name(ckpt, 'bf16', model_id)} instead."
        )
    return bits_name


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes (Int8 / NF4 quantisation at load on CUDA) is installed."""
    return importlib.util.find_spec("bitsandbytes") is not None


def _fp_precision(ckpt: CheckpointInfo, precision: str, device: str, gpus: list[GpuInfo], model_id) -> str:
    if precision in ("int8", "int4"):
        if device == "cpu":  # load_engine sends these to llama.cpp; here only with cpu_engine="torch"
            raise UnsupportedCombination(
                f"--precision {precision} on the CPU runs through llama.cpp (qwen_core.llamacpp), not the torch "
                f"engine; or load the GPTQ checkpoint {_nearest_name(ckpt, precision, model_id)}."
            )
        if not bitsandbytes_available():
            raise UnsupportedCombination(
                f"--precision {precision} on a {ckpt.stored_dtype} checkpoint on CUDA quantises at load with "
                f"bitsandbytes ({'Int8' if precision == 'int8' else 'NF4'}), which is not installed: "
                f"pip install bitsandbytes, or load {_nearest_name(ckpt, precision, model_id)}."
            )
        return precision
    if device == "cpu":
        if precision == "fp16":
            raise UnsupportedCombination(
                "fp16 on the CPU is not supported: CPUs have no fast fp16 matmul and some ops are missing. "
                "Use --precision bf16 (half the memory of fp32) or fp32."
            )
        if precision == "auto":
            wanted = "bf16" if ckpt.stored_dtype == "bf16" and cpu_has_fast_bf16() else "fp32"
            # fp32 doubles a bf16 checkpoint; fall back to bf16 rather than run out of RAM.
            if wanted == "fp32" and ckpt.stored_dtype != "fp32":
                if ckpt.n_params * 4 * RUNTIME_OVERHEAD + RUNTIME_EXTRA_BYTES > cpu_available_bytes():
                    wanted = "bf16"
            return wanted
        return precision
    no_bf16 = [g for g in gpus if g.capability < (8, 0)]
    if precision == "bf16" and no_bf16:
        raise UnsupportedCombination(
            f"bf16 needs an Ampere or newer GPU; {no_bf16[0].name} has compute capability "
            f"{no_bf16[0].capability[0]}.{no_bf16[0].capability[1]}. Use --precision fp16."
        )
    if precision == "auto":
        own = ckpt.stored_dtype if ckpt.stored_dtype != "fp32" else "bf16"
        return "fp16" if own == "bf16" and no_bf16 else own
    return precision


def _check_memory(ckpt: CheckpointInfo, precision: str, device: str, gpus: list[GpuInfo], model_id) -> None:
    if precision in DTYPES:
        need = ckpt.n_params * _BYTES[precision]
    elif not ckpt.is_gptq:  # bitsandbytes: 1 byte (Int8) or ~0.56 bytes (NF4 with its scales) per weight
        need = int(ckpt.n_params * (1.0 if precision == "int8" else 0.56))
    else:
        need = ckpt.weight_bytes  # GPTQ runs at its stored size
    need = int(need * RUNTIME_OVERHEAD + RUNTIME_EXTRA_BYTES)
    if device == "cpu":
        have, where = cpu_available_bytes(), "RAM available"
    else:
        have, where = sum(g.free_bytes for g in gpus), f"free on {len(gpus)} GPU(s)"
    if need <= have:
        return
    variant = find_variant(model_id or "") or find_variant(ckpt.path.name)
    hint = ""
    if variant and gpus and device != "cpu":
        near = nearest_fitting(variant, gpus)
        hint = f" The nearest variant that fits: {near.hf_id} ({near.peak_gb:.1f} GB)." if near else ""
    elif precision == "fp32":
        hint = " Try --precision bf16 (half the memory)."
    raise UnsupportedCombination(
        f"{ckpt.path.name} in {precision} needs about {need / 1e9:.1f} GB but only {have / 1e9:.1f} GB are {where}.{hint}"
    )


CPU_ENGINES = ("auto", "torch", "llamacpp")


def cpu_llamacpp_route(
    ckpt: CheckpointInfo,
    precision: str = "auto",
    device: str = "auto",
    gpus: list[GpuInfo] | None = None,
    cpu_engine: str = "auto",
) -> tuple[str, str] | None:
    """``(precision, reason)`` when this load runs through llama.cpp on the CPU; None: the torch engine.

    llama.cpp serves ``int8`` / ``int4`` on the CPU (a BF16/FP32 checkpoint quantised to Q8_0 / Q4_K_M,
    a GPTQ one converted), and is the CPU default for real models (1B+ parameters) when installed:
    ``auto`` becomes int8 (Q8_0: logits within ~3% of fp32 on the tiny test model), a GPTQ
    checkpoint its own width. ``cpu_engine``: ``torch`` keeps the torch engine (``--precision fp32`` always
    does), ``llamacpp`` forces llama.cpp (checkpoints of any size: the tests use it).
    """
    from .llamacpp.loading import REAL_MODEL_PARAMS, llamacpp_available, model_params, require_llamacpp

    if cpu_engine not in CPU_ENGINES:
        raise UnsupportedCombination(f"cpu_engine {cpu_engine}: use one of {', '.join(CPU_ENGINES)}.")
    precision = (precision or "auto").strip().lower()
    gpus = visible_gpus() if gpus is None else gpus
    on_cpu = (device or "auto").strip().lower() == "cpu" or ((device or "auto") == "auto" and not gpus)
    if not on_cpu or cpu_engine == "torch" or precision in DTYPES:
        if cpu_engine == "llamacpp" and on_cpu and precision in DTYPES:
            raise UnsupportedCombination(f"llama.cpp runs int8 or int4 here; --precision {precision} runs on torch.")
        return None
    wanted = cpu_engine == "llamacpp"
    real = model_params(ckpt.config) >= REAL_MODEL_PARAMS
    if ckpt.is_gptq:
        own = f"int{ckpt.quant_bits}"
        if precision not in ("auto", own) or not (wanted or (real and llamacpp_available())):
            return None  # the torch engine's GPTQ path (and its refusals)
        require_llamacpp(own)
        return own, f"GPTQ {own.capitalize()} weights converted for llama.cpp's CPU kernels"
    if precision in ("int8", "int4"):
        require_llamacpp(precision)
        return precision, f"--precision {precision} on the CPU"
    if wanted or (real and llamacpp_available()):
        require_llamacpp("int8")
        return "int8", "the CPU default for real models (Q8_0); --precision fp32 for exact output"
    return None


def plan_placement(
    ckpt: CheckpointInfo,
    precision: str = "auto",
    device: str = "auto",
    model_id: str | None = None,
    gpus: list[GpuInfo] | None = None,
    attention: str = "auto",
) -> Placement:
    """Decide how to load ``ckpt``; raise :class:`UnsupportedCombination` when it cannot work."""
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise UnsupportedCombination(f"--precision {precision}: use one of {', '.join(PRECISIONS)}.")
    gpus = visible_gpus() if gpus is None else gpus
    device, used = _resolve_device(device, gpus)
    if ckpt.is_gptq:
        precision = _gptq_precision(ckpt, precision, device, model_id)
        # GPU kernels run in fp16; on CPU gptqmodel's pure-torch kernel in fp32 matches the
        # dequantized weights to fp16 rounding (its fused 4-bit CPU kernel computes in bf16).
        dtype = torch.float16 if device != "cpu" else torch.float32
    else:
        precision = _fp_precision(ckpt, precision, device, used, model_id)
        # bitsandbytes computes in the GPU's half type around its Int8 / NF4 weights.
        half = torch.float16 if any(g.capability < (8, 0) for g in used) else torch.bfloat16
        dtype = DTYPES.get(precision, half)
    _check_memory(ckpt, precision, device, used, model_id)
    if device == "cpu":
        device_map: dict | str = {"": "cpu"}
    elif device == "cuda" and len(used) > 1:
        device_map = "balanced"
    else:
        device_map = {"": used[0].index}
    attn = attention
    if attn == "auto":
        use_flash = device != "cpu" and dtype in (torch.float16, torch.bfloat16) and flash_attention_available(used)
        attn = "flash_attention_2" if use_flash else "sdpa"
    return Placement(precision, dtype, device, device_map, attn, tuple(used))
