"""The remote backend: the app as a front end to OpenAI-compatible inference servers.

:class:`RemoteEngine` has the public API of :class:`~qwen_core.engine.Engine` (it is a
subclass with ``model = None``), so the UI and the HTTP API use it unchanged. The
tokenizer, the prompt builder and the context meter stay local and exact: every prompt
is built by :class:`~qwen_core.prompt.PromptBuilder`, window truncation included. Only
the forward passes happen on the servers.

What is sent, per endpoint, decided by probing it once (tiny 1-token requests):

1. ``POST /v1/completions`` with ``prompt`` = the prompt's token ids: exactly the ids
   the local engine would feed the model (vLLM, SGLang);
2. ``POST /v1/completions`` with ``prompt`` = the ChatML text the ids spell: exact text,
   tokenized by the server's tokenizer (``transformers serve``, llama-cpp-python, ...);
   special-token text typed in a message is escaped (``<\u200b|im_end|>``) so that the
   server cannot read it as a control token (a forged turn);
3. ``POST /v1/chat/completions`` with the messages the prompt builder kept (system,
   the kept turns, the query): the server applies its own chat template.

and how the sampling settings travel (probed the same way):

* ``extra-fields``: ``top_k``, ``repetition_penalty`` and ``stop_token_ids`` as extra
  top-level fields (vLLM, SGLang; servers that ignore unknown fields also land here);
* ``generation-config``: a ``generation_config`` JSON string (``transformers serve``,
  which rejects unknown fields with 422 but takes a whole ``GenerationConfig``: the stop
  ids, ``top_k``, ``repetition_penalty`` and the padded-vocabulary suppression then
  match the local engine's);
* ``standard``: only OpenAI's fields (temperature, top_p, seed, stop strings);
  ``top_k`` and ``repetition_penalty`` are not applied.

Known servers. Only ``transformers serve`` is exercised by the tests (tests/test_remote.py
starts it); the others are read from their request schemas:

=======================  ==============================  ==================================
server                   prompt                          sampling settings
=======================  ==============================  ==================================
vLLM                     token ids (/v1/completions),    extra-fields; /v1/models reports
                         Qwen-1 checkpoints as they are  ``max_model_len``
SGLang                   token ids (/v1/completions)     extra-fields; ``max_model_len``
transformers serve 5.23  text (/v1/completions takes     generation-config (unknown fields
                         only strings); chat messages    are refused with 422); /v1/models
                         with the model's template       lists the hub cache, not the
                                                         served model, so model id omitted
llama-cpp-python         text (str or list of str)       extra-fields: ``top_k`` applies;
                                                         ``repetition_penalty`` does not
                                                         (it reads ``repeat_penalty``,
                                                         default 1.1)
Ollama, hosted APIs      text or chat messages           standard
=======================  ==============================  ==================================

Several endpoints are used round-robin. A failed health check (``GET /v1/models``) or a
failed connection marks an endpoint down for ``cooldown`` seconds, after which it is
checked again before use. A request that fails before any text arrived (connection
refused, timeout, HTTP 5xx/429) moves on to the next endpoint; a stream that breaks after
text arrived ends the reply with ``finish_reason == "error"`` and raises
:class:`~qwen_core.errors.GenerationError`. Every request has connect and read timeouts; a stream
that sends only keep-alive comments (``: ping``) and no tokens for ``timeout`` seconds counts as silent.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .engine import Engine, EngineInfo
from .errors import GenerationError, InputTooLong, QwenCoreError
from .generation import ReplyResult
from .prompt import DEFAULT_SYSTEM, PromptPlan, normalize_history
from .settings import GenerationSettings
from .tokenizer import ENDOFTEXT, IM_END, IM_START, VOCAB_FILE, QwenTokenizer, escape_special_text

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192  # used when no server reports its model's max length
QWEN_PADDED_VOCAB = 151_936  # every Qwen-1 chat checkpoint pads its 151,851 ids to this
STOP_TEXTS = (IM_END, IM_START, ENDOFTEXT)

MODE_IDS = "completions-ids"
MODE_TEXT = "completions-text"
MODE_CHAT = "chat"
DIALECT_EXTRA = "extra-fields"
DIALECT_GENCONFIG = "generation-config"
DIALECT_STANDARD = "standard"
APIS = {"auto": (MODE_IDS, MODE_TEXT, MODE_CHAT), "completions": (MODE_IDS, MODE_TEXT), "chat": (MODE_CHAT,)}
_PATHS = {MODE_IDS: "/v1/completions", MODE_TEXT: "/v1/completions", MODE_CHAT: "/v1/chat/completions"}
_FINISH = {
    "stop": "stop",
    "eos": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "tool_calls": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
}
_POLL_S = 0.02  # how often a waiting consumer looks at its cancel event


class EndpointsUnavailable(QwenCoreError):
    """No configured endpoint could take the request; the message names each and why."""


class RemoteProtocolMismatch(QwenCoreError):
    """An endpoint answers but accepts none of the request kinds this app sends."""


# --- endpoints ------------------------------------------------------------------------


def normalize_endpoint(url: str) -> str:
    """``host:8000``, ``http://host:8000/``, ``http://host:8000/v1`` → ``http://host:8000``."""
    url = (url or "").strip()
    if not url:
        raise QwenCoreError("An empty --endpoint was given; pass the server's base URL, e.g. http://127.0.0.1:8000")
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


