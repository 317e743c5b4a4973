"""Forget Gradio's per-session data of sessions that have ended.

Gradio keeps a copy of the page's configuration for every session it has served (here
~135 KB: every component's props) and drops it only once 10,000 sessions exist: its
"closed" mark only expires ``gr.State`` values. A team server that sees a few thousand
page loads a day therefore grows by hundreds of MB before it levels off. This app keeps
nothing in ``gr.State`` (conversations live in the browser and, with --server-history,
on disk), so a session's copy is only needed while its page is open.

A session is dropped once its page has been closed (Gradio's heartbeat ended: the
``unload`` event) for ``closed_ttl`` seconds and it has not been used since (a page whose
connection came back keeps its copy), or, for sessions that never had a page (API
clients), once unused for ``idle_ttl`` seconds.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

log = logging.getLogger(__name__)

# Gradio touches a session while running its unload event, just after we note the close.
_CLOSE_GRACE = datetime.timedelta(seconds=5)


class SessionSweeper:
    """Drops ended sessions from a Blocks app's ``state_holder`` (at most once per ``every`` s)."""

    def __init__(self, demo, closed_ttl: float = 600.0, idle_ttl: float = 6 * 3600.0, every: float = 30.0):
        self.demo = demo
        self.closed_ttl = datetime.timedelta(seconds=closed_ttl)
        self.idle_ttl = datetime.timedelta(seconds=idle_ttl)
        self.every = every
        self.dropped = 0
        self._pages: set[str] = set()  # sessions opened by a page (they have a heartbeat)
        self._closed: dict[str, datetime.datetime] = {}
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def opened(self, session_hash: str | None) -> None:
        """A page loaded in this session."""
        if session_hash:
            with self._lock:
                self._pages.add(session_hash)
                self._closed.pop(session_hash, None)
        self.maybe_sweep()

    def closed(self, session_hash: str | None) -> None:
        """This session's page went away."""
        if session_hash:
            with self._lock:
                self._closed[session_hash] = datetime.datetime.now()
        self.maybe_sweep()

    def maybe_sweep(self) -> int:
        """Sweep if ``every`` seconds have passed since the last sweep; returns sessions dropped."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_sweep < self.every:
                return 0
            self._last_sweep = now
        return self.sweep()

    def sweep(self) -> int:
        """Drop every ended session now; returns how many were dropped."""
        holder = getattr(self.demo, "state_holder", None)
        data = getattr(holder, "session_data", None)
        if data is None:  # not served yet, or a Gradio that keeps sessions differently
            return 0
        now = datetime.datetime.now()
        with self._lock, holder.lock:
            doomed = [h for h in list(data) if self._ended(h, holder.time_last_used.get(h), now)]
            for h in doomed:
                data.pop(h, None)
                holder.time_last_used.pop(h, None)
                self._closed.pop(h, None)
                self._pages.discard(h)
            # Sessions closed and already gone from Gradio's table need no more watching.
            for h in [h for h in self._closed if h not in data]:
                self._closed.pop(h)
                self._pages.discard(h)
        self.dropped += len(doomed)
        if doomed:
            log.debug("dropped %d ended Gradio sessions (%d kept)", len(doomed), len(data))
        return len(doomed)

    def _ended(self, session_hash: str, last_used: datetime.datetime | None, now: datetime.datetime) -> bool:
        closed_at = self._closed.get(session_hash)
        if closed_at is not None:
            used_again = last_used is not None and last_used > closed_at + _CLOSE_GRACE
            return not used_again and now - closed_at >= self.closed_ttl
        if session_hash in self._pages:
            return False  # an open page: its heartbeat is alive, however long it idles
        return last_used is not None and now - last_used >= self.idle_ttl
