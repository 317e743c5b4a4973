"""The remote backend in front of a real vLLM (see conftest.py): exactness, cancel, failover, /v1, the UI.

"Exact" here means the app's token-id prompts give vLLM's own output: the same greedy tokens (read back as
ids through logprobs) as the same prompt ids sent to vLLM directly. The last test stops the server: it
must stay last in this file.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from conftest import SERVED
from server_process import AppProcess, free_port

from qwen_core.remote import DIALECT_EXTRA, MODE_IDS, EndpointsUnavailable, load_remote_engine

SYSTEM = "Be brief."
HISTORY = [("hi", "hello there"), ("and you?", "fine, thanks")]
GREEDY = {"do_sample": False, "max_new_tokens": 24, "repetition_penalty": 1.0}
LONG = {"do_sample": False, "max_new_tokens": 3000, "repetition_penalty": 1.0}


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def remote(vllm_server, vllm_ckpt):
    eng = load_remote_engine([vllm_server.url], tokenizer_dir=vllm_ckpt, timeout=120)
    yield eng
    eng.unload()


@pytest.fixture(scope="module")
def app(vllm_server, vllm_ckpt, tmp_path_factory):
    """``python app.py --backend openai`` in front of the vLLM server and a dead endpoint."""
    dead = _closed_url()
    args = ["--backend", "openai", "--endpoint", vllm_server.url, "--endpoint", dead, "--tokenizer-dir",
            str(vllm_ckpt), "--data-dir", str(tmp_path_factory.mktemp("data"))]  # fmt: skip
    proc = AppProcess(args, env={"OMP_NUM_THREADS": "1"})
    yield proc
    proc.stop()


def vllm_greedy(server, ids: list[int], max_tokens: int) -> tuple[str, list[int], str]:
    """vLLM's own greedy reply to prompt ids: (text, token ids, finish reason), stopping where the app stops."""
    body = {"model": SERVED, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 0,
            "return_tokens_as_token_ids": True, "stop_token_ids": [151645, 151644, 151643],
            "skip_special_tokens": False}  # fmt: skip
    choice = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]
    tokens = [int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"]]
    return choice["text"], tokens, choice["finish_reason"]


def test_the_endpoint_takes_token_ids_and_vllms_sampling_fields(remote, vllm_server):
    (status,) = remote.endpoint_status()
    assert (status["mode"], status["dialect"], status["up"]) == (MODE_IDS, DIALECT_EXTRA, True)
    assert remote.info.model_id == SERVED and remote.info.context_length == 8192


@pytest.mark.parametrize("query", ["Write a poem about the sea.", "数一数：1234567"])
def test_token_id_prompts_give_vllms_own_greedy_output(remote, vllm_server, query):
    ids = remote.plan_prompt(query, HISTORY, SYSTEM).ids
    text, tokens, _ = vllm_greedy(vllm_server, ids, GREEDY["max_new_tokens"])
    stream = remote.stream_chat(query, HISTORY, SYSTEM, logprobs=0, **GREEDY)
    assert stream.text() == text
    res = stream.result
    assert [e.token_id for e in res.logprobs] == tokens  # the same tokens, not just the same text
    assert res.prompt_tokens == res.server_prompt_tokens == len(ids)


def test_vllm_computes_the_local_engines_greedy_reply(remote, vllm_engine):
    """Inside the trained context vLLM's Qwen2 layers compute Qwen-1 (same weights): the same greedy tokens
    as the embedded engine, with the checkpoint's repetition penalty (1.1) applied on both sides."""
    kw = {"do_sample": False, "max_new_tokens": 32, "logprobs": 0}
    for query in ("Write a poem about the sea.", "数一数：1234567"):
        here, there = (
            vllm_engine.stream_chat(query, HISTORY, SYSTEM, **kw),
            remote.stream_chat(query, HISTORY, SYSTEM, **kw),
        )
        assert there.text() == here.text()
        assert [e.token_id for e in there.result.logprobs] == [e.token_id for e in here.result.logprobs]


def _wait_running(server, want: float, timeout: float = 30.0) -> float:
    """vLLM's running gauge once it reads ``want`` (or at the deadline): the gauge is refreshed from the
    engine's step stats, so it can lag the tokens already streamed by a step or two."""
    deadline = time.monotonic() + timeout
    while (now := server.running()) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_stop_cancels_on_vllms_side(remote, vllm_server):
    cancel = threading.Event()
    # ignore_eos: the reply cannot end on its own before Stop (a greedy reply may meet EOS early).
    stream = remote.stream_chat("Tell me a very long story", cancel=cancel, ignore_eos=True, **LONG)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            assert _wait_running(vllm_server, 1) == 1
            cancel.set()
    assert stream.result.finish_reason == "cancelled" and len(pieces) < 100
    assert _wait_running(vllm_server, 0) == 0  # vLLM aborted it: the 3000-token reply is not running on


def test_failover_from_a_dead_endpoint(vllm_server, vllm_ckpt, remote):
    dead = _closed_url()
    eng = load_remote_engine([dead, vllm_server.url], tokenizer_dir=vllm_ckpt, timeout=120, cooldown=60)
    try:
        states = {s["url"]: s["up"] for s in eng.endpoint_status()}
        assert states == {dead: False, vllm_server.url: True}
        for _ in range(3):  # round robin would pick the dead one every other time: it is skipped
            stream = eng.stream_chat("hi", **GREEDY)
            assert stream.text() == remote.stream_chat("hi", **GREEDY).text()
            assert stream.result.endpoint == vllm_server.url
    finally:
        eng.unload()


def test_ui_service_streams_a_reply(vllm_server, vllm_ckpt, remote, tmp_path):
    from qwen_core.manager import ModelManager, ModelSpec
    from qwen_core.remote import remote_loader
    from ui import ASSETS
    from ui.personas import PersonaStore
    from ui.service import ChatService, empty_store

    manager = ModelManager(remote_loader([vllm_server.url], tokenizer_dir=str(vllm_ckpt), timeout=120), [])
    manager.start(ModelSpec("", label="remote"))
    try:
        service = ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"))
        store = service.add_user_message(empty_store(), "Hello there")
        updates = list(service.stream_reply(store, SYSTEM, GREEDY, "s1"))
        store, stats = updates[-1]
        assert len(updates) > 1  # streamed, not one final update
        reply = service.active(store)["messages"][-1]["content"]
        assert reply == remote.chat("Hello there", system=SYSTEM, **GREEDY)
        assert stats.finish_reason in ("length", "stop") and stats.tokens > 0
    finally:
        manager.engine.unload()


# --- through python app.py --backend openai ------------------------------------------------


def test_v1_models_names_the_served_model_and_concurrency_follows_the_endpoints(app):
    models = httpx.get(app.url + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [SERVED]
    assert httpx.get(f"{app.url}/v1/models/{SERVED}", timeout=30).status_code == 200
    ready = httpx.get(app.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["endpoints"] == {"live": 1, "total": 2}
    assert ready.json()["scheduler"]["max_concurrent"] == 128  # 64 per endpoint, not the local 4


@pytest.mark.parametrize("query", ["Write a poem about the sea.", "Count: 1 2 3"])
def test_v1_streamed_deltas_join_to_the_non_streamed_content(app, vllm_server, vllm_ckpt, remote, query):
    c = openai.OpenAI(base_url=f"{app.url}/v1", api_key="x", max_retries=0, timeout=120)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]
    kw = {
        "model": SERVED,
        "messages": msgs,
        "max_tokens": 24,
        "temperature": 0,
        "extra_body": {"repetition_penalty": 1.0},
    }
    whole = c.chat.completions.create(**kw)
    assert whole.model == SERVED
    joined = "".join(
        ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw) if ch.choices
    )
    assert joined == whole.choices[0].message.content
    text, _, _ = vllm_greedy(vllm_server, remote.plan_prompt(query, None, SYSTEM).ids, 24)
    assert joined == text.strip()  # vLLM's own reply, stripped as Qwen's chat() strips it


def test_v1_logprobs_are_relayed_from_vllm(app, vllm_server, remote):
    c = openai.OpenAI(base_url=f"{app.url}/v1", api_key="x", max_retries=0, timeout=120)
    out = c.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                    temperature=0, logprobs=True, top_logprobs=3,
                                    extra_body={"repetition_penalty": 1.0})  # fmt: skip
    entries = out.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 3 for e in entries)
    ids = remote.plan_prompt("Hi").ids
    body = {"model": SERVED, "prompt": ids, "max_tokens": 8, "temperature": 0.0, "logprobs": 3,
            "stop_token_ids": [151645, 151644, 151643]}  # fmt: skip
    direct = httpx.post(vllm_server.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["logprobs"]
    n = len(direct["token_logprobs"])
    assert [e.logprob for e in entries[:n]] == pytest.approx(direct["token_logprobs"][: len(entries)], abs=1e-4)
    text = c.completions.create(model=SERVED, prompt="The sea is", max_tokens=4, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(len(t) == 2 for t in lp.top_logprobs)


def test_v1_prompt_scoring_is_relayed_from_vllm(app, vllm_server, remote):
    """lm-eval's loglikelihood request (echo, logprobs, max_tokens 0) through the app: vLLM's own values."""
    prompt = "Question: is the sea salty?\nAnswer: yes"
    body = {"model": SERVED, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    relayed = httpx.post(f"{app.url}/v1/completions", json=body, timeout=120)
    assert relayed.status_code == 200, relayed.text
    lp = relayed.json()["choices"][0]["logprobs"]
    assert relayed.json()["choices"][0]["text"] == prompt and lp["token_logprobs"][0] is None
    ids = remote.tokenizer.encode(prompt)
    direct = httpx.post(vllm_server.url + "/v1/completions", json={**body, "prompt": ids}, timeout=120).json()
    want = direct["choices"][0]["logprobs"]["token_logprobs"][: len(ids)]
    assert lp["token_logprobs"][1:] == pytest.approx(want[1:], abs=1e-4)


def test_v1_json_schema_is_enforced_by_vllm(app):
    c = openai.OpenAI(base_url=f"{app.url}/v1", api_key="x", max_retries=0, timeout=120)
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    for stream in (False, True):
        kw = {"model": SERVED, "messages": [{"role": "user", "content": "A city?"}], "max_tokens": 40,
              "temperature": 1.0, "seed": 3, "response_format": fmt}  # fmt: skip
        if stream:
            content = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                              if ch.choices)  # fmt: skip
        else:
            content = c.chat.completions.create(**kw).choices[0].message.content
        assert json.loads(content)["city"] in ("Paris", "Rome")
    out = c.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "JSON please"}],
                                    max_tokens=60, temperature=0, response_format={"type": "json_object"})  # fmt: skip
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_v1_tool_call_cut_by_max_tokens_ends_with_length(app):
    c = openai.OpenAI(base_url=f"{app.url}/v1", api_key="x", max_retries=0, timeout=120)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    out = c.chat.completions.create(model=SERVED, messages=msgs, tools=tools, tool_choice=choice, max_tokens=2,
                                    temperature=0)  # fmt: skip
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_every_endpoint_dead_gives_503_and_retry_after(app, vllm_server, remote):
    """Last: stops the server."""
    vllm_server.stop()
    with pytest.raises(EndpointsUnavailable):
        remote.stream_chat("hi", **GREEDY).text()
    deadline = time.monotonic() + 30
    while httpx.get(app.url + "/readyz", timeout=30).status_code != 503 and time.monotonic() < deadline:
        time.sleep(1)
    assert httpx.get(app.url + "/readyz", timeout=30).status_code == 503
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for stream in (False, True):
        r = httpx.post(app.url + "/v1/chat/completions", json={**body, "stream": stream}, timeout=60)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "server_error"