@dataclass
class Endpoint:
    """One server: what it serves, what it accepts, and whether it is up."""

    url: str
    models: tuple[str, ...] = ()
    max_model_len: int | None = None
    owned_by: str | None = None
    mode: str | None = None  # MODE_*: how prompts are sent, once probed
    dialect: str | None = None  # DIALECT_*: how sampling settings are sent, once probed
    down_until: float = 0.0  # monotonic time until which it is not used
    failures: int = 0
    last_error: str | None = None
    checked_at: float = 0.0  # monotonic time of the last health check
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def is_down(self) -> bool:
        """Whether it is in its cool-down after a failure."""
        return time.monotonic() < self.down_until

    def status(self) -> dict:
        """Plain-data state for health panels."""
        return {
            "url": self.url,
            "up": not self.is_down and self.failures == 0,
            "mode": self.mode,
            "dialect": self.dialect,
            "models": list(self.models),
            "max_model_len": self.max_model_len,
            "last_error": self.last_error,
        }


@dataclass
class RemoteReplyResult(ReplyResult):
    """:class:`ReplyResult` plus where the reply came from (``token_ids`` stays empty)."""

    endpoint: str | None = None
    mode: str | None = None
    server_prompt_tokens: int | None = None  # the server's count; differs from prompt_tokens only off the ids path


@dataclass
class _Request:
    ids: list[int] | None
    text: str | None
    messages: list[dict] | None
    settings: GenerationSettings
    max_new: int
    seed: int | None
    stream: bool = True


def chat_messages(
    plan: PromptPlan, query: str, history: Sequence | None, system: str | None, system_in_first_turn: bool
) -> list[dict]:
    """The messages a plan keeps (system, kept turns, query), with the persona moved as the plan moved it."""
    system = DEFAULT_SYSTEM if system is None else system
    turns = normalize_history(history)
    persona = ""
    if system_in_first_turn and system.strip() and system != DEFAULT_SYSTEM:
        persona, system = system + "\n\n", DEFAULT_SYSTEM
    kept = list(turns[plan.kept_from :])
    if persona and kept:
        kept[0] = (persona + kept[0][0], kept[0][1])
    elif persona:
        query = persona + query
    # The server renders these with its chat template and tokenizes the result: special-token
    # text in them is escaped so that it stays text there, as it is in the local prompt.
    messages = [{"role": "system", "content": escape_special_text(system)}]
    for user, assistant in kept:
        messages.append({"role": "user", "content": escape_special_text(user)})
        if assistant is not None:
            messages.append({"role": "assistant", "content": escape_special_text(assistant)})
    messages.append({"role": "user", "content": escape_special_text(query)})
    return messages


