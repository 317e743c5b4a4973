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
        # The buffer only ever holds a possible stop's start plus the new piece, so it stays short.
        self.buffer += piece
        found = self._earliest_match()
        held = self._held_from()
        if found is not None and (held is None or found <= held):
            # No longer stop string can still begin before this match: cut here.
            out, self.buffer, self.stopped = self.buffer[:found], "", True
            return out
        keep = len(self.buffer) if held is None else held
        out, self.buffer = self.buffer[:keep], self.buffer[keep:]
        return out

    def _earliest_match(self) -> int | None:
        found = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_from(self) -> int | None:
        """Where the earliest suffix of the buffer starts that is a proper prefix of some stop string."""
        buf = self.buffer
        for j in range(max(0, len(buf) - self._longest + 1), len(buf)):
            tail = buf[j:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self.stops):
                return j
        return None

    def flush(self) -> str:
        """What is left at the end of the reply (a held tail that never became a stop string)."""
        if self.stopped:
            self.buffer = ""
            return ""
        out, self.stopped = cut_at_stop(self.buffer, self.stops)  # a match a longer start was holding back
        self.buffer = ""
        return out
