"""Tool calling and JSON output through the real clients, against ``python app.py`` on the tiny checkpoint.

The openai SDK, LangChain's ``ChatOpenAI`` and LiteLLM, called as their users call them. The tiny model is
random, so what is asserted is what the server guarantees whatever the model writes: with tool_choice
required/named a call to the right tool (one of the tools) whose arguments validate against its schema; with
``response_format`` JSON that parses (and validates); with "none" no call; streamed equal to non-streamed.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from server_process import AppProcess

MODEL = ""
CITY = {"enum": ["Paris", "Rome", "Oslo"], "description": "The city"}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": CITY, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast.", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": CITY},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
USER = [{"role": "user", "content": "What's the weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def app(ckpt_dir, tmp_path_factory):
    global MODEL
    MODEL = ckpt_dir.name
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(tmp_path_factory.mktemp("data"))],
        env={"OMP_NUM_THREADS": "1"},
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, **kw):
    return client.chat.completions.create(model=MODEL, **{"messages": USER, "max_tokens": 80, "seed": 5, **kw})


def assemble(stream) -> tuple[str, list[dict], str | None]:
    """What a client builds from the chunks: content, tool calls by index, finish reason."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = d.id or call["id"]
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def check_call(name: str, arguments: str, allowed: set[str]) -> None:
    assert name in allowed
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# ------------------------------------------------------------------ openai SDK
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_openai_forced_tool_calls(client, choice):
    allowed = {"get_time"} if isinstance(choice, dict) else set(SCHEMAS)
    out = chat(client, tools=TOOLS, tool_choice=choice, temperature=1.0)
    assert out.choices[0].finish_reason == "tool_calls"
    (call,) = out.choices[0].message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    check_call(call.function.name, call.function.arguments, allowed)
    content, calls, finish = assemble(chat(client, tools=TOOLS, tool_choice=choice, temperature=1.0, stream=True))
    assert finish == "tool_calls" and len(calls) == 1
    assert (calls[0]["name"], calls[0]["arguments"]) == (call.function.name, call.function.arguments)
    assert content == (out.choices[0].message.content or "")


def test_openai_tool_call_cut_by_max_tokens_ends_with_length(client):
    """#13: a call whose arguments max_tokens cut off says "length" (as OpenAI does), not "tool_calls"."""
    choice = {"type": "function", "function": {"name": "get_weather"}}
    out = chat(client, tools=TOOLS, tool_choice=choice, max_tokens=2)
    assert out.choices[0].finish_reason == "length"
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and out.usage.completion_tokens == 2
    _, calls, finish = assemble(chat(client, tools=TOOLS, tool_choice=choice, max_tokens=2, stream=True))
    assert finish == "length" and [c["name"] for c in calls] == ["get_weather"]


@pytest.mark.parametrize("choice", ["auto", None])
def test_openai_auto_streamed_equals_non_streamed(client, choice):
    kw = {"tools": TOOLS, "temperature": 0} | ({"tool_choice": choice} if choice else {})
    out = chat(client, **kw)
    msg = out.choices[0].message
    content, calls, finish = assemble(chat(client, stream=True, **kw))
    assert finish == out.choices[0].finish_reason
    assert content == (msg.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in msg.tool_calls or ()
    ]


def test_openai_tool_choice_none_never_calls(client):
    out = chat(client, tools=TOOLS, tool_choice="none", temperature=1.0)
    assert out.choices[0].finish_reason in ("stop", "length") and not out.choices[0].message.tool_calls


