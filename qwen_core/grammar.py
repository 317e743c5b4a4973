"""JSON output by constrained decoding: OpenAI ``response_format`` → a :class:`~qwen_core.sampling.TokenConstraint`.

Engine: llguidance (Microsoft's Rust grammar engine, also behind vLLM's, SGLang's and llama.cpp's
structured output). Measured against xgrammar 0.2.8 on this CPU, one thread, Qwen-1's 151,936-entry
vocabulary, a LangChain-style schema with nested object / enum / array / pattern (bench/grammar_engines.py):

| | tokenizer setup (once) | compile the schema | mask per token, median / first |
|---|---|---|---|
| llguidance 1.9.1 | 0.8-1.7 s | 6-8 ms | 20-31 us / 0.3-1.1 ms |
| xgrammar 0.2.8 | 0.18 s | 37 ms | 4 us / 0.26 ms |

Both masks cost far less than applying them to the logits (~0.3 ms, the same for either) and than a
decode step. llguidance wins on what matters here: it reads our tiktoken vocabulary directly with its
special tokens marked special (so ``<|extra_N|>`` and ``<|im_start|>`` can never appear inside the JSON,
and ``<|im_end|>`` / ``<|endoftext|>`` only once the JSON is complete), a new schema compiles 5x faster
(LangChain sends a new schema per model class), it covers more of JSON Schema (``pattern``, ``format``,
``min/maxLength``, ``min/maxItems``, numeric bounds), and it is one self-contained wheel, where xgrammar
pulls in triton and apache-tvm-ffi (hundreds of MB of GPU tooling useless on CPU).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

CACHE_SIZE = 64  # compiled schemas kept; LangChain sends the same schema with every call
# Compact JSON: with free whitespace a model can pad forever and never finish the value.
JSON_OPTIONS = {"whitespace_flexible": False}

_lock = threading.Lock()
_tokenizers: dict[tuple[int, int], tuple[Any, Any]] = {}
_compiled: OrderedDict[tuple[int, int, str], Any] = OrderedDict()


def _lltokenizer(tokenizer, vocab_size: int):
    """llguidance's view of our vocabulary (built once per tokenizer: it takes about a second)."""
    import llguidance.tiktoken

    key = (id(tokenizer), vocab_size)
    with _lock:
        if key not in _tokenizers:  # the tokenizer is kept with it, so its id can't be reused by another
            lltok = llguidance.tiktoken.lltokenizer_from_encoding(
                tokenizer._enc, n_vocab=vocab_size, eos_token=[tokenizer.im_end_id, tokenizer.eod_id]
            )
            _tokenizers[key] = (tokenizer, lltok)
        return _tokenizers[key][1]


def prepare(tokenizer, vocab_size: int) -> None:
    """Build the grammar engine's view of the vocabulary now (about a second, once per tokenizer), e.g. at
    load time, so the first JSON request doesn't wait for it."""
    _lltokenizer(tokenizer, vocab_size)


def _schema(response_format: dict) -> dict | None:
    """The JSON schema ``response_format`` asks for; None for plain text; ValueError when unusable."""
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object such as {'type': 'json_object'}")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ValueError(f"response_format: type {kind!r} is not supported (use text, json_object or json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise ValueError("response_format: json_schema must be an object with a name and a schema")
    schema = spec.get("schema")
    if schema is None:  # OpenAI allows a json_schema without a schema: any JSON value
        schema = {}
    if not isinstance(schema, dict):
        raise ValueError("response_format: json_schema.schema must be a JSON Schema object")
    return closed_objects(schema) if spec.get("strict") else schema


_SUB_SCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SUB_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUB_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


def closed_objects(schema: Any) -> Any:
    """``schema`` with every object that lists its ``properties`` closed (``additionalProperties: false``)
    unless it says otherwise. For tool arguments and strict json_schema: OpenAI's strict mode means exactly
    the declared properties, and LangChain leaves the keyword out of tool schemas, where a model (a random
    one above all) would otherwise be free to add keys forever."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUB_SCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in _SUB_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in _SUB_LISTS:
        if isinstance(out.get(key), list):
            out[key] = closed_objects(out[key])
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _matcher(tokenizer, vocab_size: int, schema: dict):
    """A fresh matcher for ``schema``: a copy of the cached compiled one (LRU, CACHE_SIZE schemas)."""
    import llguidance

    lltok = _lltokenizer(tokenizer, vocab_size)
    text = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    key = (id(tokenizer), vocab_size, text)
    with _lock:
        pristine = _compiled.get(key)
        if pristine is not None:
            _compiled.move_to_end(key)
            return pristine.deep_copy()
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise ValueError(f"response_format: the JSON schema can't be used: {exc}") from None
    pristine = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if pristine.is_error():
        raise ValueError(f"response_format: the JSON schema can't be used: {pristine.get_error()}")
    with _lock:
        _compiled[key] = pristine
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
    return pristine.deep_copy()


class JsonConstraint:
    """One reply's JSON constraint (a :class:`~qwen_core.sampling.TokenConstraint`)."""

    def __init__(self, matcher, vocab_size: int, stop_ids: tuple[int, ...]):
        self._m = matcher
        self._vocab = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._stop_ids = frozenset(stop_ids)
        self._done = False

    def allowed(self) -> torch.Tensor:
        """A bool tensor [vocab]: the tokens that keep the text a prefix of valid JSON for the schema."""
        if self._m.is_error():
            raise RuntimeError(f"the JSON constraint is in an error state: {self._m.get_error()}")
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab]
        return torch.from_numpy(bits.view(np.bool_))

    def mask_logits(self, scores: torch.Tensor) -> None:
        """Set every token the grammar forbids to -inf, in place."""
        allowed = self.allowed()
        n = min(scores.shape[-1], allowed.shape[0])
        scores[:n].masked_fill_(~allowed[:n].to(scores.device, non_blocking=True), -float("inf"))
        scores[n:] = -float("inf")

    def accept_token(self, token_id: int) -> None:
        """Advance the grammar by the chosen token (a stop token ends the JSON)."""
        if token_id in self._stop_ids:
            self._done = True
            return
        if not self._m.consume_token(int(token_id)):
            raise RuntimeError(f"token {token_id} is not allowed by the JSON constraint: {self._m.get_error()}")

    def is_finished(self) -> bool:
        """True once the JSON is complete and nothing but a stop token may follow."""
        return self._done or self._m.is_stopped()

    def is_complete(self) -> bool:
        """True when the text so far is a whole valid value (a stop token is allowed now)."""
        return self._done or self._m.is_accepting()


