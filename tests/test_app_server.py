"""The real app as a subprocess: start-up, the named /chat API via gradio_client, refusals."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from server_process import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(ckpt_dir, tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("data")
    env = {**os.environ, "QWEN_PORT": str(port), "QWEN_MODEL": str(ckpt_dir)}  # the env-var path
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--device", "cpu", "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited: {proc.stdout.read()}")
        try:  # the port answers at once (a loading page); /readyz says when the model is loaded
            with urllib.request.urlopen(url + "readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app was not ready in 120 s")
    yield url
    proc.terminate()
    proc.wait(30)


def test_chat_api_streams_the_engine_reply(server, engine):
    from gradio_client import Client

    client = Client(server, verbose=False)
    settings = {"temperature": 0, "max_new_tokens": 20}
    job = client.submit("Hello API", [["hi", "hello"]], "Be brief.", settings, api_name="/chat")
    outputs = list(job)
    assert len(outputs) > 2 and all(b.startswith(a.strip()) or a.strip() == b for a, b in itertools.pairwise(outputs))
    want = engine.chat("Hello API", history=[("hi", "hello")], system="Be brief.", do_sample=False, max_new_tokens=20)
    assert job.outputs()[-1] == want
    # Messages-format history works the same.
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    result = client.predict("Hello API", msgs, "Be brief.", settings, api_name="/chat")
    assert result == want


def test_chat_api_refuses_bad_input(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="non-empty"):
        client.predict("   ", [], None, {}, api_name="/chat")
    with pytest.raises(Exception, match="temperature"):
        client.predict("hi", [], None, {"temperature": -5}, api_name="/chat")
    # ...and keeps serving.
    assert client.predict("hi", [], None, {"temperature": 0, "max_new_tokens": 3}, api_name="/chat") is not None


def test_missing_model_stops_with_instructions(tmp_path):
    out = subprocess.run(
        [sys.executable, "app.py", "--model", "Qwen/Qwen-7B-Chat", "--offline", "--cache-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert str(tmp_path) in out.stderr and "--model ./models/Qwen-7B-Chat" in out.stderr


def test_bad_flags_are_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, "app.py", "--concurrency", "0", "--model", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--concurrency" in out.stderr


def test_config_from_environment(monkeypatch):
    sys.path.insert(0, str(ROOT))
    import app

    monkeypatch.setenv("QWEN_MODEL", "/models/x")
    monkeypatch.setenv("QWEN_PRECISION", "bf16")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("QWEN_AUTH", "ann:pw1,bob:pw2")
    cfg = app.parse_config([])
    assert (cfg.model, cfg.precision, cfg.port, cfg.auth) == (
        "/models/x",
        "bf16",
        9000,
        (("ann", "pw1"), ("bob", "pw2")),
    )
    assert app.parse_config(["--port", "8001"]).port == 8001  # flags win
