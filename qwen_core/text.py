"""Text from users (checks before it goes anywhere) and text streamed back to them."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator


def lone_surrogate(text: str) -> int | None:
    """Index of the first unpaired surrogate (``"\\ud800"``), or None.

    JSON's ``\\uXXXX`` escapes and JavaScript strings can carry them; they are not Unicode
    text, cannot be written as UTF-8 and would be silently turned into U+FFFD by the
    tokenizer, so they are refused where text enters.
    """
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace and invisible format characters (zero-width space, BOM, ...)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def check_text(text: str, what: str) -> str:
    """``text`` unchanged, or :class:`ValueError` naming ``what`` when it holds an unpaired surrogate."""
    at = lone_surrogate(text)
    if at is not None:
        raise ValueError(
            f"{what} contains an unpaired surrogate ({text[at]!a} at character {at}), which is not valid "
            "Unicode text; send UTF-8 text"
        )
    return text


def coalesced(stream: Iterator[str], max_per_second: float = 0.0) -> Iterator[str]:
    """The stream's text, each item joining every piece already generated when it is taken.

    A consumer as fast as the model gets one item per token; one slower than the model gets
    fewer, larger items instead of falling further behind with every token. With
    ``max_per_second`` the items are also paced: after an item, the next waits until
    ``1 / max_per_second`` has passed and takes everything generated meanwhile (the first
    item never waits, nor the last once the stream's ``worker_ended`` event is set). A browser update costs the server more than a small model's token and
    nobody reads 90 updates a second; at 25 the text still appears to flow.
    """
    ready = getattr(stream, "ready_pieces", None)
    # A reply that ends during the wait is shown at once: the pacing is for a flowing text, and
    # holding the reply's end back a whole interval only delays it (and the Send button).
    ended = getattr(stream, "worker_ended", None)
    interval = 1.0 / max_per_second if max_per_second > 0 else 0.0
    last = None
    for piece in stream:
        if interval and last is not None:
            wait = last + interval - time.monotonic()
            if wait > 0:
                if ended is not None:
                    ended.wait(wait)
                else:
                    time.sleep(wait)
        more = ready() if ready is not None else None
        last = time.monotonic()
        yield piece + "".join(more) if more else piece
