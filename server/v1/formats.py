"""``response_format``: JSON output by constrained decoding (qwen_core.grammar), or passed on to remote servers."""

from __future__ import annotations

from .common import is_remote
from .errors import ApiError
from .schema import ResponseFormat


def response_format_dict(fmt: ResponseFormat | None) -> dict | None:
    """The format as plain data, or None for absent / ``{"type": "text"}`` (nothing to enforce)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema":
        spec = fmt.json_schema
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(
                400,
                'response_format.json_schema: give {"name": ..., "schema": {...}} for type json_schema.',
                param="response_format.json_schema",
            )
    return fmt.model_dump(exclude_none=True)


def constraints_for(engine, fmt: dict | None, n: int) -> list:
    """One TokenConstraint per choice (compiled grammars are cached by qwen_core.grammar), or [] for none.

    The remote backend gets ``response_format`` itself (vLLM and SGLang enforce it); nothing to build here.
    """
    if fmt is None or is_remote(engine):
        return []
    try:
        from qwen_core.grammar import constraint_for
    except ImportError:
        raise ApiError(
            400, "response_format: JSON output is not available in this build.", param="response_format"
        ) from None
    vocab = _vocab_size(engine)
    try:
        return [constraint_for(fmt, engine.tokenizer, vocab) for _ in range(n)]
    except ValueError as exc:
        text = str(exc)
        raise ApiError(400, text if text.startswith("response_format") else f"response_format: {text}",
                       param="response_format") from None  # fmt: skip


def _vocab_size(engine) -> int:
    """Rows of the model's logits (Qwen-1 pads 151,851 ids to 151,936)."""
    config = getattr(getattr(engine, "model", None), "config", None)  # local engines only
    return int(getattr(config, "vocab_size", 0) or len(engine.tokenizer))


def tool_constraints_for(engine, plan, n: int) -> list:
    """One constraint per choice for tool_choice required/named: the call's name and JSON arguments (or [])."""
    made = [engine.tool_constraint(plan) for _ in range(n)]
    return made if all(c is not None for c in made) else []
