"""The OpenAI-compatible API (``/v1``) and the operations endpoints, on the same engine as the UI.

Modules: ``schema`` (request bodies), ``chat`` and ``completions`` (the generation routes),
``replies`` (reading streams without anyio's shared thread pool), ``ops`` (health, metrics,
tokenize), ``errors`` (OpenAI's error shape), ``openapi`` (what /openapi.json documents).
See docs/API.md for every endpoint and parameter.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Match

from qwen_core.scheduler import Scheduler

from . import chat, completions, metrics, ops
from .common import has_endpoints, model_names, served_name
from .errors import ERRORS, ApiError
from .openapi import CHAT_DOCS, COMPLETION_DOCS, ModelCard, ModelList

__all__ = ["ApiError", "openai_router"]


class _AnyPath(Convertor):
    """Starlette's ``path`` convertor stops at a newline (``.*``); a %0A in the URL then fell through to the
    Gradio mount's FastAPI-shaped 404 (found by the API fuzzer). This one matches every character."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())
_STARTED = int(time.time())  # "created" of the model cards
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def openai_router(manager, scheduler: Scheduler, user_of, max_body_chars: int = 1_000_000) -> APIRouter:
    """The ``/v1`` routes and the root operations routes. ``user_of(request)`` names the caller (fairness, rate limits)."""
    router = APIRouter()
    metrics.bind(manager, scheduler)

    def cards() -> list[dict]:
        spec, engine = manager.current, manager.engine
        names = [s.name for s in manager.specs] or ([spec.name] if spec else [])
        if engine is not None and has_endpoints(engine):
            names = [served_name(manager, engine)]  # the servers' model, not the local "remote" label
        return [{"id": n, "object": "model", "created": _STARTED, "owned_by": "qwen"} for n in names]

    @router.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    def models() -> dict:
        return {"object": "list", "data": cards()}

    @router.get(
        "/v1/models/{model_id:anypath}", response_model=ModelCard, responses={401: ERRORS[401], 404: ERRORS[404]}
    )
    def model(model_id: str):
        for card in cards():
            if card["id"] == model_id:
                return card
        engine = manager.engine
        if engine is not None and model_id in model_names(manager, engine):  # the checkpoint's own id
            return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "qwen"}
        message = f"The model '{model_id}' does not exist here; GET /v1/models lists it."
        return ApiError(404, message, param="model").response()

    chat.register(router, manager, scheduler, user_of, max_body_chars, CHAT_DOCS)
    completions.register(router, manager, scheduler, user_of, max_body_chars, COMPLETION_DOCS)
    ops.register(router, manager, max_body_chars)

    @router.api_route("/v1", methods=_METHODS, include_in_schema=False)
    @router.api_route("/v1/{rest:anypath}", methods=_METHODS, include_in_schema=False)
    async def not_found(request: Request, rest: str = ""):
        """Unknown routes and wrong methods under /v1, answered in OpenAI's shape (not FastAPI's ``detail``)."""
        allowed = sorted(
            {
                m
                for r in router.routes
                if getattr(r, "path", "") not in ("/v1", "/v1/{rest:anypath}")
                and r.matches(request.scope)[0] == Match.PARTIAL
                for m in (getattr(r, "methods", None) or ())
            }
        )
        if allowed:
            status, message = 405, f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}."
            headers = {"Allow": ", ".join(allowed)}
        else:
            status, message, headers = 404, f"Unknown route {request.method} {request.url.path}.", {}
        route = "/v1/*"
        metrics.REQUESTS.labels(route, str(status)).inc()
        return ApiError(status, message, headers=headers).response()

    return router
