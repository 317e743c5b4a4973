"""A remote reply: the worker thread that talks to the servers and the stream the consumer reads."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from ..errors import GenerationError
from ..info import ReplyResult
from .protocol import (
    _FINISH,
    _PATHS,
    MODE_CHAT,
    Endpoint,
    _describe,
    _error_detail,
    _Failover,
    _Request,
    _sse_events,
    _StopScanner,
    build_body,
    parse_logprobs,
)

if TYPE_CHECKING:
    from .pool import EndpointPool

_POLL_S = 0.02  # how often a waiting consumer looks at its cancel event


@dataclass
class RemoteReplyResult(ReplyResult):
    """:class:`ReplyResult` plus where the reply came from (``token_ids`` stays empty)."""

    endpoint: str | None = None
    mode: str | None = None
    server_prompt_tokens: int | None = None  # the server's count; differs from prompt_tokens only off the ids path


# --- the stream -----------------------------------------------------------------------


class _Channel:
    """What the worker thread and the consumer share (the worker never references the stream)."""

    def __init__(self):
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = threading.Event()
        self.started = threading.Event()  # the first text, the end or an error is in ``items``
        self.done = threading.Event()  # the worker thread has put its last item
        self.ended: str | None = None  # the server's finish reason, once the whole reply has arrived
        self.received = 0  # text chunks received from the server
        self.delivered = 0  # text pieces handed to the consumer's queue
        self.usage: dict | None = None
        self.logprobs: list = []  # TokenLogprob entries the server sent, appended before their text
        self.endpoint: str | None = None
        self.mode: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, response: httpx.Response) -> None:
        """Remember the response's socket so another thread can close it at once."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock
            if self.abandoned.is_set():
                _shutdown(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def abandon(self) -> None:
        """Stop reading: shut the socket down, so the server sees the client leave now."""
        with self._lock:
            self.abandoned.set()
            _shutdown(self._sock)

    def put_text(self, text: str) -> None:
        if text:
            self.delivered += 1
            self.items.put(("text", text))
            self.started.set()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class RemoteReplyStream(Iterator[str]):
    """A reply streamed from a server; behaves like :class:`~qwen_core.generation.ReplyStream`.

    A worker thread talks to the servers (failing over before the first text) and hands
    text pieces over a queue; the consumer waits on that queue in short slices, so a
    ``cancel`` event set by any thread ends the stream within one slice, and closing
    shuts the connection down so the server frees the slot.
    """

    def __init__(self, pool: EndpointPool, req: _Request, cancel: threading.Event | None = None):
        self.cancel_event = cancel or threading.Event()
        self.result = RemoteReplyResult(prompt_tokens=len(req.ids or ()), seed=req.seed)
        self._want_logprobs = req.settings.logprobs is not None
        self._chan = _Channel()
        self.worker_ended = self._chan.done  # as the local stream's: set once nothing more will arrive
        self._pieces: list[str] = []
        self._done = False
        self._finish_lock = threading.Lock()  # close() may run in another thread than __next__
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._thread = threading.Thread(
            target=_worker, args=(pool, req, self._chan), daemon=True, name="qwen-remote-reply"
        )
        self._thread.start()

    def __iter__(self) -> RemoteReplyStream:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        while True:
            if self.cancel_event.is_set() and self._chan.ended is None:
                self._finish("cancelled")
                raise StopIteration
            try:
                kind, value = self._chan.items.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == "text":
                if self._first_at is None:
                    self._first_at = time.perf_counter()
                self._pieces.append(value)
                return value
            if kind == "end":
                self._finish(value)
                raise StopIteration
            self._finish("error")
            raise value

    def wait_started(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first text (or the end); True once it is there."""
        return self._chan.started.wait(timeout)

    def ready_pieces(self) -> list[str]:
        """The text already received, taken without waiting (see :func:`qwen_core.text.coalesced`)."""
        out: list[str] = []
        while not self._done:
            try:
                kind, value = self._chan.items.get_nowait()
            except queue.Empty:
                break
            if kind != "text":
                self._chan.items.put((kind, value))  # the end (or error) stays last, for __next__
                break
            out.append(value)
        self._pieces.extend(out)
        return out

    def _finish(self, reason: str) -> None:
        with self._finish_lock:
            if self._done:
                return
            self._done = True
        chan, res = self._chan, self.result
        if reason == "cancelled" and chan.ended is not None:
            # Stop (or close()) after the whole reply had arrived cut nothing: keep its end and its text.
            reason = chan.ended
            self._pieces.extend(_queued_text(chan))
        if reason in ("cancelled", "error"):
            chan.abandon()
        res.finish_reason = reason
        res.text = "".join(self._pieces)
        res.elapsed_s = time.perf_counter() - self._started
        if self._first_at is not None:
            res.time_to_first_token_s = self._first_at - self._started
        usage = chan.usage or {}
        completion = usage.get("completion_tokens") if reason != "cancelled" else None
        res.completion_tokens = int(completion) if isinstance(completion, int) else chan.received
        if isinstance(usage.get("prompt_tokens"), int):
            res.server_prompt_tokens = usage["prompt_tokens"]
        res.endpoint, res.mode = chan.endpoint, chan.mode
        if self._want_logprobs:
            res.logprobs = list(chan.logprobs)

    @property
    def logprobs(self) -> list:
        """One :class:`~qwen_core.info.TokenLogprob` per token the server sent so far (when
        ``settings.logprobs`` asked for them); grows while streaming, as the local stream's does."""
        return self._chan.logprobs

    @property
    def tokens_so_far(self) -> int:
        """Chunks received so far (servers send about one token per chunk)."""
        return self._chan.received

    def cancel(self) -> None:
        """Ask the stream to stop; the consumer ends it within one poll slice."""
        self.cancel_event.set()

    def close(self) -> None:
        """Stop reading and close the connection (the server frees the slot); safe to call twice."""
        if self._done:
            return
        self.cancel_event.set()
        self._finish("cancelled")
        self._thread.join(timeout=0.5)

    def __enter__(self) -> RemoteReplyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        chan = getattr(self, "_chan", None)
        if chan is not None and not getattr(self, "_done", True):
            chan.abandon()

    def text(self) -> str:
        """Consume the rest and return the whole reply text (unstripped)."""
        for _ in self:
            pass
        return self.result.text


def _queued_text(chan: _Channel) -> list[str]:
    """The text items still in the channel (a finished reply's unread tail)."""
    out = []
    while True:
        try:
            kind, value = chan.items.get_nowait()
        except queue.Empty:
            return out
        if kind == "text":
            out.append(value)


def _worker(pool: EndpointPool, req: _Request, chan: _Channel) -> None:
    """Thread body: find an endpoint and stream from it, failing over until text has arrived."""
    try:
        attempts: list[tuple[str, str]] = []
        for ep in pool.candidates():
            if chan.abandoned.is_set():
                return
            if not pool.ready(ep):
                attempts.append((ep.url, ep.last_error or "down"))
                continue
            if ep.mode == MODE_CHAT and req.messages is None:
                attempts.append((ep.url, "it accepts only chat messages, and this request is raw token ids"))
                continue
            try:
                _serve(pool, ep, req, chan)
                return
            except _Failover as exc:
                if chan.abandoned.is_set():
                    return
                if exc.mark_down:
                    pool.mark_down(ep, str(exc))
                attempts.append((ep.url, str(exc)))
        if not chan.abandoned.is_set():
            chan.items.put(("error", pool.unavailable(attempts)))
            chan.started.set()
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
        chan.items.put(("error", exc))
        chan.started.set()
    finally:
        chan.done.set()


def _serve(pool: EndpointPool, ep: Endpoint, req: _Request, chan: _Channel) -> None:
    chan.endpoint, chan.mode = ep.url, ep.mode
    body = build_body(
        ep.mode, ep.dialect, req, model=pool.served_model, stop_ids=pool.stop_ids, suppress_ids=pool.suppress_ids
    )
    read_timeout = pool.timeout if req.stream else pool.response_timeout
    timeout = httpx.Timeout(read_timeout, connect=pool.connect_timeout)
    finish: str | None = None
    scanner = _StopScanner()
    top = req.settings.logprobs  # alternatives per token, or None: no logprobs asked for
    progress_at = [time.monotonic()]  # when the last text arrived (the request's start, at first)

    def stalled() -> bool:
        return time.monotonic() - progress_at[0] > read_timeout

    try:
        with pool.client.stream("POST", ep.url + _PATHS[ep.mode], json=body, timeout=timeout) as resp:
            chan.attach(resp)
            if chan.abandoned.is_set():
                return
            if resp.status_code != 200:
                detail = _error_detail(resp)
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    raise _Failover(f"HTTP {resp.status_code}: {detail}", mark_down=resp.status_code != 429)
                raise GenerationError(
                    f"{ep.url} refused the request (HTTP {resp.status_code}): {detail}. "
                    "Check --model (the served model id) and that the server serves a Qwen chat model."
                )
            whole = not req.stream or "application/json" in resp.headers.get("content-type", "")
            events = [resp.read().decode("utf-8", "replace")] if whole else _sse_events(resp, stalled)
            for data in events:
                if chan.abandoned.is_set():
                    return
                if data.strip() == "[DONE]":
                    finish = finish or "stop"
                    break
                try:
                    obj = json.loads(data)
                except ValueError as exc:
                    raise GenerationError(f"{ep.url} sent something that is not JSON: {data[:200]!r}") from exc
                if not isinstance(obj, dict):
                    raise GenerationError(f"{ep.url} sent an unexpected reply: {data[:200]!r}")
                if obj.get("error") or obj.get("object") == "error":
                    err = obj.get("error", obj.get("message"))
                    if isinstance(err, dict):
                        err = err.get("message", err)
                    raise GenerationError(f"{ep.url} failed while generating: {err}")
                if isinstance(obj.get("usage"), dict):
                    chan.usage = obj["usage"]
                for choice in obj.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    if ep.mode == MODE_CHAT:
                        part = choice.get("delta") or choice.get("message") or {}
                        text = part.get("content") if isinstance(part, dict) else None
                    else:
                        text = choice.get("text")
                    if top is not None and not scanner.stopped:
                        chan.logprobs.extend(parse_logprobs(choice, ep.mode == MODE_CHAT, pool.tokenizer, top))
                    if text:
                        progress_at[0] = time.monotonic()
                        chan.received += 1
                        if not scanner.stopped:
                            chan.put_text(scanner.feed(text))
                    reason = choice.get("finish_reason")
                    if reason:
                        finish = reason
                if scanner.stopped:
                    finish = "stop"
                    break
    except _Failover:
        raise
    except (httpx.TransportError, httpx.StreamError) as exc:
        if chan.abandoned.is_set():
            return
        if finish is not None:  # the reply was complete; only the tail (usage, [DONE]) was lost
            pass
        elif chan.delivered == 0:
            raise _Failover(_describe(exc, read_timeout)) from exc
        else:
            pool.mark_down(ep, _describe(exc, read_timeout))
            raise GenerationError(
                f"The reply from {ep.url} broke off after {chan.received} tokens: {_describe(exc, read_timeout)}. "
                "The server may have restarted, crashed or stalled; send the message again "
                "(another endpoint is used if this one stays down)."
            ) from exc
    finally:
        chan.detach()
    if not scanner.stopped:
        chan.put_text(scanner.flush())
    if top is not None and chan.received and not chan.logprobs:
        raise GenerationError(f"{ep.url} sent no logprobs though they were asked for; leave logprobs out.")
    if finish is None:
        if chan.delivered == 0:
            raise _Failover("the server closed the stream before sending anything")
        raise GenerationError(
            f"The reply from {ep.url} broke off after {chan.received} tokens: the server closed the stream "
            "without saying why the reply ended. Send the message again."
        )
    mapped = _FINISH.get(finish)
    if mapped is None and finish in ("abort", "error", "cancelled"):
        raise GenerationError(f"{ep.url} ended the reply with '{finish}' (the server aborted it). Send it again.")
    chan.ended = mapped or "stop"  # before the item: a cancel that sees it knows the reply is whole
    chan.items.put(("end", chan.ended))
    chan.started.set()