def test_openai_replay_of_parallel_calls_then_forced_call(client):
    """Assistant ``content: None`` with two tool calls, the results in the other order, then a forced call."""
    history = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city": "Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": "10:00"},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]
    out = chat(client, messages=history, tools=TOOLS, tool_choice="required", temperature=1.0)
    (call,) = out.choices[0].message.tool_calls
    check_call(call.function.name, call.function.arguments, set(SCHEMAS))
    plain = chat(client, messages=history, tools=TOOLS, temperature=0)
    assert plain.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_openai_legacy_functions(client):
    functions = [t["function"] for t in TOOLS]
    out = chat(client, functions=functions, function_call={"name": "get_weather"}, temperature=1.0)
    assert out.choices[0].finish_reason == "function_call"
    fc = out.choices[0].message.function_call
    check_call(fc.name, fc.arguments, {"get_weather"})
    replay = [
        *USER,
        {"role": "assistant", "content": None, "function_call": {"name": fc.name, "arguments": fc.arguments}},
        {"role": "function", "name": fc.name, "content": "sunny"},
    ]
    again = chat(client, messages=replay, functions=functions, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length", "function_call")


def test_openai_json_schema_output(client):
    schema = {
        "type": "object",
        "properties": {"city": CITY, "ok": {"type": "boolean"}},
        "required": ["city", "ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    for stream in (False, True):
        if stream:
            content, _, finish = assemble(chat(client, response_format=fmt, temperature=1.0, stream=True))
        else:
            out = chat(client, response_format=fmt, temperature=1.0)
            content, finish = out.choices[0].message.content, out.choices[0].finish_reason
        assert finish == "stop"
        jsonschema.validate(json.loads(content), schema)


# ------------------------------------------------------------------ LangChain
class Forecast(BaseModel):
    """The weather forecast for a city."""

    city: Literal["Paris", "Rome"]
    days: int = Field(ge=1, le=7)
    sunny: bool


def get_weather(city: Literal["Paris", "Rome"], days: int) -> str:
    """Weather forecast for a city over some days."""
    return f"sunny in {city} for {days} days"


@pytest.fixture(scope="module")
def llm(app):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL, base_url=f"{app.url}/v1", api_key="unused", max_tokens=120, temperature=1.0, seed=3, max_retries=0
    )


def test_langchain_bind_tools_round_trip(llm):
    from langchain_core.messages import HumanMessage, ToolMessage

    bound = llm.bind_tools([get_weather, Forecast], tool_choice="get_weather")
    first = bound.invoke([HumanMessage("Weather in Rome?")])
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) <= {"city", "days"}
    result = ToolMessage(get_weather("Rome", 1), tool_call_id=call["id"])
    second = llm.bind_tools([get_weather]).invoke([HumanMessage("Weather in Rome?"), first, result])
    assert second.type == "ai"
    forced = llm.bind_tools([get_weather], tool_choice="any").invoke([HumanMessage("Weather in Rome?"), first, result])
    assert forced.tool_calls and forced.tool_calls[0]["name"] == "get_weather"


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_structured_output(llm, method):
    out = llm.with_structured_output(Forecast, method=method).invoke("Forecast for Paris?")
    assert isinstance(out, Forecast) and out.city in ("Paris", "Rome") and 1 <= out.days <= 7


def test_langchain_structured_output_json_mode(app, engine):
    from langchain_openai import ChatOpenAI

    # json_mode has no schema: the random model never closes a string by itself, so favour the tokens
    # that close strings and objects
    bias = {engine.tokenizer.encode(t)[0]: b for t, b in (('"}', 9), ('":', 9), ("}", 6))}
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{app.url}/v1",
        api_key="unused",
        max_tokens=200,
        temperature=1.0,
        seed=1,
        logit_bias=bias,
    )
    schema = {"title": "Anything", "description": "any JSON object", "type": "object"}
    out = llm.with_structured_output(schema, method="json_mode").invoke("Answer in JSON.")
    assert isinstance(out, dict)


# ------------------------------------------------------------------ LiteLLM
def test_litellm_completion_with_tools(app):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price list
    import litellm

    kw = {
        "model": f"openai/{MODEL}",
        "api_base": f"{app.url}/v1",
        "api_key": "unused",
        "messages": USER,
        "max_tokens": 80,
    }
    out = litellm.completion(tools=TOOLS, tool_choice="required", temperature=1.0, seed=2, **kw)
    (call,) = out.choices[0].message.tool_calls
    check_call(call.function.name, call.function.arguments, set(SCHEMAS))
    assert out.choices[0].finish_reason == "tool_calls"
    plain = litellm.completion(tools=TOOLS, tool_choice="none", temperature=0, **kw)
    assert not plain.choices[0].message.tool_calls
