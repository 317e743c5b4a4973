"""``POST /v1/chat/completions``: plain chat, tool calling (Qwen's ReAct), JSON output, logprobs, n choices."""

from __future__ import annotations

import json
import threading
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwen_core.backend import split_messages
from qwen_core.errors import InputTooLong, QwenCoreError
from qwen_core.scheduler import Scheduler
from qwen_core.text import is_blank
from qwen_core.tool_reply import ToolReplyParser
from qwen_core.tools import engine_prompt_ids, plan_tool_messages

from .common import (
    admitted,
    answer,
    chat_logprobs,
    check_endpoints,
    check_model,
    choice_settings,
    current_engine,
    gen_settings,
    in_thread,
    is_remote,
    now,
    parse_body,
    usage,
)
from .errors import ApiError, generation_error
from .formats import constraints_for, response_format_dict, tool_constraints_for
from .replies import Choice, Runner, StopStrings
from .schema import ChatRequest

ROUTE = "/v1/chat/completions"


class Job:
    """A validated chat request made ready to run: prompt ids, per-choice settings, tool plan, constraints."""

    def __init__(self, engine, req: ChatRequest):
        self.engine, self.req = engine, req
        messages = [m.as_dict() for m in req.messages]
        last = len(messages) - 1
        if messages[last]["role"] == "user" and is_blank(messages[last]["content"] or ""):
            param = f"messages.{last}.content"
            raise ApiError(400, f"{param}: the message is empty; send some text.", param=param)
        # logprobs are relayed from the servers on the remote backend (qwen_core.remote.protocol)
        self.top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        self.as_ids = bool(req.return_tokens_as_token_ids)
        top = self.top_logprobs
        gen = gen_settings(req, req.max_completion_tokens or req.max_tokens, top)
        self.settings = choice_settings(engine, gen, req.n)
        self.gens = [{**gen, "seed": s.seed} if s.seed is not None else gen for s in self.settings]
        self.chat_args: tuple | None = None  # (query, history, system) on the plain chat path
        window = self.settings[0].max_window_size
        try:
            self.plan = plan_tool_messages(
                messages,
                tools=req.tools or None,
                tool_choice=req.tool_choice,
                functions=req.functions or None,
                function_call=req.function_call,
                parallel_tool_calls=req.parallel_tool_calls,
            )
        except ValueError as exc:
            text = str(exc)
            param = text.split(":", 1)[0] if ":" in text and " " not in text.split(":", 1)[0] else None
            raise ApiError(400, text, param=param) from None
        self.stops = list(req.stop or [])
        if self.plan is None:
            plain = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
            try:
                system, history, query = split_messages(plain)
                self.ids = engine.plan_prompt(query, history, system, window).ids
                self.chat_args = (query, history, system)
            except ValueError as exc:
                raise ApiError(400, f"messages: {exc}", param="messages") from None
        else:
            self.ids = engine_prompt_ids(engine, self.plan, window)
            self.stops += [s for s in self.plan.stop if s not in self.stops]
        self.response_format = response_format_dict(req.response_format)
        if self.response_format is not None and self.plan is not None and self.plan.tool_names:
            raise ApiError(
                400,
                "response_format: JSON output and tool calls can't be combined in one request; send one of them.",
                param="response_format",
            )


