"""Issue #15 item 3: the chat page's own events and uploads may carry a long history (an import may
be 20 MiB), the API keeps its 2 MB limit. Real middleware in front of a real Starlette app."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from server.middleware import PAGE_MAX_BYTES, BodyLimit


async def _echo(request):
    return PlainTextResponse(str(len(await request.body())))


def _client() -> TestClient:
    paths = ["/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/run/predict", "/v1/chat/completions"]
    app = Starlette(routes=[Route(p, _echo, methods=["POST"]) for p in paths])
    return TestClient(BodyLimit(app, max_bytes=2_000_000, page_max_bytes=PAGE_MAX_BYTES))


def test_page_events_take_a_3_mb_store_and_the_api_keeps_its_limit():
    c = _client()
    body = b"x" * 3_000_000
    for path in ("/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/run/predict"):
        r = c.post(path, content=body)
        assert r.status_code == 200 and r.text == str(len(body)), path
    r = c.post("/v1/chat/completions", content=body)
    assert r.status_code == 413 and "2,000,000" in r.text


def test_page_events_past_their_own_limit_are_refused_without_reading_it_all():
    c = _client()
    limit = PAGE_MAX_BYTES["/gradio_api/queue/join"]
    r = c.post("/gradio_api/queue/join", content=b"x" * (limit + 1))
    assert r.status_code == 413 and f"{limit:,}" in r.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(PAGE_MAX_BYTES["/gradio_api/upload"] // 2**20 + 2):
            yield b"x" * 2**20

    r = c.post("/gradio_api/upload", content=chunks())
    assert r.status_code == 413
