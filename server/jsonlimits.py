"""JSON parsing with a nesting bound, for request bodies.

``json.loads`` of 100,000 nested ``[`` raises ``RecursionError`` (an HTTP 500 with a traceback
if nobody catches it), and a merely deep document costs recursion in every walk after it.
:func:`loads_limited` raises :class:`JSONTooDeep`, a ``json.JSONDecodeError``, so code that
already answers malformed JSON with a 400 answers this one the same way.
"""

from __future__ import annotations

import json

MAX_DEPTH = 64  # an OpenAI chat request nests 5-6 levels; tool schemas a few more


class JSONTooDeep(json.JSONDecodeError):
    """The document nests deeper than allowed."""


def _depth_exceeds(value, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def loads_limited(raw: bytes | str, max_depth: int = MAX_DEPTH):
    """``json.loads(raw)``, refusing documents nested deeper than ``max_depth`` arrays/objects."""
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    message = f"JSON nested deeper than {max_depth} levels"
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONTooDeep(message, "", 0) from None
    if _depth_exceeds(value, max_depth):
        raise JSONTooDeep(message, "", 0)
    return value
