"""Operations endpoints other tools expect: ``/health``, ``/metrics``, ``/tokenize``, ``/detokenize``, ``/tokenizer_info``.

``/tokenize`` and ``/detokenize`` take vLLM's shapes and are served at the root (as vLLM does) and
under ``/v1``. ``/tokenize`` with ``messages`` renders them exactly as ``/v1/chat/completions`` would
(the same ChatML builder, tool prompt and window), so a front end can show the context a chat will use.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from qwen_core.tokenizer import ENDOFTEXT, IM_END, IM_START

from . import metrics
from .chat import Job
from .common import current_engine, parse_body
from .errors import ERRORS, ApiError
from .schema import ChatRequest, TokenId

# The ChatML format as a Jinja template, for clients that render prompts themselves (lm-eval's
# local-chat-completions with a remote tokenizer); the server itself never uses it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    + IM_START
    + "system\nYou are a helpful assistant."
    + IM_END
    + "\n{% endif %}"
    + IM_START
    + "{{ message['role'] }}\n{{ message['content'] }}"
    + IM_END
    + "\n{% endfor %}{% if add_generation_prompt %}"
    + IM_START
    + "assistant\n{% endif %}"
)


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: ``{"prompt": text}`` or ``{"messages": [...]}`` (a chat request's fields)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict] | None = Field(default=None, min_length=1, max_length=10_000)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[TokenId] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


def _body(model: type[BaseModel]) -> dict:
    from .openapi import inline_refs

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_refs(model.model_json_schema())}},
        }
    }


def register(router: APIRouter, manager, max_body_chars: int) -> None:
    """Add the routes to ``router`` (paths are absolute)."""

    @router.get("/health", include_in_schema=False)
    def health() -> dict:
        """Liveness, as ``/healthz`` (the path vLLM and guidellm use)."""
        return {"status": "ok"}

    @router.get("/metrics", include_in_schema=False)
    def metrics_route() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def tokenize(request: Request):
        try:
            req = await parse_body(request, TokenizeRequest, max_body_chars, "/tokenize")
            engine = current_engine(manager)
            if (req.prompt is None) == (req.messages is None):
                raise ApiError(400, 'Send either {"prompt": "text"} or {"messages": [...]}.', param="prompt")
            if req.prompt is not None:
                ids = engine.tokenizer.encode(req.prompt)  # raw text, as /v1/completions reads it
            else:
                fields = {k: v for k, v in (req.model_extra or {}).items() if k in ChatRequest.model_fields}
                chat = await _validate_chat({"messages": req.messages, **fields})
                ids = Job(engine, chat).ids
        except ApiError as exc:
            return exc.response()
        return {"count": len(ids), "max_model_len": engine.info.context_length, "tokens": ids}

    async def detokenize(request: Request):
        try:
            req = await parse_body(request, DetokenizeRequest, max_body_chars, "/detokenize")
            engine = current_engine(manager)
            tok = engine.tokenizer
            bad = next((t for t in req.tokens if t >= len(tok)), None)
            if bad is not None:
                raise ApiError(
                    400, f"tokens: id {bad} is outside Qwen's vocabulary (0..{len(tok) - 1}).", param="tokens"
                )
            return {"prompt": tok.decode(req.tokens)}
        except ApiError as exc:
            return exc.response()

    def tokenizer_info() -> dict:
        """vLLM's ``/tokenizer_info`` (lm-eval uses it to pick its remote tokenizer)."""
        engine = current_engine(manager)
        return {
            "tokenizer_class": "QWenTokenizer",
            "eos_token": ENDOFTEXT,
            "bos_token": None,
            "pad_token": ENDOFTEXT,
            "model_max_length": engine.info.context_length,
            "chat_template": CHAT_TEMPLATE,
            "vocab_size": len(engine.tokenizer),
        }

    for prefix in ("", "/v1"):
        router.add_api_route(
            f"{prefix}/tokenize",
            tokenize,
            methods=["POST"],
            response_model=TokenizeResponse,
            responses={400: ERRORS[400], 401: ERRORS[401], 413: ERRORS[413], 503: ERRORS[503]},
            openapi_extra=_body(TokenizeRequest),
            include_in_schema=prefix == "/v1",
        )
        router.add_api_route(
            f"{prefix}/detokenize",
            detokenize,
            methods=["POST"],
            response_model=DetokenizeResponse,
            responses={400: ERRORS[400], 401: ERRORS[401], 413: ERRORS[413], 503: ERRORS[503]},
            openapi_extra=_body(DetokenizeRequest),
            include_in_schema=prefix == "/v1",
        )
        router.add_api_route(f"{prefix}/tokenizer_info", tokenizer_info, methods=["GET"], include_in_schema=False)


async def _validate_chat(body: dict) -> ChatRequest:
    from pydantic import ValidationError

    from .errors import validation_error

    try:
        return ChatRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None
