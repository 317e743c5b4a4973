"""What the Chatbot is given to render: the message text with unsafe HTML taken out.

The Chatbot renders Markdown and lets HTML through its own sanitizer, which keeps inline
``style``, ``<form>`` and ``<input>``: imported chat content could draw a full-screen
fixed overlay with a fake "log in again" link. Here every HTML tag outside code is
vetted by ``nh3`` (the binding of the maintained ``ammonia`` sanitizer):

* a tag ``nh3`` keeps (``<b>``, ``<a href>``, ``<details>``…) is kept with only the
  attributes ``nh3`` allows (no ``style``, ``class``, ``id``, event handlers, ``javascript:``);
* any other tag (``<form>``, ``<input>``, ``<iframe>``, ``<svg>``, ``<style>``, ``<meta>``…),
  comment or declaration is escaped, so it shows as the text it is and never becomes an element.

Text inside fenced code blocks and inline code spans is left alone: Markdown shows it
literally already, and a user asking about ``<form>`` tags must still see them there.
Markdown outside tags (``> quotes``, ``a < b``, ``$x<y$``, autolinks) is not touched, and
a message with nothing to vet comes back unchanged. Only rendering uses this: the stored
history and what is sent to the model keep the original text.
"""

from __future__ import annotations

import functools
import re

import nh3

# A fenced code block (``` or ~~~, up to 3 spaces of indent) up to its closing fence or the end.
_FENCE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^[ ]{0,3}\1[`~]*[ \t]*$|\Z)", re.M | re.S)
# An inline code span: a run of backticks, then the same run.
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_ATTR = r"""(?:\s+[^\s"'<>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)"""
_TAG = re.compile(rf"<(/?)([A-Za-z][A-Za-z0-9-]*)({_ATTR}*)\s*(/?)>")
_AUTOLINK = re.compile(r"<(?:[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*|[^\s<>@]+@[^\s<>]+)>")
# What is left that a browser could still read as markup: "<" before a letter, "/", "!" or "?"
# with a ">" after it (without one, nothing can become an element, and ``$x<y$`` stays as typed).
_MARKUP_START = re.compile(r"<(?=[A-Za-z/!?][^>]*>)")
_ALLOWED = frozenset(nh3.ALLOWED_TAGS)


def _vet_tag(match: re.Match) -> str:
    closing, name, attrs, _ = match.groups()
    tag = name.lower()
    if tag not in _ALLOWED:
        return match.group(0).replace("<", "&lt;").replace(">", "&gt;")
    if closing or not attrs.strip():
        return match.group(0)  # nothing to vet: keep the text as written
    cleaned = nh3.clean(match.group(0))  # the tag alone: nh3 returns it with its safe attributes
    end = cleaned.find(">")
    return cleaned[: end + 1] if end >= 0 else f"<{name}>"


def _vet_text(text: str) -> str:
    if "<" not in text:
        return text
    out, at = [], 0
    for m in re.finditer(rf"{_AUTOLINK.pattern}|{_TAG.pattern}|<!--.*?-->", text, re.S):
        out.append(_MARKUP_START.sub("&lt;", text[at : m.start()]))
        token = m.group(0)
        if _AUTOLINK.fullmatch(token):
            out.append(token)
        elif token.startswith("<!--"):
            out.append(token.replace("<", "&lt;"))
        else:
            out.append(_vet_tag(_TAG.fullmatch(token)))
        at = m.end()
    out.append(_MARKUP_START.sub("&lt;", text[at:]))
    return "".join(out)


def _outside_code(text: str, pattern: re.Pattern, inner) -> str:
    out, at = [], 0
    for m in pattern.finditer(text):
        out.append(inner(text[at : m.start()]))
        out.append(m.group(0))
        at = m.end()
    out.append(inner(text[at:]))
    return "".join(out)


def _vet(text: str) -> str:
    return _outside_code(text, _FENCE, lambda part: _outside_code(part, _CODE_SPAN, _vet_text))


# Every stream update re-renders the whole chat: earlier messages come from the cache. Only
# short texts are kept (at most 1024 × 16 KB), so the cache stays small whatever is sent.
_vet_cached = functools.lru_cache(maxsize=1024)(_vet)


def safe_markdown(text: str) -> str:
    """``text`` for the Chatbot: HTML outside code vetted (see the module docstring)."""
    if "<" not in text:
        return text
    return _vet_cached(text) if len(text) <= 16_384 else _vet(text)


# Single-dollar math, only where it cannot be currency (pandoc's rule): the opening ``$`` has a
# non-space right after it, the closing one a non-space right before it and no digit right after it,
# and neither is escaped or part of ``$$``. "Price is $5 and $10" has no such pair (a space comes
# before the second ``$``), so it stays text; ``$x^2$`` becomes ``\\(x^2\\)``, which the Chatbot's
# delimiters render. Gradio's own ``$`` delimiter is off (ui.layout.LATEX): it would take any pair.
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?![\s$])([^$\n]*?[^\s\\$])\$(?![\d$])")


def _math_text(text: str) -> str:
    return _INLINE_MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text) if "$" in text else text


def inline_math(text: str) -> str:
    """``text`` with unambiguous ``$...$`` math turned into ``\\(...\\)``, outside code (display only)."""
    if "$" not in text:
        return text
    return _outside_code(text, _FENCE, lambda part: _outside_code(part, _CODE_SPAN, _math_text))


def display_markdown(text: str) -> str:
    """What the Chatbot renders for a message: :func:`safe_markdown`, then :func:`inline_math`."""
    return inline_math(safe_markdown(text))
