"""``/v1/chat/completions`` and ``/v1/models``, OpenAI-compatible, on the same engine as the UI."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qwen_core.errors import InputTooLong, QwenCoreError
from qwen_core.scheduler import Busy, Cancelled, Scheduler
from qwen_core.text import check_text, coalesced, is_blank

log = logging.getLogger("qwen_chat.api")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, headers=None):
        super().__init__(message)
        self.status, self.type, self.param, self.headers = status, type_, param, headers or {}

    def response(self) -> JSONResponse:
        """The JSON error body."""
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": None}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class TextPart(BaseModel):
    """A text part of a message's content list."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_text(value, "text")


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=256)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value):
        if isinstance(value, str):
            return check_text(value, "content")
        if not isinstance(value, list):
            raise ValueError('content must be text, or a list of {"type": "text", "text": ...} parts')
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f'content[{i}] must be a text part {{"type": "text", "text": ...}}: '
                    "images, audio and files are not supported by Qwen chat models"
                )
            check_text(part["text"], f"content[{i}].text")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value):
        return check_text(value, "name") if isinstance(value, str) else value

    def text(self) -> str:
        """The content as plain text."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    """The request body; OpenAI fields that don't apply are accepted only at their neutral values."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=0, le=200_000)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100.0, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = Field(default=None, max_length=256)
    stream_options: dict | None = None
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0)
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0)
    logit_bias: dict | None = Field(default=None, max_length=0)

    @field_validator("stop", "user", mode="before")
    @classmethod
    def _texts(cls, value, info):
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(text, str):
                check_text(text, info.field_name)
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 200 characters")
        return stops


# --- what the API answers (declared for the OpenAPI schema; the handlers build plain dicts) -------------


class ChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A non-streaming reply (``stream: true`` answers ``text/event-stream`` chunks instead)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def _inline_refs(schema: dict) -> dict:
    """A JSON schema with its ``$defs`` references written out in place (the OpenAPI document has no ``$defs``)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "invalid request (the message names the offending param)"),
        (401, "missing or invalid credentials"),
        (404, "unknown model"),
        (413, "request body too large"),
        (429, "busy or rate limited (see Retry-After)"),
        (503, "the model is being switched (see Retry-After)"),
    )
}
CHAT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_refs(ChatRequest.model_json_schema())}},
    }
}
CHAT_RESPONSES = {
    200: {
        "model": ChatCompletion,
        "description": "the reply; with stream: true, server-sent events of chat.completion.chunk objects",
        # One schema per server-sent event: its data is a chat.completion.chunk as JSON, then "[DONE]".
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
    },
    **_ERRORS,
}


class StopStrings:
    """Holds back text that may begin a stop string; reports when one appears."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.buffer = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """New text safe to emit; after a hit, everything from the stop string on is dropped."""
        if not self.stops:
            return piece
        self.buffer += piece
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self.buffer = self.buffer[:cut], ""
            return out
        keep = max(len(s) - 1 for s in self.stops)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        """What is left at the end of the reply."""
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out


def _gen_settings(req: ChatRequest) -> dict:
    gen: dict = {}
    if req.temperature is not None:
        gen["temperature"] = req.temperature
        gen["do_sample"] = req.temperature > 0
    for key in ("top_p", "top_k", "repetition_penalty", "seed"):
        if getattr(req, key) is not None:
            gen[key] = getattr(req, key)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    return gen


def _finish(result, stops: StopStrings) -> str:
    if stops.hit:
        return "stop"
    return "length" if result.finish_reason == "length" else "stop"


def openai_router(manager, scheduler: Scheduler, user_of, max_body_chars: int = 1_000_000) -> APIRouter:
    """The ``/v1`` routes. ``user_of(request)`` names the caller (for fairness and rate limits)."""
    router = APIRouter(prefix="/v1")

    @router.get("/models", response_model=ModelList, responses={401: _ERRORS[401]})
    def models() -> dict:
        spec = manager.current
        now = int(time.time())
        names = [s.name for s in manager.specs] or ([spec.name] if spec else [])
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": now, "owned_by": "qwen"} for n in names],
        }

    @router.post("/chat/completions", openapi_extra=CHAT_OPENAPI, responses=CHAT_RESPONSES, response_model=None)
    async def chat_completions(request: Request):
        try:
            raw = await request.body()
            if len(raw) > max_body_chars:
                raise ApiError(413, f"Request body larger than {max_body_chars:,} bytes.")
            try:
                body = json.loads(raw.decode("utf-8", errors="strict"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ApiError(400, f"The body is not valid UTF-8 JSON: {exc}") from None
            if not isinstance(body, dict):
                raise ApiError(
                    400, 'The body must be a JSON object, e.g. {"messages": [{"role": "user", "content": "Hello"}]}.'
                )
            try:
                req = ChatRequest.model_validate(body, strict=True)  # "5" is not a number, 5.0 not an integer
            except ValidationError as exc:
                err = exc.errors()[0]
                param = ".".join(str(p) for p in err.get("loc", ()))
                message = str(err.get("msg")).removeprefix("Value error, ")
                raise ApiError(400, f"{param}: {message}", param=param) from None
            last = len(req.messages) - 1
            if req.messages[last].role == "user" and is_blank(req.messages[last].text()):
                param = f"messages.{last}.content"
                raise ApiError(400, f"{param}: the message is empty; send some text.", param=param)
            return await _complete(request, req)
        except ApiError as exc:
            return exc.response()

    async def _complete(request: Request, req: ChatRequest):
        engine = manager.engine
        if engine is None:
            raise ApiError(
                503, "The model is being switched; retry shortly.", "server_error", headers={"Retry-After": "5"}
            )
        if req.model and manager.current and req.model not in {s.name for s in manager.specs} | {engine.info.model_id}:
            raise ApiError(404, f"Model '{req.model}' is not served here; GET /v1/models lists it.", param="model")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        cancel = threading.Event()
        user = user_of(request)
        # Until a stream's response starts (Starlette then watches it), or for the whole of a
        # non-streamed reply, a client that goes away sets ``cancel``: it leaves the queue, or
        # its generation stops within one token, and the slot is given back.
        async with anyio.create_task_group() as watch:
            watch.start_soon(_watch_disconnect, request, cancel)
            try:
                return await _admitted(request, req, engine, messages, cancel, user)
            except ApiError as exc:  # answered here: raised out of a task group it would come wrapped
                return exc.response()
            finally:
                watch.cancel_scope.cancel()

    async def _admitted(request: Request, req: ChatRequest, engine, messages: list[dict], cancel, user: str):
        try:
            await anyio.to_thread.run_sync(scheduler.acquire, user, cancel)
        except Busy as exc:
            raise ApiError(
                429, str(exc), "rate_limit_error", headers={"Retry-After": str(int(exc.retry_after + 0.5))}
            ) from None
        except Cancelled:
            raise ApiError(499, "The client closed the request while it waited for a slot.") from None
        try:
            stream = engine.stream_messages(messages, cancel=cancel, **_gen_settings(req))
        except (ValueError, InputTooLong, QwenCoreError) as exc:
            scheduler.release()
            raise ApiError(400, str(exc)) from None
        except BaseException:
            scheduler.release()
            raise
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = manager.current.name if manager.current else engine.info.model_id
        stops = StopStrings(req.stop)
        if req.stream:
            return StreamingResponse(
                _sse(request, stream, stops, rid, model, scheduler, req), media_type="text/event-stream"
            )
        try:
            text = ""
            for piece in await anyio.to_thread.run_sync(lambda: list(_pieces(stream, stops))):
                text += piece
        except Exception as exc:  # noqa: BLE001 - any failure is answered, and the server keeps serving
            raise ApiError(500, f"Generation failed: {exc}", "server_error") from None
        finally:
            scheduler.release()
        res = stream.result
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text.strip()},
                    "finish_reason": _finish(res, stops),
                }
            ],
            "usage": _usage(res),
        }

    return router


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` once the client has gone away (runs until its task group is cancelled).

    Waits on ``receive()`` rather than polling ``request.is_disconnected()``: behind an
    ``@app.middleware("http")`` that check is cancelled before it reaches the server and
    never sees the disconnect. The body has been read, so the next message is the disconnect.
    """
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            cancel.set()
            return


def _pieces(stream, stops: StopStrings):
    """Text pieces with stop strings applied; stops generation when one appears."""
    try:
        for piece in coalesced(stream):  # a slow client gets fewer, larger chunks
            out = stops.feed(piece)
            if out:
                yield out
            if stops.hit:
                stream.cancel()
                break
        tail = stops.flush()
        if tail:
            yield tail
    finally:
        stream.close()


def _usage(res) -> dict:
    return {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
    }


def _chunk(rid: str, model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(request: Request, stream, stops: StopStrings, rid: str, model: str, scheduler: Scheduler, req):
    """Server-sent events; a client that disconnects cancels generation and frees its slot."""
    pieces = _pieces(stream, stops)
    done = object()
    try:
        yield _chunk(rid, model, {"role": "assistant", "content": ""})
        while True:
            piece = await anyio.to_thread.run_sync(next, pieces, done)
            if piece is done:
                break
            if await request.is_disconnected():
                break
            yield _chunk(rid, model, {"content": piece})
        res = stream.result
        usage = _usage(res) if (req.stream_options or {}).get("include_usage") else None
        yield _chunk(rid, model, {}, _finish(res, stops))
        if usage is not None:
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, not a hang
        yield f"data: {json.dumps({'error': {'message': f'Generation failed: {exc}', 'type': 'server_error'}})}\n\n"
    finally:
        # On disconnect Starlette cancels this generator; without the shield the await below
        # would be cancelled too and the slot never released.
        stream.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)
        scheduler.release()
