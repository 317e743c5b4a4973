"""What chat and text completions share: body parsing, sampling settings, admission, logprob shapes."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
from fastapi import Request
from pydantic import BaseModel, ValidationError

from qwen_core.scheduler import Busy, Cancelled, Scheduler

from . import metrics
from .errors import ApiError, busy_error, validation_error
from .schema import Sampling, log_ignored

# Blocking calls that are not streams (prompt log-probabilities, constraint compiling) run here, never in
# anyio's shared pool, which queued requests must not be able to exhaust.
_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qwen-api-work")


async def in_thread(fn: Callable, *args):
    """``fn(*args)`` in the API's own worker threads."""
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, fn, *args)


async def parse_body(request: Request, model: type[BaseModel], max_body_chars: int, route: str):
    """The request body validated as ``model`` (strictly: "5" is not a number); ApiError(400) otherwise."""
    raw = await request.body()
    if len(raw) > max_body_chars:
        raise ApiError(413, f"Request body larger than {max_body_chars:,} bytes.")
    try:
        body = json.loads(raw.decode("utf-8", errors="strict"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"The body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "The body is nested too deeply; send flatter JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    try:
        req = model.model_validate(body, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise ApiError(400, "The body is nested too deeply; send flatter JSON.") from None
    log_ignored(req, route)
    return req


def current_engine(manager):
    """The loaded engine, or a 503 while the model is being switched."""
    engine = manager.engine
    if engine is None:
        raise ApiError(503, "The model is being switched; retry shortly.", "server_error", headers={"Retry-After": "5"})
    return engine


def check_endpoints(engine) -> None:
    """Remote backend: a 503 + Retry-After at once while every endpoint is in its cool-down after failing
    (streamed requests too, which would otherwise get a 200 and then an error event)."""
    wait = engine.unavailable_for() if hasattr(engine, "unavailable_for") else 0.0
    if wait > 0:
        raise ApiError(
            503,
            "No inference server is reachable now (every --endpoint failed its last check); retry later.",
            "server_error",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},  # the cool-down's rest, whole seconds
        )


def model_names(manager, engine) -> set[str]:
    """Every name a request's ``model`` may use."""
    names = {s.name for s in manager.specs} | {engine.info.model_id}
    if manager.current is not None:
        names.add(manager.current.name)
    return names


def has_endpoints(engine) -> bool:
    """Whether the engine fronts inference servers (--backend openai), as /readyz tells it."""
    return hasattr(engine, "live_endpoints")


def served_name(manager, engine) -> str:
    """The model's name in responses and ``/v1/models``: in remote mode the servers' own id (what their
    ``/v1/models`` lists), not the local label; else the configured model's name."""
    if has_endpoints(engine) or manager.current is None:
        return engine.info.model_id
    return manager.current.name


def check_model(manager, engine, requested: str | None) -> str:
    """The served model's name; a 404 naming the model when another one is asked for."""
    if requested and manager.current and requested not in model_names(manager, engine):
        raise ApiError(404, f"Model '{requested}' is not served here; GET /v1/models lists it.", param="model")
    return served_name(manager, engine)


def is_remote(engine) -> bool:
    """Whether the engine's model runs on other servers (--backend openai)."""
    if getattr(engine, "local_model", False):  # llama.cpp: no torch model, but decoded in this process
        return False
    return getattr(engine, "model", None) is None


def gen_settings(req: Sampling, max_tokens: int | None, logprobs: int | None) -> dict:
    """The GenerationSettings overrides a request asks for (neutral values mapped: top_k -1 = off, seed -1 = random)."""
    gen: dict = {}
    if req.temperature is not None:
        gen["temperature"] = req.temperature
        gen["do_sample"] = req.temperature > 0
    if req.top_k is not None:
        gen["top_k"] = max(req.top_k, 0)
    for key in ("top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens"):
        if getattr(req, key) is not None:
            gen[key] = getattr(req, key)
    if req.ignore_eos:
        gen["ignore_eos"] = True
    if req.stop_token_ids:
        gen["stop_token_ids"] = tuple(req.stop_token_ids)
    if req.logit_bias:
        gen["logit_bias"] = dict(req.logit_bias)
    if req.seed is not None and req.seed >= 0:
        gen["seed"] = req.seed
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    if logprobs is not None:
        gen["logprobs"] = logprobs
    return gen


def choice_settings(engine, gen: dict, n: int) -> list:
    """One GenerationSettings per choice: choice i draws with seed + i when a seed is given."""
    try:
        base = engine.settings(**gen)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if base.seed is None:
        return [base] * n
    return [base.merged(seed=(base.seed + i) % 2**63) for i in range(n)]


async def watch_disconnect(request: Request, on_disconnect: Callable[[], None]) -> None:
    """Call ``on_disconnect`` once the client has gone away (runs until cancelled).

    Waits on ``receive()`` rather than polling ``request.is_disconnected()``: behind an
    ``@app.middleware("http")`` that check is cancelled before it reaches the server and
    never sees the disconnect. The body has been read, so the next message is the disconnect.
    """
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            on_disconnect()
            return


async def admit(scheduler: Scheduler, user: str, cancel: threading.Event) -> None:
    """Wait for a slot on the event loop (no thread held); 429 when full, 499 when the client left."""
    try:
        await scheduler.acquire_async(user, cancel)
    except Busy as exc:
        raise busy_error(exc) from None
    except Cancelled:
        raise ApiError(499, "The client closed the request while it waited for a slot.") from None


async def answer(route: str, handle: Callable[[], Awaitable]):
    """Run a route's ``handle()``, counting the request by status; an ApiError becomes its
    OpenAI-shaped response."""
    try:
        response = await handle()
    except ApiError as exc:
        metrics.REQUESTS.labels(route, str(exc.status)).inc()
        return exc.response()
    metrics.REQUESTS.labels(route, "200").inc()
    return response


async def admitted(request: Request, scheduler: Scheduler, user: str, serve: Callable[[list], Awaitable]):
    """Wait for a slot for ``user``, then return ``await serve(cancels)``, the one admission path of ``/v1``.

    Until a stream's response starts (Starlette then watches it), or for the whole of a
    non-streamed reply, a client that goes away calls every function in ``cancels`` (``serve``
    appends its runner's cancel): it leaves the queue, or its generation stops within one token,
    and the slot is given back.
    """
    waiting = threading.Event()
    cancels: list[Callable[[], object]] = [waiting.set]
    error = None
    async with anyio.create_task_group() as watch:
        watch.start_soon(watch_disconnect, request, lambda: [c() for c in cancels])
        try:
            await admit(scheduler, user, waiting)
            return await serve(cancels)
        except ApiError as exc:  # raised out of the task group it would come wrapped in a group
            error = exc
        finally:
            watch.cancel_scope.cancel()
    raise error


def token_text(tokenizer, token_id: int, as_ids: bool = False) -> tuple[str, list[int]]:
    """A token's text (its bytes decoded with errors="replace", as OpenAI and vLLM show partial UTF-8) and
    bytes; with ``as_ids`` (vLLM's ``return_tokens_as_token_ids``) the text is ``token_id:N``."""
    raw = tokenizer.token_bytes(token_id)
    return f"token_id:{token_id}" if as_ids else raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer, entries: list, as_ids: bool = False) -> list[dict]:
    """OpenAI's ``choices[].logprobs.content`` entries (``as_ids``: see :func:`token_text`)."""
    out = []
    for e in entries:
        text, raw = token_text(tokenizer, e.token_id, as_ids)
        top = []
        for tid, lp in e.top:
            t, b = token_text(tokenizer, tid, as_ids)
            top.append({"token": t, "logprob": _finite(lp), "bytes": b})
        out.append({"token": text, "logprob": _finite(e.logprob), "bytes": raw, "top_logprobs": top})
    return out


def legacy_logprobs(tokenizer, items: list[tuple[int, object]], start_offset: int = 0, as_ids: bool = False) -> dict:
    """The legacy completions shape ``{tokens, token_logprobs, top_logprobs, text_offset}``.

    ``items``: (token id, TokenLogprob or None) pairs; None (the first prompt token) gives null
    entries. The chosen token is included in its ``top_logprobs`` dict, as vLLM does. ``as_ids``:
    tokens named ``token_id:N`` (:func:`token_text`); offsets still count the text.
    """
    tokens, lps, tops, offsets = [], [], [], []
    offset = start_offset
    for token_id, e in items:
        text, _ = token_text(tokenizer, token_id)
        tokens.append(token_text(tokenizer, token_id, True)[0] if as_ids else text)
        offsets.append(offset)
        offset += len(text)
        if e is None:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(_finite(e.logprob))
        top = {token_text(tokenizer, tid, as_ids)[0]: _finite(lp) for tid, lp in e.top}
        top.setdefault(tokens[-1], _finite(e.logprob))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def merge_legacy(a: dict | None, b: dict) -> dict:
    """Two legacy logprob objects one after the other."""
    if a is None:
        return b
    return {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def _finite(value: float) -> float:
    """JSON has no -inf: a token the model can't produce gets -9999.0 (vLLM's convention)."""
    return value if value > -9999.0 else -9999.0


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def now() -> int:
    """``created`` timestamps."""
    return int(time.time())
