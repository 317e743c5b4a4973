"""The chat's Tools panel below the browser: safe built-in tools, pasted schemas, the ReAct loop on the tiny model.

The tiny random model never writes an action by itself; the loop is driven as a user drives a weak model,
with the panel's tool choice (a named tool), which starts the reply with the action as ``/v1`` does.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from qwen_core.stops import StopMatcher
from qwen_core.tool_reply import ToolReplyParser
from qwen_core.tools import engine_prompt_ids, plan_tool_messages
from ui import ASSETS
from ui.builtin_tools import BUILTIN_SCHEMAS, CalcError, calculate, current_time, run_builtin
from ui.conversations import export_json, parse_import, to_chatbot, to_markdown, to_model_history
from ui.personas import PersonaStore
from ui.service import ChatService, empty_store
from ui.tool_loop import ToolSchemaError, ToolSet, openai_messages, parse_custom_tools

GREEDY = {"do_sample": False, "max_new_tokens": 12}
SYSTEM = "You are a helpful assistant."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        # A short city: a forced call is held to this schema (qwen_core.grammar) and ends within a few tokens.
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}


# --- calculator --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "want"),
    [
        ("1 + 2 * 3", "7"),
        ("(3 + 4) * 2 ** 10", "7168"),
        ("2^10", "1024"),  # a calculator's power sign
        ("-7 // 2, ", None),  # a tuple is not a number
        ("10 / 4", "2.5"),
        ("7 % 3 + -(+2)", "-1"),
        ("sqrt(16) + log(8, 2)", "7"),
        ("round(pi, 4)", "3.1416"),
        ("factorial(20)", "2432902008176640000"),
        ("2 ** -1", "0.5"),
    ],
)
def test_calculator_evaluates_arithmetic(expression, want):
    if want is None:
        with pytest.raises(CalcError):
            calculate(expression)
    else:
        assert calculate(expression) == want


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("().__class__.__bases__[0].__subclasses__()", "not an allowed function"),
        ("(1).real", "Attribute is not allowed"),
        ("__import__('os').system('echo hi')", "not an allowed function"),
        ("open('/etc/passwd')", "not an allowed function"),
        ("exec('1')", "not an allowed function"),
        ("x + 1", "unknown name"),
        ("[c for c in 'ab']", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("'a' * 10", "only real numbers"),
        ("True + 1", "only real numbers"),
        ("9**9**9", "too large"),
        ("2 ** 100000", "too large"),
        ("(2 ** 4000) * (2 ** 4000)", "too large"),
        ("10.0 ** 400", "can't be computed"),
        ("1e308 * 10", "floating-point"),
        ("factorial(10**6)", "up to 1000"),
        ("round(5, -10**100)", "digits"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "sqrt()"),
        ("(" * 240 + "1" + ")" * 240, "not a valid expression"),  # the parser's own nesting limit
        ("-" * 300 + "1", "too long"),
        ("+".join(["1"] * 150), "too long"),
        ("1" * 501, "longer than 500"),
        ("", "empty"),
    ],
)
def test_calculator_refuses_hostile_input(expression, why):
    with pytest.raises(CalcError, match=why):
        calculate(expression)


def test_calculator_nesting_bound():
    # 150 nested signs fit in the node budget (and the parser's limit) but not in the depth bound
    with pytest.raises(CalcError, match="nested too deeply"):
        calculate("-" * 150 + "1")
    assert calculate("-" * 90 + "1") == "1"


def test_builtin_tools_take_json_or_bare_arguments():
    assert run_builtin("calculator", '{"expression": "6*7"}') == "42"
    assert run_builtin("calculator", "6*7") == "42"  # models often write the bare expression
    assert run_builtin("calculator", '{"expression": "os.system(1)"}').startswith("Error: ")
    with pytest.raises(KeyError):
        run_builtin("shell", "ls")


# --- date and time -----------------------------------------------------------------------------

NOON = datetime(2026, 7, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_current_time_in_iana_zones():
    assert (
        current_time("Asia/Shanghai", lambda: NOON) == "2026-07-01 20:00:00 CST (Wednesday), UTC+08:00, Asia/Shanghai"
    )
    assert current_time("America/St_Johns", lambda: NOON).endswith("UTC-02:30, America/St_Johns")
    assert current_time("", lambda: NOON).startswith("2026-07-01 12:00:00 UTC")
    assert json.loads('"' + run_builtin("current_time", '{"timezone": "Europe/Paris"}', lambda: NOON) + '"').startswith(
        "2026-07-01 14:00:00 CEST"
    )


@pytest.mark.parametrize("zone", ["../../etc/passwd", "/etc/passwd", "Europe/../../x", "Mars/Olympus", "a" * 80])
def test_current_time_refuses_bad_zones(zone):
    with pytest.raises(ValueError, match="time zone"):
        current_time(zone, lambda: NOON)
    assert run_builtin("current_time", json.dumps({"timezone": zone})).startswith("Error: ")


# --- pasted schemas ----------------------------------------------------------------------------


def test_pasted_schemas_are_checked():
    assert parse_custom_tools("") == ()
    assert parse_custom_tools(json.dumps([WEATHER])) == (WEATHER,)
    assert parse_custom_tools(json.dumps(WEATHER["function"])) == (WEATHER,)  # a bare function object
    bad = {
        "[": "invalid JSON at line 1",
        "[1]": r"tools\[0\]: expected an object",
        '[{"type": "retrieval"}]': r"tools\[0\].type: only 'function'",
        '[{"type": "function", "function": {"name": "a b"}}]': r"tools\[0\].function.name: needs",
        '[{"type": "function", "function": {"name": "calculator"}}]': "is a built-in tool",
        '[{"function": {"name": "f", "parameters": {"type": "string"}}}]': "parameters: must be a JSON Schema",
        '[{"function": {"name": "f", "parameters": {"type": "object", "required": ["x"]}}}]': "required",
        '[{"function": {"name": "f", "params": {}}}]': "unknown key 'params'",
        json.dumps([WEATHER, WEATHER]): "given twice",
        json.dumps([WEATHER] * 17): "at most 16",
    }
    for text, why in bad.items():
        with pytest.raises(ToolSchemaError, match=why):
            parse_custom_tools(text)


# --- the loop on the tiny model ----------------------------------------------------------------


@pytest.fixture
def service(manager, tmp_path):
    return ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"))


def _reply(service, store, tools, session="tools", **kw):
    last = None
    for _, stats in service.stream_reply(store, SYSTEM, {**GREEDY, **kw}, session, tools=tools):
        last = stats
    return last


def _expected_step(engine, messages, tools):
    """What one step of the loop must produce: /v1's prompt for these messages, read by its parser."""
    plan = plan_tool_messages(openai_messages(SYSTEM, [], messages), tools=tools or None)
    stream = engine.stream_prompt(engine_prompt_ids(engine, plan), engine.settings(**GREEDY))
    stops, parser = StopMatcher(plan.stop), ToolReplyParser(plan)
    parser.feed(stops.feed(stream.text()) + stops.flush())
    parser.finish()
    return parser.message()


