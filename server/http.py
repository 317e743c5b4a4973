"""One ASGI app: the Gradio UI at ``/``, the OpenAI API at ``/v1``, health at ``/healthz``, ``/readyz``.

Every route sits behind one middleware stack (:mod:`server.middleware`: access log, CORS, body
size, auth) and one rule for who the caller is (:mod:`server.identity`); Gradio's events may
name only files their caller uploaded (:mod:`server.files`).
"""

from __future__ import annotations

import secrets

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from gradio.route_utils import CustomCORSMiddleware
from starlette.routing import Mount

from . import events
from .auth import Auth
from .files import UploadRecorder, UploadRegistry, confine_event_files
from .identity import caller_of, client_address
from .middleware import (  # noqa: F401 - re-exported: tests and docs read the open paths here
    LOGIN_PAGE_PATHS,
    LOGIN_PAGE_PREFIXES,
    OPEN_PATHS,
    PAGE_MAX_BYTES,
    AccessLog,
    BodyLimit,
    Cors,
    EdgeAuth,
    is_open_path,
)
from .openai_api import openai_router
from .page_head import PageHead


def _gradio_app(app: FastAPI):
    """The mounted Gradio app (it keeps the login sessions)."""
    return next(r.app for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "tokens"))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without the ``input`` it would copy from the request body (no echo)."""
    errors = [{"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _add_login(app: FastAPI, auth: Auth, gradio) -> None:
    """Gradio's login form target, answered here: throttled, off the event loop, and in
    ``--api-key``-alone mode logging in as the key's id (see :mod:`server.identity`)."""

    async def login(request: Request):
        form = await request.form()
        username, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
        owner, verdict = await auth.login_form(username, password, client_address(request.scope))
        if verdict.throttled:
            return JSONResponse(
                {"detail": f"Too many failed sign-ins: try again in {verdict.retry_after} s."},
                status_code=429,
                headers={"Retry-After": str(verdict.retry_after)},
            )
        if owner is None:
            return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)
        token = secrets.token_urlsafe(16)
        gradio().tokens[token] = owner
        cookie = f"access-token-{gradio().cookie_id}"
        response = JSONResponse({"success": True})
        # The same two cookies Gradio's own login sets, which its frontend and routes read.
        response.set_cookie(key=cookie, value=token, httponly=True, samesite="none", secure=True)
        response.set_cookie(key=f"access-token-unsecure-{gradio().cookie_id}", value=token, httponly=True)
        return response

    for path in ("/login", "/login/"):
        app.add_api_route(path, login, methods=["POST"], include_in_schema=False)


async def _never(username: str, password: str) -> bool:
    """Gradio's own login check: never reached (``/login`` is served by :func:`_add_login`)."""
    return False


def _use_our_identity(gradio_app) -> None:
    """Make Gradio's ``get_current_user`` (behind ``gr.Request.username``, the page config and its
    login checks) answer with the caller the middleware resolved."""

    def endpoints(routes):
        for route in routes:
            route = getattr(route, "original_route", route)
            if hasattr(route, "effective_candidates"):  # FastAPI's included routers
                yield from endpoints(route.effective_candidates())
            elif hasattr(route, "endpoint"):
                yield route.endpoint

    get_current_user = next(e for e in endpoints(gradio_app.routes) if e.__name__ == "get_current_user")

    async def current_user(request: Request) -> str | None:
        return caller_of(request).id

    gradio_app.dependency_overrides[get_current_user] = current_user


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
    app.add_exception_handler(RequestValidationError, validation_error)

    def user_of(request: Request) -> str:
        return caller_of(request).rate_key

    app.include_router(openai_router(manager, scheduler, user_of, max_body_bytes))

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        """Readiness: a model is loaded, which one (its id, no paths), and the load on it."""
        status = manager.status()
        status["scheduler"] = scheduler.stats()
        batcher = getattr(manager.engine, "batcher", None)
        if batcher is not None:  # the local engine's shared decode batch
            status["batch"] = batcher.stats()
        ready = bool(status.get("loaded"))
        engine = manager.engine  # read once: a model switch may replace it meanwhile
        if ready and hasattr(engine, "live_endpoints"):  # remote backend: ready only while a server answers
            live = engine.live_endpoints()
            status["endpoints"] = {"live": live, "total": len(engine.endpoints)}  # counts only: no URLs here
            ready = live > 0
        return JSONResponse(status, status_code=200 if ready else 503)

    if auth.enabled:  # registered before the mount, so this /login answers, not Gradio's
        _add_login(app, auth, lambda: app.state.gradio_app)

    uploads = UploadRegistry()
    confine_event_files(demo, uploads)
    # The page's head scripts go into its HTML (server.page_head), not Gradio's late ``head=``.
    launch_kwargs = dict(launch_kwargs)
    page_head = launch_kwargs.pop("head", "")
    gr.mount_gradio_app(app, demo, path="", auth=_never if auth.enabled else None, show_error=True, **launch_kwargs)
    gradio_app = app.state.gradio_app = _gradio_app(app)
    # CORS is ours alone (server.middleware.Cors strips whatever an inner app sets, too).
    gradio_app.user_middleware = [m for m in gradio_app.user_middleware if m.cls is not CustomCORSMiddleware]
    gradio_app.add_exception_handler(RequestValidationError, validation_error)
    events.install(demo, gradio_app)  # an unknown event: 404, not a 500 and a logged traceback
    _use_our_identity(gradio_app)

    # add_middleware puts each new one outside the previous: this reads innermost first.
    app.add_middleware(PageHead, html=page_head)
    app.add_middleware(UploadRecorder, registry=uploads)
    app.add_middleware(EdgeAuth, auth=auth, gradio_app=lambda: gradio_app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, page_max_bytes=PAGE_MAX_BYTES)
    app.add_middleware(Cors, origins=tuple(cors_origins))
    app.add_middleware(AccessLog)
    app.state.auth = auth
    app.state.uploads = uploads
    app.state.log_content = log_content
    return app
