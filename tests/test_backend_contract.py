"""The backend contract (qwen_core.backend): both engines satisfy it, the remote one without torch;
one stop matcher; a remote backend whose servers are all dead answers 503 (readiness and /v1)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_process import free_port

from qwen_core.backend import Backend, ReplyStreamProtocol
from qwen_core.engine import Engine
from qwen_core.errors import BackendUnavailable
from qwen_core.remote import RemoteEngine
from qwen_core.stops import StopMatcher, cut_at_stop


def test_importing_the_remote_backend_loads_no_torch():
    code = "import sys, qwen_core.remote, qwen_core.backend, qwen_core.stops; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _dead_remote(engine) -> RemoteEngine:
    """A remote engine on a closed port (the constructor connects to nothing), with the local checkpoint's
    tokenizer and defaults and a real EngineInfo."""
    info = replace(engine.info, precision="remote", device="remote", decode="remote (1 endpoint)")
    return RemoteEngine([f"http://127.0.0.1:{free_port()}"], engine.tokenizer, engine.defaults, info, cooldown=7)


def test_both_engines_satisfy_the_contract(engine):
    remote = _dead_remote(engine)
    try:
        for backend in (engine, remote):
            assert isinstance(backend, Backend)
            assert backend.build_prompt("Hi") == engine.build_prompt("Hi")  # one prompt builder
            assert backend.count_tokens("hello world") == engine.count_tokens("hello world")
        assert not isinstance(remote, Engine) and not hasattr(remote, "model")
        assert engine.supports_constraints and engine.supports_prompt_logprobs
        assert remote.supports_prompt_logprobs  # from the servers (qwen_core.remote.scoring)
        with pytest.raises(BackendUnavailable, match="No inference server"):  # its only server is down
            remote.prompt_logprobs([1, 2, 3])
        with engine.stream_chat("Hi", do_sample=False, max_new_tokens=3) as stream:
            assert isinstance(stream, ReplyStreamProtocol)
            text = stream.text()
        assert stream.result.finish_reason in ("stop", "length") and stream.result.text == text
    finally:
        remote.unload()


def test_a_remote_reply_with_every_server_dead_says_when_to_retry(engine):
    remote = _dead_remote(engine)
    try:
        with pytest.raises(BackendUnavailable, match="No inference server") as err:
            remote.chat("Hi", do_sample=False, max_new_tokens=2)
        assert err.value.retry_after == 7
        assert remote.live_endpoints() == 0
    finally:
        remote.unload()


def test_readyz_and_v1_answer_503_while_every_server_is_dead(engine, ckpt_dir, tmp_path):
    import threading
    import time

    import uvicorn

    from qwen_core.manager import ModelManager, ModelSpec
    from qwen_core.scheduler import Scheduler, SchedulerConfig
    from server.http import create_app
    from ui import UIConfig, build_app

    remote = _dead_remote(engine)
    manager = ModelManager(lambda *a, **k: remote, [])
    manager.start(ModelSpec(str(ckpt_dir), device="cpu"))
    scheduler = Scheduler(SchedulerConfig(max_concurrent=2, max_queue=4))
    demo, launch = build_app(manager, UIConfig(data_dir=tmp_path), scheduler)
    app = create_app(manager, scheduler, demo, launch)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = httpx.get(url + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["endpoints"] == {"live": 0, "total": 1}
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200  # alive, just not ready
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert resp.status_code == 503, resp.text
        assert 1 <= int(resp.headers["Retry-After"]) <= 7  # the rest of the 7 s cool-down /readyz started
        assert "No inference server" in resp.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(30)
        remote.unload()


STOPS = st.lists(st.text(alphabet="ab<|>", min_size=1, max_size=4), min_size=0, max_size=3)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab<|> ", max_size=30), stops=STOPS, cuts=st.lists(st.integers(0, 30), max_size=6))
def test_streamed_pieces_cut_exactly_as_the_whole_text(text, stops, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    matcher = StopMatcher(stops)
    shown = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    whole, hit = cut_at_stop(text, stops)
    assert shown == whole and matcher.stopped == hit


def test_the_matcher_holds_back_only_what_could_start_a_stop():
    matcher = StopMatcher(["<|im_end|>"])
    assert matcher.feed("Hello <") == "Hello "  # "<" may begin the stop
    assert matcher.feed("b") == "<b"  # it did not
    assert matcher.feed(" <|im_") == " " and matcher.feed("end|> tail") == "" and matcher.stopped
    assert matcher.flush() == ""
