"""Give memory that the process has freed back to the operating system.

Decoding allocates tensors of a new shape at every step (the batch grows, shrinks and
its cache gets longer), from many threads. glibc's allocator keeps such freed blocks in
per-thread arenas instead of returning them, so a server that runs for days shows an
RSS that creeps upward although nothing is leaked (the soak in docs/RELIABILITY.md saw
this). ``malloc_trim(0)`` from time to time returns the free pages of every arena; it is
a no-op where glibc is not the allocator. (Capping the arenas with ``mallopt(M_ARENA_MAX)``
was tried alongside and left out: its share of the effect was not measured apart, and it
makes the threads contend for fewer malloc locks.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (musl, macOS and Windows lack it)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def trim_free_memory() -> bool:
    """Return free heap pages to the OS now; False where unsupported or nothing was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class Trimmer:
    """Calls :func:`trim_free_memory` at most once per ``interval`` seconds.

    A trim walks every arena (a few milliseconds for a heap of a GB), so it is rate
    limited rather than run after every step. Owned by one thread (the batcher's): it is
    asked after every decode step, so it takes no lock.
    """

    def __init__(self, interval: float = 30.0):
        self.interval = interval
        self.trims = 0
        self._last = time.monotonic()

    def seconds_until_due(self) -> float:
        """Seconds until the next trim may run (0 when it may run now)."""
        return max(0.0, self._last + self.interval - time.monotonic())

    def maybe_trim(self, force: bool = False) -> bool:
        """Trim if ``interval`` has passed since the last trim (or ``force``); True if it ran."""
        now = time.monotonic()
        if _LIBC is None or (not force and now - self._last < self.interval):
            return False
        self._last = now
        self.trims += 1
        trim_free_memory()
        return True
