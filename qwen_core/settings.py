"""Generation settings: the checkpoint's defaults, overridable per call, bounds checked once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

# Qwen-1 chat models' generation_config.json
QWEN_DEFAULTS = {
    "do_sample": True,
    "temperature": 1.0,
    "top_p": 0.8,
    "top_k": 0,
    "repetition_penalty": 1.1,
    "max_new_tokens": 512,
    "max_window_size": 6144,
}


GREEDY_BELOW = 1e-5  # temperatures under this decode greedily


@dataclass(frozen=True)
class GenerationSettings:
    """How one reply is sampled. ``temperature`` below 1e-5 (0 included) or ``do_sample=False`` means greedy."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512
    seed: int | None = None  # None: a fresh random seed per reply (reported in the result)
    max_window_size: int = 6144

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature, 0.0, 100.0),
            ("top_p", self.top_p, 0.0, 1.0),
            ("repetition_penalty", self.repetition_penalty, 0.01, 100.0),
        ]
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
        if self.top_p == 0.0:
            raise ValueError("top_p must be above 0 (use temperature 0 for greedy decoding)")
        for name, value, lo, hi in [
            ("top_k", self.top_k, 0, 200_000),
            ("max_new_tokens", self.max_new_tokens, 1, 32_768),
            ("max_window_size", self.max_window_size, 1, 1_000_000),
        ]:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63
        ):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")

    @property
    def greedy(self) -> bool:
        """Whether the reply is decoded greedily."""
        # Dividing logits by a temperature of 1e-186 makes them infinite and the draw NaN (found
        # by the API fuzzer); below 1e-5 sampling is greedy in all but name (vLLM's cut-off too).
        return not self.do_sample or self.temperature < GREEDY_BELOW

    @classmethod
    def from_generation_config(cls, config: dict) -> GenerationSettings:
        """Defaults from a checkpoint's ``generation_config.json`` (Qwen's values where it is silent)."""
        values = dict(QWEN_DEFAULTS)
        for f in fields(cls):
            if f.name in config and config[f.name] is not None and f.name != "seed":
                values[f.name] = config[f.name]
        values["top_k"] = int(values["top_k"])
        values["temperature"] = float(values["temperature"])
        return cls(**values)

    def merged(self, **overrides) -> GenerationSettings:
        """A copy with ``overrides`` applied (``None`` values ignored); unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None or k == "seed"})

    def as_dict(self) -> dict:
        """Plain-data form (for the UI and JSON)."""
        return asdict(self)
