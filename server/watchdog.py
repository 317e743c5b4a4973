"""Turn a hang of the whole interpreter into an exit that a supervisor can restart.

Under load the server was once seen deadlocked inside glibc's condition-variable code
while handing over CPython's GIL (docs/RELIABILITY.md): every thread asleep, no request
ever answered again, nothing in Python able to notice. ``faulthandler``'s timer runs in a
C thread that needs no GIL, so it still fires then: a Python thread re-arms it every
quarter of ``timeout``; if that thread cannot run for ``timeout`` seconds, the timer
writes every thread's traceback and exits the process (status 1), and the container's
restart policy or the service manager starts it again. Conversations survive restarts
(they are written atomically, and live in the browser).
"""

from __future__ import annotations

import faulthandler
import sys
import threading
from typing import TextIO


class HangWatchdog:
    """Exit with tracebacks once no Python code has run for ``timeout`` seconds."""

    def __init__(self, timeout: float, file: TextIO | None = None):
        if timeout <= 0:
            raise ValueError("the watchdog timeout must be positive")
        self.timeout = timeout
        self.file = file or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _arm(self) -> None:
        # Re-arming replaces the pending timer, so the deadline moves forward.
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.file)

    def start(self) -> HangWatchdog:
        """Arm the timer and start re-arming it; returns ``self``."""
        self._arm()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hang-watchdog")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            self._arm()

    def stop(self) -> None:
        """Disarm (at shutdown, so a slow exit is not taken for a hang)."""
        self._stop.set()
        faulthandler.cancel_dump_traceback_later()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
