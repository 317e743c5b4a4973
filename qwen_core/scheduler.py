"""Admission for replies: a bounded number run at once, a bounded queue, fair turns, rate limits.

Every front end (UI, HTTP API) asks for a slot before generating and gives it back
after; when the queue is full the caller gets :class:`Busy` (HTTP 429 / a UI message)
at once instead of waiting without end. Waiting requests are served round-robin by
user, so one client with many requests cannot starve the others.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import QwenCoreError


class Busy(QwenCoreError):
    """No slot now and no room to wait; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 2.0):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Busy):
    """This user sent more requests per minute than allowed."""


class Cancelled(QwenCoreError):
    """The request was cancelled while it waited for a slot."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits; checked once at start-up."""

    max_concurrent: int = 4  # replies generated at once
    max_queue: int = 32  # replies waiting for a slot
    per_user_per_minute: int = 0  # 0: no rate limit
    max_wait_s: float = 300.0  # a queued request gives up after this long

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent <= 1024:
            raise ValueError("max_concurrent must be between 1 and 1024")
        if not 0 <= self.max_queue <= 100_000:
            raise ValueError("max_queue must be between 0 and 100000")
        if not 0 <= self.per_user_per_minute <= 1_000_000:
            raise ValueError("per_user_per_minute must be between 0 and 1000000")
        if not 0 < self.max_wait_s <= 86_400:
            raise ValueError("max_wait_s must be between 0 and 86400 seconds")


@dataclass
class _Ticket:
    user: str
    granted: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Grants generation slots; thread-safe."""

    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config or SchedulerConfig()
        self._lock = threading.Lock()
        self._active = 0
        self._waiting: OrderedDict[str, deque[_Ticket]] = OrderedDict()
        self._n_waiting = 0
        self._recent: dict[str, deque[float]] = {}

    def stats(self) -> dict:
        """Replies running and waiting now."""
        with self._lock:
            return {"active": self._active, "waiting": self._n_waiting, "max_concurrent": self.config.max_concurrent}

    def _check_rate(self, user: str, now: float) -> None:
        limit = self.config.per_user_per_minute
        if not limit:
            return
        recent = self._recent.setdefault(user, deque())
        while recent and now - recent[0] > 60.0:
            recent.popleft()
        if len(recent) >= limit:
            raise RateLimited(
                f"Too many requests: the limit is {limit} per minute per user. Try again shortly.",
                retry_after=max(1.0, 60.0 - (now - recent[0])),
            )
        recent.append(now)

    def acquire(self, user: str, cancel: threading.Event | None = None) -> None:
        """Wait for a slot (fairly); raises :class:`Busy`, :class:`RateLimited` or :class:`Cancelled`."""
        with self._lock:
            self._check_rate(user, time.monotonic())
            if self._active < self.config.max_concurrent and not self._n_waiting:
                self._active += 1
                return
            if self._n_waiting >= self.config.max_queue:
                raise Busy(
                    f"The server is busy ({self._active} replies running, {self._n_waiting} waiting). "
                    "Try again in a moment.",
                    retry_after=2.0,
                )
            ticket = _Ticket(user)
            self._waiting.setdefault(user, deque()).append(ticket)
            self._n_waiting += 1
        deadline = time.monotonic() + self.config.max_wait_s
        while not ticket.granted.wait(0.05):
            gave_up = cancel is not None and cancel.is_set()
            timed_out = time.monotonic() > deadline
            if gave_up or timed_out:
                with self._lock:
                    if ticket.granted.is_set():
                        break  # granted in the meantime: the caller must release
                    queue = self._waiting.get(user)
                    if queue and ticket in queue:
                        queue.remove(ticket)
                        if not queue:
                            del self._waiting[user]
                    self._n_waiting -= 1
                if gave_up:
                    raise Cancelled("Cancelled while waiting for a free slot.")
                raise Busy("Waited too long for a free slot; the server is overloaded. Try again later.")

    def release(self) -> None:
        """Give a slot back; the next waiting user (round-robin) gets it."""
        with self._lock:
            if self._waiting:
                user, queue = next(iter(self._waiting.items()))
                ticket = queue.popleft()
                del self._waiting[user]
                if queue:
                    self._waiting[user] = queue  # to the back of the rotation
                self._n_waiting -= 1
                ticket.granted.set()  # the slot passes on; _active is unchanged
            else:
                self._active -= 1

    @contextmanager
    def slot(self, user: str, cancel: threading.Event | None = None) -> Iterator[None]:
        """``with scheduler.slot(user): ...`` — hold a slot for the body."""
        self.acquire(user, cancel)
        try:
            yield
        finally:
            self.release()
