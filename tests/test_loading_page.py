"""The port answers while the model loads (issue 15, item 10): a page with the load's progress,
``/readyz`` 503 with the progress, ``/healthz`` 200, everything else 503 with ``Retry-After``;
then the real app. A failed load still stops the process with its message."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from server_process import ROOT, AppProcess, free_port

from server.loading import LOADING_ERROR, LoadingApp, lang_of, public_text

# --- the loading app on its own ------------------------------------------------------------------


def test_the_loading_module_and_app_py_import_nothing_heavy():
    probe = (
        "import sys; sys.path.insert(0, '.'); import app, server.loading; "
        "print([m for m in ('torch', 'transformers', 'gradio', 'fastapi') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Locating /home/ann/models/Qwen-7B-Chat", "Locating Qwen-7B-Chat"),
        ("Locating Qwen/Qwen-7B-Chat", "Locating Qwen-7B-Chat"),  # as ModelManager.status names it
        ("Checkpoint folder ./models/x/ does not exist.", "Checkpoint folder x does not exist."),
        (r"Reading qwen.tiktoken from C:\Users\ann\tok", "Reading qwen.tiktoken from tok"),
        ("Checking http://user:pw@10.0.0.5:8000/v1", "Checking [endpoint]"),
        ("cached in ~/data/gguf)", "cached in gguf)"),
        ("two\nlines", "two lines"),
    ],
)
def test_public_text_keeps_no_paths_or_urls(raw, shown):
    assert public_text(raw) == shown


def test_language_from_the_cookie_then_accept_language():
    from ui.server_text import LANG_COOKIE

    assert LANG_COOKIE == "qwen-lang"  # the same cookie the page's language control sets
    assert lang_of({"accept-language": "zh-CN,zh;q=0.9"}) == "zh"
    assert lang_of({"accept-language": "zh-CN", "cookie": "qwen-lang=en"}) == "en"
    assert lang_of({"cookie": "a=b; qwen-lang=zh"}) == "zh"
    assert lang_of({"accept-language": "de", "cookie": "qwen-lang=xx"}) == "en"
    assert lang_of({}) == "en"


class _Inner:
    """An ASGI app that records its lifespan and answers with what it saw."""

    def __init__(self):
        self.events: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = "open"
                    self.events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = json.dumps({"path": scope["path"], "events": self.events, "state": scope.get("state")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def test_the_wrapper_answers_while_loading_then_runs_the_inner_lifespan_and_forwards():
    import uvicorn

    loading = LoadingApp("Qwen-7B-Chat")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(loading, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive()
            time.sleep(0.05)
        loading.progress(0.1, "Loading /srv/models/Qwen-7B-Chat as bf16 on cuda:0")
        with httpx.Client(base_url=url, timeout=10) as c:
            r = c.get("/readyz")
            assert r.status_code == 503
            assert r.json() == {
                "loading": True,
                "model": "Qwen-7B-Chat",
                "fraction": 0.1,
                "message": "Loading Qwen-7B-Chat as bf16 on cuda:0",
            }
            assert c.get("/healthz").status_code == 200
            for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/config")]:
                r = c.request(method, path)
                assert (r.status_code, r.headers["retry-after"], r.json()) == (503, "5", LOADING_ERROR)
            page = c.get("/", headers={"cookie": "qwen-lang=zh"})
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
            assert "正在加载 Qwen-7B-Chat" in page.text and "/srv" not in page.text and "/readyz" in page.text
            assert "<link" not in page.text and "src=" not in page.text  # self-contained
            deep = c.get("/some/page", headers={"accept": "text/html"})
            assert deep.status_code == 503 and "Loading Qwen-7B-Chat" in deep.text

            inner = _Inner()
            assert loading.serve(inner) and loading.ready
            assert inner.events == ["startup"]
            r = c.get("/readyz")
            assert r.status_code == 200
            assert r.json() == {"path": "/readyz", "events": ["startup"], "state": {"db": "open"}}
    finally:
        server.should_exit = True
        thread.join(30)
    assert inner.events == ["startup", "shutdown"]


def test_a_failure_is_shown_without_paths_and_lingers_only_for_a_watcher():
    loading = LoadingApp("x")
    loading.fail("Checkpoint folder /srv/models/x does not exist. Pass --model with an existing folder.")
    started = time.monotonic()
    loading.linger(5)  # nobody polled: no wait
    assert time.monotonic() - started < 1
    status = loading._status()
    assert status == {
        "loading": False,
        "failed": True,
        "model": "x",
        "error": "Checkpoint folder x does not exist. Pass --model with an existing folder.",
    }
    loading.fail(None)  # anything but a user-facing error: no text of the exception at all
    assert loading._status()["error"] == "An unexpected error stopped the start."


def test_the_startup_delay_is_bounded():
    sys.path.insert(0, str(ROOT))
    import app

    assert app.parse_config(["--startup-delay-s", "3"]).startup_delay_s == 3
    with pytest.raises(ValueError, match="--startup-delay-s"):
        app.parse_config(["--startup-delay-s", "601"])


# --- the real app ------------------------------------------------------------------------------------


def test_the_real_app_shows_the_loading_page_then_serves_the_chat(ckpt_dir, tmp_path):
    data = tmp_path / "data"
    args = ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(data), "--startup-delay-s", "10"]
    proc = AppProcess(args, env={"OMP_NUM_THREADS": "1"}, wait="listening", timeout=60)
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503, ready.text
            status = ready.json()
            assert status["loading"] is True and status["model"] == ckpt_dir.name
            assert 0 <= status["fraction"] <= 1 and isinstance(status["message"], str)
            page = c.get("/", headers={"accept": "text/html"})
            assert page.status_code == 503 and f"Loading {ckpt_dir.name}" in page.text
            models = c.get("/v1/models")
            assert models.status_code == 503 and models.headers["retry-after"] == "5"
            assert models.json() == LOADING_ERROR
            assert c.get("/healthz").status_code == 200
            for body in (ready.text, page.text, models.text):
                assert str(ckpt_dir.parent) not in body and "Traceback" not in body

            # The progress moves on while the model loads, and never shows the folder.
            seen, deadline = [], time.time() + 300
            while True:
                r = c.get("/readyz")
                if r.status_code == 200:
                    break
                assert time.time() < deadline and proc.proc.poll() is None, proc.output()[-3000:]
                s = r.json()
                assert s["loading"] is True, s
                if not seen or seen[-1] != (s["fraction"], s["message"]):
                    seen.append((s["fraction"], s["message"]))
                time.sleep(0.2)
            assert [f for f, _ in seen] == sorted(f for f, _ in seen), seen
            assert any(m for _, m in seen), seen  # at least one step of the load was shown
            assert not any("/" in m for _, m in seen), seen

            assert r.json()["loaded"] is True and r.json()["model"] == ckpt_dir.name
            page = c.get("/")
            assert page.status_code == 200 and "gradio" in page.text.lower()
            models = c.get("/v1/models")
            assert models.status_code == 200 and models.json()["data"][0]["id"] == ckpt_dir.name
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
            done = c.post("/v1/chat/completions", json=chat)
            assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 2
    finally:
        proc.stop()


def test_a_missing_checkpoint_is_shown_to_a_watching_page_then_the_start_stops(tmp_path):
    missing = tmp_path / "models" / "Qwen-7B-Chat"
    args = ["--model", str(missing), "--device", "cpu", "--data-dir", str(tmp_path / "data")]
    proc = AppProcess(args, env={"OMP_NUM_THREADS": "1"}, wait="listening", timeout=60)
    failed = None
    try:
        deadline = time.time() + 240
        while proc.proc.poll() is None and time.time() < deadline:
            try:
                r = httpx.get(proc.url + "/readyz", timeout=5)
            except httpx.TransportError:
                break  # the process is going
            assert r.status_code == 503
            if r.json().get("failed"):
                failed = r.json()
            time.sleep(0.3)
        code = proc.proc.wait(60)
    finally:
        proc.stop()
    out = proc.output()
    assert code == 2, out[-3000:]
    assert f"Cannot start: Checkpoint folder {missing} does not exist" in out and "Traceback" not in out
    assert failed is not None, out[-3000:]  # the watcher saw why, before the exit
    assert failed["error"] == "Checkpoint folder Qwen-7B-Chat does not exist. Pass --model with an existing folder."
