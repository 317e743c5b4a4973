"""guidellm (vllm-project/guidellm, the load tester) against ``python app.py`` (issue 13).

The requests below are the ones guidellm **0.8.1** sends (read from its PyPI wheel,
``guidellm-0.8.1-py3-none-any.whl``; the same files are ``src/guidellm/...`` in the repository):

- ``guidellm/backends/openai/http.py``, ``OpenAIHTTPBackend``: ``validate()`` is ``GET {target}/health``
  and needs any 2xx (it is the "backend check" issue 13 saw fail with a 404); ``available_models()`` is
  ``GET {target}/v1/models`` reading ``data[*].id``, and the first id becomes the model when none is given;
  ``resolve()`` POSTs the body as JSON after ``deep_filter`` dropped every ``None`` value (so 0.8.1 never
  sends ``"stop": null``); a stream is read with ``aiter_lines()``, blank lines skipped, until
  ``data: [DONE]``. Headers: only ``Authorization: Bearer <api_key>`` when a key is set (on ``/health``
  too). The client is ``httpx.AsyncClient(http2=True)``, which speaks HTTP/1.1 to an ``http://`` target.
- ``guidellm/backends/openai/request_handlers.py``, ``ChatCompletionsRequestHandler.format`` and
  ``TextCompletionsRequestHandler.format``: ``{"model", "stream": true, "stream_options": {"include_usage":
  true, "continuous_usage_stats": true}}`` when streaming (no ``stream`` key at all otherwise); when the
  data sets an output length N (every synthetic or ``output_tokens_count`` dataset does):
  ``"max_completion_tokens": N`` (chat) or ``"max_tokens": N`` (text), ``"ignore_eos": true`` (and
  ``"stop": None``, dropped); chat ``messages`` are an optional ``{"role": "system", "content": prefix}``
  and ``{"role": "user", "content": [{"type": "text", "text": prompt}]}``; text has ``"prompt": str``.
  Parsing: ``choices[0].message.content`` / ``choices[0].text``, or the stream's
  ``choices[0].delta.content`` / ``choices[0].text``; a ``data:`` payload with ``error`` fails the
  request; token counts come from the last ``usage`` seen (``prompt_tokens``, ``completion_tokens``),
  which must arrive before ``[DONE]`` because guidellm stops reading there. A reply with no text and no
  output tokens is an error (``[UNUSABLE_BACKEND_RESPONSE]``).
- ``guidellm/schemas/backends/openai_http.py``: ``DEFAULT_API_PATHS`` (``/health``, ``/v1/models``,
  ``/v1/completions``, ``/v1/chat/completions``), ``stream=True`` and ``http2=True`` by default.

guidellm 0.3.1 (``guidellm/backend/openai.py``, ``_completions_payload``) still sent ``"stop": null``
literally, always streamed with ``{"include_usage": true}`` and sent chat content as a plain string;
that body is checked too.

The first tests send these exact requests with httpx; the last ones run guidellm itself (its backend
class through ``GUIDELLM_DRIVER``, and ``guidellm run`` on a two-row JSON dataset). guidellm is not in
requirements-dev.txt: 0.8.1 requires ``click~=8.4.0`` and ``sanic`` (``multidict<7``), which would downgrade
click 8.5.1 and multidict 7.2.1 in the pinned environment. ``scripts/test-guidellm.sh`` (part of
``scripts/test.sh``) builds a venv of its own once, ``~/.cache/qwen-chat/guidellm-venv-0.8.1`` (CPU torch
pinned first), and runs this module with ``QWEN_GUIDELLM_PYTHON`` set to its interpreter: the driver and
``python -m guidellm`` then run there as subprocesses. Without it they run in-process when guidellm imports
here, and are skipped when neither is available.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_process import ROOT, AppProcess

N = 6  # the output length guidellm asks for (a dataset's output_tokens_count)
PROMPT = "Tell me about the sea"
SYSTEM = "You are a load generator's prefix: answer in one long paragraph."  # not Qwen's default system
KEY = "sk-guidellm-test"
# <|endoftext|>, <|im_start|>, <|im_end|> (QwenTokenizer.stop_ids): a +100 bias makes the tiny model end
# every reply at once unless ignore_eos holds the length.
FORCE_EOS = {"151643": 100, "151644": 100, "151645": 100}


def _client(**kw) -> httpx.Client:
    """The client guidellm builds (HTTP/2 enabled, which is HTTP/1.1 on a plain http:// target)."""
    return httpx.Client(http2=True, timeout=120, follow_redirects=True, **kw)


def guidellm_body(route: str, model: str, stream: bool, n: int = N, system: str | None = None) -> dict:
    """The JSON body guidellm 0.8.1 POSTs (``format`` then ``deep_filter`` dropping None values)."""
    body: dict = {"model": model}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if route == "/v1/chat/completions":
        body.update({"max_completion_tokens": n, "ignore_eos": True})
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": [{"type": "text", "text": PROMPT}]})
        body["messages"] = messages
    else:
        body.update({"max_tokens": n, "ignore_eos": True, "prompt": PROMPT})
    return body


def parse_like_guidellm(route: str, lines: list[str]) -> tuple[str, dict | None, int, bool]:
    """``add_streaming_line`` over the stream: (text, last usage, lines with text, saw [DONE])."""
    texts: list[str] = []
    usage = None
    iterations = 0
    for line in lines:
        if not line.strip():
            continue
        line = line.strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return "".join(texts), usage, iterations, True
        data = json.loads(payload)
        assert not data.get("error"), data  # guidellm: "Streaming response returned an error"
        choices = data.get("choices") or []
        choice = choices[0] if choices else {}
        text = choice.get("delta", {}).get("content") if route == "/v1/chat/completions" else choice.get("text")
        if text:
            texts.append(text)
            iterations += 1
        if data.get("usage"):
            usage = data["usage"]
    return "".join(texts), usage, iterations, False


@pytest.fixture(scope="module")
def model(app) -> str:
    """The model guidellm picks: the first id of ``GET /v1/models`` (``default_model``)."""
    with _client() as c:
        r = c.get(f"{app.url}/v1/models")
    assert r.status_code == 200
    return r.json()["data"][0]["id"]


@pytest.fixture(scope="module")
def keyed_app(ckpt_dir, tmp_path_factory):
    """The app with ``--api-key``: guidellm then sends its Bearer header on every request."""
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--api-key", KEY,
         "--data-dir", str(tmp_path_factory.mktemp("data"))],
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    yield proc
    proc.stop()