def constraint_for(response_format: dict | None, tokenizer, vocab_size: int) -> JsonConstraint | None:
    """The constraint for an OpenAI ``response_format``: None for absent or ``{"type": "text"}``.

    ``json_object``: any JSON object; ``json_schema``: ``json_schema.schema`` (``strict`` is accepted either
    way: the output always follows the schema). Raises ValueError("response_format: ...") for an
    unsupported format or a schema the engine can't compile. ``vocab_size`` is the model's logits size;
    ids past the tokenizer's (padding) are never allowed.
    """
    if response_format is None:
        return None
    schema = _schema(response_format)
    if schema is None:
        return None
    return JsonConstraint(_matcher(tokenizer, vocab_size, schema), vocab_size, (tokenizer.im_end_id, tokenizer.eod_id))


def _args_schema(schema: dict | None) -> dict:
    """A tool's parameters as the schema its arguments must follow: a JSON object with only the declared
    properties (see :func:`closed_objects`), compact."""
    out = closed_objects(dict(schema or {}))
    if "type" not in out:
        out["type"] = "object"  # OpenAI's arguments are an object; a schema without a type allows any value
    return {**out, "x-guidance": JSON_OPTIONS}


def _tool_lark(plan, lenient: bool) -> str | None:
    """The Lark grammar of what follows the forced prefix: the arguments (named) or a name and its arguments."""
    prefix = plan.forced_prefix
    schema = (lambda name: _args_schema(None)) if lenient else (lambda name: _args_schema(plan.schemas.get(name)))
    if prefix.endswith("\nAction Input:"):
        name = prefix.rsplit("\nAction: ", 1)[-1][: -len("\nAction Input:")]
        return f'start: " " args\nargs: %json {json.dumps(schema(name), ensure_ascii=False)}\n'
    if prefix.endswith("\nAction:"):
        rules = [f'start: " " ({" | ".join(f"c{i}" for i in range(len(plan.tool_names)))})']
        for i, name in enumerate(plan.tool_names):
            rules.append(f"c{i}: {json.dumps(name + chr(10) + 'Action Input: ', ensure_ascii=False)} j{i}")
            rules.append(f"j{i}: %json {json.dumps(schema(name), ensure_ascii=False)}")
        return "\n".join(rules) + "\n"
    return None


def tool_constraint(plan, tokenizer, vocab_size: int) -> JsonConstraint | None:
    """For tool_choice required/named (a :class:`~qwen_core.tools.ToolPlan` with a forced prefix): the
    reply after the prefix is constrained to `` NAME\\nAction Input: ARGS`` (required) or `` ARGS`` (named),
    ARGS valid JSON for the tool's parameters, so the call always parses. None when nothing is forced.
    A tool schema the engine can't compile falls back to "any JSON object" rather than failing the request."""
    if not plan.forced_prefix or not plan.tool_names:
        return None
    import llguidance

    lltok = _lltokenizer(tokenizer, vocab_size)
    for lenient in (False, True):
        lark = _tool_lark(plan, lenient)
        if lark is None:
            return None
        key = (id(tokenizer), vocab_size, "lark:" + lark)
        with _lock:
            pristine = _compiled.get(key)
        if pristine is None:
            pristine = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
            if pristine.is_error():
                continue
            with _lock:
                _compiled[key] = pristine
                while len(_compiled) > CACHE_SIZE:
                    _compiled.popitem(last=False)
        return JsonConstraint(pristine.deep_copy(), vocab_size, (tokenizer.im_end_id, tokenizer.eod_id))
    return None
