"""Start the real app as a subprocess on a free loopback port (shared by server-level tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nothing listens on now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on.

    All are held until all are chosen: released one by one, the kernel may hand the same
    port out twice, and two servers started at once would then share one URL (seen in CI).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class AppProcess:
    """``python app.py ...`` until stopped; ``url`` is its base address."""

    def __init__(self, args: list[str], env: dict | None = None, timeout: float = 180, wait: str = "ready"):
        """``wait``: ``"ready"`` (``/readyz`` 200: the model is loaded) or ``"listening"`` (any HTTP
        answer: the loading page is up)."""
        import tempfile

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Output goes to a file: a pipe nobody reads fills up after some hundred logged requests
        # and then blocks the app.
        self.log = tempfile.NamedTemporaryFile(prefix="qwen-app-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if wait == "listening":
            self.wait_listening(timeout)
        else:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until ``/readyz`` answers 200."""
        self._wait("/readyz", timeout, "become ready", any_answer=False)

    def wait_listening(self, timeout: float = 60) -> None:
        """Until the port gives any HTTP answer (``/healthz``: 200 while loading, too)."""
        self._wait("/healthz", timeout, "listen", any_answer=True)

    def _wait(self, path: str, timeout: float, what: str, any_answer: bool) -> None:
        """Poll ``path`` until it answers 200 (or, with ``any_answer``, anything at all)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as r:
                    if any_answer or r.status == 200:
                        return
            except urllib.error.HTTPError:
                if any_answer:
                    return
                time.sleep(0.5)
            except OSError:
                time.sleep(0.1 if any_answer else 0.5)
        self.stop()
        raise RuntimeError(f"app did not {what} in {timeout} s")

    def output(self) -> str:
        """Everything the app has printed so far."""
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """Terminate (then kill) the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class InProcessApp:
    """The app as ``app.py`` builds it (``app.build``), served by uvicorn on a thread of this process.

    Tests that need the app object itself (its route table, the mounted Gradio app) and the
    running server at once use this; the rest use :class:`AppProcess`.
    """

    def __init__(self, args: list[str], timeout: float = 120):
        import threading

        import uvicorn

        sys.path.insert(0, str(ROOT))
        import app as app_module

        self.config = app_module.parse_config(args)
        self.asgi = app_module.build(self.config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.asgi, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the in-process app did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(30)
