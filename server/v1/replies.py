"""Running the choices of one request: each stream is read by its own thread, events go to the event loop.

Why a thread per stream and not ``anyio.to_thread``: anyio's default pool has 40 threads shared by
every request; with 45 requests waiting for a slot, each SSE chunk of a running stream used to queue
behind them (first chunk after 6.4 s instead of 0.38 s). A reader thread exists only while its
reply runs (at most the batch's rows), blocks on the stream, and hands events over with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qwen_core.stops import StopMatcher
from qwen_core.text import coalesced

from . import metrics
from .errors import generation_error

# One stop matcher for every reply (qwen_core.stops); the old name stays importable.
StopStrings = StopMatcher


class Stripper:
    """Streams ``text.strip()``: leading whitespace is never sent, trailing whitespace only once more text follows.

    So the streamed deltas joined equal the non-streamed content exactly (which Qwen's ``chat()`` strips).
    """

    def __init__(self):
        self.started = False
        self.held = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` that is certain to be in the stripped reply."""
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body) :]
        return body


@dataclass
class Choice:
    """One choice of a request: its stream and how its text is post-processed."""

    index: int
    stream: object  # ReplyStream or RemoteReplyStream
    stops: StopStrings
    strip: bool = True
    parser: object | None = None  # a ToolReplyParser: deltas come from it
    want_logprobs: bool = False
    stop_ids: frozenset = frozenset()
    # filled by the reader
    logprobs: list = field(default_factory=list)


class Runner:
    """Reads every choice's stream in its own thread; ``events`` yields ``(kind, index, payload)`` on the loop.

    Kinds: ``"delta"`` (payload: (delta dict, logprob entries)), ``"end"`` (payload: finish reason),
    ``"error"`` (payload: the exception). ``on_done`` runs once every stream has ended (it gives the
    scheduler slot back), in whichever thread ends last.
    """

    def __init__(self, choices: list[Choice], on_done: Callable[[], None], route: str):
        self.choices = choices
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self._left = len(choices)
        self._lock = threading.Lock()
        self._on_done = on_done
        self.route = route
        self.started_at = time.perf_counter()
        self._first = True
        if not choices:
            on_done()

    def start(self) -> None:
        """Start the reader threads."""
        for choice in self.choices:
            threading.Thread(target=self._read, args=(choice,), daemon=True, name="qwen-api-reader").start()

    def cancel(self) -> None:
        """Stop every stream (within one token); the readers then end and the slot is released."""
        for choice in self.choices:
            choice.stream.cancel()

    async def collect(self) -> tuple[dict[int, list[str]], dict[int, list], dict[int, str]]:
        """A non-streamed request: every choice's text pieces, logprob entries and finish reason.

        A stream's error is raised (as the API's error); every stream is cancelled on the way out."""
        n = len(self.choices)
        text: dict[int, list[str]] = {i: [] for i in range(n)}
        entries: dict[int, list] = {i: [] for i in range(n)}
        finish: dict[int, str] = {}
        try:
            while len(finish) < n:
                kind, i, payload = await self.queue.get()
                if kind == "delta":
                    delta, lps = payload
                    if "content" in delta:
                        text[i].append(delta["content"])
                    entries[i].extend(lps)
                elif kind == "logprobs":
                    entries[i].extend(payload)
                elif kind == "end":
                    finish[i] = payload
                else:
                    raise generation_error(payload)
        finally:
            self.cancel()
        return text, entries, finish

    def _emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def _read(self, choice: Choice) -> None:
        stream, stops = choice.stream, choice.stops
        stripper = Stripper() if choice.strip and choice.parser is None else None
        pending_lp: list = []
        seen = 0
        last = None

        def send(text: str, final: bool = False) -> None:
            nonlocal seen, last
            if choice.want_logprobs:
                got = list(getattr(stream, "logprobs", None) or [])
                pending_lp.extend(got[seen:])
                seen = len(got)
            if choice.parser is not None:
                deltas = choice.parser.feed(text) if text else []
            elif stripper is not None:
                text = stripper.feed(text)
                deltas = [{"content": text}] if text else []
            else:
                deltas = [{"content": text}] if text else []
            now = time.perf_counter()
            for delta in deltas:
                lps: list = []
                if "content" in delta and pending_lp:
                    lps, pending_lp[:] = list(pending_lp), []
                self._emit("delta", choice.index, (delta, lps))
                if self._first:
                    self._first = False
                    metrics.TTFT.labels(self.route).observe(now - self.started_at)
                elif last is not None:
                    metrics.ITL.labels(self.route).observe(now - last)
                last = now

        try:
            try:
                for piece in coalesced(stream):  # a slow client gets fewer, larger pieces
                    out = stops.feed(piece)
                    if stops.hit:
                        stream.cancel()
                    send(out)
                    if stops.hit:
                        break
                tail = stops.flush()
                if tail:
                    send(tail)
            finally:
                stream.close()
            res = stream.result
            finish = "stop" if stops.hit else ("length" if res.finish_reason == "length" else "stop")
            if choice.parser is not None:
                deltas, reason = choice.parser.finish()
                for delta in deltas:
                    self._emit("delta", choice.index, (delta, []))
                # A reply cut by max_tokens ends "length" even inside a tool call (as OpenAI and vLLM
                # say): the client then knows the call's arguments may be incomplete.
                if finish != "length":
                    finish = reason
            if choice.want_logprobs:
                got = list(getattr(stream, "logprobs", None) or [])[seen:]
                rest = pending_lp + got
                # The stop token that ended the reply is not part of the text (OpenAI and vLLM leave it out).
                if rest and res.finish_reason == "stop" and rest[-1].token_id in choice.stop_ids:
                    rest = rest[:-1]
                if rest:
                    self._emit("logprobs", choice.index, rest)
            metrics.PROMPT_TOKENS.labels(self.route).inc(res.prompt_tokens if choice.index == 0 else 0)
            metrics.COMPLETION_TOKENS.labels(self.route).inc(res.completion_tokens)
            self._emit("end", choice.index, finish)
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers it
            self._emit("error", choice.index, exc)
        finally:
            with self._lock:
                self._left -= 1
                last_one = self._left == 0
            if last_one:
                self._on_done()
