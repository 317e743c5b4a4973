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
    # OpenAI / vLLM extras, all neutral by default (see qwen_core.sampling for where each applies)
    presence_penalty: float = 0.0  # minus this once for any token already in the reply
    frequency_penalty: float = 0.0  # minus this per occurrence in the reply
    min_p: float = 0.0  # drop tokens below min_p x the most probable one's probability
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits; a dict is accepted
    min_tokens: int = 0  # stop tokens cannot be chosen before this many tokens were generated
    ignore_eos: bool = False  # the model's stop tokens cannot be chosen: the reply runs to max_new_tokens
    stop_token_ids: tuple[int, ...] = ()  # more token ids that end the reply (finish_reason "stop")
    logprobs: int | None = None  # None: off; 0..20: record each token's log-probability and that many alternatives

    def __post_init__(self) -> None:
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        object.__setattr__(self, "stop_token_ids", _token_ids(self.stop_token_ids))
        checks = [
            ("temperature", self.temperature, 0.0, 100.0),
            ("top_p", self.top_p, 0.0, 1.0),
            ("repetition_penalty", self.repetition_penalty, 0.01, 100.0),
            ("presence_penalty", self.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", self.frequency_penalty, -2.0, 2.0),
            ("min_p", self.min_p, 0.0, 1.0),
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
            ("min_tokens", self.min_tokens, 0, 32_768),
        ]:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63
        ):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        for name in ("do_sample", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.min_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_new_tokens ({self.max_new_tokens}); lower it"
            )
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20
        ):
            raise ValueError(
                f"logprobs must be an integer between 0 and 20 (alternatives per token), got {self.logprobs!r}"
            )

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
        """A copy with ``overrides`` applied (``None`` values ignored, but ``seed=None`` and ``logprobs=None``
        are set); unknown names are an error. ``logit_bias`` may be a dict ``{token_id: bias}``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None or k in ("seed", "logprobs")})

    def as_dict(self) -> dict:
        """Plain-data form (for the UI and JSON)."""
        return asdict(self)


MAX_LOGIT_BIAS = 1024  # entries; OpenAI allows 300
MAX_STOP_TOKEN_IDS = 256


def _bias_pairs(value) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as sorted (id, bias) pairs from a dict (JSON keys may be digit strings) or pairs."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise ValueError('logit_bias must map token ids to biases, e.g. {"1234": -100}') from None
    if len(pairs) > MAX_LOGIT_BIAS:
        raise ValueError(f"logit_bias has {len(pairs)} entries; at most {MAX_LOGIT_BIAS} are allowed")
    out: dict[int, float] = {}
    for key, bias in pairs:
        token = _token_id(key, "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"logit_bias[{token}] must be a finite number, got {bias!r}")
        if not -100.0 <= bias <= 100.0:
            raise ValueError(f"logit_bias[{token}] must be between -100 and 100, got {bias}")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


def _token_ids(value) -> tuple[int, ...]:
    """``stop_token_ids`` as a tuple of distinct ids, in the order given."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"stop_token_ids must be a list of token ids, got {value!r}")
    ids = tuple(dict.fromkeys(_token_id(v, "stop_token_ids") for v in value))
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise ValueError(f"stop_token_ids has {len(ids)} ids; at most {MAX_STOP_TOKEN_IDS} are allowed")
    return ids


def _token_id(value, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"{name}: {value!r} is not a token id (a non-negative integer)")
    return value