def test_builtin_call_runs_and_the_model_continues(service, engine):
    store = service.add_user_message(empty_store(), "What is 6 times 7?")
    tools = ToolSet(builtin=("calculator",), choice="calculator")
    stats = _reply(service, store, tools)
    msgs = service.active(store)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    call, result, final = msgs[1], msgs[2], msgs[3]
    fn = call["tool_calls"][0]["function"]
    assert fn["name"] == "calculator" and call["tool_calls"][0]["id"].startswith("call_")
    assert result["tool_call_id"] == call["tool_calls"][0]["id"] and result["name"] == "calculator"
    assert result["content"] == run_builtin("calculator", fn["arguments"])  # what the calculator says
    assert "tool_calls" not in final and stats.finish_reason in ("stop", "length")
    # The final step saw exactly the prompt /v1 builds for the stored steps (a continuation after "Thought:").
    assert final["content"] == (_expected_step(engine, msgs[:3], [BUILTIN_SCHEMAS["calculator"]])["content"] or "")
    assert stats.tokens > 0 and stats.prompt_tokens > 0
    # In the chat: a collapsible call, a collapsible result, then the answer.
    items = to_chatbot(msgs)
    assert items[1]["metadata"] == {"title": "🛠️ Used calculator", "status": "done"}
    assert items[2]["metadata"] == {"title": "📋 Result of calculator", "status": "done"}
    assert result["content"] in items[2]["content"] and "metadata" not in items[3]
    assert to_model_history(msgs) == [("What is 6 times 7?", final["content"])]


