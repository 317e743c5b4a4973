"""One ASGI app: the Gradio UI at ``/``, the OpenAI API at ``/v1``, health at ``/healthz``, ``/readyz``."""

from __future__ import annotations

import logging
import time
import uuid

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from .auth import Auth
from .openai_api import openai_router

log = logging.getLogger("qwen_chat.http")
OPEN_PATHS = ("/healthz", "/readyz")


def create_app(
    manager,
    scheduler,
    demo: gr.Blocks,
    launch_kwargs: dict,
    auth: Auth | None = None,
    cors_origins: tuple[str, ...] = (),
    max_body_bytes: int = 2_000_000,
    log_content: bool = False,
) -> FastAPI:
    """Compose the app. CORS is closed unless origins are given; logs never hold message text unless asked."""
    auth = auth or Auth()
    app = FastAPI(title="Qwen Chat", docs_url=None, redoc_url=None)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        rid = uuid.uuid4().hex[:12]
        path = request.url.path
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            return JSONResponse(
                {
                    "error": {
                        "message": f"Request larger than {max_body_bytes:,} bytes.",
                        "type": "invalid_request_error",
                    }
                },
                status_code=413,
            )
        if auth.enabled and path.startswith("/v1") and auth.api_caller(request) is None:
            return JSONResponse(
                {
                    "error": {
                        "message": "Missing or invalid credentials: send 'Authorization: Bearer <API key>' or Basic auth.",
                        "type": "authentication_error",
                    }
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="qwen-chat"'},
            )
        response = await call_next(request)
        # Structured access log: no message text, no credentials.
        log.info(
            "rid=%s method=%s path=%s status=%d ms=%d",
            rid,
            request.method,
            path,
            response.status_code,
            round((time.perf_counter() - started) * 1000),
        )
        return response

    def user_of(request: Request) -> str:
        return auth.api_caller(request) or (request.client.host if request.client else "anonymous")

    app.include_router(openai_router(manager, scheduler, user_of, max_body_bytes))

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        """Readiness: a model is loaded, with what and where."""
        status = manager.status()
        status["scheduler"] = scheduler.stats()
        return JSONResponse(status, status_code=200 if status.get("loaded") else 503)

    gr.mount_gradio_app(
        app,
        demo,
        path="",
        auth=auth.login if auth.users else None,
        show_error=True,
        **launch_kwargs,
    )
    app.state.log_content = log_content
    return app
