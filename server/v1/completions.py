"""``POST /v1/completions``: legacy text completions on raw text or token ids (no chat template).

What lm-evaluation-harness ``local-completions`` scores multiple-choice tasks with: ``echo`` +
``logprobs`` give each prompt token's log-probability (``engine.prompt_logprobs``), with
``max_tokens`` 0 (scoring only) or more. Text is never stripped, as OpenAI's completions aren't.
"""

from __future__ import annotations

import json
import threading
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwen_core.errors import BackendUnavailable, InputTooLong, QwenCoreError
from qwen_core.scheduler import Scheduler

from .common import (
    admitted,
    answer,
    check_endpoints,
    check_model,
    choice_settings,
    current_engine,
    gen_settings,
    in_thread,
    is_remote,
    legacy_logprobs,
    merge_legacy,
    now,
    parse_body,
    usage,
)
from .errors import ApiError, generation_error
from .formats import constraints_for, response_format_dict
from .replies import Choice, Runner, StopStrings
from .schema import CompletionRequest

ROUTE = "/v1/completions"
MAX_CHOICES = 64  # prompts x n per request


class Job:
    """A validated completions request: the prompts' ids and texts, per-choice settings."""

    def __init__(self, engine, req: CompletionRequest):
        self.engine, self.req = engine, req
        self.as_ids = bool(req.return_tokens_as_token_ids)  # vLLM's "token_id:N" names in logprobs
        if req.suffix:
            raise ApiError(
                400, "suffix: inserting text before a suffix is not supported by Qwen-1 chat models.", param="suffix"
            )
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of: only best_of equal to n (or absent) is supported.", param="best_of")
        tok = engine.tokenizer
        raw = req.prompt
        items = [raw] if isinstance(raw, str) else raw
        if items and isinstance(items[0], int):
            items = [items]
        self.prompts: list[list[int]] = []
        self.texts: list[str] = []
        for item in items:
            if isinstance(item, str):
                ids = tok.encode(item)  # raw text: special-token text stays text
                text = item
            else:
                bad = next((t for t in item if t >= len(tok)), None)
                if bad is not None:
                    raise ApiError(
                        400, f"prompt: token id {bad} is outside Qwen's vocabulary (0..{len(tok) - 1}).", param="prompt"
                    )
                ids, text = list(item), tok.decode(item)
            if not ids:
                raise ApiError(400, "prompt: the prompt is empty; send some text or token ids.", param="prompt")
            self.prompts.append(ids)
            self.texts.append(text)
        if len(self.prompts) * req.n > MAX_CHOICES:
            raise ApiError(400, f"n: prompts x n must be at most {MAX_CHOICES}.", param="n")
        self.max_tokens = 16 if req.max_tokens is None else req.max_tokens
        self.top = req.logprobs  # relayed from the servers on the remote backend; echo's prompt logprobs are not
        if self.max_tokens == 0 and not req.echo:
            raise ApiError(
                400, "max_tokens: 0 is only meaningful with echo: true (scoring the prompt).", param="max_tokens"
            )
        gen = gen_settings(req, max(self.max_tokens, 1), self.top)
        self.settings = choice_settings(engine, gen, req.n)
        self.response_format = response_format_dict(req.response_format)


def register(router: APIRouter, manager, scheduler: Scheduler, user_of, max_body_chars: int, openapi: dict) -> None:
    """Add the route to ``router``."""

    @router.post("/v1/completions", openapi_extra=openapi["extra"], responses=openapi["responses"], response_model=None)
    async def completions(request: Request):
        return await answer(ROUTE, lambda: _handle(request))

    async def _handle(request: Request):
        req = await parse_body(request, CompletionRequest, max_body_chars, ROUTE)
        engine = current_engine(manager)
        check_endpoints(engine)
        model = check_model(manager, engine, req.model)
        job = Job(engine, req)
        n_choices = len(job.prompts) * req.n if job.max_tokens else 0
        constraints = await in_thread(constraints_for, engine, job.response_format, n_choices)
        return await admitted(
            request, scheduler, user_of(request), lambda cancels: _serve(request, cancels, job, model, constraints)
        )

    async def _serve(request: Request, cancels: list, job: Job, model: str, constraints: list):
        try:
            echo = await _echo(job)
        except BaseException:
            scheduler.release()
            raise
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if job.max_tokens == 0:
            scheduler.release()
            return _scored(job, echo, rid, model)
        runner = _start(job, constraints)
        cancels.append(runner.cancel)
        if job.req.stream:
            return StreamingResponse(_sse(request, runner, job, echo, rid, model), media_type="text/event-stream")
        return await _collect(runner, job, echo, rid, model)

    async def _echo(job: Job) -> list[tuple[str, dict | None]]:
        """Per prompt: the echoed text and its legacy logprobs (None unless logprobs were asked for)."""
        if not job.req.echo:
            return [("", None)] * len(job.prompts)
        out = []
        for ids, text in zip(job.prompts, job.texts, strict=True):
            if job.top is None:
                out.append((text, None))
                continue
            try:
                entries = await in_thread(job.engine.prompt_logprobs, ids, job.top)
            except NotImplementedError as exc:
                raise ApiError(400, f"echo with logprobs: {exc}", param="echo") from None
            except BackendUnavailable as exc:  # every remote endpoint down: 503 + Retry-After
                raise generation_error(exc, "Scoring the prompt failed") from None
            except (ValueError, InputTooLong, QwenCoreError) as exc:
                raise ApiError(400, str(exc), param="prompt") from None
            out.append(
                (text, legacy_logprobs(job.engine.tokenizer, list(zip(ids, entries, strict=True)), as_ids=job.as_ids))
            )
        return out

    def _start(job: Job, constraints: list) -> Runner:
        engine, streams, error = job.engine, [], None
        try:
            for p, ids in enumerate(job.prompts):
                for j, settings in enumerate(job.settings):
                    k = p * job.req.n + j
                    kw = {"constraint": constraints[k]} if constraints else {}
                    if job.response_format is not None and is_remote(engine):
                        kw = {"response_format": job.response_format}
                    streams.append(engine.stream_prompt(ids, settings, threading.Event(), **kw))
        except (ValueError, InputTooLong, QwenCoreError) as exc:
            error = ApiError(400, str(exc), param="prompt")
        except Exception as exc:  # noqa: BLE001 - answered; the slot must come back
            error = generation_error(exc, "Generation failed to start")
        stop_ids = frozenset(engine.tokenizer.stop_ids) | frozenset(job.settings[0].stop_token_ids)
        choices = [
            Choice(
                index=k,
                stream=s,
                stops=StopStrings(list(job.req.stop or [])),
                strip=False,
                want_logprobs=job.top is not None,
                stop_ids=stop_ids,
            )
            for k, s in enumerate(streams)
        ]
        runner = Runner(choices, scheduler.release, ROUTE)
        if error is not None:
            runner.cancel()
            runner.start()
            raise error
        runner.start()
        return runner


