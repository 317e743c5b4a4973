"""The chat UI's actions as plain functions on the tiny checkpoint (no browser)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from worker_hold import worker_held

from qwen_core.manager import ModelManager, ModelSpec
from ui import ASSETS
from ui.conversations import ConversationError, export_json, parse_import, to_markdown, to_model_history
from ui.personas import PersonaError, PersonaStore
from ui.service import EARLY_UPDATE_AFTER_S, ChatInputError, ChatService, Limits, empty_store

GREEDY = {"do_sample": False, "max_new_tokens": 12}


@pytest.fixture
def personas(tmp_path):
    return PersonaStore(ASSETS / "personas", tmp_path / "personas")


@pytest.fixture
def service(manager, personas):
    return ChatService(manager, personas, Limits(max_message_chars=1000))


def _reply(service, store, session="s1", system="You are a helpful assistant.", **kw):
    last = None
    for _, stats in service.stream_reply(store, system, {**GREEDY, **kw}, session):
        last = stats
    return store, last  # the store is updated in place


def test_send_and_stream(service, engine):
    store = service.add_user_message(empty_store(), "Hello there")
    conv = service.active(store)
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [("user", "Hello there")]
    assert isinstance(conv["messages"][0]["id"], str)  # every message has an id (tabs merge by it)
    assert conv["title"] == "Hello there"
    grown = []
    for s, _ in service.stream_reply(store, "You are a helpful assistant.", GREEDY, "s1"):
        grown.append(service.active(s)["messages"][-1]["content"])
    assert len(grown) > 2 and grown[-1] == engine.chat("Hello there", **GREEDY)
    assert service.active(store)["messages"][-1]["role"] == "assistant"


def test_history_reaches_the_model(service, engine):
    store = service.add_user_message(empty_store(), "first")
    store, _ = _reply(service, store)
    first_reply = service.active(store)["messages"][-1]["content"]
    store = service.add_user_message(store, "second")
    store, _ = _reply(service, store)
    want = engine.chat("second", history=[("first", first_reply)], **GREEDY)
    assert service.active(store)["messages"][-1]["content"] == want


def test_empty_and_oversized_messages_are_refused(service):
    store = empty_store()
    for bad in ("", "   \n\t ", "x" * 1001):
        with pytest.raises(ChatInputError):
            service.add_user_message(store, bad)
    assert service.active(store)["messages"] == []


def test_stop_keeps_partial_reply_and_frees_the_engine(service):
    store = service.add_user_message(empty_store(), "Talk a lot")
    gen = service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 4000}, "stopper")
    next(gen)
    next(gen)
    service.cancel("stopper")
    stats = [s for _, s in gen][-1]
    assert stats.finish_reason == "cancelled" and stats.tokens < 4000
    msg = service.active(store)["messages"][-1]
    assert msg["role"] == "assistant" and msg.get("stopped") is True
    assert threading.active_count() < 100  # other tests' servers and browsers may still hold some
    store = service.add_user_message(store, "again")
    _, stats = _reply(service, store)
    assert stats.finish_reason in ("length", "stop")


def test_closing_the_stream_stops_generation(service):
    """Gradio closes the generator when Stop cancels the event."""
    store = service.add_user_message(empty_store(), "Talk a lot")
    gen = service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 4000}, "closer")
    next(gen)
    before = {t for t in threading.enumerate() if t.name == "qwen-generate"}
    gen.close()
    for t in before:
        t.join(timeout=30)
        assert not t.is_alive()


def test_regenerate_undo_edit_clear(service):
    store = service.add_user_message(empty_store(), "one")
    store, _ = _reply(service, store)
    store = service.add_user_message(store, "two")
    store, _ = _reply(service, store)
    first = service.active(store)["messages"][-1]["content"]
    store = service.regenerate(store)
    last = service.active(store)["messages"][-1]
    assert (last["role"], last["content"]) == ("user", "two")
    assert service.active(store)["deleted"]  # the dropped reply's id is remembered (it never comes back)
    store, _ = _reply(service, store, seed=5, do_sample=True, temperature=1.0)
    assert service.active(store)["messages"][-1]["role"] == "assistant"
    assert isinstance(first, str)

    store, text = service.undo(store)
    assert text == "two" and service.active(store)["messages"][0]["content"] == "one"
    assert len(service.active(store)["messages"]) == 2

    store = service.edit(store, 0, "uno")
    assert [(m["role"], m["content"]) for m in service.active(store)["messages"]] == [("user", "uno")]
    store, _ = _reply(service, store)
    with pytest.raises(ChatInputError):
        service.edit(store, 1, "assistant messages are not editable")

    store = service.clear(store)
    assert service.active(store)["messages"] == []
    with pytest.raises(ChatInputError):
        service.undo(store)
    with pytest.raises(ChatInputError):
        service.regenerate(store)


def test_persona_switch_applies_from_next_turn_and_is_shown(service, engine, personas):
    store = service.add_user_message(empty_store(), "hi")
    store, _ = _reply(service, store)
    store = service.set_persona(store, "translator")
    msgs = service.active(store)["messages"]
    assert msgs[-1]["role"] == "event" and "Translator" in msgs[-1]["content"]
    translator = personas.get("translator")
    store = service.add_user_message(store, "你好")
    store, _ = _reply(service, store, system=translator.system_prompt)
    history = to_model_history(service.active(store)["messages"][:-2])
    assert history == [("hi", msgs[1]["content"])]  # events never reach the model
    want = engine.chat("你好", history=history, system=translator.system_prompt, **GREEDY)
    assert service.active(store)["messages"][-1]["content"] == want


def test_editing_the_system_prompt_mid_chat_is_noted(service):
    store = service.add_user_message(empty_store(), "hi")
    store, _ = _reply(service, store, system="A")
    store = service.add_user_message(store, "again")
    store, _ = _reply(service, store, system="B")
    roles = [m["role"] for m in service.active(store)["messages"]]
    assert roles == ["user", "assistant", "event", "user", "assistant"]


def test_greeting_opens_an_empty_chat(service):
    store = service.set_persona(empty_store(), "anime-girl")
    msgs = service.active(store)["messages"]
    assert msgs and msgs[0]["role"] == "assistant" and msgs[0].get("greeting")
    assert to_model_history(msgs) == []


def test_context_report_marks_dropped_turns(service):
    store = empty_store()
    for i in range(6):
        store = service.add_user_message(store, f"question number {i} " * 5)
        store, _ = _reply(service, store)
    small = service.context(store, "S", "draft text", 120)
    full = service.context(store, "S", "draft text", 6144)
    assert full.dropped_turns == [] and full.n_turns == 6
    assert small.dropped_turns and small.dropped_turns == list(range(len(small.dropped_turns)))
    assert small.dropped_messages[:2] == [0, 1]
    assert small.total_tokens < full.total_tokens
    assert "draft text" in small.raw_prompt and small.raw_prompt.endswith("<|im_start|>assistant\n")


def test_two_sessions_are_isolated(service):
    a = service.add_user_message(empty_store(), "I am session A")
    b = service.add_user_message(empty_store(), "I am session B")
    results = {}

    def run(name, store):
        for _ in service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 30}, name):
            pass
        results[name] = store

    threads = [threading.Thread(target=run, args=("A", a)), threading.Thread(target=run, args=("B", b))]
    for t in threads:
        t.start()
    service.cancel("A")  # stopping A never touches B
    for t in threads:
        t.join(60)
    texts_a = json.dumps(results["A"])
    texts_b = json.dumps(results["B"])
    assert "session A" in texts_a and "session B" not in texts_a
    assert "session B" in texts_b and "session A" not in texts_b
    assert service.active(results["B"])["messages"][-1]["role"] == "assistant"


def test_conversations_sidebar(service):
    store = service.add_user_message(empty_store(), "apples and pears")
    store, _ = _reply(service, store)
    first = store["active"]
    store = service.new_conversation(store, "default-assistant")
    assert store["active"] != first and len(store["conversations"]) == 2
    assert service.new_conversation(store)["active"] == store["active"]  # an empty one is reused
    store = service.add_user_message(store, "bananas")
    store = service.rename(store, "  Fruit   talk ")
    assert service.active(store)["title"] == "Fruit talk"
    assert [c["id"] for c in service.search(store, "PEARS")] == [first]
    store = service.delete(store)
    assert store["active"] == first and len(store["conversations"]) == 1
    store = service.delete(store)
    assert len(store["conversations"]) == 1 and service.active(store)["messages"] == []


def test_export_and_import(service):
    store = service.add_user_message(empty_store(), "What is $e^{i\\pi}$?")
    store, _ = _reply(service, store)
    conv = service.active(store)
    back = parse_import(export_json(conv))
    assert [(m["role"], m["content"]) for m in back["messages"]] == [
        (m["role"], m["content"]) for m in conv["messages"]
    ]
    assert back["id"] != conv["id"]
    md = to_markdown(conv, "Default assistant")
    assert md.startswith("# What is") and "**You**" in md and "$e^{i\\pi}$" in md
    plain = parse_import(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]))
    assert plain["title"] == "hi"
    for bad in ("{", "[1, 2]", json.dumps({"messages": [{"role": "hacker", "content": "x"}]}), "x" * (21 * 2**20)):
        with pytest.raises(ConversationError):
            parse_import(bad)


def test_damaged_browser_store_is_repaired(service):
    for junk in (None, "nonsense", {"conversations": "x"}, {"conversations": [1, {"id": "a"}]}):
        store = service.ensure_store(junk)
        assert service.active(store)["messages"] == []


def test_persona_library(personas):
    ids = [p.id for p in personas.all()]
    assert ids[0] == "default-assistant"
    for needed in ("anime-girl", "compliment-writer", "translator", "code-reviewer", "classical-poet"):
        assert needed in ids
    assert personas.errors == []


def test_persona_create_edit_duplicate_delete(personas):
    base = personas.get("code-reviewer")
    from dataclasses import replace

    mine = personas.save(replace(base, id=personas.unique_id("My reviewer"), name="My reviewer", builtin=False))
    assert personas.get(mine.id).name == "My reviewer" and not personas.get(mine.id).builtin
    personas.save(replace(mine, system_prompt="Be harsh."))
    assert personas.get(mine.id).system_prompt == "Be harsh."
    # Editing a built-in saves the user's copy over it; deleting that copy restores the original.
    personas.save(replace(base, system_prompt="Custom review rules."))
    assert personas.get("code-reviewer").system_prompt == "Custom review rules."
    personas.delete("code-reviewer")
    assert personas.get("code-reviewer").system_prompt == base.system_prompt
    with pytest.raises(PersonaError):
        personas.delete("code-reviewer")  # built-in
    personas.delete(mine.id)
    assert personas.get(mine.id) is None


def test_malformed_persona_file_is_reported_and_others_survive(personas):
    personas.user_dir.mkdir(parents=True, exist_ok=True)
    bad = personas.user_dir / "broken.json"
    bad.write_text('{\n  "name": "Broken",\n  "system_prompt": "x",\n}\n')
    wrong = personas.user_dir / "wrong.json"
    wrong.write_text(json.dumps({"name": "", "system_prompt": 3}))
    all_ = personas.all()
    assert len(all_) >= 6 and "broken" not in {p.id for p in all_}
    # Reported by file name: the panel shows these to users, who have no business with server paths.
    assert any(e.startswith("broken.json:") and "line 4" in e for e in personas.errors)
    assert any(e.startswith("wrong.json:") and "'name'" in e for e in personas.errors)
    assert not any(str(personas.user_dir) in e for e in personas.errors)


def test_persona_import_export(personas):
    exported = json.dumps(
        [personas.get("translator").to_json(), personas.get("anime-girl").to_json()], ensure_ascii=False
    )
    added = personas.import_json(exported, "personas.json")
    assert len(added) == 2 and all(p.id not in ("translator", "anime-girl") for p in added)
    assert personas.get(added[0].id).system_prompt == personas.get("translator").system_prompt
    with pytest.raises(PersonaError, match="line 1"):
        personas.import_json("{oops", "x.json")
    with pytest.raises(PersonaError, match="settings"):
        personas.import_json(json.dumps({"name": "n", "system_prompt": "s", "settings": {"evil": 1}}))
    # A name full of path tricks still lands inside the user folder.
    sneaky = personas.import_json(json.dumps({"name": "../../etc/passwd", "system_prompt": "s"}))[0]
    assert (personas.user_dir / f"{sneaky.id}.json").is_file() and "/" not in sneaky.id


def test_model_switch_keeps_previous_on_failure(engine, ckpt_dir):
    from qwen_core import load_engine

    m = ModelManager(load_engine, [], offline=True)
    m.start(ModelSpec(str(ckpt_dir), device="cpu"))
    good = m.current
    with pytest.raises(Exception, match="is loaded again"):
        m.switch(ModelSpec("/nonexistent/model", device="cpu"))
    assert m.current == good and m.engine is not None
    assert m.engine.chat("hi", do_sample=False, max_new_tokens=2) is not None
    status = m.status()
    assert status["loaded"] and status["precision"] == "fp32" and status["device"] == "cpu"
    assert status["memory"]["rss_gb"] > 0


def test_busy_session_refuses_a_second_reply_and_stop_commits_the_partial_one(service):
    store = service.add_user_message(empty_store(), "long please")
    gen = service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 4000}, "busy")
    next(gen)  # streaming (the first token; or, on a slow machine, "accepted" before it)
    next(gen)
    assert service.is_busy("busy") and not service.is_busy("someone-else")
    other = service.add_user_message(empty_store(), "meanwhile")
    with pytest.raises(ChatInputError, match="still being generated"):
        next(service.stream_reply(other, "S", GREEDY, "busy"))
    service.cancel("busy")
    gen.close()  # what Gradio does to the cancelled event
    saved = service.wait_idle("busy", timeout=30)
    assert not service.is_busy("busy")
    reply = service.active(saved)["messages"][-1]
    assert reply["role"] == "assistant" and reply["content"] and reply.get("stopped")


def test_stop_before_the_first_token_is_offered_at_once_and_keeps_no_empty_reply(service, manager):
    """A first token slower than EARLY_UPDATE_AFTER_S (a long prompt prefills for seconds on a CPU)
    gets an update before it: the page shows Stop from then on. Stopped there, the chat keeps the
    user's message and no empty reply."""
    # The decode worker is busy first: the prompt waits, as a long prefill would make it.
    with worker_held(manager.engine.batcher):
        store = service.add_user_message(empty_store(), "A question " * 40)
        gen = service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 4000}, "early")
        started = time.monotonic()
        _, stats = next(gen)
        assert stats.waiting and stats.tokens == 0 and stats.ttft_s is None
        assert time.monotonic() - started >= EARLY_UPDATE_AFTER_S * 0.9
        assert service.is_busy("early")
        service.cancel("early")
        gen.close()  # what Gradio does to the cancelled event
    saved = service.wait_idle("early", timeout=30)
    assert [m["role"] for m in service.active(saved)["messages"]] == ["user"]
    _, stats = _reply(service, saved, session="early")  # the question is answered on the next try
    assert stats.finish_reason in ("length", "stop") and not stats.waiting
    assert [m["role"] for m in service.active(saved)["messages"]] == ["user", "assistant"]


