"""What ``/openapi.json`` says about the routes whose handlers read the raw body themselves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from .errors import ERRORS
from .schema import ChatRequest, CompletionRequest


def inline_refs(schema: dict) -> dict:
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


class ChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[dict] | None = None
    function_call: dict | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChoiceMessage
    logprobs: dict | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"]


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
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: Literal["stop", "length"]


class TextCompletion(BaseModel):
    """A non-streaming text completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
            "required": ["data"],
        }
    }
}


def route_docs(request_model: type[BaseModel], response_model: type[BaseModel], what: str) -> dict:
    """``openapi_extra`` (the request body) and ``responses`` for one generation route."""
    return {
        "extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": inline_refs(request_model.model_json_schema())}},
            }
        },
        "responses": {
            200: {
                "model": response_model,
                "description": f"the reply; with stream: true, server-sent events of {what} objects",
                "content": _SSE,  # one schema per event: its data is a chunk as JSON, then "[DONE]"
            },
            **ERRORS,
        },
    }


CHAT_DOCS = route_docs(ChatRequest, ChatCompletion, "chat.completion.chunk")
COMPLETION_DOCS = route_docs(CompletionRequest, TextCompletion, "text_completion")
