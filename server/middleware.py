"""The one middleware stack in front of every route (UI, Gradio API, ``/v1``, health).

Outermost first: :class:`AccessLog`, :class:`Cors`, :class:`BodyLimit`, :class:`EdgeAuth`, then
the upload recorder (:mod:`server.files`) and the routes. All are plain ASGI (no body buffering,
nothing blocking on the event loop). Which paths are open, which are API paths, is declared here
once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from .auth import Auth
from .identity import SCOPE_KEY, Caller, Refusal, client_address, resolve

log = logging.getLogger("qwen_chat.http")

# Served to anyone, with or without credentials configured (liveness, readiness).
OPEN_PATHS = ("/healthz", "/readyz", "/health")
# What the login page itself needs before anyone has logged in: the page shell, its static
# assets, and the login/logout form targets. Everything else (every other Gradio route, the
# uploads, the /v1 API, its schema, /metrics) needs credentials when any are configured: Gradio
# leaves some of its routes open (/gradio_api/cancel, /gradio_api/heartbeat/…, …), so the
# check is made here, for all.
LOGIN_PAGE_PATHS = frozenset(
    {"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
     "/manifest.json", "/robots.txt"}
)  # fmt: skip
LOGIN_PAGE_PREFIXES = ("/assets/", "/static/", "/svelte/")
# Header credentials only (no cookie), OpenAI-shaped errors.
API_PATHS = ("/openapi.json", "/metrics", "/tokenize", "/detokenize", "/tokenizer_info")


def is_open_path(path: str) -> bool:
    """Whether ``path`` is served without credentials when logins are on (health and the login page)."""
    return path in OPEN_PATHS or path in LOGIN_PAGE_PATHS or path.startswith(LOGIN_PAGE_PREFIXES)


def is_api_path(path: str) -> bool:
    """The OpenAI-compatible API and what belongs to it."""
    return path == "/v1" or path.startswith("/v1/") or path in API_PATHS


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    """A complete JSON response."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def error_body(path: str, status: int, message: str, kind: str) -> dict:
    """OpenAI-shaped on API paths, Gradio-shaped (``detail``) elsewhere."""
    if is_api_path(path):
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"detail": message} if status != 401 else {"detail": {"error": message, "auth_message": None}}


class AccessLog:
    """Structured access log: request id, method, path, status, ms. No message text, no credentials."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [0]

        async def logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            log.info(
                "rid=%s method=%s path=%s status=%d ms=%d",
                uuid.uuid4().hex[:12],
                scope["method"],
                scope["path"],
                status[0],
                round((time.perf_counter() - started) * 1000),
            )


class Cors:
    """CORS, closed unless ``--cors-origins`` lists the origin, on every route, whatever the Host.

    Every ``Access-Control-*`` header the inner apps set is removed (Gradio's own CORS middleware
    reflects any origin with credentials when the Host is not localhost); listed origins get
    theirs here. A preflight from an unlisted origin is refused (403) without CORS headers.
    """

    METHODS = "GET, POST"

    def __init__(self, app, origins: tuple[str, ...] = ()):
        self.app = app
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        wanted = (b"origin", b"access-control-request-method", b"access-control-request-headers")
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in wanted}
        origin = headers.get(b"origin")
        listed = origin is not None and origin.rstrip("/").lower() in self.origins
        if scope["method"] == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            if not listed:
                await send_json(send, 403, {"detail": "Cross-origin requests from this origin are not allowed."},
                                {"Vary": "Origin"})  # fmt: skip
                return
            allow = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": self.METHODS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            }
            if requested := headers.get(b"access-control-request-headers"):
                allow["Access-Control-Allow-Headers"] = requested
            await send_json(send, 200, {"detail": "OK"}, allow)
            return

        async def cors_send(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                if origin is not None:
                    kept.append((b"vary", b"Origin"))
                if listed:
                    kept += [(b"access-control-allow-origin", origin.encode("latin-1")),
                             (b"access-control-allow-credentials", b"true")]  # fmt: skip
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, cors_send)


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a body passes the limit (unwinds the route that reads it)."""


# The chat page's own events and uploads carry a browser's chats (an import may be 20 MiB:
# ui.conversations.MAX_IMPORT_BYTES); with the API's 2 MB limit a long history got 413 on every event.
# Uploads stop at 20 MiB of body, before Gradio's own max_file_size check (which answers but then
# reads the whole body); events get room for a 20 MiB store and the event around it.
PAGE_MAX_BYTES = {
    "/gradio_api/upload": 20 * 2**20,
    "/gradio_api/queue/join": 24 * 2**20,
    "/gradio_api/run/": 24 * 2**20,
}


class BodyLimit:
    """Counts request body bytes as they arrive, on every route; at ``max_bytes`` answers 413
    without reading the rest (a declared ``Content-Length`` over the limit is refused at once).
    The chat page's paths (``page_max_bytes``: path prefix → limit) may be larger, never smaller."""

    def __init__(self, app, max_bytes: int = 2_000_000, page_max_bytes: dict[str, int] | None = None):
        self.app, self.max_bytes = app, max_bytes
        self.page_max_bytes = {k: max(max_bytes, v) for k, v in (page_max_bytes or {}).items()}

    def _limit(self, path: str) -> int:
        return next((v for k, v in self.page_max_bytes.items() if path.startswith(k)), self.max_bytes)

    async def _too_large(self, scope, send) -> None:
        message = f"Request body larger than {self._limit(scope['path']):,} bytes."
        body = error_body(scope["path"], 413, message, "invalid_request_error")
        await send_json(send, 413, body, {"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self._limit(scope["path"])
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._too_large(scope, send)
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # whatever the route answers once its read failed (a 500) is replaced by the 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._too_large(scope, send)


class EdgeAuth:
    """Refuses callers without credentials (when any are configured) and records who the caller is.

    Open paths pass untouched; the login page's paths pass for anonymous callers; everything else
    needs a login cookie, a Bearer key or Basic auth (API paths: headers only). Failed checks are
    throttled (429 with ``Retry-After``). The resolved :class:`Caller` goes into the scope for
    Gradio (``request.username``), ``/v1`` (rate limits) and the upload confinement.
    """

    def __init__(self, app, auth: Auth, gradio_app: Callable[[], object]):
        self.app, self.auth, self.gradio_app = app, auth, gradio_app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in OPEN_PATHS or not self.auth.enabled:
            scope[SCOPE_KEY] = Caller(None, client_address(scope))
            return await self.app(scope, receive, send)
        caller = await resolve(scope, self.auth, self.gradio_app(), cookies=not is_api_path(path))
        if isinstance(caller, Refusal) and caller.verdict.throttled:
            wait = caller.verdict.retry_after
            message = f"Too many failed sign-ins from this user or address: try again in {wait} s."
            return await self._refuse(scope, send, 429, message, "rate_limit_error", {"Retry-After": str(wait)})
        if isinstance(caller, Refusal):
            caller = Caller(None, client_address(scope))
        if caller.id is None and not is_open_path(path):
            message = (
                "Missing or invalid credentials: send 'Authorization: Bearer <API key>' or Basic auth."
                if is_api_path(path)
                else "Not authenticated"
            )
            headers = {"WWW-Authenticate": 'Bearer realm="qwen-chat"'} if is_api_path(path) else {}
            return await self._refuse(scope, send, 401, message, "authentication_error", headers)
        scope[SCOPE_KEY] = caller
        await self.app(scope, receive, send)

    async def _refuse(self, scope, send, status: int, message: str, kind: str, headers: dict) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_json(send, status, error_body(scope["path"], status, message, kind), headers)