def test_a_quick_first_token_comes_without_an_update_before_it(service):
    """Within EARLY_UPDATE_AFTER_S the first update already carries text: the page is not sent
    (and does not render) the chat once more before the token it waits for."""
    store = service.add_user_message(empty_store(), "Hi")
    updates = list(service.stream_reply(store, "S", {"do_sample": False, "max_new_tokens": 4}, "quick"))
    first = updates[0][1]
    if first.waiting:  # the tiny model's first token took longer than the grace: a very loaded machine
        assert first.ttft_s is None
        pytest.skip("the first token was slower than EARLY_UPDATE_AFTER_S on this machine")
    assert first.tokens >= 1 and first.ttft_s is not None
    assert all(not stats.waiting for _, stats in updates)


def test_persona_example_dialogue_leads_the_history(service, engine):
    examples = [("今天天气真好", "The weather is lovely today.")]
    store = service.add_user_message(empty_store(), "你好")
    report = service.context(store, "Translate.", "", 6144, examples=examples)
    assert "今天天气真好" in report.raw_prompt and report.n_turns == 1
    for _ in service.stream_reply(store, "Translate.", GREEDY, "ex", examples=examples):
        pass
    want = engine.chat("你好", history=examples, system="Translate.", **GREEDY)
    assert service.active(store)["messages"][-1]["content"] == want
    # the examples go first when the window is small, and have no rows to mark in the chat
    small = service.context(store, "Translate.", "", 30, examples=examples)
    assert small.dropped_turns[0] == 0  # the example turn is dropped first
    assert small.dropped_messages == [i for t in small.dropped_turns[1:] for i in (0, 1)]


