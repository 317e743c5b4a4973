"""Admission for replies: a bounded number run at once, a bounded queue, fair turns, rate limits.

Every front end (UI, HTTP API) asks for a slot before generating and gives it back
after; when the queue is full the caller gets :class:`Busy` (HTTP 429 / a UI message)
at once instead of waiting without end. Waiting requests are served round-robin by
user, so one client with many requests cannot starve the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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
    """A place in the queue. A sync waiter blocks on ``granted``; an async one awaits ``future`` on ``loop``."""

    user: str
    granted: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None

    def grant(self) -> None:
        """Hand the slot over (called under the scheduler's lock, from any thread)."""
        self.granted.set()
        if self.loop is not None and self.future is not None:
            future = self.future
            try:
                self.loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))
            except RuntimeError:  # the loop is closed: nobody awaits this ticket any more
                pass


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

    def _enter(self, user: str, ticket: _Ticket) -> bool:
        """Admit now (True), queue ``ticket`` (False), or raise :class:`Busy` / :class:`RateLimited`."""
        with self._lock:
            self._check_rate(user, time.monotonic())
            if self._active < self.config.max_concurrent and not self._n_waiting:
                self._active += 1
                return True
            if self._n_waiting >= self.config.max_queue:
                raise Busy(
                    f"The server is busy ({self._active} replies running, {self._n_waiting} waiting). "
                    "Try again in a moment.",
                    retry_after=2.0,
                )
            self._waiting.setdefault(user, deque()).append(ticket)
            self._n_waiting += 1
            return False

    def _leave(self, ticket: _Ticket) -> bool:
        """Take a waiting ticket out of the queue; False if it was granted meanwhile (the caller then holds a slot)."""
        with self._lock:
            if ticket.granted.is_set():
                return False
            queue = self._waiting.get(ticket.user)
            if queue and ticket in queue:  # (not there: it left already)
                queue.remove(ticket)
                if not queue:
                    del self._waiting[ticket.user]
                self._n_waiting -= 1
            return True

    def acquire(self, user: str, cancel: threading.Event | None = None) -> None:
        """Wait for a slot (fairly); raises :class:`Busy`, :class:`RateLimited` or :class:`Cancelled`."""
        ticket = self.enter(user)
        if ticket is not None:
            self.wait(ticket, cancel)

    def enter(self, user: str) -> _Ticket | None:
        """:meth:`acquire` in two steps, for a caller with something to do while it waits (a page
        shows Stop): None, the slot is held now; else the place in the queue to :meth:`wait` on.
        Raises :class:`Busy` or :class:`RateLimited` at once."""
        ticket = _Ticket(user)
        return None if self._enter(user, ticket) else ticket

    def wait(self, ticket: _Ticket, cancel: threading.Event | None = None) -> None:
        """Block until ``ticket`` (from :meth:`enter`) holds a slot; raises :class:`Busy` after
        ``max_wait_s`` or :class:`Cancelled` once ``cancel`` is set (leaving the queue either way)."""
        deadline = time.monotonic() + self.config.max_wait_s
        while not ticket.granted.wait(0.05):
            gave_up = cancel is not None and cancel.is_set()
            if gave_up or time.monotonic() > deadline:
                if not self._leave(ticket):
                    break  # granted in the meantime: the caller must release
                if gave_up:
                    raise Cancelled("Cancelled while waiting for a free slot.")
                raise Busy("Waited too long for a free slot; the server is overloaded. Try again later.")

    def abandon(self, ticket: _Ticket) -> None:
        """A waiter that leaves without :meth:`wait` returning (its generator was closed): out of
        the queue, or the slot it was granted meanwhile given back."""
        if not self._leave(ticket):
            self.release()

    async def acquire_async(self, user: str, cancel: threading.Event | None = None) -> None:
        """:meth:`acquire` for the event loop: waits without holding a thread (same queue, limits and errors).

        A waiter whose task is cancelled leaves the queue (or gives back the slot it was just granted).
        """
        loop = asyncio.get_running_loop()
        ticket = _Ticket(user, loop=loop, future=loop.create_future())
        if self._enter(user, ticket):
            return
        deadline = time.monotonic() + self.config.max_wait_s
        try:
            while True:
                # Short slices: ``cancel`` is a threading.Event set by whoever watches the client.
                done, _ = await asyncio.wait({ticket.future}, timeout=0.05)
                if done:
                    return
                gave_up = cancel is not None and cancel.is_set()
                if gave_up or time.monotonic() > deadline:
                    if not self._leave(ticket):
                        return  # granted in the meantime: the caller must release
                    if gave_up:
                        raise Cancelled("Cancelled while waiting for a free slot.")
                    raise Busy("Waited too long for a free slot; the server is overloaded. Try again later.")
        except asyncio.CancelledError:
            if not self._leave(ticket):
                self.release()  # the slot was ours already: pass it on
            raise

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
                ticket.grant()  # the slot passes on; _active is unchanged
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

    @asynccontextmanager
    async def admit(self, user: str, cancel: threading.Event | None = None) -> AsyncIterator[None]:
        """``async with scheduler.admit(user, cancel): ...`` — :meth:`slot` for async code, no thread held while waiting."""
        await self.acquire_async(user, cancel)
        try:
            yield
        finally:
            self.release()
