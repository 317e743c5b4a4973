"""The hang watchdog: a process whose Python code can no longer run exits with tracebacks.

The stall is real: ``ctypes.PyDLL`` calls keep the GIL, so ``sleep`` through it holds the
GIL for its whole duration and no other Python thread can run, as in the glibc deadlock
described in docs/RELIABILITY.md. The child process would sleep 600 s; the watchdog must
end it within seconds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STALLED = textwrap.dedent(
    """
    import ctypes, sys, time
    from server.watchdog import HangWatchdog

    HangWatchdog(float(sys.argv[1])).start()
    time.sleep(float(sys.argv[2]))  # healthy: the watchdog keeps being re-armed
    print("stalling", flush=True)
    ctypes.PyDLL(None).sleep(600)  # holds the GIL: no Python thread runs any more
    print("never reached", flush=True)
    """
)

_HEALTHY = textwrap.dedent(
    """
    import sys, time
    from server.watchdog import HangWatchdog

    dog = HangWatchdog(float(sys.argv[1])).start()
    busy_until = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < busy_until:  # busy Python threads still let the re-arming thread in
        sum(range(10_000))
    dog.stop()
    time.sleep(float(sys.argv[1]) * 1.5)  # disarmed: a slow shutdown is not a hang
    print("clean exit", flush=True)
    """
)


def _run(script: str, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - started


def test_a_stalled_interpreter_exits_with_every_threads_traceback():
    proc, took = _run(_STALLED, "2", "3")
    assert "stalling" in proc.stdout and "never reached" not in proc.stdout
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Timeout (0:00:02)!" in proc.stderr
    assert proc.stderr.count("Thread 0x") >= 2  # every thread is dumped: the stalled one and the watchdog's
    assert "ctypes" not in proc.stdout
    assert took < 30, f"the stalled process lived {took:.0f} s"


def test_a_busy_but_healthy_process_is_left_alone_and_stop_disarms():
    proc, _ = _run(_HEALTHY, "2", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean exit" in proc.stdout
    assert "Timeout" not in proc.stderr
