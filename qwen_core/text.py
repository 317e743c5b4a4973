"""Checks on text that comes from users (messages, personas, imports) before it goes anywhere."""

from __future__ import annotations

import unicodedata


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