def build_body(
    mode: str,
    dialect: str,
    req: _Request,
    *,
    model: str | None,
    stop_ids: Sequence[int],
    suppress_ids: Sequence[int] = (),
) -> dict:
    """The JSON body of one request (a pure function, so every dialect can be checked on its own)."""
    s = req.settings
    body: dict = {}
    if model:
        body["model"] = model
    if mode == MODE_IDS:
        body["prompt"] = list(req.ids or [])
    elif mode == MODE_TEXT:
        body["prompt"] = req.text
    else:
        body["messages"] = req.messages
    body["max_tokens"] = req.max_new
    body["stream"] = req.stream
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.seed is not None:
        body["seed"] = req.seed
    if dialect == DIALECT_GENCONFIG:
        config: dict = {
            "do_sample": not s.greedy,
            "max_new_tokens": req.max_new,
            "repetition_penalty": s.repetition_penalty,
            "eos_token_id": list(stop_ids),
            "pad_token_id": stop_ids[-1],
        }
        if suppress_ids:
            config["suppress_tokens"] = list(suppress_ids)
        if not s.greedy:
            config.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        body["generation_config"] = json.dumps(config)
        return body
    body["temperature"] = 0.0 if s.greedy else s.temperature
    if not s.greedy:
        body["top_p"] = s.top_p
    body["stop"] = list(STOP_TEXTS)
    if dialect == DIALECT_EXTRA:
        if not s.greedy and s.top_k > 0:
            body["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        body["stop_token_ids"] = list(stop_ids)
    return body


# --- the stream -----------------------------------------------------------------------


class _StopScanner:
    """Cuts the text at the first stop-token *text* a server let through, holding back possible prefixes."""

    def __init__(self, stops: Sequence[str] = STOP_TEXTS):
        self.stops = tuple(stops)
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to show now; sets ``stopped`` once a stop text appears."""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class _Channel:
    """What the worker thread and the consumer share (the worker never references the stream)."""

    def __init__(self):
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.abandoned = threading.Event()
        self.received = 0  # text chunks received from the server
        self.delivered = 0  # text pieces handed to the consumer's queue
        self.usage: dict | None = None
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

    def __init__(self, engine: RemoteEngine, req: _Request, cancel: threading.Event | None = None):
        self.cancel_event = cancel or threading.Event()
        self.result = RemoteReplyResult(prompt_tokens=len(req.ids or ()), seed=req.seed)
        self._chan = _Channel()
        self._pieces: list[str] = []
        self._done = False
        self._finish_lock = threading.Lock()  # close() may run in another thread than __next__
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._thread = threading.Thread(
            target=_worker, args=(engine, req, self._chan), daemon=True, name="qwen-remote-reply"
        )
        self._thread.start()

    def __iter__(self) -> RemoteReplyStream:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        while True:
            if self.cancel_event.is_set():
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

    def _finish(self, reason: str) -> None:
        with self._finish_lock:
            if self._done:
                return
            self._done = True
        chan, res = self._chan, self.result
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


class _Failover(Exception):
    """The request failed before any text: try the next endpoint."""

    def __init__(self, reason: str, mark_down: bool = True):
        super().__init__(reason)
        self.mark_down = mark_down


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        return "connection refused" if "refused" in text.lower() else f"cannot connect ({text or 'no route'})"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data for {timeout:g} s (read timeout)" if timeout else "read timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server closed the connection ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _error_detail(response: httpx.Response) -> str:
    try:
        raw = response.read()[:2000]
    except httpx.HTTPError:
        return "(no body)"
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip() or "(no body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:500]
    return str(data)[:500]


def _sse_events(response: httpx.Response, stalled: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """The ``data`` of each server-sent event.

    ``stalled()`` is asked on every line: keep-alive comments (``: ping``, which
    sse-starlette servers send every 15 s) and empty events reset httpx's read timeout,
    so a server that is alive but never produces a token would otherwise hold the reply
    for ever. It raises :class:`httpx.ReadTimeout` when ``stalled()`` says so.
    """
    data: list[str] = []
    for line in response.iter_lines():
        if stalled():
            raise httpx.ReadTimeout("no tokens, only keep-alive traffic")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _worker(engine: RemoteEngine, req: _Request, chan: _Channel) -> None:
    """Thread body: find an endpoint and stream from it, failing over until text has arrived."""
    try:
        attempts: list[tuple[str, str]] = []
        for ep in engine._candidates():
            if chan.abandoned.is_set():
                return
            if not engine._ready(ep):
                attempts.append((ep.url, ep.last_error or "down"))
                continue
            if ep.mode == MODE_CHAT and req.messages is None:
                attempts.append((ep.url, "it accepts only chat messages, and this request is raw token ids"))
                continue
            try:
                _serve(engine, ep, req, chan)
                return
            except _Failover as exc:
                if chan.abandoned.is_set():
                    return
                if exc.mark_down:
                    engine._mark_down(ep, str(exc))
                attempts.append((ep.url, str(exc)))
        if not chan.abandoned.is_set():
            chan.items.put(("error", engine._unavailable(attempts)))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
        chan.items.put(("error", exc))


def _serve(engine: RemoteEngine, ep: Endpoint, req: _Request, chan: _Channel) -> None:
    chan.endpoint, chan.mode = ep.url, ep.mode
    body = build_body(
        ep.mode, ep.dialect, req, model=engine.served_model, stop_ids=engine.stop_ids, suppress_ids=engine.suppress_ids
    )
    read_timeout = engine.timeout if req.stream else engine.response_timeout
    timeout = httpx.Timeout(read_timeout, connect=engine.connect_timeout)
    finish: str | None = None
    scanner = _StopScanner()
    progress_at = [time.monotonic()]  # when the last text arrived (the request's start, at first)

    def stalled() -> bool:
        return time.monotonic() - progress_at[0] > read_timeout

    try:
        with engine._client.stream("POST", ep.url + _PATHS[ep.mode], json=body, timeout=timeout) as resp:
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
            engine._mark_down(ep, _describe(exc, read_timeout))
            raise GenerationError(
                f"The reply from {ep.url} broke off after {chan.received} tokens: {_describe(exc, read_timeout)}. "
                "The server may have restarted, crashed or stalled; send the message again "
                "(another endpoint is used if this one stays down)."
            ) from exc
    finally:
        chan.detach()
    if not scanner.stopped:
        chan.put_text(scanner.flush())
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
    chan.items.put(("end", mapped or "stop"))


# --- the engine -----------------------------------------------------------------------


class RemoteEngine(Engine):
    """An :class:`Engine` whose model runs on OpenAI-compatible servers. Build it with :func:`load_remote_engine`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tokenizer: QwenTokenizer,
        defaults: GenerationSettings,
        info: EngineInfo,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        health_timeout: float = 3.0,
        response_timeout: float = 600.0,
        cooldown: float = 30.0,
        api: str = "auto",
        vocab_size: int = QWEN_PADDED_VOCAB,
    ):
        super().__init__(None, tokenizer, defaults, info)
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {api!r}")
        self.endpoints = [Endpoint(normalize_endpoint(u)) for u in endpoints]
        if not self.endpoints:
            raise QwenCoreError("No endpoint given: pass --endpoint URL (one or more).")
        self.served_model = model
        self.api = api
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.health_timeout = float(health_timeout)
        self.response_timeout = max(float(response_timeout), self.timeout)
        self.cooldown = float(cooldown)
        self.stop_ids = tuple(tokenizer.stop_ids)
        self.suppress_ids = tuple(range(len(tokenizer), vocab_size))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._next = 0
        self._warned: set[tuple[str, str]] = set()

    # --- endpoint state ----------------------------------------------------------------
    def _mark_down(self, ep: Endpoint, reason: str) -> None:
        with self._lock:
            ep.failures += 1
            ep.last_error = reason
            ep.down_until = time.monotonic() + self.cooldown
        log.warning("Endpoint %s marked down for %.0f s: %s", ep.url, self.cooldown, reason)

    def check_health(self, ep: Endpoint) -> bool:
        """``GET /v1/models`` with the short health timeout; updates what the endpoint serves."""
        try:
            resp = self._client.get(ep.url + "/v1/models", timeout=self.health_timeout)
            if resp.status_code in (401, 403):
                raise _Failover(f"HTTP {resp.status_code}: the server refused the API key ({_error_detail(resp)})")
            if resp.status_code != 200:
                raise _Failover(f"GET /v1/models answered HTTP {resp.status_code}: {_error_detail(resp)}")
            data = resp.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError, _Failover) as exc:
            reason = str(exc) if isinstance(exc, _Failover) else _describe(exc, self.health_timeout)
            self._mark_down(ep, reason)
            ep.checked_at = time.monotonic()
            return False
        cards = [d for d in data if isinstance(d, dict) and d.get("id")]
        lengths = [d["max_model_len"] for d in cards if isinstance(d.get("max_model_len"), int)]
        with self._lock:
            ep.models = tuple(str(d["id"]) for d in cards)
            ep.max_model_len = min(lengths) if lengths else None
            ep.owned_by = next((str(d["owned_by"]) for d in cards if d.get("owned_by")), None)
            ep.failures, ep.last_error, ep.down_until = 0, None, 0.0
            ep.checked_at = time.monotonic()
        return True

    def check_endpoints(self) -> list[dict]:
        """Health-check every endpoint now; their states (for a health API)."""
        for ep in self.endpoints:
            self.check_health(ep)
        return [ep.status() for ep in self.endpoints]

    def endpoint_status(self) -> list[dict]:
        """The endpoints' states as last seen (no requests)."""
        return [ep.status() for ep in self.endpoints]

    def _candidates(self) -> list[Endpoint]:
        """Endpoints to try, in order: round-robin over those not in cool-down; all of them if none is up."""
        with self._lock:
            n = len(self.endpoints)
            start = self._next % n
            self._next += 1
            order = [self.endpoints[(start + i) % n] for i in range(n)]
        up = [ep for ep in order if not ep.is_down]
        return up or order

    def _ready(self, ep: Endpoint) -> bool:
        """Whether ``ep`` can take a request: health-checked after a failure, probed once.

        Requests waiting on the same failed endpoint share one health check: whoever gets
        the lock after a check that ended while it waited takes that check's answer.
        """
        asked = time.monotonic()
        with ep.lock:
            if ep.failures:
                if ep.checked_at >= asked:
                    return False  # checked while we waited, and still failing
                if not self.check_health(ep):
                    return False
            if ep.mode is None:
                try:
                    self._probe(ep)
                except _Failover as exc:
                    self._mark_down(ep, str(exc))
                    return False
                except RemoteProtocolMismatch as exc:
                    self._mark_down(ep, str(exc))
                    return False
            return True

    def _unavailable(self, attempts: list[tuple[str, str]]) -> EndpointsUnavailable:
        tried = "; ".join(f"{url} ({why})" for url, why in attempts) or ", ".join(e.url for e in self.endpoints)
        return EndpointsUnavailable(
            f"No inference server could take the request. Tried: {tried}. Check that the servers are running and "
            "reachable from this machine, that each --endpoint is the server's base URL (e.g. http://host:8000 or "
            "http://host:8000/v1), and --endpoint-api-key if they require a key. "
            f"Endpoints that failed are retried after {self.cooldown:.0f} s."
        )

    # --- probing -------------------------------------------------------------------------
    def _probe_request(self, ep: Endpoint, mode: str, dialect: str) -> tuple[int, str, dict]:
        """One 1-token request: (HTTP status, error detail, answer)."""
        plan = self.prompts.plan("Hi", None, DEFAULT_SYSTEM, self.defaults.max_window_size)
        sampling = dialect != DIALECT_STANDARD
        settings = (
            GenerationSettings(do_sample=True, temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=1.05)
            if sampling
            else GenerationSettings(do_sample=False, repetition_penalty=1.0)
        )
        req = _Request(
            ids=plan.ids,
            text=self.tokenizer.text_for_server(plan.ids),
            messages=chat_messages(plan, "Hi", None, DEFAULT_SYSTEM, False),
            settings=settings,
            max_new=1,
            seed=0 if sampling else None,
            stream=False,
        )
        body = build_body(
            mode, dialect, req, model=self.served_model, stop_ids=self.stop_ids, suppress_ids=self.suppress_ids
        )
        if dialect == DIALECT_STANDARD:
            # The mode probe: the plainest request. (Stop strings cost transformers serve seconds per
            # request, a scan of the whole vocabulary; the dialect it is then found to take sends none.)
            body.pop("stop", None)
        try:
            resp = self._client.post(
                ep.url + _PATHS[mode], json=body, timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout)
            )
        except httpx.HTTPError as exc:
            raise _Failover(_describe(exc, self.timeout)) from exc
        if resp.status_code >= 500 and resp.status_code not in (500, 501):
            raise _Failover(f"HTTP {resp.status_code} while probing: {_error_detail(resp)}")
        if resp.status_code in (401, 403):
            raise _Failover(f"HTTP {resp.status_code}: the server refused the API key ({_error_detail(resp)})")
        if resp.status_code != 200:
            return resp.status_code, _error_detail(resp), {}
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return resp.status_code, "the answer is not an OpenAI completion", {}
        if len(data["choices"]) != 1:
            return resp.status_code, f"one prompt got {len(data['choices'])} answers", {}
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        counted = usage.get("prompt_tokens")
        if isinstance(counted, int) and counted != len(plan.ids):
            if mode == MODE_IDS:
                return resp.status_code, f"it counted {counted} prompt tokens for {len(plan.ids)} token ids", {}
            if (ep.url, mode) not in self._warned:
                self._warned.add((ep.url, mode))
                log.warning(
                    "Endpoint %s counts %d tokens where Qwen's tokenizer counts %d: its tokenizer or chat template "
                    "is not Qwen-1's ChatML, so replies will differ from the local engine's.",
                    ep.url,
                    counted,
                    len(plan.ids),
                )
        return resp.status_code, "", data

    def _probe(self, ep: Endpoint) -> None:
        """Find the most exact prompt mode and the sampling dialect ``ep`` accepts (1-token requests)."""
        rejected = []
        for mode in APIS[self.api]:
            code, detail, _ = self._probe_request(ep, mode, DIALECT_STANDARD)
            if code == 200 and not detail:
                break
            what = {MODE_IDS: "token-id prompts", MODE_TEXT: "text prompts", MODE_CHAT: "chat messages"}[mode]
            rejected.append(f"{_PATHS[mode]} with {what}: HTTP {code} {detail}")
        else:
            hint = ""
            if self.served_model is None and len(ep.models) > 1:
                hint = f" It serves several models ({', '.join(ep.models)}): choose one with --model."
            raise RemoteProtocolMismatch(
                f"{ep.url} accepts none of the requests this app sends: {'; '.join(rejected)}.{hint}"
            )
        dialect = DIALECT_STANDARD
        for candidate in (DIALECT_EXTRA, DIALECT_GENCONFIG):
            code, detail, _ = self._probe_request(ep, mode, candidate)
            if code == 200 and not detail:
                dialect = candidate
                break
        with self._lock:
            ep.mode, ep.dialect = mode, dialect
        log.info("Endpoint %s: prompts as %s, sampling settings as %s", ep.url, mode, dialect)
        if mode != MODE_IDS:
            log.warning(
                "Endpoint %s does not take token-id prompts: it tokenizes %s itself, so prompts are exact "
                "only as far as its tokenizer matches qwen.tiktoken.",
                ep.url,
                "the ChatML text" if mode == MODE_TEXT else "the messages after applying its chat template",
            )
        if dialect == DIALECT_STANDARD:
            log.warning(
                "Endpoint %s takes only OpenAI's sampling fields: top_k and repetition_penalty are ignored.", ep.url
            )

    def connect(self, progress: Callable[[float, str], None] | None = None) -> None:
        """Check every endpoint, pick the served model, probe what each accepts; raise if none is usable."""
        report = progress or (lambda fraction, message: None)
        n = len(self.endpoints)
        reachable = []
        for i, ep in enumerate(self.endpoints):
            report(0.1 + 0.4 * i / n, f"Checking {ep.url}")
            if self.check_health(ep):
                reachable.append(ep)
        if not reachable:
            raise self._unavailable([(ep.url, ep.last_error or "unreachable") for ep in self.endpoints])
        if self.served_model is None:
            listed = reachable[0].models
            if len(listed) == 1:
                self.served_model = listed[0]
        usable, problems = [], []
        for i, ep in enumerate(reachable):
            report(0.5 + 0.5 * i / len(reachable), f"Probing {ep.url}")
            try:
                self._probe(ep)
                usable.append(ep)
            except (RemoteProtocolMismatch, _Failover) as exc:
                self._mark_down(ep, str(exc))
                problems.append(str(exc))
        if not usable:
            raise RemoteProtocolMismatch(" ".join(problems))
        for ep in self.endpoints:
            if ep not in usable:
                log.warning("Endpoint %s is not usable now (%s); it is retried later.", ep.url, ep.last_error)

    # --- generation ------------------------------------------------------------------------
    def _start(
        self,
        plan: PromptPlan | None,
        ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None,
        *,
        messages: list[dict] | None = None,
        stream: bool = True,
    ) -> RemoteReplyStream:
        """Check the length and start the worker (the lowest level every call goes through)."""
        limit = self.info.context_length
        if len(ids) >= limit:
            raise InputTooLong(
                f"The prompt is {len(ids)} tokens but {self.info.model_id} handles at most {limit}. "
                "Shorten the message, or lower max_window_size so fewer past turns are kept."
            )
        seed = None if settings.greedy else (settings.seed if settings.seed is not None else secrets.randbits(63))
        req = _Request(
            ids=list(ids),
            text=self.tokenizer.text_for_server(ids),
            messages=messages,
            settings=settings,
            max_new=min(settings.max_new_tokens, limit - len(ids)),
            seed=seed,
            stream=stream,
        )
        reply = RemoteReplyStream(self, req, cancel)
        self.last_result = reply.result
        return reply

    def stream_prompt(
        self, prompt_ids: list[int], settings: GenerationSettings, cancel: threading.Event | None = None
    ) -> RemoteReplyStream:
        """Stream a reply to ready prompt ids (endpoints that take only chat messages are skipped)."""
        return self._start(None, prompt_ids, settings, cancel)

    def stream_chat(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        *,
        cancel: threading.Event | None = None,
        system_in_first_turn: bool = False,
        stream: bool = True,
        **gen,
    ) -> RemoteReplyStream:
        """Stream the reply to ``query``; see :meth:`Engine.stream_chat`.

        ``stream=False`` asks the server for one JSON reply (the stream then yields it as one piece).
        """
        settings = self.settings(**gen)
        plan = self.plan_prompt(query, history, system, settings.max_window_size, system_in_first_turn)
        messages = chat_messages(plan, query, history, system, system_in_first_turn)
        return self._start(plan, plan.ids, settings, cancel, messages=messages, stream=stream)

    def chat(self, query: str, history: Sequence | None = None, system: str | None = None, **gen) -> str:
        """The whole reply, stripped, from one non-streaming request."""
        with self.stream_chat(query, history, system, stream=False, **gen) as reply:
            return reply.text().strip()

    def unload(self) -> None:
        """Close the connections; the engine is unusable afterwards."""
        self._client.close()


