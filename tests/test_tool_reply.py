"""Reading ReAct replies: qwen_core.tool_reply.ToolReplyParser, whole and streamed in random splits.

The expected messages come from a restatement of Qwen's openai_api.py ``parse_response`` (L310-352) after
``trim_stop_words`` (L157-163), for the replies where the two agree by design (see the parser's docstring
for the two deliberate differences, which are tested on their own).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_core.tools import ToolReplyParser, plan_tool_messages

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CONTINUED = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


def orig_parse(response: str) -> dict:
    """openai_api.py: trim_stop_words(response, ["Observation:"]) then parse_response, as a message dict."""
    idx = response.find("Observation:")
    if idx != -1:
        response = response[:idx]
    name, args = "", ""
    i, j, k = response.find("\nAction:"), response.find("\nAction Input:"), response.find("\nObservation:")
    if 0 <= i < j:
        if k < j:
            response = response.rstrip() + "\nObservation:"
        k = response.find("\nObservation:")
        name = response[i + len("\nAction:") : j].strip()
        args = response[j + len("\nAction Input:") : k].strip()
    if name:
        response = response[:i]
        t = response.find("Thought: ")
        if t >= 0:
            response = response[t + len("Thought: ") :]
        return {"content": response.strip(), "name": name, "arguments": args}
    z = response.rfind("\nFinal Answer: ")
    if z >= 0:
        response = response[z + len("\nFinal Answer: ") :]
    return {"content": response.strip(), "name": None, "arguments": None}


def run(plan, pieces: list[str], reply_id: str = "r") -> tuple[dict, str, list[dict]]:
    parser = ToolReplyParser(plan, reply_id=reply_id)
    deltas = [d for piece in pieces for d in parser.feed(piece)]
    rest, finish = parser.finish()
    return parser.message(), finish, deltas + rest


def summary(message: dict) -> dict:
    if message.get("tool_calls"):
        fn = message["tool_calls"][0]["function"]
        return {"content": message["content"] or "", "name": fn["name"], "arguments": fn["arguments"]}
    if message.get("function_call"):
        fn = message["function_call"]
        return {"content": message["content"] or "", "name": fn["name"], "arguments": fn["arguments"]}
    return {"content": message["content"], "name": None, "arguments": None}


def rebuild(deltas: list[dict], legacy: bool) -> dict:
    """The message a client assembles from the streamed deltas."""
    content = "".join(d.get("content", "") for d in deltas)
    calls = (
        [c for d in deltas for c in d.get("tool_calls", [])]
        if not legacy
        else [d["function_call"] for d in deltas if "function_call" in d]
    )
    if not calls:
        return {"content": content, "name": None, "arguments": None}
    fn = [c.get("function", c) for c in calls]
    assert "name" in fn[0] and all("name" not in f for f in fn[1:]), "the name comes first, once"
    return {"content": content, "name": fn[0]["name"], "arguments": "".join(f["arguments"] for f in fn)}


PLAN = plan_tool_messages(USER, tools=[WEATHER, SEARCH])
CASES = [
    (
        'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Paris"}\n',
        ("I need the weather.", "get_weather", '{"city": "Paris"}'),
    ),
    (
        'Thought: x\nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation: made up',
        ("x", "get_weather", '{"city": "Paris"}'),
    ),
    ("Thought: I now know the final answer.\nFinal Answer: It is sunny.", ("It is sunny.", None, None)),
    ("Hello there!", ("Hello there!", None, None)),
    ("Thought: hmm, no markers", ("Thought: hmm, no markers", None, None)),
    ("Thought: t\nAction: get_weather", ("Thought: t\nAction: get_weather", None, None)),
    ("Thought: t\nAction: search\nAction Input: cats and dogs", ("t", "search", "cats and dogs")),
    ("Thought: t\nAction: \nAction Input: {}", ("Thought: t\nAction: \nAction Input: {}", None, None)),
    ('Sure.\nAction: search\nAction Input: {"q": 1}', ("Sure.", "search", '{"q": 1}')),
    (
        '  \n Thought: 我应该搜索。\nAction: search\nAction Input: {"q": "猫"}  \n',
        ("我应该搜索。", "search", '{"q": "猫"}'),
    ),
]


@pytest.mark.parametrize(("reply", "want"), CASES)
def test_replies_read_as_the_original_reads_them(reply, want):
    message, finish, deltas = run(PLAN, [reply])
    got = summary(message)
    assert (got["content"], got["name"], got["arguments"]) == want
    if reply != "Thought: t\nAction: \nAction Input: {}":  # the original leaves the "\nObservation:" it re-adds
        assert got == orig_parse(reply)
    assert finish == ("tool_calls" if want[1] else "stop")
    assert rebuild(deltas, False) == got
    if want[1]:
        call = message["tool_calls"][0]
        assert call["id"].startswith("call_") and len(call["id"]) == 29 and call["type"] == "function"


def test_legacy_functions_answer_with_function_call():
    plan = plan_tool_messages(USER, functions=[WEATHER["function"]])
    message, finish, deltas = run(plan, ['Thought: t\nAction: get_weather\nAction Input: {"city": "Rome"}'])
    assert finish == "function_call"
    assert message == {
        "role": "assistant",
        "content": "t",
        "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert rebuild(deltas, True) == summary(message)


def test_a_continuation_is_read_after_its_thought():
    plan = plan_tool_messages(CONTINUED, tools=[WEATHER])
    message, finish, _ = run(plan, [" I now know the final answer.\nFinal Answer: Sunny in Paris."])
    assert (message["content"], finish) == ("Sunny in Paris.", "stop")
    message, finish, _ = run(plan, [' need more\nAction: get_weather\nAction Input: {"city": "Lyon"}'])
    assert (summary(message)["name"], message["content"], finish) == ("get_weather", "need more", "tool_calls")


def test_forced_prefix_counts_as_generated():
    plan = plan_tool_messages(
        USER, tools=[WEATHER, SEARCH], tool_choice={"type": "function", "function": {"name": "search"}}
    )
    message, finish, deltas = run(plan, [' {"q": "x"}'])
    assert finish == "tool_calls"
    assert summary(message) == {"content": "I need to use the search API.", "name": "search", "arguments": '{"q": "x"}'}
    assert rebuild(deltas, False) == summary(message)
    required = plan_tool_messages(USER, tools=[WEATHER, SEARCH], tool_choice="required")
    message, _, _ = run(required, [" get_weather\nAction Input: {}"])
    assert summary(message)["name"] == "get_weather"


def test_tool_choice_none_never_calls():
    plan = plan_tool_messages(CONTINUED, tools=[WEATHER], tool_choice="none")
    assert plan.tool_names == () and plan.stop == ()
    message, finish, _ = run(plan, [" x\nAction: get_weather\nAction Input: {}"])
    assert finish == "stop" and "tool_calls" not in message


def test_first_marker_decides():
    """Deliberate differences from the original, so a stream never takes back what it sent."""
    message, finish, _ = run(PLAN, ["Thought: done\nFinal Answer: use\nAction: search\nAction Input: {}"])
    assert (message["content"], finish) == ("use\nAction: search\nAction Input: {}", "stop")  # original: a call
    message, _, _ = run(PLAN, ["Intro\nFinal Answer: x"])
    assert message["content"] == "Intro\nFinal Answer: x"  # unscaffolded: as it is (original: "x")


def test_ids_are_stable_per_reply():
    a = run(PLAN, ["Thought: t\nAction: search\nAction Input: {}"], "chatcmpl-1-0")[0]
    b = run(PLAN, ["Thought: t\nAction: search", "\nAction Input: {}"], "chatcmpl-1-0")[0]
    c = run(PLAN, ["Thought: t\nAction: search\nAction Input: {}"], "chatcmpl-2-0")[0]
    assert a["tool_calls"][0]["id"] == b["tool_calls"][0]["id"] != c["tool_calls"][0]["id"]


# ------------------------------------------------------------ random replies, random splits
FRAGMENTS = [
    "Thought:",
    "Thought: ",
    " I need",
    " to",
    "\nAction:",
    " get_weather",
    " search",
    "\nAction Input:",
    ' {"city":',
    ' "Paris"}',
    "\nFinal Answer:",
    "\nFinal Answer: ",
    " It is",
    " sunny.",
    "\nObservation:",
    "Observation",
    "\n",
    " ",
    "\n\n",
    "Act",
    "ion",
    "Final",
    " Answer",
    "Obs",
    "ervation:",
    "中文",
    "é",
    "{",
    "}",
    "x",
    ":",
]
reply_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)


def splits(text: str):
    return st.lists(st.integers(0, len(text)), max_size=8).map(
        lambda cuts: [text[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)], strict=True)]
    )


PLANS = [
    PLAN,
    plan_tool_messages(USER, functions=[WEATHER["function"]]),
    plan_tool_messages(CONTINUED, tools=[WEATHER]),
    plan_tool_messages(USER, tools=[WEATHER, SEARCH], tool_choice="required"),
    plan_tool_messages(USER, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    plan_tool_messages(CONTINUED, tools=[WEATHER], tool_choice="none"),
]


@settings(max_examples=400, deadline=None)
@given(data=st.data(), text=reply_text, which=st.integers(0, len(PLANS) - 1))
def test_streaming_ends_as_the_whole_reply(data, text, which):
    """Any reply, fed in any split: the deltas rebuild exactly the non-streamed message."""
    plan = PLANS[which]
    whole, finish, _ = run(plan, [text])
    pieces = data.draw(splits(text))
    message, finish2, deltas = run(plan, pieces)
    assert (message, finish2) == (whole, finish)
    assert rebuild(deltas, plan.legacy) == summary(message)
    assert all(d for d in deltas) and all(d.get("content", "x") for d in deltas)  # no empty deltas


clean = st.text(st.sampled_from(list("abc xyz.,!?中é{}\"'")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    kind=st.sampled_from(["call", "answer", "plain", "call_observed"]),
    thought=clean,
    name=st.sampled_from(["get_weather", "search"]),
    args=clean,
    answer=clean,
)
def test_well_formed_replies_agree_with_the_original(data, kind, thought, name, args, answer):
    if kind == "call":
        text = f"Thought: {thought}\nAction: {name}\nAction Input: {args}\n"
    elif kind == "call_observed":
        text = f"Thought: {thought}\nAction: {name}\nAction Input: {args}\nObservation: {answer}"
    elif kind == "answer":
        text = f"Thought: {thought}\nFinal Answer: {answer}"
    else:
        text = answer
    message, _, deltas = run(PLAN, data.draw(splits(text)))
    want = orig_parse(text)
    if kind != "plain" and want["name"] is None and not want["content"]:
        want["content"] = ""
    assert summary(message) == want
    assert json.dumps(rebuild(deltas, False)) == json.dumps(want)
