"""The first-generation Qwen chat variants and a planner that picks one for the machine.

Memory figures are Qwen's published peaks on one A100-80G (HF transformers,
BF16 / GPTQ): GPU memory to encode 2048 tokens, 72B over 2 GPUs where marked.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Variant:
    """One published checkpoint."""

    size: str  # "1.8B", "7B", "14B", "72B"
    precision: str  # "bf16", "int8", "int4"
    hf_id: str
    modelscope_id: str
    context: int  # tokens the model handles (trained seq_length, or past it with NTK)
    seq_length: int  # trained context
    peak_gb: float  # published peak GPU memory encoding 2048 tokens
    min_gpus: int = 1  # the published figure's GPU count
    tok_s_a100: float = 0.0  # published HF tokens/s generating 2048 (A100-80G)

    @property
    def name(self) -> str:
        """Short name, e.g. ``Qwen-7B-Chat-Int4``."""
        return self.hf_id.split("/", 1)[1]


def _v(size, precision, repo, context, seq_length, peak_gb, tok_s, min_gpus=1) -> Variant:
    suffix = {"bf16": "", "int8": "-Int8", "int4": "-Int4"}[precision]
    return Variant(
        size, precision, f"Qwen/{repo}{suffix}", f"qwen/{repo}{suffix}", context, seq_length, peak_gb, min_gpus, tok_s
    )


VARIANTS: tuple[Variant, ...] = (
    _v("1.8B", "bf16", "Qwen-1_8B-Chat", 32768, 8192, 4.23, 54.09),
    _v("1.8B", "int8", "Qwen-1_8B-Chat", 32768, 8192, 3.48, 55.56),
    _v("1.8B", "int4", "Qwen-1_8B-Chat", 32768, 8192, 2.91, 71.07),
    _v("7B", "bf16", "Qwen-7B-Chat", 32768, 8192, 16.99, 40.93),
    _v("7B", "int8", "Qwen-7B-Chat", 32768, 8192, 11.20, 37.47),
    _v("7B", "int4", "Qwen-7B-Chat", 32768, 8192, 8.21, 50.09),
    _v("14B", "bf16", "Qwen-14B-Chat", 8192, 2048, 30.15, 32.22),
    _v("14B", "int8", "Qwen-14B-Chat", 8192, 2048, 18.81, 29.28),
    _v("14B", "int4", "Qwen-14B-Chat", 8192, 2048, 13.01, 38.72),
    _v("72B", "bf16", "Qwen-72B-Chat", 32768, 32768, 144.69, 8.48, min_gpus=2),
    _v("72B", "int8", "Qwen-72B-Chat", 32768, 32768, 81.27, 9.05, min_gpus=2),
    _v("72B", "int4", "Qwen-72B-Chat", 32768, 32768, 48.86, 11.32),
)
_SIZE_ORDER = {"72B": 4, "14B": 3, "7B": 2, "1.8B": 1}
_PRECISION_ORDER = {"bf16": 3, "int8": 2, "int4": 1}
DEFAULT_CPU_VARIANT = VARIANTS[0]  # Qwen-1_8B-Chat: the one that chats at a usable speed on a CPU


def find_variant(model_id: str) -> Variant | None:
    """The catalogue entry for a hub id (Hugging Face or ModelScope spelling, any case)."""
    key = model_id.strip().rstrip("/").lower()
    for v in VARIANTS:
        if key in (v.hf_id.lower(), v.modelscope_id.lower()) or key.endswith("/" + v.name.lower()):
            return v
    return None


def sibling(variant: Variant, precision: str) -> Variant | None:
    """The same model size in another precision."""
    return next((v for v in VARIANTS if v.size == variant.size and v.precision == precision), None)


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU: its free and total memory in bytes and compute capability."""

    index: int
    name: str
    free_bytes: int
    total_bytes: int
    capability: tuple[int, int] = (8, 0)


@dataclass(frozen=True)
class Recommendation:
    """The planner's choice and why."""

    variant: Variant
    device: str  # "cuda", "cpu"
    reason: str


# Headroom on top of the published 2048-token peak (which already includes the CUDA
# context). Longer chats grow the KV cache (7B BF16: 16.99 GB at 2K, 22.53 GB at 8K);
# the reason says how much is left for it.
HEADROOM = 1.05


def fits(variant: Variant, gpus: list[GpuInfo]) -> bool:
    """Whether the variant's published peak (plus headroom) fits in the GPUs' free memory."""
    need = variant.peak_gb * GB * HEADROOM
    if len(gpus) < variant.min_gpus:
        return False
    return sum(g.free_bytes for g in gpus) >= need and max(g.free_bytes for g in gpus) >= need / len(gpus)


def recommend(gpus: list[GpuInfo], cpu_available_bytes: int | None = None) -> Recommendation:
    """Best variant that fits the visible GPUs: the biggest model first, then the highest precision.

    Bigger models at Int4 beat smaller ones at BF16 on Qwen's own benchmarks (7B-Int4
    MMLU 55.1 vs 1.8B-BF16 43.3), so size is ranked before precision. Without a GPU it
    is Qwen-1.8B-Chat on the CPU.
    """
    if not gpus:
        return Recommendation(
            DEFAULT_CPU_VARIANT,
            "cpu",
            "No CUDA GPU is visible, so the app runs Qwen-1.8B-Chat on the CPU: the larger models "
            "generate too slowly there for a chat (7B in fp32 needs ~30 GB of RAM and gives ~1 token/s).",
        )
    total_free = sum(g.free_bytes for g in gpus) / GB
    ranked = sorted(VARIANTS, key=lambda v: (_SIZE_ORDER[v.size], _PRECISION_ORDER[v.precision]), reverse=True)
    for v in ranked:
        if fits(v, gpus):
            skipped = [r.name for r in ranked[: ranked.index(v)] if r.size == v.size]
            spare = total_free - v.peak_gb
            why = (
                f"{v.name} needs about {v.peak_gb:.1f} GB for a 2K-token chat; {len(gpus)} GPU(s) have "
                f"{total_free:.1f} GB free, leaving {spare:.1f} GB for the KV cache of longer chats."
            )
            if skipped:
                why += f" {', '.join(skipped)} would not fit."
            return Recommendation(v, "cuda", why)
    return Recommendation(
        DEFAULT_CPU_VARIANT,
        "cpu",
        f"The GPUs have only {total_free:.1f} GB free, less than the smallest variant "
        f"({VARIANTS[2].name}, {VARIANTS[2].peak_gb} GB) needs, so Qwen-1.8B-Chat runs on the CPU.",
    )


def nearest_fitting(variant: Variant, gpus: list[GpuInfo]) -> Variant | None:
    """The closest variant to ``variant`` that fits: same size at lower precision, then smaller sizes."""
    same_size = [
        v
        for v in VARIANTS
        if v.size == variant.size and _PRECISION_ORDER[v.precision] < _PRECISION_ORDER[variant.precision]
    ]
    smaller = [v for v in VARIANTS if _SIZE_ORDER[v.size] < _SIZE_ORDER[variant.size]]
    smaller.sort(key=lambda v: (_SIZE_ORDER[v.size], _PRECISION_ORDER[v.precision]), reverse=True)
    for v in sorted(same_size, key=lambda v: _PRECISION_ORDER[v.precision], reverse=True) + smaller:
        if fits(v, gpus):
            return v
    return None