# --- loading --------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QwenCoreError(f"{path} cannot be read as JSON ({exc}).") from exc
    return data if isinstance(data, dict) else {}


def _tokenizer_folder(tokenizer_dir: str | Path | None) -> Path:
    if tokenizer_dir is None or not str(tokenizer_dir).strip():
        raise QwenCoreError(
            f"The remote backend needs Qwen's vocabulary to build prompts: pass --tokenizer-dir, a folder holding "
            f"{VOCAB_FILE} (the original checkpoint folder, or a folder with {VOCAB_FILE} and generation_config.json "
            "copied from the Qwen/Qwen-*-Chat repository)."
        )
    path = Path(tokenizer_dir).expanduser()
    if path.is_file() and path.name == VOCAB_FILE:
        path = path.parent
    if not (path / VOCAB_FILE).is_file():
        raise QwenCoreError(
            f"{path} holds no {VOCAB_FILE}. Pass --tokenizer-dir a folder with Qwen's {VOCAB_FILE} "
            "(copy it from the Qwen/Qwen-*-Chat repository)."
        )
    return path


def load_remote_engine(
    endpoints: str | Sequence[str],
    api_key: str | None = None,
    model: str | None = None,
    tokenizer_dir: str | Path | None = None,
    timeout: float = 60.0,
    *,
    connect_timeout: float = 5.0,
    health_timeout: float = 3.0,
    response_timeout: float = 600.0,
    cooldown: float = 30.0,
    api: str = "auto",
    context_length: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> RemoteEngine:
    """A :class:`RemoteEngine` for ``endpoints``, checked and probed.

    ``tokenizer_dir``: a folder with ``qwen.tiktoken`` (and, if present, the
    checkpoint's ``generation_config.json`` for the defaults and ``config.json`` for
    ``seq_length``/``vocab_size``). ``model``: the served model id; ``None`` takes the
    one the first reachable server lists. ``timeout``: seconds a streaming reply may go
    without data (first token included); ``connect_timeout`` per connection;
    ``health_timeout`` for ``GET /v1/models``; ``response_timeout`` for a whole
    non-streaming reply. ``api``: ``auto``, ``completions`` or ``chat`` (restricts the
    probe). ``context_length`` overrides what the servers report (else 8192).
    Raises :class:`EndpointsUnavailable` when no endpoint answers.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    folder = _tokenizer_folder(tokenizer_dir)
    report(0.0, f"Reading {VOCAB_FILE} from {folder}")
    tokenizer = QwenTokenizer(folder / VOCAB_FILE)
    gen_file, cfg_file = folder / "generation_config.json", folder / "config.json"
    defaults = GenerationSettings.from_generation_config(_read_json(gen_file) if gen_file.is_file() else {})
    config = _read_json(cfg_file) if cfg_file.is_file() else {}
    vocab_size = int(config.get("vocab_size") or config.get("padded_vocab_size") or QWEN_PADDED_VOCAB)
    placeholder = EngineInfo("remote", str(folder), "remote", "remote", "", {}, "remote", 0, 0, DEFAULT_CONTEXT, 0, 0.0)
    engine = RemoteEngine(
        urls,
        tokenizer,
        defaults,
        placeholder,
        model=model,
        api_key=api_key,
        timeout=timeout,
        connect_timeout=connect_timeout,
        health_timeout=health_timeout,
        response_timeout=response_timeout,
        cooldown=cooldown,
        api=api,
        vocab_size=vocab_size,
    )
    try:
        engine.connect(report)
    except BaseException:
        engine.unload()
        raise
    lengths = [ep.max_model_len for ep in engine.endpoints if ep.max_model_len]
    context = int(context_length or (min(lengths) if lengths else DEFAULT_CONTEXT))
    engine.info = EngineInfo(
        model_id=engine.served_model or next((m for ep in engine.endpoints for m in ep.models), "remote"),
        path=str(folder),
        precision="remote",
        dtype="remote",
        device=", ".join(ep.url for ep in engine.endpoints),
        device_map={ep.url: f"{ep.mode or 'unprobed'}/{ep.dialect or '-'}" for ep in engine.endpoints},
        attn_implementation="remote",
        n_params=0,
        weight_bytes=0,
        context_length=context,
        seq_length=int(config.get("seq_length") or DEFAULT_CONTEXT),
        load_seconds=time.perf_counter() - started,
    )
    report(1.0, "Ready")
    return engine


def remote_loader(endpoints: Sequence[str], **options) -> Callable[..., RemoteEngine]:
    """A loader with :func:`qwen_core.load_engine`'s signature, for :class:`~qwen_core.manager.ModelManager`.

    The spec's ``model`` becomes the served model id (empty: the server's only model);
    precision, device, source, offline and cache_dir do not apply and are ignored.
    ``options`` go to :func:`load_remote_engine` (api_key, tokenizer_dir, timeout, ...).
    """

    def load(model: str | None = None, precision: str = "auto", device: str = "auto", *, progress=None, **_ignored):
        return load_remote_engine(endpoints, model=model or None, progress=progress, **options)

    return load
