"""One ASGI app: the Gradio UI at ``/``, the OpenAI API at ``/v1``, health at ``/healthz``, ``/readyz``."""

from __future__ import annotations

import logging
import time
import uuid

import anyio
import gradio as gr
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.routing import Mount

from .auth import Auth
from .openai_api import openai_router

log = logging.getLogger("qwen_chat.http")
OPEN_PATHS = ("/healthz", "/readyz")
# What the login page itself needs before anyone has logged in: the page shell, its static
# assets, and the login/logout form targets. Everything else (every other Gradio route, the
# uploads, the /v1 API and the API schema) needs a login cookie or API credentials when
# logins are configured: Gradio leaves some of its routes open (/gradio_api/cancel,
# /gradio_api/heartbeat/…, /gradio_api/stream/…, …), so the check is made here, for all.
LOGIN_PAGE_PATHS = frozenset(
    {
        "/",
        "/login",
        "/login/",
        "/logout",
        "/favicon.ico",
        "/theme.css",
        "/gradio_api/theme.css",
        "/manifest.json",
        "/robots.txt",
    }
)
LOGIN_PAGE_PREFIXES = ("/assets/", "/static/", "/svelte/")


def is_open_path(path: str) -> bool:
    """Whether ``path`` is served without credentials when logins are on (health and the login page)."""
    return path in OPEN_PATHS or path in LOGIN_PAGE_PATHS or path.startswith(LOGIN_PAGE_PREFIXES)


def _gradio_app(app: FastAPI):
    """The mounted Gradio app (it keeps the login sessions)."""
    return next(r.app for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "tokens"))


def gradio_user(gradio_app, request: Request) -> str | None:
    """The user logged in through Gradio's login form, from its session cookie (as Gradio reads it)."""
    cookie_id = gradio_app.cookie_id
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    return gradio_app.tokens.get(token) if token else None


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
        path = request.scope["path"]  # what the router matches
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
        api = path.startswith("/v1") or path == "/openapi.json"
        if auth.enabled and api and auth.api_caller(request) is None:
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
        if auth.users and not api and not is_open_path(path) and gradio_user(app.state.gradio_app, request) is None:
            return JSONResponse({"detail": {"error": "Not authenticated", "auth_message": None}}, status_code=401)
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
        batcher = getattr(manager.engine, "batcher", None)
        if batcher is not None:  # the local engine's shared decode batch
            status["batch"] = batcher.stats()
        return JSONResponse(status, status_code=200 if status.get("loaded") else 503)

    async def login(username: str, password: str) -> bool:
        # Gradio calls a sync auth function on its event loop: every login's scrypt (deliberately
        # ~0.1 s of CPU) would freeze all streams and requests; a burst of logins timed out the
        # logins themselves (bench/soak.py, 16 at once). Awaited, it runs in a worker thread.
        return await anyio.to_thread.run_sync(auth.login, username, password)

    gr.mount_gradio_app(
        app,
        demo,
        path="",
        auth=login if auth.users else None,
        show_error=True,
        **launch_kwargs,
    )
    app.state.gradio_app = _gradio_app(app)
    app.state.log_content = log_content
    return app
