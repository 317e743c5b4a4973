"""What the server answers while the model loads, and the hand-over to the real app once it is built.

``app.py`` starts uvicorn on a :class:`LoadingApp` at once and builds the real app (model, UI,
API: tens of seconds, minutes for a 72B checkpoint) on a thread. Until :meth:`LoadingApp.serve`
hands that app over, a browser gets a small page with the load's progress that polls
``/readyz`` and reloads itself when the chat is ready; ``/healthz`` answers 200 (the process
is alive); ``/readyz`` and every other route 503 with ``Retry-After``. After the hand-over
every request goes to the real app, whose lifespan (Gradio's queue, ...) this module runs,
since uvicorn only runs the lifespan of the app it was given.

Pure ASGI on the standard library: importing this must not pull in torch, transformers or
Gradio, so the port answers within a second or two of the start. Nothing served here holds a
filesystem path, a URL or a traceback (:func:`public_text`).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import threading
from http.cookies import CookieError, SimpleCookie

log = logging.getLogger(__name__)

LANG_COOKIE = "qwen-lang"  # ui.server_text.LANG_COOKIE (not imported: the ui package imports Gradio)
RETRY_AFTER_S = 5
LOADING_ERROR = {
    "error": {
        "message": "The model is still loading; retry shortly.",
        "type": "server_error",
        "code": "model_loading",
    }
}

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_PATH = re.compile(r"[^\s'\"()<>\[\],;`]*[\\/][^\s'\"()<>\[\],;`]*")
_MAX_CHARS = 600


def _last_part(match: re.Match) -> str:
    token = match.group(0)
    stripped = token.rstrip(".:!?")
    parts = [p for p in re.split(r"[\\/]+", stripped) if p not in ("", ".", "..", "~")]
    return (parts[-1] if parts else "…") + token[len(stripped) :]


def public_text(text) -> str:
    """``text`` fit to show anyone: URLs dropped, every path cut to its last part (a model's
    folder to its name, as ``ModelManager.status`` shows it), one line, bounded."""
    text = _URL.sub("[endpoint]", str(text))
    text = _PATH.sub(_last_part, text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"


def lang_of(headers: dict[str, str]) -> str:
    """``"en"`` or ``"zh"``: the ``qwen-lang`` cookie, else ``Accept-Language`` (as ``ui.server_text.lang_of``)."""
    try:
        chosen = SimpleCookie(headers.get("cookie") or "").get(LANG_COOKIE)
    except CookieError:
        chosen = None
    if chosen is not None and chosen.value in ("en", "zh"):
        return chosen.value
    return "zh" if (headers.get("accept-language") or "").strip().lower().startswith("zh") else "en"


TEXT = {
    "en": {
        "title": "Loading {model}…",
        "title_anon": "Loading the model…",
        "intro": "The chat opens here by itself once the model is loaded.",
        "starting": "Starting…",
        "failed": "The model could not be loaded:",
        "failed_hint": "The server's log has the full message. Fix the cause and start the app again.",
        "gone": "The server stopped answering. Check its log, then reload this page.",
    },
    "zh": {
        "title": "正在加载 {model}…",
        "title_anon": "正在加载模型…",
        "intro": "模型加载完成后，本页会自动打开对话。",
        "starting": "正在启动…",
        "failed": "模型加载失败：",
        "failed_hint": "完整信息见服务器日志。排除原因后请重新启动应用。",
        "gone": "服务器已停止响应。请查看服务器日志，然后刷新本页。",
    },
}

_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f7f7f8; color: #1f2328; margin: 0; }}
main {{ max-width: 34rem; margin: 18vh auto 0; padding: 0 1.5rem; }}
h1 {{ font-size: 1.35rem; font-weight: 600; }}
.bar {{ height: .6rem; background: #e3e4e8; border-radius: .3rem; overflow: hidden; margin: 1.2rem 0 .6rem; }}
.fill {{ height: 100%; width: 0; background: #615ced; transition: width .4s; }}
.row {{ display: flex; justify-content: space-between; gap: 1rem; font-size: .9rem; color: #57606a; }}
.failed .fill {{ background: #cf222e; }}
#error {{ color: #cf222e; }}
@media (prefers-color-scheme: dark) {{
  body {{ background: #0d1117; color: #e6edf3; }} .bar {{ background: #30363d; }} .row {{ color: #8b949e; }}
}}
</style></head>
<body><main id="box">
<h1>{title}</h1>
<p>{intro}</p>
<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" id="bar"><div class="fill" id="fill"></div></div>
<div class="row"><span id="message"></span><span id="percent"></span></div>
<p id="error" hidden></p>
</main>
<script>
const T = {texts};
let state = {state};
function show(s) {{
  const pct = Math.round(100 * Math.min(1, Math.max(0, s.fraction || 0)));
  document.getElementById("fill").style.width = pct + "%";
  document.getElementById("bar").setAttribute("aria-valuenow", pct);
  document.getElementById("percent").textContent = pct + "%";
  document.getElementById("message").textContent = s.message || T.starting;
  if (s.failed) {{
    document.getElementById("box").className = "failed";
    const e = document.getElementById("error");
    e.hidden = false;
    e.textContent = T.failed + " " + (s.error || "") + " " + T.failed_hint;
  }}
}}
async function poll() {{
  try {{
    const r = await fetch("/readyz", {{cache: "no-store"}});
    const s = await r.json().catch(() => ({{}}));
    if (s.loading === true) {{ show(s); return setTimeout(poll, 1000); }}
    if (s.failed === true) {{ show(s); return setTimeout(poll, 1000); }}
    location.reload();  // the real app answered: it serves this address now
  }} catch (err) {{
    if (state.failed) {{ document.getElementById("error").textContent += " " + T.gone; return; }}
    document.getElementById("message").textContent = T.gone;
    setTimeout(poll, 2000);
  }}
}}
show(state);
setTimeout(poll, 1000);
</script></body></html>
"""


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


