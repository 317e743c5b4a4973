"""Export and import of all chats (issue 15, item 7; ``ui/archive.py``): the archive round trip, every
bad file refused with its place named and nothing added, the limits, and an export that always imports
back. The attacks come first."""

from __future__ import annotations

import json

import pytest

from ui import ASSETS
from ui.archive import export_archive, parse_chats
from ui.conversations import MAX_CONVERSATIONS, MAX_IMPORT_BYTES, ConversationError, export_json, message
from ui.handlers import Handlers
from ui.personas import PersonaStore
from ui.refusal import Refusal
from ui.service import ChatService, Limits, empty_store


@pytest.fixture
def service(manager, tmp_path):
    return ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"))


def _store(service, chats: int, turns: int = 2) -> dict:
    store = empty_store()
    for c in range(chats):
        if c:
            service.new_conversation(store)
        conv = service.active(store)
        for t in range(turns):
            conv["messages"] += [message("user", f"chat {c} question {t}"), message("assistant", f"answer {c}.{t}")]
        conv["title"], conv["updated"] = f"chat {c}", 1_700_000_000 + c
    return store


# --- attacks and bad files: a clear error naming the place, nothing added ---------------------------


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        ({"format": "qwen-chat-archive", "conversations": "all of them"}, "'conversations' must be a list"),
        ({"conversations": []}, "holds no chats"),
        ({"conversations": [{"messages": []}] * (MAX_CONVERSATIONS + 1)}, f"at most {MAX_CONVERSATIONS}"),
        ({"conversations": [{"messages": []}, {"messages": [{"role": "root", "content": "x"}]}]}, "conversations[1]"),
        ({"conversations": [{"messages": []}, {"messages": [{"role": "user", "content": 5}]}]}, "conversations[1]"),
        ({"conversations": [{"title": "no messages"}]}, "conversations[0]: expected an object with a 'messages'"),
        ({"conversations": [{"messages": [{"role": "user", "content": "\ud800"}]}]}, "unpaired surrogate"),
    ],
)
def test_a_bad_archive_is_refused_naming_the_place(service, doc, said):
    with pytest.raises(ConversationError) as err:
        parse_chats(json.dumps(doc), "chats.json")
    assert said in str(err.value) and str(err.value).startswith("chats.json: ")


def test_an_oversized_file_is_refused_before_it_is_parsed():
    with pytest.raises(ConversationError, match="larger than 20 MB"):
        parse_chats('{"conversations": [' + " " * MAX_IMPORT_BYTES + "]}", "big.json")


def test_an_archive_that_does_not_fit_adds_nothing(service):
    store = _store(service, 3)
    full = Limits(max_conversations=4)
    small = ChatService(service.manager, service.personas, full)
    before = json.dumps(store, sort_keys=True)
    with pytest.raises(ConversationError, match="holds 2 chats and there is room for 1 more"):
        small.add_imported(store, parse_chats(export_archive(_store(service, 2))))
    assert json.dumps(store, sort_keys=True) == before  # all or none


def test_imported_ids_and_dates_cannot_be_forged(service):
    """An archive's ids are never taken (a chat id names a chat in the store: a crafted file must not
    replace or shadow one); its dates are kept only when they are sane."""
    store = _store(service, 1)
    own = service.active(store)["id"]
    doc = {"conversations": [{"id": own, "created": "yesterday", "updated": 10**12, "messages": []}]}
    (conv,) = parse_chats(json.dumps(doc))
    assert conv["id"] != own and isinstance(conv["created"], float) and conv["updated"] < 10**12
    service.add_imported(store, [conv])
    assert len({c["id"] for c in store["conversations"]}) == 2


# --- the round trip --------------------------------------------------------------------------------


def test_all_chats_come_back_in_order_with_their_messages_titles_and_dates(service):
    store = _store(service, 3)
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"a":1}'}}
    service.active(store)["messages"] += [
        message("assistant", "Thought: use it", tool_calls=[tool_call]),
        message("tool", "1", tool_call_id="call_1", name="calculator"),
    ]
    archive = export_archive(store)
    assert "\n" not in archive  # compact: an archive is no larger than the store the page sends
    convs = parse_chats(archive, "chats.json")
    assert [c["title"] for c in convs] == ["chat 2", "chat 1", "chat 0"]  # the chat list's order
    by_title = {c["title"]: c for c in store["conversations"]}
    for got in convs:
        want = by_title[got["title"]]
        assert [(m["role"], m["content"]) for m in got["messages"]] == [
            (m["role"], m["content"]) for m in want["messages"]
        ]
        assert got["updated"] == want["updated"] and got["persona_id"] == want["persona_id"]
    steps = [m for m in convs[0]["messages"] if m["role"] == "tool" or m.get("tool_calls")]
    assert steps[0]["tool_calls"][0]["function"]["name"] == "calculator" and steps[1]["tool_call_id"] == "call_1"

    fresh = empty_store()
    service.add_imported(fresh, convs)
    assert fresh["active"] == convs[0]["id"] and len(fresh["conversations"]) == 4  # + the empty one


def test_one_chat_and_a_plain_message_list_still_import(service):
    conv = service.active(_store(service, 1))
    assert [c["title"] for c in parse_chats(export_json(conv))] == ["chat 0"]
    (plain,) = parse_chats('[{"role": "user", "content": "hi"}]')
    assert plain["messages"][0]["content"] == "hi"


def test_a_store_as_large_as_the_page_holds_exports_to_a_file_that_imports_back(service):
    """The page's events take a 20 MiB store; its archive must stay within the 20 MiB import."""
    store = _store(service, 1, turns=0)
    text = "long answer " * 1500  # ~18 KB per message
    conv = service.active(store)
    while len(json.dumps(store, ensure_ascii=False, separators=(",", ":"))) < 19 * 2**20:
        conv["messages"] += [message("user", "q"), message("assistant", text)]
        if len(conv["messages"]) >= 9000:  # the per-chat limit: start another chat
            service.new_conversation(store)
            conv = service.active(store)
            conv["messages"].append(message("user", "next"))
    archive = export_archive(store)
    assert len(archive.encode()) <= MAX_IMPORT_BYTES
    assert sum(len(c["messages"]) for c in parse_chats(archive)) == sum(
        len(c["messages"]) for c in store["conversations"]
    )


def test_the_handlers_offer_the_archive_and_import_it(service, tmp_path):
    h = Handlers(service)
    store = _store(service, 2)
    json_update, md_update, all_update = h.prepare_exports(store)
    assert all(u["visible"] for u in (json_update, md_update, all_update))
    path = all_update["value"]
    assert path.endswith(".json") and "qwen-chats-" in path
    fresh = empty_store()
    out = h.import_chat(fresh, path)
    assert [c["title"] for c in out[0]["conversations"][:2]] == ["chat 1", "chat 0"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": [{"messages": [{"role": "x", "content": ""}]}]}', encoding="utf-8")
    with pytest.raises(Refusal, match=r"bad.json: conversations\[0\]"):
        h.import_chat(fresh, str(bad))
