"""Pieces of the decode worker's prefill: pacing chunked prefill, a cache that starts from a
cached prefix, and reading one row's K/V out of a cache."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .prefix_cache import layer_pieces

MIN_CHUNK = 16  # a paced chunk is never smaller (tiny chunks waste the prefill's matmul efficiency)
MAX_SHARE = 4.0  # decode steps of prefill per step at most, however many prompts wait (a gap <= 5 steps)


class PrefillPacer:
    """How many prompt tokens one loop turn may prefill while other rows decode.

    At most ``max_tokens``, and about ``share`` decode steps' worth of time, from running
    averages of the decode step's and a prefilled token's seconds: a running stream's gap
    while a long prompt joins stays near ``(1 + share)`` steps on any device (a CPU
    prefills a handful of tokens in one step's time, a GPU hundreds).

    When more prompts wait than rows decode that were answering before they arrived (eight
    users sending at once while one reply runs; the batcher prefills prompts that arrived
    together, with nothing answering yet, whole), the share grows with the ratio, up to
    ``MAX_SHARE`` steps: one decode step
    serves every running row at once, so each waiting user gets about as much of the
    machine as each running one, and a burst's first tokens don't wait twice as long as
    they need. One prompt joining running streams keeps the base share.
    """

    def __init__(self, max_tokens: int, share: float):
        self.max_tokens, self.share = max_tokens, share
        self.step_s: float | None = None
        # A prompt's first chunk runs attention's causal kernel; a chunk on top of cached K/V
        # needs an explicit mask, which is 2-3.5x slower per token on a CPU: two estimates,
        # or the first chunk fed on a cache overshoots its share by that much.
        self.token_s: float | None = None
        self.cached_token_s: float | None = None

    def budget(
        self, waiting: int = 1, running: int = 1, on_cache: bool = False, token_s: float | None = None
    ) -> int | None:
        """Tokens for this turn, with ``waiting`` prompts queued and ``running`` rows decoding;
        None: whole prompts (chunking off).

        ``on_cache``: the tokens go on top of cached K/V (a later chunk, or a prompt whose
        prefix was cached); ``token_s``: the seconds per token this prompt's previous chunk
        took, the best guess for its next one (the cost per token grows with the context)."""
        if not self.max_tokens:
            return None
        per = token_s or (self.cached_token_s if on_cache else None) or self.token_s
        if not self.share or self.step_s is None or per is None:
            return self.max_tokens
        share = max(self.share, min(MAX_SHARE, self.share * waiting / max(1, running)))
        fit = int(share * self.step_s / per)
        return max(min(self.max_tokens, MIN_CHUNK), min(self.max_tokens, fit))

    def record_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds

    def record_prefill(self, tokens: int, seconds: float, on_cache: bool = False) -> float:
        """Note a prefill forward of ``tokens`` tokens; returns its seconds per token."""
        per = seconds / max(1, tokens)
        old = self.cached_token_s if on_cache else self.token_s
        new = per if old is None else 0.7 * old + 0.3 * per
        if on_cache:
            self.cached_token_s = new
        else:
            self.token_s = new
        return per


def stack_kv(layers, row: int, start: int, end: int, device: torch.device) -> torch.Tensor:
    """Row ``row``'s keys and values of columns ``start:end``, all layers, on ``device``:
    [layers, 2, heads, end - start, dim]."""
    return torch.stack(
        [torch.stack((layer.keys[row, :, start:end], layer.values[row, :, start:end])).to(device) for layer in layers]
    )


class _SeededLayer(DynamicLayer):
    """A cache layer that starts from a cached prefix's pieces (views of the prefix cache's
    tensors) and joins them with the first new keys in one concatenation: the prefix is copied
    once, by the forward that needs it whole anyway, instead of once more up front (1.8B bf16:
    ~400 MB per 2,000 tokens of history, a good part of a regenerate's first-token time)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], device: torch.device):
        super().__init__()
        self._pending = ([k.to(device) for k in keys], [v.to(device) for v in values])  # no-op on one device
        self._pending_len = sum(k.shape[-2] for k in keys)
        self.dtype, self.device = keys[0].dtype, device
        self.keys = self.values = None
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._pending is not None:
            keys, values = self._pending
            self._pending = None
            # torch.cat always allocates: the tree's tensors are read, never written.
            self.keys = torch.cat([*keys, key_states], dim=-2)
            self.values = torch.cat([*values, value_states], dim=-2)
            return self.keys, self.values
        return super().update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self) -> int:
        return self._pending_len if self._pending is not None else super().get_seq_length()


def seeded_cache(config, pieces: list[torch.Tensor], layer_devices: list[torch.device]) -> DynamicCache:
    """A DynamicCache holding a cached prefix (:meth:`~qwen_core.prefix_cache.PrefixCache.match`'s
    pieces; none: an empty cache); the first forward fed into it copies the prefix once."""
    cache = DynamicCache(config=config)
    if pieces:
        for i, device in enumerate(layer_devices):
            keys, values = layer_pieces(pieces, i)
            cache.layers[i] = _SeededLayer(keys, values, device)
    return cache
