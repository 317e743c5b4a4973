"""Tool-calling prompts: qwen_core.tools against an independent restatement of Qwen's own openai_api.py.

The restatement below follows the original (QwenLM/Qwen openai_api.py: ``parse_messages`` L191-307,
``text_complete_last_message`` L356-373, and ``make_context`` from qwen_generation_utils.py) line by line,
on the original's own message shape (role, content, function_call) and its own tiktoken encoding, built
here from the vocabulary file. Hypothesis draws tool sets, histories with calls/results and tool_choice
values; the token ids of the final prompts must be identical.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import unicodedata

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_core.tools import engine_prompt_ids, plan_tool_messages

# ---------------------------------------------------------------- the original, restated
ORIG_TOOL_DESC = (
    "{name_for_model}: Call this tool to interact with the {name_for_human} API."
    " What is the {name_for_human} API useful for? {description_for_model} Parameters: {parameters}"
)
ORIG_REACT = """Answer the following questions as best you can. You have access to the following APIs:

{tools_text}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tools_name_text}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"""
COMPLETION = object()  # the original's _TEXT_COMPLETION_CMD


class Refused(Exception):
    """Where the original answers HTTP 400."""


def orig_parse_messages(messages: list[dict], functions: list[dict] | None):
    """openai_api.py parse_messages, on dicts {role, content, function_call}."""
    if all(m["role"] != "user" for m in messages):
        raise Refused("no user")
    messages = copy.deepcopy(messages)
    if messages[0]["role"] == "system":
        system = messages.pop(0)["content"].lstrip("\n").rstrip()
    else:
        system = "You are a helpful assistant."
    instruction = ""
    if functions:
        texts, names = [], []
        for f in functions:
            name = f.get("name", "")
            nm = f.get("name_for_model", name)
            texts.append(
                ORIG_TOOL_DESC.format(
                    name_for_model=nm,
                    name_for_human=f.get("name_for_human", name),
                    description_for_model=f.get("description_for_model", f.get("description", "")),
                    parameters=json.dumps(f["parameters"], ensure_ascii=False),
                )
            )
            names.append(nm)
        instruction = ORIG_REACT.format(tools_text="\n\n".join(texts), tools_name_text=", ".join(names))
        instruction = instruction.lstrip("\n").rstrip()
    src, messages = messages, []
    for idx, m in enumerate(src):
        role, content, call = m["role"], (m.get("content") or "").lstrip("\n").rstrip(), m.get("function_call")
        if role == "function":
            if not messages or messages[-1]["role"] != "assistant":
                raise Refused("function first")
            messages[-1]["content"] += f"\nObservation: {content}"
            if idx == len(src) - 1:
                messages[-1]["content"] += "\nThought:"
        elif role == "assistant":
            if not messages:
                raise Refused("assistant first")
            if call is None:
                if functions:
                    content = f"Thought: I now know the final answer.\nFinal Answer: {content}"
            else:
                if not content.startswith("Thought:"):
                    content = f"Thought: {content}"
                content = f"{content}\nAction: {call['name']}\nAction Input: {call['arguments']}"
            if messages[-1]["role"] == "user":
                messages.append({"role": "assistant", "content": content.lstrip("\n").rstrip()})
            else:
                messages[-1]["content"] += "\n" + content
        elif role == "user":
            messages.append({"role": "user", "content": content.lstrip("\n").rstrip()})
        else:
            raise Refused(role)
    query = COMPLETION
    if messages[-1]["role"] == "user":
        query = messages[-1]["content"]
        messages = messages[:-1]
    if len(messages) % 2:
        raise Refused("odd")
    history = []
    for i in range(0, len(messages), 2):
        if messages[i]["role"] != "user" or messages[i + 1]["role"] != "assistant":
            raise Refused("order")
        u, a = messages[i]["content"].lstrip("\n").rstrip(), messages[i + 1]["content"].lstrip("\n").rstrip()
        if instruction and i == len(messages) - 2:
            u, instruction = f"{instruction}\n\nQuestion: {u}", ""
        history.append([u, a])
    if instruction:
        query = f"{instruction}\n\nQuestion: {query}"
    return query, history, system


def orig_make_context(enc, query, history, system, max_window_size=6144):
    """qwen_generation_utils.make_context, chatml: segments encoded apart, history newest first."""
    im_start, im_end, nl = [151644], [151645], enc.encode("\n")

    def tok(role, content):
        return enc.encode(role, allowed_special=set()) + nl + enc.encode(content, allowed_special=set())

    system_tokens = im_start + tok("system", system) + im_end
    context: list[int] = []
    for q, r in reversed(history):
        nxt = nl + im_start + tok("user", q) + im_end + nl + im_start + tok("assistant", r) + im_end
        if len(system_tokens) + len(nxt) + len(context) < max_window_size:
            context = nxt + context
        else:
            break
    return (
        system_tokens
        + context
        + nl
        + im_start
        + tok("user", query)
        + im_end
        + nl
        + im_start
        + enc.encode("assistant")
        + nl
    )


def orig_completion_ids(enc, history, system):
    """text_complete_last_message: the rendered text, last <|im_end|> cut, encoded as ONE string."""
    prompt = f"<|im_start|>system\n{system}<|im_end|>"
    for q, r in history:
        prompt += f"\n<|im_start|>user\n{q.lstrip(chr(10)).rstrip()}<|im_end|>"
        prompt += f"\n<|im_start|>assistant\n{r.lstrip(chr(10)).rstrip()}<|im_end|>"
    prompt = prompt[: -len("<|im_end|>")]
    return enc.encode(unicodedata.normalize("NFC", prompt), allowed_special="all")


def legacy_form(messages: list[dict]) -> list[dict]:
    """OpenAI tools-shaped messages as the original's function_call messages: every call of an assistant
    message becomes its own assistant message (the thought on the first), followed by its result."""
    out: list[dict] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m["role"] == "system" and out:
            raise AssertionError("generator puts system first only")
        if m["role"] == "assistant" and m.get("tool_calls"):
            results = {}
            j = i + 1
            while j < len(messages) and messages[j]["role"] == "tool":
                results[messages[j]["tool_call_id"]] = messages[j]["content"]
                j += 1
            for k, call in enumerate(m["tool_calls"]):
                fc = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
                out.append({"role": "assistant", "content": m.get("content") if k == 0 else "", "function_call": fc})
                if call["id"] in results:
                    out.append({"role": "function", "content": results[call["id"]]})
            i = j
            continue
        out.append({"role": m["role"], "content": m.get("content")})
        i += 1
    return out


@pytest.fixture(scope="module")
def enc(ckpt_dir):
    """The original's tiktoken encoding, built here straight from qwen.tiktoken."""
    return original_encoding(ckpt_dir / "qwen.tiktoken")


