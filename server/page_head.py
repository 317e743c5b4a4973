"""Put the page's own ``<head>`` scripts into the served HTML, before Gradio's module script.

Gradio 6.31 sends ``head=`` inside the page config and inserts it only after its own start-up,
when ``gradio-app`` is defined and its components may already have read ``localStorage``. The
storage guard (:mod:`ui.browser_storage`) must run first (it holds Gradio's mount until the
IndexedDB copy of the chats is read), so the HTML of ``/`` gets it right after ``<head>``.
"""

from __future__ import annotations

_HEAD = b"<head>"
_HTML = b"text/html"


class PageHead:
    """ASGI middleware: insert ``html`` after the opening ``<head>`` of the page at ``/``.

    Only ``GET``/``HEAD`` of ``/`` with an uncompressed HTML answer are touched (held whole: the
    page is one template response of a few hundred KB); every other response passes through.
    """

    def __init__(self, app, html: str) -> None:
        self.app = app
        self.html = html.encode()

    async def __call__(self, scope, receive, send) -> None:
        if not self.html or scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        if scope["path"] not in ("/", ""):
            return await self.app(scope, receive, send)
        start: dict | None = None
        body: list[bytes] = []

        async def hold(message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if _is_plain_html(message):
                    start = message
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            inserted = _insert(page, self.html) if page else page
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            length = _length(start["headers"])
            if page:
                length = len(inserted)
            elif length is not None and scope["method"] == "HEAD":
                length += len(self.html)  # HEAD: the length the GET would send
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": inserted, "more_body": False})

        await self.app(scope, receive, hold)


def _is_plain_html(start: dict) -> bool:
    """A 200 HTML answer without a content encoding (a compressed body cannot be edited)."""
    headers = {k.lower(): v for k, v in start.get("headers", [])}
    return (
        start.get("status") == 200 and _HTML in headers.get(b"content-type", b"") and b"content-encoding" not in headers
    )


def _length(headers) -> int | None:
    """The response's declared ``content-length``, if any."""
    for key, value in headers:
        if key.lower() == b"content-length":
            return int(value)
    return None


def _insert(page: bytes, html: bytes) -> bytes:
    """``page`` with ``html`` right after its first ``<head>`` (unchanged if it has none)."""
    at = page.find(_HEAD)
    if at < 0:
        return page
    at += len(_HEAD)
    return page[:at] + html + page[at:]
