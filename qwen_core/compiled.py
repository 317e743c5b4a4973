"""Single-stream decode with a static KV cache and ``torch.compile`` (CUDA graphs on a GPU).

Eager decoding of a small model on a GPU is bound by launch overhead, not by memory
bandwidth: each token launches hundreds of small kernels from Python. A static KV cache
gives every decode step the same shapes, so the step can run through ``torch.compile``
(mode ``reduce-overhead``: one CUDA graph replay per token). This is a step runner of the
one decode loop (:class:`~qwen_core.batching.Batcher`), not a loop of its own.

The price is that replies run one at a time (on the batcher's long-lived worker thread:
CUDA-graph trees are recorded per thread) and that each cache size is a graph of its own.
Cache sizes are therefore bucketed (powers of two from ``min_cache`` up to the model's
context), each bucket's cache is kept and reused, and the smallest is compiled at load so
the first reply does not pay for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

# torch and transformers are imported where used: CompileSettings is read by the loader,
# which must stay cheap to import.

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileSettings:
    """How the compiled decode path is built; bounds checked here, once."""

    backend: str = "inductor"
    mode: str = "reduce-overhead"  # CUDA graphs on a GPU; plain inductor code on a CPU
    fullgraph: bool = True  # the Qwen-1 forward traces without a break; a break is a bug, not a slowdown
    min_cache: int = 1024  # smallest static-cache bucket (tokens)
    warmup: bool = True  # compile the smallest bucket at load

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError("compile backend must be a torch.compile backend name")
        if self.mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"unknown torch.compile mode {self.mode!r}")
        if not 16 <= self.min_cache <= 1 << 20 or self.min_cache & (self.min_cache - 1):
            raise ValueError("min_cache must be a power of two between 16 and 1,048,576")


def cache_bucket(needed: int, min_cache: int, context_length: int) -> int:
    """Smallest power-of-two cache length >= ``needed`` (at least ``min_cache``, at most the context)."""
    size = min_cache
    while size < needed:
        size *= 2
    return min(size, context_length)


class CompiledSteps:
    """The batcher's compiled step runner: one reply at a time through a bucketed static KV cache.

    Chosen at load (``--compile``); the :class:`~qwen_core.batching.Batcher` stays the only
    decode loop and calls :meth:`prefill` and :meth:`decode` for its single row, so sampling,
    stops, cancellation, the prefix cache and prompt scoring are the batch's own code.
    The prompt is prefilled eagerly (its length varies); every decode step has the same
    shapes and runs through ``torch.compile`` (one CUDA-graph replay per token on a GPU).
    Forwards run under :meth:`~qwen_core.modeling.QwenV1ForCausalLM.pinned`, so a new NTK
    alpha is new data for the graph, not a recompile.
    """

    mode = "compiled single-stream"

    def __init__(self, model, context_length: int, settings: CompileSettings):
        from transformers import CompileConfig

        self.model = model
        self.settings = settings
        self.context_length = context_length
        config = CompileConfig(backend=settings.backend, mode=settings.mode, fullgraph=settings.fullgraph)
        self._decode = model.get_compiled_call(config)
        self._caches: dict = {}  # bucket -> StaticCache, kept: the compiled graph is specialised on its tensors
        self.compile_seconds: dict[int, float] = {}  # bucket -> its first decode step's time (the compile)

    def cache_for(self, needed: int, prefix_kv) -> object:
        """A reset static cache of the bucket for ``needed`` tokens, holding ``prefix_kv`` (the
        prompt's cached prefix as :meth:`~qwen_core.prefix_cache.PrefixCache.match`'s pieces,
        possibly none) at its first positions."""
        from transformers import StaticCache

        from .prefix_cache import layer_pieces

        bucket = cache_bucket(needed, self.settings.min_cache, self.context_length)
        cache = self._caches.get(bucket)
        if cache is None:
            cache = self._caches[bucket] = StaticCache(config=self.model.config, max_cache_len=bucket)
        else:
            cache.reset()
        for i, layer in enumerate(cache.layers if prefix_kv else ()):
            pos = 0
            for keys, values in zip(*layer_pieces(prefix_kv, i), strict=True):
                if not layer.is_initialized:
                    layer.lazy_initialization(keys, values)
                n = keys.shape[-2]
                layer.keys[:, :, pos : pos + n].copy_(keys)
                layer.values[:, :, pos : pos + n].copy_(values)
                pos += n
            layer.cumulative_length.fill_(pos)
        cache.qwen_bucket = bucket
        return cache

    def prefill(self, ids, start: int, cache, alpha: float):
        """Feed prompt tokens ``ids`` ([1, n], from position ``start``); the last position's logits."""
        import torch

        positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None, :]
        with self.model.pinned((alpha,)):
            out = self.model(
                input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        return out.logits[:, -1, :]

    def decode(self, token, position: int, cache, alpha: float):
        """One compiled decode step for ``token`` ([1, 1]) at ``position``; its logits [1, vocab]."""
        import torch

        bucket = cache.qwen_bucket
        first = bucket not in self.compile_seconds
        started = time.perf_counter()
        # Fresh [1, 1] tensors: a view into the row's ids has that buffer's strides, which dynamo
        # guards on (a recompile per prompt length).
        ids = torch.empty((1, 1), dtype=token.dtype, device=token.device).copy_(token)
        positions = torch.full((1, 1), position, dtype=torch.long, device=token.device)
        with self.model.pinned((alpha,)):
            out = self._decode(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :].clone()  # a CUDA-graph output is overwritten by the next replay
        if first:
            self.compile_seconds[bucket] = time.perf_counter() - started
        return logits

    def stats(self) -> dict:
        """Cache buckets built and each one's first (compiling) step time."""
        return {
            "mode": self.mode,
            "buckets": sorted(self._caches),
            "compile_seconds": {str(k): round(v, 2) for k, v in self.compile_seconds.items()},
        }

    def close(self) -> None:
        """Drop the static caches (the graphs go with ``torch._dynamo.reset`` when the model is unloaded)."""
        self._caches.clear()
