"""Issue #15 item 2: the storage guard must run before Gradio's module script, so it is put into the
HTML of ``/`` (Gradio's own ``head=`` arrives after Gradio started and its components read storage)."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from server.page_head import PageHead

_PAGE = "<!doctype html><html><head><meta charset='utf-8'><script type='module' src='x.js'></script></head></html>"
_GUARD = "<script>window.guard = 1</script>"


async def _page(request):
    return HTMLResponse(_PAGE)


async def _other(request):
    return HTMLResponse(_PAGE) if request.url.path == "/other" else JSONResponse({"head": "<head>"})


def _client() -> TestClient:
    routes = [Route("/", _page, methods=["GET", "HEAD"]), Route("/other", _other), Route("/json", _other)]
    return TestClient(PageHead(Starlette(routes=routes), _GUARD))


def test_the_guard_comes_right_after_head_before_any_module_script():
    r = _client().get("/")
    assert r.status_code == 200
    assert r.text.startswith("<!doctype html><html><head>" + _GUARD + "<meta")
    assert r.text.count(_GUARD) == 1
    assert int(r.headers["content-length"]) == len(r.content)


def test_head_requests_announce_the_length_a_get_sends():
    c = _client()
    assert int(c.head("/").headers["content-length"]) == len(c.get("/").content)


def test_other_paths_and_non_html_pass_untouched():
    c = _client()
    assert _GUARD not in c.get("/other").text
    assert c.get("/json").json() == {"head": "<head>"}
    assert c.post("/").status_code == 405  # methods other than GET/HEAD are not held


def test_the_served_page_runs_the_guard_before_gradio(app):
    """The real app: one guard, in the HTML before Gradio's module script, not in the config."""
    page = httpx.get(f"{app.url}/", timeout=30).text
    guard = page.find("qwen-chat-store-v1")
    module = page.find('type="module"')
    assert 0 < guard < module, (guard, module)
    assert page.count("const KEY = ") == 1  # not also in Gradio's config (head=)
    assert page.find("qwen-lang") < module  # the language cookie too