def test_model_tab_shows_the_prefix_cache(service):
    """#14 item 3: the Model tab says how much the prefix cache saved (hit rate, tokens reused, bytes)."""
    from ui.handlers import Handlers

    store = service.add_user_message(empty_store(), "Hello there")
    _reply(service, store, do_sample=False, max_new_tokens=4)
    service.regenerate(store)
    _reply(service, store, do_sample=False, max_new_tokens=4)  # the same prompt again: a hit
    text = Handlers(service).model_status()
    assert "Prefix cache:" in text
    stats = service.manager.engine.batcher.stats()["prefix_cache"]
    assert stats["hits"] >= 1 and f"{stats['tokens_reused']:,} tokens reused" in text
    assert service.manager.status()["prefix_cache"] in text


def test_the_page_gets_stop_before_the_first_token(manager, personas):
    """Handlers.respond's first update enables Stop (and hides Send) while the chat itself is left
    as it is; the text follows with the tokens, and the last update gives Send back."""
    from types import SimpleNamespace

    import gradio as gr

    from ui.handlers import Handlers

    h = Handlers(ChatService(manager, personas))
    store = h.service.add_user_message(h.service.ensure_store(None), "Hello")
    request = gr.Request(username=None, session_hash="early-stop", client=SimpleNamespace(host="10.0.0.2"))
    # The worker is busy first, so the first token is slower than EARLY_UPDATE_AFTER_S.
    with worker_held(manager.engine.batcher):
        events = h.respond(store, "S", False, "[]", 0, 0.8, 0, 1.0, 6, -1, 256, request)
        first = next(events)
    outputs = [first, *events]
    last = outputs[-1]
    assert first[0] == gr.skip()  # the store goes at the end
    assert [m["role"] for m in first[1]] == ["user"]  # the chat as the user left it: no empty reply
    assert first[3]["interactive"] is True and first[3]["visible"] is True  # Stop
    assert first[4]["visible"] == "hidden"  # Send
    assert outputs[1][1][-1]["role"] == "assistant"  # then the reply streams
    assert last[3]["interactive"] is False and last[4]["visible"] is True


