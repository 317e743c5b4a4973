"""Issue #13's API surface through the official ``openai`` SDK (and raw HTTP), against ``python app.py``.

Each test sends what a popular client sends: neutral values and unknown fields are accepted,
unusable values are refused naming the field, every error is OpenAI-shaped, and the new sampling
fields, logprobs, n > 1, tools, JSON output and the operations endpoints work.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from server_process import AppProcess

MODEL = ""
USER = [{"role": "user", "content": "Tell me about the sea"}]


@pytest.fixture(scope="module")
def app(ckpt_dir, tmp_path_factory):
    global MODEL
    MODEL = ckpt_dir.name
    # Prefix cache off: these tests compare seeded samples across requests, and a K/V reused from a
    # prefill of another length differs in the last float bits, which a draw on the random model's flat
    # distribution can turn into another token (an open exactness gap of issue 14, see the stop note).
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--concurrency", "2", "--max-queue", "16",
         "--data-dir", str(tmp_path_factory.mktemp("data")), "--prefix-cache-mb", "0"],
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _chat(client, **kw):
    return client.chat.completions.create(model=MODEL, **{"messages": USER, "temperature": 0, "max_tokens": 8, **kw})


# --- item 1: a tolerant schema, OpenAI-shaped errors ------------------------------------------------------


def test_neutral_values_and_unknown_fields_are_accepted(client):
    plain = _chat(client)
    out = _chat(
        client,
        logprobs=False,
        tools=[],
        tool_choice="none",
        parallel_tool_calls=True,
        store=False,
        response_format={"type": "text"},
        stream_options=None,
        user="u1",
        metadata={"chat_id": "abc"},
        service_tier="auto",
        reasoning_effort="low",
        modalities=["text"],
        n=1,
        seed=-1,
        extra_body={"top_k": -1, "some_future_field": {"x": 1}, "chat_template_kwargs": {}},
    )
    assert out.choices[0].message.content == plain.choices[0].message.content


def test_open_webui_style_request_with_builtin_tools_and_no_choice(client):
    """Open WebUI sends its tools with every request; with tool_choice "none" the reply is plain chat."""
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]
    out = _chat(client, tools=tools, tool_choice="none", stream_options=None)
    assert out.choices[0].message.content == _chat(client).choices[0].message.content


def test_developer_role_is_a_system_message(client, engine):
    msgs = [{"role": "developer", "content": "You are terse."}, *USER]
    out = _chat(client, messages=msgs)
    want = engine.chat(USER[0]["content"], system="You are terse.", do_sample=False, max_new_tokens=8)
    assert out.choices[0].message.content == want


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"n": 100}, "n"),
        ({"modalities": ["text", "audio"]}, "modalities.1"),
        ({"top_logprobs": 3}, None),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
        ({"temperature": "0.5"}, "temperature"),
        ({"logit_bias": {"999999999": 5}}, None),
        ({"stop": [f"s{i}" for i in range(33)]}, "stop"),  # bounded: every piece is matched against them
    ],
)
def test_values_we_cannot_honour_are_refused_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, **kw)
    body = err.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    if param:
        assert body["param"] == param


def test_models_retrieve_and_openai_shaped_404_405(client, app):
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-5")
    assert "does not exist" in err.value.message and err.value.body["code"] == "not_found"
    raw = client.with_raw_response.models.list()
    assert raw.status_code == 200
    with pytest.raises(openai.NotFoundError) as err:
        client.post("/no/such/route", body={}, cast_to=object)
    assert "Unknown route POST /v1/no/such/route" in err.value.message
    r = httpx.get(f"{app.url}/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_tool_call_replay_with_null_content_and_tool_message(client):
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    out = _chat(client, messages=msgs, tools=tools)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


# --- item 2: sampling fields, logprobs, n ---------------------------------------------------------------


def test_logit_bias_forces_a_token(client, engine):
    token = engine.tokenizer.encode(" ocean")[0]
    out = _chat(client, logit_bias={str(token): 100}, max_tokens=4)
    assert out.choices[0].message.content == engine.tokenizer.decode([token] * 4).strip()


def test_ignore_eos_min_tokens_and_stop_token_ids(client, engine):
    out = _chat(client, max_tokens=12, extra_body={"ignore_eos": True, "min_tokens": 12})
    assert out.usage.completion_tokens == 12 and out.choices[0].finish_reason == "length"
    with engine.stream_chat(USER[0]["content"], do_sample=False, max_new_tokens=12) as stream:
        stream.text()
    third = stream.result.token_ids[2]
    cut = _chat(client, max_tokens=12, extra_body={"stop_token_ids": [third]})
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens == 3


def test_penalties_and_min_p_change_sampling_but_stay_valid(client):
    out = _chat(client, presence_penalty=2.0, frequency_penalty=-2.0, max_tokens=8, extra_body={"min_p": 0.5})
    assert out.usage.completion_tokens == 8


def test_chat_logprobs_streamed_equal_non_streamed(client):
    full = _chat(client, logprobs=True, top_logprobs=3, max_tokens=10)
    entries = full.choices[0].logprobs.content
    assert len(entries) == full.usage.completion_tokens == 10
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
    streamed = []
    for chunk in _chat(client, logprobs=True, top_logprobs=3, max_tokens=10, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]


def test_n_choices_use_seed_plus_index(client):
    # top_k: the n choices decode as one batch, and on some CPUs a linear layer over 2 rows rounds
    # differently from one row (torch 2.13 CPU, AVX2: up to 8e-6, measured); a draw over the random
    # model's flat 151,643-token distribution can turn that into another token. The seeds are tested.
    kw = {"temperature": 1.0, "max_tokens": 8, "seed": 11, "extra_body": {"top_k": 20}}
    both = _chat(client, n=2, **kw)
    one = _chat(client, **kw).choices[0].message.content
    two = _chat(client, **{**kw, "seed": 12}).choices[0].message.content
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.message.content for c in both.choices] == [one, two]
    assert both.usage.completion_tokens == 16
    texts = {0: "", 1: ""}
    usage = None
    for chunk in _chat(client, n=2, stream=True, stream_options={"include_usage": True}, **kw):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
        usage = chunk.usage or usage
    assert texts == {0: one, 1: two} and usage.completion_tokens == 16


def test_streamed_deltas_equal_the_non_streamed_content_exactly(client):
    for prompt in ("Stream me a story", "   leading spaces", "hi\n\n"):
        msgs = [{"role": "user", "content": prompt}]
        full = _chat(client, messages=msgs, max_tokens=24).choices[0].message.content
        chunks = _chat(client, messages=msgs, max_tokens=24, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full


# --- item 4: tools and JSON output -----------------------------------------------------------------------

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip


def test_named_tool_choice_gives_a_tool_call_streamed_and_not(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    out = _chat(client, tools=WEATHER, tool_choice=choice, max_tokens=12)
    msg = out.choices[0].message
    # A call whose arguments max_tokens cut off ends "length" (as OpenAI says); a complete one "tool_calls".
    want = out.choices[0].finish_reason
    assert want in ("tool_calls", "length")
    assert msg.tool_calls[0].function.name == "get_weather" and msg.tool_calls[0].id.startswith("call_")
    assert isinstance(msg.tool_calls[0].function.arguments, str)
    if want == "tool_calls":
        assert isinstance(json.loads(msg.tool_calls[0].function.arguments), dict)
    else:
        assert out.usage.completion_tokens == 12
    names, args, finish = [], "", None
    for chunk in _chat(client, tools=WEATHER, tool_choice=choice, max_tokens=12, stream=True):
        for c in chunk.choices:
            for call in c.delta.tool_calls or ():
                if call.function.name:
                    names.append(call.function.name)
                args += call.function.arguments or ""
            finish = c.finish_reason or finish
    assert names == ["get_weather"] and finish == want
    assert args == msg.tool_calls[0].function.arguments


def test_json_object_replies_parse(client):
    for seed in range(3):
        out = _chat(client, response_format={"type": "json_object"}, temperature=1.0, seed=seed, max_tokens=200)
        content = out.choices[0].message.content
        assert content.startswith("{"), content
        if out.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(content), dict)


# --- item 5: operations endpoints ------------------------------------------------------------------------


def test_health_metrics_tokenize_detokenize(app, client, engine):
    assert httpx.get(f"{app.url}/health", timeout=30).json() == {"status": "ok"}
    _chat(client, max_tokens=2)
    text = httpx.get(f"{app.url}/metrics", timeout=30).text
    for name in ("qwen_requests_total", "qwen_time_to_first_token_seconds_bucket", "qwen_inter_token_latency_seconds",
                 "qwen_prompt_tokens_total", "qwen_completion_tokens_total", "qwen_replies_running",
                 "qwen_replies_waiting", "qwen_batch_rows"):  # fmt: skip
        assert name in text, name
    assert 'qwen_requests_total{route="/v1/chat/completions",status="200"}' in text
    for base in (app.url, f"{app.url}/v1"):
        r = httpx.post(f"{base}/tokenize", json={"prompt": "Hello <|im_end|>"}, timeout=30).json()
        assert r["tokens"] == engine.tokenizer.encode("Hello <|im_end|>") and r["count"] == len(r["tokens"])
        assert r["max_model_len"] == engine.info.context_length
        assert httpx.post(f"{base}/detokenize", json={"tokens": r["tokens"]}, timeout=30).json() == {
            "prompt": "Hello <|im_end|>"
        }
    r = httpx.post(f"{app.url}/tokenize", json={"messages": [{"role": "system", "content": "S"}, *USER]}, timeout=30)
    assert r.json()["tokens"] == engine.build_prompt(USER[0]["content"], system="S")