def register(router: APIRouter, manager, scheduler: Scheduler, user_of, max_body_chars: int, openapi: dict) -> None:
    """Add the route to ``router``."""

    @router.post(
        "/v1/chat/completions", openapi_extra=openapi["extra"], responses=openapi["responses"], response_model=None
    )
    async def chat_completions(request: Request):
        return await answer(ROUTE, lambda: _handle(request))

    async def _handle(request: Request):
        req = await parse_body(request, ChatRequest, max_body_chars, ROUTE)
        engine = current_engine(manager)
        check_endpoints(engine)
        model = check_model(manager, engine, req.model)
        job = Job(engine, req)
        constraints = await in_thread(constraints_for, engine, job.response_format, req.n)
        if not constraints and job.plan is not None and job.plan.forced_prefix and not is_remote(engine):
            # tool_choice required/named: the arguments follow the tool's schema (qwen_core.grammar)
            constraints = await in_thread(tool_constraints_for, engine, job.plan, req.n)
        return await admitted(
            request, scheduler, user_of(request), lambda cancels: _serve(request, cancels, job, model, constraints)
        )

    async def _serve(request: Request, cancels: list, job: Job, model: str, constraints: list):
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        runner = _start(job, constraints, rid)
        cancels.append(runner.cancel)
        if job.req.stream:
            return StreamingResponse(_sse(request, runner, job, rid, model), media_type="text/event-stream")
        return await _collect(runner, job, rid, model)

    def _start(job: Job, constraints: list, rid: str) -> Runner:
        engine, streams = job.engine, []
        error = None
        try:
            for i, settings in enumerate(job.settings):
                kw = {"constraint": constraints[i]} if constraints else {}
                if job.response_format is not None and is_remote(engine):
                    kw = {"response_format": job.response_format}
                if job.chat_args is not None and "response_format" not in kw:
                    # Plain chat goes through stream_chat: the remote engine then also reaches servers that
                    # take only chat messages (the same prompt ids locally).
                    streams.append(engine.stream_chat(*job.chat_args, cancel=threading.Event(), **job.gens[i], **kw))
                else:
                    streams.append(engine.stream_prompt(job.ids, settings, threading.Event(), **kw))
        except (ValueError, InputTooLong, QwenCoreError) as exc:
            error = ApiError(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - answered; the slot must come back
            error = generation_error(exc, "Generation failed to start")
        stop_ids = frozenset(engine.tokenizer.stop_ids) | frozenset(job.settings[0].stop_token_ids)
        choices = [
            Choice(
                index=i,
                stream=s,
                stops=StopStrings(job.stops),
                strip=True,
                parser=ToolReplyParser(job.plan, reply_id=f"{rid}-{i}") if job.plan is not None else None,
                want_logprobs=job.top_logprobs is not None,
                stop_ids=stop_ids,
            )
            for i, s in enumerate(streams)
        ]
        runner = Runner(choices, scheduler.release, ROUTE)
        if error is not None:
            runner.cancel()
            runner.start()  # the readers close the started streams; the last one releases the slot
            raise error
        runner.start()
        return runner


async def _collect(runner: Runner, job: Job, rid: str, model: str) -> dict:
    content, lps, finish = await runner.collect()
    choices = []
    tok = job.engine.tokenizer
    for c in runner.choices:
        if c.parser is not None:
            message = c.parser.message()
        else:
            message = {"role": "assistant", "content": "".join(content[c.index])}
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": {"content": chat_logprobs(tok, lps[c.index], job.as_ids)} if c.want_logprobs else None,
                "finish_reason": finish[c.index],
            }
        )
    completion = sum(c.stream.result.completion_tokens for c in runner.choices)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(len(job.ids), completion),
    }


def _chunk(rid: str, model: str, index: int, delta: dict, finish=None, logprobs=None, **extra) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    body = {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model, "choices": [choice]}
    body.update(extra)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(request: Request, runner: Runner, job: Job, rid: str, model: str):
    """Server-sent events; a client that disconnects cancels generation and frees its slot."""
    n = len(runner.choices)
    tok = job.engine.tokenizer
    want = job.top_logprobs is not None
    try:
        for i in range(n):
            yield _chunk(rid, model, i, {"role": "assistant", "content": ""})
        ended = 0
        while ended < n:
            kind, i, payload = await runner.queue.get()
            if kind == "delta":
                delta, entries = payload
                lp = {"content": chat_logprobs(tok, entries, job.as_ids)} if want and entries else None
                if await request.is_disconnected():
                    break
                yield _chunk(rid, model, i, delta, logprobs=lp)
            elif kind == "logprobs":
                yield _chunk(rid, model, i, {}, logprobs={"content": chat_logprobs(tok, payload, job.as_ids)})
            elif kind == "end":
                ended += 1
                yield _chunk(rid, model, i, {}, finish=payload)
            else:
                raise payload
        else:
            if job.req.stream_options is not None and job.req.stream_options.include_usage:
                completion = sum(c.stream.result.completion_tokens for c in runner.choices)
                body = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": now(),
                    "model": model,
                    "choices": [],
                    "usage": usage(len(job.ids), completion),
                }
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, not a hang
        yield f"data: {json.dumps({'error': {'message': f'Generation failed: {exc}', 'type': 'server_error'}})}\n\n"
    finally:
        runner.cancel()  # on disconnect Starlette cancels this generator; the readers release the slot