def original_encoding(path):
    """tiktoken over the vocabulary file with the original's split pattern and special tokens."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
    pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    return tiktoken.Encoding(
        "orig", pat_str=pat, mergeable_ranks=ranks, special_tokens={s: 151643 + i for i, s in enumerate(specials)}
    )


def expected_ids(enc, messages, tools, tool_choice):
    """What the original builds for this request: functions = the tools unless tool_choice is "none"."""
    functions = [t["function"] for t in tools] if tools and tool_choice != "none" else None
    query, history, system = orig_parse_messages(legacy_form(messages), functions)
    if query is COMPLETION:
        return orig_completion_ids(enc, history, system)
    # model.chat: make_context encodes NFC text (the HF tokenizer normalises)
    nfc = unicodedata.normalize
    return orig_make_context(
        enc, nfc("NFC", query), [(nfc("NFC", u), nfc("NFC", a)) for u, a in history], nfc("NFC", system)
    )


# ---------------------------------------------------------------- strategies
NAMES = ["get_weather", "search", "calc", "book_flight", "图片生成"]
text = st.lists(
    st.sampled_from([*"ab xyZ,.:!?\n\t 0123{}\"'é😀中文-_", "\u0301", "Thought:", " ", "\n\n", "Hello", " world"]),
    max_size=12,
).map("".join)
schema = st.sampled_from(
    [
        {"type": "object", "properties": {"city": {"type": "string", "description": "城市"}}, "required": ["city"]},
        {"type": "object", "properties": {}},
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        },
    ]
)


@st.composite
def tool_sets(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    tools = []
    for name in names:
        fn = {"name": name, "description": draw(text), "parameters": draw(schema)}
        if draw(st.booleans()):
            fn["name_for_human"] = name.replace("_", " ").title()
        tools.append({"type": "function", "function": fn})
    return tools


@st.composite
def conversations(draw, names):
    msgs: list[dict] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(text)})
    counter = 0
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(text)})
        for _ in range(draw(st.integers(0, 2))):
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                counter += 1
                args = json.dumps({"q": draw(text)}, ensure_ascii=draw(st.booleans()))
                calls.append(
                    {
                        "id": f"call_{counter}",
                        "type": "function",
                        "function": {"name": draw(st.sampled_from(names)), "arguments": args},
                    }
                )
            msgs.append({"role": "assistant", "content": draw(st.one_of(st.none(), text)), "tool_calls": calls})
            results = [{"role": "tool", "tool_call_id": c["id"], "content": draw(text)} for c in calls]
            msgs.extend(draw(st.permutations(results)))  # results may come in any order: matched by id
        if msgs[-1]["role"] == "user" or draw(st.booleans()):  # the original refuses two user turns in a row
            msgs.append({"role": "assistant", "content": draw(text)})
    if msgs[-1]["role"] == "assistant":  # end on a user turn or a tool result, as clients send them
        msgs.append({"role": "user", "content": draw(text)})
    return msgs


@st.composite
def requests(draw):
    tools = draw(tool_sets())
    names = [t["function"]["name"] for t in tools]
    messages = draw(conversations(names))
    choice = draw(
        st.sampled_from([None, "auto", "none", "required", {"type": "function", "function": {"name": names[0]}}])
    )
    return messages, tools, choice


# ---------------------------------------------------------------- tests
@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(req=requests())
def test_prompt_ids_match_the_original(engine, enc, req):
    """Random tool sets, histories with (parallel) calls and results, tool_choice: identical token ids."""
    messages, tools, choice = req
    plan = plan_tool_messages(messages, tools=tools, tool_choice=choice)
    if plan is None:  # the ordinary chat path takes it
        assert choice == "none" and all(
            m["role"] in ("system", "user", "assistant") and not m.get("tool_calls") for m in messages
        )
        return
    ids = engine_prompt_ids(engine, dataclasses.replace(plan, forced_prefix=""), 10**6)
    assert ids == expected_ids(enc, messages, tools, choice)
    assert plan.stop == (("Observation:", "Observation:\n") if choice != "none" else ())
    assert plan.tool_names == (() if choice == "none" else tuple(t["function"]["name"] for t in tools))
    full = engine_prompt_ids(engine, plan, 10**6)
    assert engine.tokenizer.decode(full) == engine.tokenizer.decode(ids) + plan.forced_prefix


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(req=requests(), window=st.integers(200, 1500))
def test_window_drops_old_turns_as_make_context(engine, enc, req, window):
    """A small max_window_size drops the oldest turns exactly as make_context does."""
    messages, tools, choice = req
    if messages[-1]["role"] != "user":
        messages = [*messages, {"role": "user", "content": "next?"}]
    plan = plan_tool_messages(messages, tools=tools, tool_choice=choice)
    if plan is None:
        return
    functions = [t["function"] for t in tools] if choice != "none" else None
    query, history, system = orig_parse_messages(legacy_form(messages), functions)
    nfc = unicodedata.normalize
    want = orig_make_context(
        enc, nfc("NFC", query), [(nfc("NFC", u), nfc("NFC", a)) for u, a in history], nfc("NFC", system), window
    )
    assert engine_prompt_ids(engine, dataclasses.replace(plan, forced_prefix=""), window) == want


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_the_instruction_text_is_the_originals():
    plan = plan_tool_messages([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    assert plan.query.startswith(
        "Answer the following questions as best you can. You have access to the following APIs:\n\n"
        "get_weather: Call this tool to interact with the get_weather API. What is the get_weather API useful for? "
        'Current weather of a city. Parameters: {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
        "\n\nUse the following format:"
    )
    assert plan.query.endswith("Begin!\n\nQuestion: Weather in Paris?")
    assert "should be one of [get_weather]" in plan.query
    assert plan.continuation is None and plan.history == [] and not plan.legacy


def test_tool_result_last_continues_the_assistant_turn():
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ]
    plan = plan_tool_messages(msgs, tools=[WEATHER])
    assert (
        plan.continuation
        == 'Thought: \nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation: sunny, 21 C\nThought:'
    )
    assert plan.query.endswith("Question: Weather in Paris?")


def test_tool_choice_forcing_and_legacy():
    user = [{"role": "user", "content": "hi"}]
    named = plan_tool_messages(
        user, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert named.forced_prefix == "Thought: I need to use the get_weather API.\nAction: get_weather\nAction Input:"
    two = [WEATHER, {"type": "function", "function": {"name": "search", "parameters": {}}}]
    assert (
        plan_tool_messages(user, tools=two, tool_choice="required").forced_prefix
        == "Thought: I need to use one of the APIs.\nAction:"
    )
    assert plan_tool_messages(user, tools=[WEATHER], tool_choice="none") is None
    assert plan_tool_messages(user, tools=[]) is None
    legacy = plan_tool_messages(user, functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert legacy.legacy and legacy.forced_prefix.endswith("Action: get_weather\nAction Input:")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice: no tool named 'x' in tools",
        ),
        ({"tools": [], "tool_choice": "required"}, "tool_choice: 'required' needs at least one tool"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "not both"),
        ({"tools": [WEATHER, WEATHER]}, "more than one tool"),
        ({"tools": [WEATHER], "tool_choice": 3}, "tool_choice must be"),
    ],
)
def test_bad_requests_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan_tool_messages([{"role": "user", "content": "hi"}], **kwargs)


def test_bad_histories_are_refused():
    with pytest.raises(ValueError, match="must follow the assistant"):
        plan_tool_messages(
            [{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "x", "content": "r"}], tools=[WEATHER]
        )
    with pytest.raises(ValueError, match="after a user message"):
        plan_tool_messages([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], tools=[WEATHER])
