"""The per-chat menu's server side (ui.chat_menu) on the tiny checkpoint, without a browser: a
command acts on the chat it names and only on it; anything forged is refused with a sentence."""

from __future__ import annotations

import json

import pytest

from ui import ASSETS
from ui.chat_menu import MAX_COMMAND_CHARS, ChatMenu, parse_command
from ui.handlers import Handlers
from ui.personas import PersonaStore
from ui.refusal import Refusal
from ui.reply_controls import ReplyActions
from ui.service import ChatService, Limits, empty_store


@pytest.fixture
def menu(manager, tmp_path):
    service = ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"), Limits())
    handlers = Handlers(service)
    return ChatMenu(handlers, ReplyActions(handlers))


def _two_chats(menu) -> tuple[dict, str, str]:
    service = menu.service
    store = service.add_user_message(empty_store(), "first alpha")
    first = store["active"]
    store = service.new_conversation(store)
    store = service.add_user_message(store, "second beta")
    return store, first, store["active"]


@pytest.mark.parametrize(
    "command",
    [
        "",
        "not json",
        "[1, 2]",
        json.dumps({"action": "format-disk", "id": "x"}),
        json.dumps({"action": "delete", "id": 7}),
        json.dumps({"action": "rename", "id": "x"}),  # no title
        json.dumps({"action": "delete", "id": "x", "pad": "y" * MAX_COMMAND_CHARS}),
        None,
    ],
)
def test_forged_commands_are_refused_with_a_sentence(command):
    with pytest.raises(Refusal) as err:
        parse_command(command)
    text = err.value.message
    assert text.endswith(".") and ("not understood" in text or "Give the chat a name" in text)


def test_rename_acts_on_the_named_chat_and_the_open_chat_stays(menu):
    store, first, second = _two_chats(menu)
    out = menu.run(store, json.dumps({"action": "rename", "id": first, "title": "  renamed\n alpha "}))
    store = out[0]
    assert store["active"] == second
    titles = {c["id"]: c["title"] for c in store["conversations"]}
    assert titles[first] == "renamed alpha" and titles[second] == "second beta"


def test_delete_removes_only_the_named_chat_and_restore_can_bring_it_back(menu):
    store, first, second = _two_chats(menu)
    out = menu.run(store, json.dumps({"action": "delete", "id": first}))
    store = out[0]
    assert [c["id"] for c in store["conversations"]] == [second] and store["active"] == second
    assert out[-1]["visible"] is True  # ↩ Restore is offered


def test_export_writes_the_named_chat_and_leaves_the_store_as_it_was(menu):
    store, first, second = _two_chats(menu)
    out = menu.run(store, json.dumps({"action": "export", "id": first}))
    assert store["active"] == second
    exported = json.loads(open(out[4]["value"], encoding="utf-8").read())
    assert [m["content"] for m in exported["messages"]] == ["first alpha"]


def test_a_chat_that_is_gone_is_refused(menu):
    store, _, second = _two_chats(menu)
    with pytest.raises(Refusal, match="no longer in the list"):
        menu.run(store, json.dumps({"action": "delete", "id": "no-such-chat"}))
    assert store["active"] == second and len(store["conversations"]) == 2