class InnerStartupFailed(RuntimeError):
    """The built app's lifespan startup failed (uvicorn would have exited with status 3)."""


class _Lifespan:
    """Runs one ASGI app's lifespan protocol, as uvicorn does for the app it serves."""

    def __init__(self, app):
        self.app = app
        self.state: dict = {}
        self.supported = True
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        self._task: asyncio.Task | None = None

    async def _send(self, message: dict) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed") and not self._started.done():
            self._started.set_result(message)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not self._stopped.done():
            self._stopped.set_result(message)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._queue.get, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported through the futures below
            if self._started.done() and self._started.result()["type"] == "lifespan.startup.complete":
                log.error("The app's lifespan ended with an error: %s", exc)
            elif not self._started.done():
                # An app without lifespan support raises on the unknown scope: uvicorn's "auto" carries on.
                self.supported = False
                log.debug("The app does not support the lifespan protocol: %r", exc)

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._queue.put({"type": "lifespan.startup"})
        await asyncio.wait([self._started, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self._started.done():
            self.supported = False
            return
        message = self._started.result()
        if message["type"] == "lifespan.startup.failed":
            raise InnerStartupFailed(message.get("message") or "the app's startup failed")

    async def shutdown(self, timeout: float = 30) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._queue.put({"type": "lifespan.shutdown"})
        await asyncio.wait([self._stopped, self._task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        message = self._stopped.result() if self._stopped.done() else None
        if message and message["type"] == "lifespan.shutdown.failed":
            log.error("The app's shutdown failed: %s", message.get("message", ""))


class LoadingApp:
    """The ASGI app uvicorn serves: the loading answers, then (after :meth:`serve`) the real app.

    ``progress`` and ``fail`` are called from the loading thread; ``serve`` too, and blocks until
    the real app's lifespan startup has run on the server's event loop.
    """

    def __init__(self, model: str | None = None, message: str = "", retry_after: int = RETRY_AFTER_S):
        self.model = public_text(model) if model else None
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._fraction = 0.0
        self._message = public_text(message) if message else ""
        self._error: str | None = None
        self._app = None  # the real app, once its lifespan startup completed
        self._lifespan: _Lifespan | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._closing = False
        self._polls = 0  # status answers (page, /readyz) given while loading
        self._polled_after_failure = threading.Event()

    # --- called from the loading thread ------------------------------------------------------

    def progress(self, fraction: float, message: str) -> None:
        """The latest step of the load (the loader's ``progress(fraction, message)`` callback)."""
        with self._lock:
            self._fraction = min(1.0, max(0.0, float(fraction)))
            self._message = public_text(message)

    def fail(self, message: str | None) -> None:
        """The load failed; ``message`` (written for users; paths are cut) or a generic one."""
        with self._lock:
            self._error = public_text(message) if message else "An unexpected error stopped the start."

    def linger(self, max_s: float) -> None:
        """After :meth:`fail`: if anyone was watching the load, give their next poll (up to ``max_s``)
        the chance to show the failure before the process exits."""
        if self._polls:
            self._polled_after_failure.wait(max_s)

    def serve(self, app, timeout: float = 600) -> bool:
        """Run ``app``'s lifespan startup on the server's loop, then forward every request to it.

        Returns False if the server is shutting down already; raises :class:`InnerStartupFailed`.
        """
        if not self._loop_ready.wait(timeout) or self._closing:
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(self._start(app), self._loop)
        except RuntimeError:  # the loop has closed: the server stopped meanwhile
            return False
        return future.result()

    @property
    def ready(self) -> bool:
        """Whether requests now go to the real app."""
        return self._app is not None

    # --- on the event loop --------------------------------------------------------------------

    async def _start(self, app) -> bool:
        if self._closing:
            return False
        self._lifespan = _Lifespan(app)
        await self._lifespan.startup()
        self._app = app
        return True

    async def _outer_lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._loop_ready.set()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._closing = True
                if self._lifespan is not None:
                    await self._lifespan.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._outer_lifespan(receive, send)
        app = self._app
        if app is not None:
            if self._lifespan.state:  # as uvicorn does: each request gets a copy of the lifespan state
                scope = {**scope, "state": {**scope.get("state", {}), **self._lifespan.state}}
            return await app(scope, receive, send)
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # try again later
            return
        if kind == "http":
            await self._answer(scope, send)

    def _status(self) -> dict:
        with self._lock:
            if self._error is not None:
                return {"loading": False, "failed": True, "model": self.model, "error": self._error}
            return {
                "loading": True,
                "model": self.model,
                "fraction": round(self._fraction, 3),
                "message": self._message,
            }

    def _seen(self, status: dict) -> None:
        self._polls += 1
        if status.get("failed"):
            self._polled_after_failure.set()

    async def _answer(self, scope, send) -> None:
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        head = method == "HEAD"
        retry = [(b"retry-after", str(self.retry_after).encode())]
        if path == "/healthz":
            return await _respond(send, 200, _json({"status": "ok", "loading": True}), head=head)
        if path == "/readyz":
            status = self._status()
            self._seen(status)
            return await _respond(send, 503, _json(status), retry, head=head)
        page = (
            method in ("GET", "HEAD")
            and not path.startswith("/v1")
            and (path == "/" or "text/html" in headers.get("accept", ""))
        )
        if page:
            status = self._status()
            self._seen(status)
            body = self._page(lang_of(headers), status).encode()
            extra = [*retry, (b"content-security-policy", _CSP)]
            return await _respond(send, 503, body, extra, content_type=b"text/html; charset=utf-8", head=head)
        await _respond(send, 503, _json(LOADING_ERROR), retry, head=head)

    def _page(self, lang: str, status: dict) -> str:
        texts = TEXT[lang]
        model = status.get("model")
        title = texts["title"].format(model=model) if model else texts["title_anon"]
        return _PAGE.format(
            lang="zh-CN" if lang == "zh" else "en",
            title=html.escape(title),
            intro=html.escape(texts["intro"]),
            texts=_script_json(texts),
            state=_script_json(status),
        )


_CSP = b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


async def _respond(send, status: int, body: bytes, extra=(), content_type=b"application/json", head=False) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
