"""Real servers that misbehave, and the real app served in-process, for the fault tests.

* :class:`FaultyServer` is a loopback HTTP/1.1 server on a raw socket. It answers the
  remote backend's health check and its 1-token probes like an OpenAI-compatible server
  that takes token-id prompts, then misbehaves on every streamed reply the way real
  servers fail: it never answers, answers headers and then nothing, streams a few tokens
  and drops the connection, or keeps the connection alive with SSE comments (``: ping``,
  what sse-starlette servers send every 15 s) while never sending a token.
  ``mode="blackhole"`` never answers anything at all, health check included.
* :class:`InProcessApp` serves the real ASGI app (UI + ``/v1``, ``server.http.create_app``)
  from uvicorn in a thread of the test process, on the session's tiny engine, so a test can
  inject a fault into that engine's forward pass (a hook raising ``torch.OutOfMemoryError``)
  and watch the app's scheduler.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from server_process import free_port

FAULT_MODES = ("blackhole", "stall", "stall-after-headers", "drop", "ping", "ping-after-text")
DROP_PIECES = ("alpha ", "beta ", "gamma ")


def _read_request(conn: socket.socket) -> tuple[str, str, bytes] | None:
    """(method, path, body) of one HTTP/1.1 request, or None when the peer went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return method, path, body


def _json_response(conn: socket.socket, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body)


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk (streamed replies use chunked encoding, as uvicorn's do)."""
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _sse_text(text: str) -> bytes:
    event = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": None}]}
    return _chunk(f"data: {json.dumps(event)}\n\n".encode())


class FaultyServer:
    """A loopback OpenAI-compatible server whose streamed replies fail as ``mode`` says.

    ``streams`` counts streamed requests received (so a test can tell which server a reply
    went to); :meth:`close` stops listening, after which connections are refused.
    """

    def __init__(self, mode: str):
        if mode not in FAULT_MODES:
            raise ValueError(mode)
        self.mode = mode
        self.streams = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name=f"faulty-{mode}").start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                if self.mode == "blackhole":
                    self._stop.wait()  # the connection stays open and nothing is ever sent
                    return
                request = _read_request(conn)
                if request is None:
                    return
                method, path, raw = request
                if method == "GET" and path == "/v1/models":
                    _json_response(conn, 200, {"object": "list", "data": [{"id": "faulty", "object": "model"}]})
                    continue
                body = json.loads(raw or b"{}")
                if path != "/v1/completions":
                    _json_response(conn, 404, {"error": {"message": "not found"}})
                    continue
                if not body.get("stream"):  # the 1-token probes: a well-formed answer
                    _json_response(
                        conn,
                        200,
                        {
                            "object": "text_completion",
                            "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
                        },
                    )
                    continue
                with self._lock:
                    self.streams += 1
                self._misbehave(conn)
                return
        except OSError:
            return
        finally:
            if self.mode != "blackhole" or self._stop.is_set():
                conn.close()

    def _misbehave(self, conn: socket.socket) -> None:
        if self.mode == "stall":
            self._stop.wait()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        if self.mode == "stall-after-headers":
            self._stop.wait()
            return
        if self.mode in ("drop", "ping-after-text"):
            for piece in DROP_PIECES:
                conn.sendall(_sse_text(piece))
                time.sleep(0.05)
        if self.mode == "drop":
            conn.shutdown(socket.SHUT_RDWR)  # the server dies mid-reply: no last chunk, no [DONE]
            return
        while not self._stop.wait(0.2):  # alive, pinging, never producing a token
            conn.sendall(_chunk(b": ping\n\n"))

    def close(self) -> None:
        """Stop listening (new connections are refused) and drop every open connection."""
        self._stop.set()
        # close() alone leaves the socket listening while another thread sits in accept()
        # (the syscall holds the file): new connections were accepted and reset instead of
        # refused. shutdown() wakes accept() and stops listening at once on Linux.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class InProcessApp:
    """The real app (Gradio UI + OpenAI API + health) on ``engine``, served by uvicorn in a thread."""

    def __init__(self, engine, data_dir: Path, concurrency: int = 1, max_queue: int = 1, **ui_options):
        import uvicorn

        from qwen_core.manager import ModelManager, ModelSpec
        from qwen_core.scheduler import Scheduler, SchedulerConfig
        from server.http import create_app
        from ui import UIConfig, build_app

        manager = ModelManager(lambda *a, **k: engine, [])
        manager.start(ModelSpec(engine.info.path, device="cpu"))
        self.model = manager.current.name
        self.scheduler = Scheduler(SchedulerConfig(concurrency, max_queue))
        ui_config = UIConfig(data_dir=data_dir, concurrency=concurrency, **ui_options)
        demo, launch_kwargs = build_app(manager, ui_config, self.scheduler)
        self.demo = demo
        self.service = demo.service
        asgi = create_app(manager, self.scheduler, demo, launch_kwargs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="in-process-app")
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process app did not start")
            time.sleep(0.05)

    def stats(self) -> dict:
        """The scheduler's figures as ``GET /readyz`` reports them."""
        import httpx

        return httpx.get(self.url + "/readyz", timeout=10).json()["scheduler"]

    def wait_stats(self, timeout: float = 30.0, **want) -> dict:
        """Poll ``/readyz`` until its scheduler figures match ``want`` (a hang guard, not a timing check)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if all(stats[k] == v for k, v in want.items()) or time.monotonic() > deadline:
                return stats
            time.sleep(0.1)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self._server.should_exit = True
        self._thread.join(15)


@contextmanager
def oom_on_forward(engine, call: int):
    """Make the engine's first decoder layer raise ``torch.OutOfMemoryError`` on its ``call``-th forward.

    Forward 1 is the prefill, forward ``k`` computes token ``k``: the reply streams
    ``call - 1`` tokens and then fails mid-stream, as a GPU running out of memory while the
    KV cache grows would. Yields a list that holds the call number once the fault fired.
    """
    import torch

    seen = {"n": 0}
    fired: list[int] = []

    def hook(module, args, output):
        seen["n"] += 1
        if seen["n"] == call:
            fired.append(call)
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity) [injected]"
            )
        return output

    handle = engine.model.model.layers[0].register_forward_hook(hook)
    try:
        yield fired
    finally:
        handle.remove()