def _scored(job: Job, echo: list, rid: str, model: str) -> dict:
    """``max_tokens: 0`` with echo: the prompts and their log-probabilities, nothing generated."""
    choices = []
    for p, (text, lp) in enumerate(echo):
        for j in range(job.req.n):
            choices.append({"index": p * job.req.n + j, "text": text, "logprobs": lp, "finish_reason": "length"})
    prompt_tokens = sum(len(ids) for ids in job.prompts)
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, 0),
    }


async def _collect(runner: Runner, job: Job, echo: list, rid: str, model: str) -> dict:
    tok = job.engine.tokenizer
    text, entries, finish = await runner.collect()
    choices = []
    for c in runner.choices:
        echo_text, echo_lp = echo[c.index // job.req.n]
        lp = None
        if c.want_logprobs:
            gen = legacy_logprobs(tok, [(e.token_id, e) for e in entries[c.index]], len(echo_text), job.as_ids)
            lp = merge_legacy(echo_lp, gen)
        choices.append(
            {
                "index": c.index,
                "text": echo_text + "".join(text[c.index]),
                "logprobs": lp,
                "finish_reason": finish[c.index],
            }
        )
    completion = sum(c.stream.result.completion_tokens for c in runner.choices)
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(sum(len(ids) for ids in job.prompts), completion),
    }


def _chunk(rid: str, model: str, index: int, text: str, logprobs=None, finish=None) -> str:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    body = {"id": rid, "object": "text_completion", "created": now(), "model": model, "choices": [choice]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(request: Request, runner: Runner, job: Job, echo: list, rid: str, model: str):
    """Server-sent ``text_completion`` events, then ``[DONE]``."""
    n = len(runner.choices)
    tok = job.engine.tokenizer
    offsets = {}
    try:
        for c in runner.choices:
            echo_text, echo_lp = echo[c.index // job.req.n]
            offsets[c.index] = len(echo_text)
            if echo_text:
                yield _chunk(rid, model, c.index, echo_text, echo_lp)
        ended = 0
        while ended < n:
            kind, i, payload = await runner.queue.get()
            if kind in ("delta", "logprobs"):
                piece, lps = (payload[0].get("content", ""), payload[1]) if kind == "delta" else ("", payload)
                lp = None
                if runner.choices[i].want_logprobs:
                    lp = legacy_logprobs(tok, [(e.token_id, e) for e in lps], offsets[i], job.as_ids)
                offsets[i] += len(piece)
                if await request.is_disconnected():
                    break
                yield _chunk(rid, model, i, piece, lp)
            elif kind == "end":
                ended += 1
                yield _chunk(rid, model, i, "", finish=payload)
            else:
                raise payload
        else:
            if job.req.stream_options is not None and job.req.stream_options.include_usage:
                completion = sum(c.stream.result.completion_tokens for c in runner.choices)
                prompt = sum(len(ids) for ids in job.prompts)
                body = {
                    "id": rid,
                    "object": "text_completion",
                    "created": now(),
                    "model": model,
                    "choices": [],
                    "usage": usage(prompt, completion),
                }
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, not a hang
        yield f"data: {json.dumps({'error': {'message': f'Generation failed: {exc}', 'type': 'server_error'}})}\n\n"
    finally:
        runner.cancel()
