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


# --- the whole path: the real app stalls, exits, is restarted, and the chats are all there ---------

# The app as its supervisor runs it, plus a way to stall it for real: SIGUSR1 makes the main
# thread hold the GIL in a 600 s C sleep, as the glibc deadlock did.
_STALLABLE_APP = textwrap.dedent(
    """
    import ctypes, runpy, signal, sys
    signal.signal(signal.SIGUSR1, lambda *_: ctypes.PyDLL(None).sleep(600))
    sys.argv = ["app.py", *sys.argv[1:]]
    runpy.run_path("app.py", run_name="__main__")
    """
)


class Supervisor:
    """systemd's ``Restart=on-failure`` (compose's ``restart: unless-stopped``) in a few lines."""

    def __init__(self, args: list[str], log_dir: Path):
        import threading

        self.args, self.log_dir = args, log_dir
        self.exits: list[int] = []
        self.proc: subprocess.Popen | None = None
        self._stopping = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        while not self._stopping:
            log = open(self.log_dir / f"run{len(self.exits)}.log", "w")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _STALLABLE_APP, *self.args],
                cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self._started.set()
            code = self.proc.wait()
            log.close()
            if self._stopping or code == 0:
                return
            self.exits.append(code)
            time.sleep(1)  # RestartSec=1

    def output(self, run: int) -> str:
        return (self.log_dir / f"run{run}.log").read_text(errors="replace")

    def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._thread.join(30)


def _wait_ready(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s")


def _active_messages(store: dict) -> list[dict]:
    return next(c for c in store["conversations"] if c["id"] == store["active"])["messages"]


def test_a_hung_app_exits_is_restarted_and_every_chat_is_still_there(ckpt_dir, engine, tmp_path):
    import signal

    from gradio_client import Client
    from server_process import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--model", str(ckpt_dir), "--device", "cpu", "--port", str(port), "--data-dir", str(tmp_path / "data"),
            "--auth", "ann:secret-pw", "--server-history", "--hang-exit", "10"]  # fmt: skip
    system, settings = "You are a helpful assistant.", (False, "[]", 0, 0.8, 0, 1.1, 24, -1, 6144)
    supervisor = Supervisor(args, tmp_path)
    try:
        _wait_ready(url, 180)
        ui = Client(url + "/", auth=("ann", "secret-pw"), verbose=False)
        store = ui.predict(None, api_name="/load")[0]
        store = ui.predict("Tell me about the sea", store, api_name="/submit")[1]
        store = ui.predict(store, system, *settings, api_name="/respond")[0]
        ui.predict(store, api_name="/persist")  # the page saves on every change of its store
        before = _active_messages(store)
        assert [m["role"] for m in before] == ["user", "assistant"] and before[1]["content"]
        ui.close()

        first = supervisor.proc
        stalled_at = time.monotonic()
        first.send_signal(signal.SIGUSR1)  # the main thread now holds the GIL for 600 s
        assert first.wait(60) == 1  # the watchdog ends it ...
        lived = time.monotonic() - stalled_at
        # the timer was last re-armed at most a quarter of --hang-exit before the stall
        assert 7 <= lived < 40, f"the stalled app lived {lived:.1f} s after the stall (--hang-exit 10)"
        dump = supervisor.output(0)
        assert "Timeout (0:00:10)!" in dump and "Thread 0x" in dump  # ... with every thread's traceback

        _wait_ready(url, 180)  # ... the supervisor starts it again
        assert supervisor.exits == [1] and supervisor.proc is not first
        ui = Client(url + "/", auth=("ann", "secret-pw"), verbose=False)
        store = ui.predict(None, api_name="/load")[0]
        assert _active_messages(store) == before  # the chat survived, word for word
        store = ui.predict("Go on", store, api_name="/submit")[1]  # and goes on
        store = ui.predict(store, system, *settings, api_name="/respond")[0]
        history = [("Tell me about the sea", before[1]["content"])]
        assert _active_messages(store)[-1]["content"] == engine.chat("Go on", history, system, do_sample=False,
                                                                     max_new_tokens=24)  # fmt: skip
        ui.close()
    finally:
        supervisor.stop()
