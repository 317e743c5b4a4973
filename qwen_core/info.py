"""Plain records every backend shares, torch-free: what is loaded and how a reply ended.

They live here (not in :mod:`qwen_core.engine` / :mod:`qwen_core.generation`, which load torch)
so that the remote backend, the UI and the HTTP server can use them without importing torch.
The old import paths keep working: both modules re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """A generated (or prompt) token's log-probability and the best alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What is loaded, for the model panel and health endpoints."""

    model_id: str
    path: str
    precision: str
    dtype: str
    device: str
    device_map: dict
    attn_implementation: str
    n_params: int
    weight_bytes: int
    context_length: int  # longest prompt + reply the model handles
    seq_length: int  # trained context
    load_seconds: float
    decode: str = "eager"  # "batched", "eager", "compiled (<backend>, <mode>)" or "remote (N endpoints)"


@dataclass
class ReplyResult:
    """How a finished reply ended and what it cost."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seed: int | None = None
    time_to_first_token_s: float | None = None
    elapsed_s: float = 0.0
    token_ids: list[int] = field(default_factory=list)  # generated ids, the stop token included
    logprobs: list[TokenLogprob] | None = None  # one per generated token when settings.logprobs was set

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token."""
        if self.time_to_first_token_s is None or self.completion_tokens < 2:
            return None
        decode = self.elapsed_s - self.time_to_first_token_s
        return (self.completion_tokens - 1) / decode if decode > 0 else None
