"""The Message type (qwen_core.messages) and ``reply_prefix``.

Messages from every front end's shape give exactly the prompt the legacy (query, history, system)
arguments give; a reply started with ``reply_prefix`` streams only its continuation, and that
continuation is token for token the greedy continuation of the same prompt on the reference
``generate`` path (no batching), on the local engine's decode worker and on the remote backend.
"""

from __future__ import annotations

import pytest

from qwen_core import load_engine
from qwen_core.messages import Message, ToolCall, from_openai, from_pairs, from_store, history_pairs, split
from qwen_core.tools import engine_prompt_ids, plan_tool_messages

GREEDY = dict(do_sample=False, max_new_tokens=12, repetition_penalty=1.1)
HISTORY = [("Who are you?", "A helpful assistant."), ("Where?", "Here.")]


@pytest.fixture(scope="module")
def alone(ckpt_dir):
    """The reference path: every reply runs its own ``model.generate`` (no decode worker)."""
    return load_engine(str(ckpt_dir), device="cpu", max_batch=0)


def test_every_shape_converts_to_the_same_prompt(engine):
    want = engine.build_prompt("And then?", HISTORY, "Be terse.")
    dicts = [{"role": "system", "content": "Be terse."}]
    for user, assistant in HISTORY:
        dicts += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    dicts.append({"role": "user", "content": "And then?"})
    store = [{"id": "g", "role": "assistant", "content": "Hello! (a greeting)"}]  # answers nothing: not sent
    for user, assistant in HISTORY:
        store += [{"role": "user", "content": user}, {"role": "event", "content": "Persona: X"}]
        store.append({"role": "assistant", "content": assistant})
    store.append({"role": "user", "content": "And then?"})
    shapes = [from_openai(dicts), from_pairs("And then?", HISTORY, "Be terse."), from_store(store, system="Be terse.")]
    for messages in shapes:
        assert all(isinstance(m, Message) for m in messages)
        assert engine.plan_messages(messages).ids == want
        assert split(messages) == ("Be terse.", HISTORY, "And then?")
    assert engine.plan_messages(dicts).ids == want  # dicts are accepted as they are
    assert from_openai(dicts) == shapes[1]  # frozen dataclasses: equal by value
    # a persona's example dialogue leads the history; unanswered user messages are joined
    examples = [("Example question", "Example answer")]
    store2 = [*store[:-1], {"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    msgs = from_store(store2, examples, "S")
    assert split(msgs) == ("S", [examples[0], *HISTORY], "one\n\ntwo")
    assert history_pairs(from_store(store2)) == HISTORY


def test_bad_messages_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="role must be one of"):
        Message("robot", "x")
    with pytest.raises(ValueError, match=r"messages\[0\].content must be text"):
        from_openai([{"role": "user", "content": 5}])
    with pytest.raises(ValueError, match="last message must come from the user"):
        split([Message("user", "a"), Message("assistant", "b")])


def test_tool_messages_give_the_same_react_prompt_as_dicts(engine):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    dicts = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    messages = from_openai(dicts)
    assert messages[1].tool_calls == (ToolCall("weather", "{}", "c1"),) and messages[2].has_tools
    by_dicts = plan_tool_messages(dicts, tools=tools)
    by_messages = plan_tool_messages(messages, tools=tools)
    assert by_messages == by_dicts and "Observation: sunny" in by_messages.continuation
    assert engine_prompt_ids(engine, by_messages) == engine_prompt_ids(engine, by_dicts)


def test_reply_prefix_is_written_after_the_assistant_header(engine):
    plain = engine.plan_prompt("Hi", HISTORY)
    plan = engine.plan_prompt("Hi", HISTORY, reply_prefix="Sure, here")
    prefix_ids = engine.tokenizer.encode("Sure, here")
    assert plan.ids == plain.ids + prefix_ids and plan.reply_prefix_tokens == len(prefix_ids)
    assert plan.text == plain.text + "Sure, here" and plan.text.endswith("<|im_start|>assistant\nSure, here")
    assert engine.plan_prompt("Hi", HISTORY, reply_prefix="").ids == plain.ids


@pytest.mark.parametrize("prefix", ["Sure, here", "写", "The answer is "])
def test_reply_prefix_continuation_equals_the_reference_generate_path(engine, alone, prefix):
    ids = engine.build_prompt("Tell me more", HISTORY) + engine.tokenizer.encode(prefix)
    with alone.stream_prompt(ids, alone.settings(**GREEDY)) as ref:
        ref.text()
    assert ref.result.completion_tokens > 0
    for backend in (engine, alone):  # the decode worker (batcher) and the reference path
        with backend.stream_chat("Tell me more", HISTORY, reply_prefix=prefix, **GREEDY) as stream:
            text = stream.text()
        assert stream.result.token_ids == ref.result.token_ids
        assert text == ref.result.text  # only the continuation; the caller joins
        assert stream.result.prompt_tokens == len(ids)
    messages = from_pairs("Tell me more", HISTORY)
    with engine.stream_messages(messages, reply_prefix=prefix, **GREEDY) as stream:
        assert stream.text() == ref.result.text


def test_reply_prefix_on_the_remote_backend_sends_token_ids(engine, tmp_path, ckpt_dir):
    """The app's own /v1/completions (token-id prompts, like vLLM) serves the remote backend."""
    from fault_fixtures import InProcessApp

    from qwen_core.remote import MODE_IDS, load_remote_engine

    app = InProcessApp(engine, tmp_path, concurrency=2, max_queue=4)
    remote = None
    try:
        remote = load_remote_engine([app.url], tokenizer_dir=ckpt_dir, model=app.model, timeout=60.0)
        assert remote.endpoints[0].mode == MODE_IDS
        want = engine.stream_chat("Tell me more", HISTORY, reply_prefix="Sure, here", **GREEDY)
        want_text = want.text()
        with remote.stream_chat("Tell me more", HISTORY, reply_prefix="Sure, here", **GREEDY) as got:
            assert got.text() == want_text
        assert got.result.prompt_tokens == want.result.prompt_tokens
    finally:
        if remote is not None:
            remote.unload()
        app.stop()