# --- the backend check and the model lookup ------------------------------------------------------------


def test_backend_check_and_model_lookup(app, model, ckpt_dir):
    with _client() as c:
        health = c.get(f"{app.url}/health")
        # guidellm strips a trailing /v1 from --target, so both spellings of the target reach /health.
        assert health.status_code == 200, health.text
        models = c.get(f"{app.url}/v1/models")
        # With an api key configured guidellm adds its Bearer header; an app without keys ignores it.
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert c.get(f"{app.url}/health", headers=bearer).status_code == 200
        assert c.get(f"{app.url}/v1/models", headers=bearer).json() == models.json()
    assert models.status_code == 200
    ids = [item["id"] for item in models.json()["data"]]
    assert model == ids[0] == ckpt_dir.name


# --- the generation requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_non_streamed_request_with_output_length(app, model, route):
    body = guidellm_body(route, model, stream=False)
    with _client() as c:
        r = c.post(f"{app.url}{route}", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    choice = data["choices"][0]
    text = choice["message"]["content"] if route == "/v1/chat/completions" else choice["text"]
    assert isinstance(text, str) and text  # not guidellm's [UNUSABLE_BACKEND_RESPONSE]
    assert data["usage"]["completion_tokens"] == N
    assert data["usage"]["prompt_tokens"] > 0
    assert choice["finish_reason"] == "length"
    assert data["id"]  # guidellm records it as response_id


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_streamed_request_with_output_length(app, model, route):
    body = guidellm_body(route, model, stream=True)
    with _client() as c, c.stream("POST", f"{app.url}{route}", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = list(r.iter_lines())
    text, usage, iterations, done = parse_like_guidellm(route, lines)
    events = [line for line in lines if line.strip()]
    assert done and events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)
    # The usage chunk comes before [DONE] (guidellm stops reading there) and counts exactly N tokens.
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"] == [] and last["usage"] == usage
    assert usage["completion_tokens"] == N and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + N
    assert text and 1 <= iterations <= N
    finishes = [c["finish_reason"] for e in events[:-1] for c in json.loads(e[6:])["choices"] if c["finish_reason"]]
    assert finishes == ["length"]


def test_system_prefix_counts_in_the_prompt(app, model):
    """A dataset prefix becomes a system message; usage.prompt_tokens must grow with it."""
    route = "/v1/chat/completions"
    with _client() as c:
        plain = c.post(f"{app.url}{route}", json=guidellm_body(route, model, stream=False, n=1)).json()
        with_system = c.post(f"{app.url}{route}", json=guidellm_body(route, model, False, n=1, system=SYSTEM)).json()
    assert with_system["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == 1
    assert with_system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_ignore_eos_holds_the_length_when_the_model_wants_to_stop(app, model, route, stream):
    """The control: with every stop token forced by logit_bias, only ignore_eos gives guidellm its N tokens."""

    def usage_and_finish(body):
        with _client() as c:
            if not stream:
                data = c.post(f"{app.url}{route}", json=body).raise_for_status().json()
                return data["usage"], data["choices"][0]["finish_reason"]
            with c.stream("POST", f"{app.url}{route}", json=body) as r:
                r.raise_for_status()
                lines = list(r.iter_lines())
            _, usage, _, done = parse_like_guidellm(route, lines)
            assert done
            events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
            return usage, next(c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"])

    held = {**guidellm_body(route, model, stream), "logit_bias": FORCE_EOS}
    usage, finish = usage_and_finish(held)
    assert usage["completion_tokens"] == N and finish == "length"
    free = {k: v for k, v in held.items() if k != "ignore_eos"}
    usage, finish = usage_and_finish(free)
    assert usage["completion_tokens"] < N and finish == "stop"


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_guidellm_0_3_body_with_stop_null(app, model, route):
    """guidellm 0.3.x: always streamed, ``"stop": null`` sent as such, chat content a plain string."""
    body: dict = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if route == "/v1/chat/completions":
        body.update({"messages": [{"role": "user", "content": PROMPT}], "max_completion_tokens": N})
    else:
        body.update({"prompt": PROMPT, "max_tokens": N})
    body.update({"stop": None, "ignore_eos": True})
    with _client() as c, c.stream("POST", f"{app.url}{route}", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = list(r.iter_lines())
    text, usage, _, done = parse_like_guidellm(route, lines)
    assert done and text and usage["completion_tokens"] == N


def test_with_an_api_key_the_bearer_header_is_what_lets_guidellm_in(keyed_app):
    bearer = {"Authorization": f"Bearer {KEY}"}
    with _client() as c:
        # The backend check is open either way; /v1 needs the key guidellm sends.
        assert c.get(f"{keyed_app.url}/health").status_code == 200
        assert c.get(f"{keyed_app.url}/health", headers=bearer).status_code == 200
        assert c.get(f"{keyed_app.url}/v1/models").status_code == 401
        models = c.get(f"{keyed_app.url}/v1/models", headers=bearer)
        assert models.status_code == 200
        model = models.json()["data"][0]["id"]
        route = "/v1/completions"
        body = guidellm_body(route, model, stream=True)
        assert c.post(f"{keyed_app.url}{route}", json=body).status_code == 401
        with c.stream("POST", f"{keyed_app.url}{route}", json=body, headers=bearer) as r:
            assert r.status_code == 200
            _, usage, _, done = parse_like_guidellm(route, list(r.iter_lines()))
    assert done and usage["completion_tokens"] == N


# --- guidellm itself (skipped without it) --------------------------------------------------------------

# guidellm's OpenAIHTTPBackend as its workers drive it: startup, validate, resolve, shutdown. The same source
# runs in-process (exec) or as ``$QWEN_GUIDELLM_PYTHON -c GUIDELLM_DRIVER '<json args>'``, printing JSON.
GUIDELLM_DRIVER = """
import asyncio, json, sys

from guidellm.backends.openai.http import OpenAIHTTPBackend
from guidellm.schemas import GenerationRequest, RequestInfo
from guidellm.schemas.backends import OpenAIHTTPBackendArgs
from guidellm.schemas.base.request import UsageMetrics


def drive(url, route, stream, api_key, prompt, n):
    async def go():
        args = OpenAIHTTPBackendArgs(target=f"{url}/v1", request_format=route, stream=stream, api_key=api_key)
        backend = OpenAIHTTPBackend(args)
        await backend.process_startup()
        try:
            await backend.validate()
            models = await backend.available_models()
            request = GenerationRequest(columns={"text_column": [prompt]}, output_metrics=UsageMetrics(text_tokens=n))
            info, final = RequestInfo(), None
            async for response, _ in backend.resolve(request, info):  # it updates info in place
                final = response if response is not None else final
            return models, final, info
        finally:
            await backend.process_shutdown()

    models, final, info = asyncio.run(go())
    return {
        "models": list(models),
        "response": None if final is None else {
            "text": final.text,
            "output_text_tokens": final.output_metrics.text_tokens,
            "input_text_tokens": final.input_metrics.text_tokens,
            "request_args": final.request_args,
        },
        "token_iterations": info.timings.token_iterations,
        "first_token_iteration": info.timings.first_token_iteration,
    }


if __name__ == "__main__":
    print(json.dumps(drive(*json.loads(sys.argv[1]))))
"""
# guidellm must not reach the network (a Hugging Face tokenizer lookup) in CI.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def guidellm_python() -> str | None:
    """The interpreter that runs guidellm: ``QWEN_GUIDELLM_PYTHON`` (scripts/test-guidellm.sh builds its venv),
    else None for this one when guidellm imports here; skips when neither."""
    python = os.environ.get("QWEN_GUIDELLM_PYTHON", "")
    if python:
        if not Path(python).is_file():
            pytest.fail(f"QWEN_GUIDELLM_PYTHON={python} does not exist")
        return python
    if importlib.util.find_spec("guidellm") is None:
        pytest.skip(
            "guidellm is not importable here and QWEN_GUIDELLM_PYTHON is not set: run scripts/test-guidellm.sh "
            "(builds guidellm's venv, then this module)"
        )
    return None


def _run_backend(python: str | None, url: str, route: str, stream: bool, api_key: str | None = None) -> dict:
    args = [url, route, stream, api_key, PROMPT, N]
    if python is None:
        namespace: dict = {"__name__": "guidellm_driver"}
        exec(GUIDELLM_DRIVER, namespace)  # this module's own source
        return json.loads(json.dumps(namespace["drive"](*args)))  # the same JSON either way
    cmd = [python, "-c", GUIDELLM_DRIVER, json.dumps(args)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_guidellm_backend_class(guidellm_python, app, model, route, stream):
    result = _run_backend(guidellm_python, app.url, route, stream)
    response = result["response"]
    assert result["models"][0] == model
    assert response is not None and response["text"]
    assert response["output_text_tokens"] == N
    assert response["input_text_tokens"] > 0
    sent = json.loads(response["request_args"])["body"]
    assert sent == guidellm_body(route, model, stream)  # what this module sends by hand
    if stream:
        assert 1 <= result["token_iterations"] <= N
        assert result["first_token_iteration"] is not None


def test_guidellm_backend_class_with_api_key(guidellm_python, keyed_app):
    result = _run_backend(guidellm_python, keyed_app.url, "/v1/chat/completions", True, api_key=KEY)
    assert result["response"]["output_text_tokens"] == N


def test_guidellm_cli_run(guidellm_python, app, model, tmp_path):
    """``guidellm run`` as its users run it: synchronous, two requests from a JSON dataset, no network."""
    rows = [
        {"prompt": PROMPT, "output_tokens_count": 5},
        {"prompt": "Write a haiku about rain", "output_tokens_count": 3},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.json"
    cmd = [
        guidellm_python or sys.executable, "-m", "guidellm", "run",
        "--backend", f"kind=openai_http,target={app.url}",
        "--profile", "kind=synchronous",
        "--constraint", "kind=max_requests,count=2",
        "--data", f"kind=json_file,path={data}",
        "--output", f"kind=json,path={out}",
        "--disable-console-interactive",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    requests = json.loads(out.read_text())["benchmarks"][0]["requests"]
    assert len(requests["errored"]) == 0 and len(requests["incomplete"]) == 0, requests["errored"]
    assert len(requests["successful"]) == 2
    want = {r["prompt"]: r["output_tokens_count"] for r in rows}
    for done in requests["successful"]:
        body = json.loads(done["request_args"])["body"]
        assert body["model"] == model and body["ignore_eos"] is True and body["stream"] is True
        prompt = body["messages"][-1]["content"][0]["text"]
        assert body["max_completion_tokens"] == want[prompt]
        assert done["output_metrics"]["text_tokens"] == want[prompt]
        assert done["input_metrics"]["text_tokens"] > 0 and done["output"]
