"""Reply versions, Continue and "Start reply with…" in the UI's service, on the tiny checkpoint (no browser).

Regenerate and Edit keep the replaced reply as a version of the new one (data in the conversation);
Continue extends the last reply through ``reply_prefix``; every reply records its figures.
"""

from __future__ import annotations

import pytest

from ui import ASSETS, versions
from ui.personas import PersonaStore
from ui.service import ChatInputError, ChatService, Limits, empty_store

SYSTEM = "You are a helpful assistant."
GREEDY = {"do_sample": False, "max_new_tokens": 8}


@pytest.fixture
def service(manager, tmp_path):
    return ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"), Limits())


def _reply(service, store, settings=GREEDY, **kw):
    for _ in service.stream_reply(store, SYSTEM, settings, "s1", **kw):
        pass
    return service.active(store)["messages"]


def test_regenerate_keeps_the_old_reply_as_a_version(service):
    store = service.add_user_message(empty_store(), "Hello")
    first = _reply(service, store)[-1]["content"]
    assert versions.position(service.active(store)["messages"]) is None  # one version: no switcher
    service.regenerate(store)
    sampled = {"do_sample": True, "seed": 3, "top_k": 50, "temperature": 1.5, "max_new_tokens": 8}
    msgs = _reply(service, store, sampled)
    second = msgs[-1]["content"]
    assert versions.position(msgs) == (2, 2)
    assert [v["content"] for v in msgs[-1]["versions"]] == [first, second]
    conv = service.active(store)
    assert versions.switch(conv, -1) and conv["messages"][-1]["content"] == first
    assert versions.position(conv["messages"]) == (1, 2)
    assert not versions.switch(conv, -1)  # already the first
    assert versions.switch(conv, +1) and conv["messages"][-1]["content"] == second
    assert "next_versions" not in conv


def test_edit_of_the_last_message_keeps_the_old_exchange_as_a_version(service, engine):
    store = service.add_user_message(empty_store(), "Hello")
    old = _reply(service, store)[-1]["content"]
    service.edit(store, 0, "Goodbye")
    msgs = _reply(service, store)
    assert msgs[0]["content"] == "Goodbye" and versions.position(msgs) == (2, 2)
    conv = service.active(store)
    versions.switch(conv, -1)
    # the old reply comes back with the message it answered
    assert [m["content"] for m in conv["messages"]] == ["Hello", old]
    # the model sees the version on screen
    assert service.context(store, SYSTEM, "next", None).raw_prompt.count("Hello") == 1


def test_continue_extends_the_last_reply_exactly(service, engine):
    store = service.add_user_message(empty_store(), "Tell me a story")
    msgs = _reply(service, store, {**GREEDY, "max_new_tokens": 4})
    start = msgs[-1]["content"]
    assert msgs[-1]["info"]["finish"] == "length" and msgs[-1]["info"]["tokens"] == 4
    msgs = _reply(service, store, continue_last=True)
    assert len(msgs) == 2 and msgs[-1]["content"].startswith(start)
    want = engine.stream_chat("Tell me a story", system=SYSTEM, reply_prefix=start, **GREEDY).text()
    assert msgs[-1]["content"] == (start + want).strip()
    assert msgs[-1]["info"]["tokens"] > 4  # the continuation's tokens are added


def test_start_reply_with_a_given_text(service, engine):
    store = service.add_user_message(empty_store(), "Name a colour")
    msgs = _reply(service, store, reply_prefix="My answer:")
    want = engine.stream_chat("Name a colour", system=SYSTEM, reply_prefix="My answer:", **GREEDY).text()
    assert msgs[-1]["content"] == ("My answer:" + want).strip()
    assert versions.info_line(msgs[-1]["info"]).startswith(f"{msgs[-1]['info']['tokens']} tokens")


def test_nothing_to_continue_is_refused(service):
    store = empty_store()
    with pytest.raises(ChatInputError, match="no reply to continue"):
        _reply(service, store, continue_last=True)


def test_new_chat_opens_with_the_persona_greeting(service):
    poet = service.personas.get("classical-poet")
    store = service.add_user_message(empty_store(), "hi")
    store = service.new_conversation(store, "classical-poet")
    msgs = service.active(store)["messages"]
    assert [(m["role"], m["content"]) for m in msgs] == [("assistant", poet.greeting)] and msgs[0]["greeting"]
    same = store["active"]
    assert service.new_conversation(store, "classical-poet")["active"] == same  # nothing said yet: reused
    store = service.new_conversation(store, "default-assistant")  # another persona, still unused: switched
    assert store["active"] == same and service.active(store)["messages"] == []
    # the greeting answers nothing, so the model never sees it
    assert service.context(store, SYSTEM, "x", None).n_turns == 0


def test_restore_brings_back_a_deleted_or_cleared_chat(service):
    from ui.reply_controls import restore_chat

    store = service.add_user_message(empty_store(), "keep me")
    _reply(service, store)
    before = service.active(store)
    saved = {**before, "messages": [dict(m) for m in before["messages"]]}
    store = service.delete(store)
    assert all(c["id"] != saved["id"] for c in store["conversations"])
    restore_chat(store, saved)
    back = service.active(store)
    assert [m["content"] for m in back["messages"]] == [m["content"] for m in saved["messages"]]
    assert back["id"] != saved["id"] and back["id"] not in store.get("deleted", [])  # not a tombstoned id
    assert {m["id"] for m in back["messages"]}.isdisjoint(m["id"] for m in saved["messages"])
    cleared = {**back, "messages": [dict(m) for m in back["messages"]]}
    service.clear(store)
    restore_chat(store, cleared)
    assert store["active"] == back["id"] and len(service.active(store)["messages"]) == 2  # back in its place