def test_pasted_tool_waits_for_the_users_result(service, engine):
    store = service.add_user_message(empty_store(), "Weather in Paris?")
    tools = ToolSet(custom=(WEATHER,), choice="get_weather")
    stats = _reply(service, store, tools, max_new_tokens=40)
    msgs = service.active(store)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and stats.finish_reason == "tool_calls"
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert to_chatbot(msgs)[1]["metadata"]["status"] == "pending"
    assert "Waiting for the result" in to_chatbot(msgs)[1]["content"]
    service.add_user_message(store, "22 °C, sunny")  # the user's message is the tool's result
    assert msgs[-1]["role"] == "tool" and msgs[-1]["tool_call_id"] == msgs[1]["tool_calls"][0]["id"]
    assert to_chatbot(msgs)[1]["metadata"]["status"] == "done"
    _reply(service, store, tools)  # the forced choice is for the step answering the user, not this one
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[3]["content"] == (_expected_step(engine, msgs[:3], [WEATHER])["content"] or "")
    # Regenerate drops the whole tool reply back to the question.
    service.regenerate(store)
    assert [m["role"] for m in msgs] == ["user"]


def test_steps_survive_export_and_import(service):
    store = service.add_user_message(empty_store(), "What is 2 + 2?")
    _reply(service, store, ToolSet(builtin=("calculator", "current_time"), choice="calculator"))
    conv = service.active(store)
    back = parse_import(export_json(conv))
    keep = ("role", "content", "tool_calls", "tool_call_id", "name")
    assert [{k: m.get(k) for k in keep} for m in back["messages"]] == [
        {k: m.get(k) for k in keep} for m in conv["messages"]
    ]
    assert to_chatbot(back["messages"]) == to_chatbot(conv["messages"])
    md = to_markdown(conv)
    assert "**Assistant (tool call)**" in md and "**Result of calculator**" in md
    # OpenAI-style messages (content null with tool_calls) import too; bad tool data is refused.
    openai_style = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "tool_call_id": "x", "content": "ok"},
    ]
    got = parse_import(json.dumps(openai_style))["messages"]
    assert got[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert got[2]["tool_call_id"] == "x"
    openai_style[1]["tool_calls"] = "f()"
    with pytest.raises(ValueError, match=r"messages\[1\].tool_calls"):
        parse_import(json.dumps(openai_style))


def test_stop_during_a_tool_reply(service):
    store = service.add_user_message(empty_store(), "Count for a long time")
    replies = service.stream_reply(
        store, SYSTEM, {"do_sample": False, "max_new_tokens": 4000}, "tool-stop", tools=ToolSet(builtin=("calculator",))
    )
    next(replies)
    service.cancel("tool-stop")
    stats = [s for _, s in replies][-1]
    msgs = service.active(store)["messages"]
    assert stats.finish_reason == "cancelled" and msgs[-1].get("stopped") is True
    assert not service.is_busy("tool-stop")


def test_panel_values_become_a_tool_set():
    from ui.tools_panel import check_schemas, tool_set

    tools = tool_set(["calculator", "rm -rf"], "get_weather", json.dumps([WEATHER]))
    assert tools.builtin == ("calculator",) and tools.names == ("calculator", "get_weather")
    assert tools.first_choice() == "get_weather"
    assert tool_set([], "calculator", "").first_choice() == "none"  # nothing enabled: plain chat
    assert tool_set(["current_time"], "calculator", "").first_choice() == "auto"  # a choice no longer enabled
    with pytest.raises(ToolSchemaError, match=r"Your tools \(Tools tab\): invalid JSON"):
        tool_set([], "auto", "{nope")
    status, choices = check_schemas(["calculator"], "auto", json.dumps([WEATHER]))
    assert "get_weather" in status and ("call get_weather", "get_weather") in choices["choices"]
    status, _ = check_schemas([], "auto", "[1]")
    assert status.startswith("⚠️") and "tools[0]" in status


def test_handler_streams_a_tool_reply(manager, tmp_path):
    """Handlers.respond with the Tools tab's values (after the request, as Gradio passes them)."""
    from types import SimpleNamespace

    import gradio as gr

    from ui.handlers import Handlers

    h = Handlers(ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas")))
    store = h.service.add_user_message(h.service.ensure_store(None), "6*7?")
    request = gr.Request(username=None, session_hash="handler-tools", client=SimpleNamespace(host="10.0.0.1"))
    outputs = list(
        h.respond(store, SYSTEM, False, "[]", 0, 0.8, 0, 1.1, 6, -1, 256, request, ["calculator"], "calculator", "")
    )
    roles = [m["role"] for m in h.service.active(outputs[-1][0])["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert outputs[-1][1][1]["metadata"]["title"] == "🛠️ Used calculator"
    # A bad pasted schema refuses the reply with a note that says why.
    store = h.service.add_user_message(h.service.ensure_store(None), "again")
    outputs = list(h.respond(store, SYSTEM, False, "[]", 0, 0.8, 0, 1.1, 6, -1, 256, request, [], "auto", "[{"))
    last = h.service.active(outputs[-1][0])["messages"][-1]
    assert last["role"] == "event" and "Your tools (Tools tab): invalid JSON" in last["content"]


@pytest.mark.parametrize("seed", range(4))
def test_a_forced_call_of_a_pasted_tool_has_valid_arguments_even_when_sampled(service, seed):
    """tool_choice named in the Tools tab: the call's arguments are held to the tool's schema by the
    grammar /v1 uses (qwen_core.grammar), so even a random model's sampled call parses and validates."""
    schema = {**WEATHER["function"]["parameters"], "additionalProperties": False}
    tool = {"type": "function", "function": {**WEATHER["function"], "parameters": schema}}
    store = service.add_user_message(empty_store(), "Weather in Paris?")
    tools = ToolSet(custom=(tool,), choice="get_weather")
    sampled = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": seed, "max_new_tokens": 48}
    stats = _reply(service, store, tools, session=f"forced-{seed}", **sampled)
    call = service.active(store)["messages"][1]
    assert stats.finish_reason == "tool_calls", stats.finish_reason
    fn = call["tool_calls"][0]["function"]
    args = json.loads(fn["arguments"])
    assert fn["name"] == "get_weather" and set(args) == {"city"} and isinstance(args["city"], str)


def test_a_call_cut_off_by_max_new_tokens_is_neither_run_nor_waited_for(service):
    store = service.add_user_message(empty_store(), "Weather in Paris?")
    unbounded = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = ToolSet(
        custom=({"type": "function", "function": {**WEATHER["function"], "parameters": unbounded}},),
        choice="get_weather",
    )
    sampled = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 1, "max_new_tokens": 48}
    stats = _reply(service, store, tools, session="cut-call", **sampled)  # seed 1: a long city, cut off
    msgs = service.active(store)["messages"]
    assert stats.finish_reason == "length"
    assert [m["role"] for m in msgs] == ["user", "assistant", "event"] and "tool_calls" not in msgs[1]
    assert "Max new tokens" in msgs[2]["content"]
