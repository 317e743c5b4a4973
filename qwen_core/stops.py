"""One stop-string matcher for every streamed reply (``/v1``'s ``stop``, the remote backend's ChatML stops).

Text arrives in pieces; a stop string may be split across them. The matcher emits what can no longer
be part of a stop string and holds back only the longest tail that could still begin one (not a fixed
``len(stop) - 1`` characters), so a stream shows as much as possible as early as possible. The reply
is cut at the *earliest* match of any stop string. Streaming and one-shot agree exactly:
``"".join(feed(p) for p in pieces) + flush() == cut(whole)`` for any split of ``whole`` into pieces.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StopMatcher", "cut_at_stop"]


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopMatcher:
    """Cuts a streamed text at the first stop string; ``stopped`` turns true once one appeared.

    After a stop nothing more is emitted (``feed`` and ``flush`` return ``""``).
    """

    def __init__(self, stops: Iterable[str] = ()):
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self.stops), default=0)
        self.buffer = ""
        self.stopped = False

    @property
    def hit(self) -> bool:
        """Alias of ``stopped`` (the name ``/v1`` used)."""
        return self.stopped

    def feed(self, piece: str) -> str:
        """The new text that is certain to be shown: before any stop string, not a possible stop's start."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        # A match can only begin in the held tail or the new piece; search from where it could start.
        start = max(0, len(self.buffer) - self._longest + 1)
        self.buffer += piece
        found = [i for i in (self.buffer.find(s, start) for s in self.stops) if i >= 0]
        if found:
            out, self.buffer, self.stopped = self.buffer[: min(found)], "", True
            return out
        hold = self._held_tail()
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out

    def _held_tail(self) -> int:
        """Length of the longest suffix of the buffer that is a proper prefix of some stop string."""
        buf = self.buffer
        for n in range(min(self._longest - 1, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """What is left at the end of the reply (a held tail that never became a stop string)."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out