def test_a_queued_reply_offers_stop_while_it_waits_and_leaves_the_queue_when_stopped(manager, personas):
    """One slot, taken: a second user's reply is accepted into the queue and says so at once
    (the page shows Stop); closed there (Stop), it leaves the queue, and a later one still runs."""
    from qwen_core.scheduler import Scheduler, SchedulerConfig

    scheduler = Scheduler(SchedulerConfig(max_concurrent=1))
    service = ChatService(manager, personas, scheduler=scheduler)
    busy = service.add_user_message(empty_store(), "Talk a lot")
    running = service.stream_reply(busy, "S", {"do_sample": False, "max_new_tokens": 4000}, "a", user="alice")
    next(running)
    waiting = service.add_user_message(empty_store(), "me too")
    queued = service.stream_reply(waiting, "S", GREEDY, "b", user="bob")
    _, stats = next(queued)
    assert stats.waiting and scheduler.stats()["waiting"] == 1
    queued.close()
    assert scheduler.stats()["waiting"] == 0 and not service.is_busy("b")
    assert [m["role"] for m in service.active(waiting)["messages"]] == ["user"]
    again = service.stream_reply(waiting, "S", GREEDY, "b", user="bob")
    _, stats = next(again)
    assert stats.waiting  # queued again behind alice
    service.cancel("a")
    running.close()
    final = [s for _, s in again][-1]  # alice's slot passed on: bob's reply runs to its end
    assert final.finish_reason in ("length", "stop") and scheduler.stats() == {
        "active": 0,
        "waiting": 0,
        "max_concurrent": 1,
    }
