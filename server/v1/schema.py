"""Request bodies of ``/v1``: tolerant as vLLM's server is, strict where it protects.

Fields no Qwen-1 reply can use (``store``, ``metadata``, ``service_tier``, anything new a client
sends) are accepted and ignored: each unknown name is logged once at debug level and listed in
docs/API.md. Known fields are typed strictly (a number is a number) and bounded; a value we can't
honour (``n: 100``, an image part, ``suffix``) is a 400 that names the field and says why.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qwen_core.text import check_text

log = logging.getLogger("qwen_chat.api")
MAX_N = 8  # choices per request; each is a batch row
# OpenAI takes 4 stop strings; vLLM and llama.cpp any number, and Open WebUI sends all a user sets.
# Bounded: every piece of a reply is matched against them.
MAX_STOPS = 32
Bias = Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]

_logged: set[str] = set()
_logged_lock = threading.Lock()


def log_ignored(model: BaseModel, route: str) -> None:
    """Log each unknown top-level field name once (debug): accepted and ignored."""
    for name in model.model_extra or {}:
        with _logged_lock:
            if name in _logged:
                continue
            _logged.add(name)
        log.debug("%s: field %r is not used by this server; accepted and ignored", route, name)


class TextPart(BaseModel):
    """A text part of a message's content list."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str | dict = ""


class ToolCall(BaseModel):
    """A tool call of an assistant message being replayed."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(BaseModel):
    """One chat message: system/developer (= system), user, assistant (maybe with tool calls), tool/function results."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    function_call: ToolCallFunction | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value):
        if value is None or isinstance(value, str):
            return check_text(value, "content") if value else value
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

    @model_validator(mode="after")
    def _needs_content(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: a {self.role} message needs content (text)")
        return self

    def text(self) -> str:
        """The content as plain text."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_dict(self) -> dict:
        """The message as the core's planners read it (content flattened, developer = system)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role}
        out["content"] = None if self.content is None else self.text()
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.function_call is not None:
            out["function_call"] = self.function_call.model_dump()
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    """``text``, ``json_object`` or ``json_schema`` (``{"name", "schema", "strict"}``)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None


class Sampling(BaseModel):
    """Sampling fields shared by chat and text completions (OpenAI's, and vLLM's extras)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=-1, le=200_000, description="-1 or 0: off")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: dict[str, Bias] | None = Field(default=None, max_length=1024, description="token id (as text) -> bias")
    min_tokens: int | None = Field(default=None, ge=0, le=32_768)
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=256)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-1, lt=2**63, description="-1: random")
    n: int = Field(default=1, ge=1, le=MAX_N)
    # Ignored. OpenAI's is a string; Open WebUI sends its user as an object to pipeline models.
    user: Any = None
    response_format: ResponseFormat | None = None
    # vLLM's: logprob entries name tokens "token_id:N" (exact for any id, partial UTF-8 included).
    return_tokens_as_token_ids: bool | None = None

    @field_validator("stop", mode="before")
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
        if len(stops) > MAX_STOPS or any(not s or len(s) > 200 for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOPS} non-empty strings of at most 200 characters")
        return stops


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``; unknown fields are accepted and ignored."""

    messages: list[Message] = Field(min_length=1, max_length=10_000)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = Field(default=None, max_length=128)
    function_call: Literal["none", "auto"] | dict | None = None
    modalities: list[Literal["text"]] | None = Field(default=None, description='only ["text"]')
    store: bool | None = None
    metadata: dict | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None

    @model_validator(mode="after")
    def _top_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self


class CompletionRequest(Sampling):
    """``POST /v1/completions`` (legacy text completions): raw text or token ids, no chat template."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="text, texts, token ids, or lists of token ids"
    )
    max_tokens: int | None = Field(default=16, ge=0, le=32_768)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt: give text, a list of texts, or token ids (got an empty list)")
            if len(value) > 64:
                raise ValueError("prompt: at most 64 prompts per request")
            for item in value:
                if isinstance(item, str):
                    check_text(item, "prompt")
                elif isinstance(item, list) and not item:
                    raise ValueError("prompt: a token-id prompt must not be empty")
        else:
            check_text(value, "prompt")
        return value
