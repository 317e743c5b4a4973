"""Issue #15 item 3: typing events carry the draft only; the meter counts against the store this
page showed last, kept server-side per session, and never against another page's or login's.

Real ``Handlers`` and ``ChatService`` on the tiny engine; callers are real ``gr.Request`` objects.
"""

from __future__ import annotations

import types

import gradio as gr
import pytest

from ui import ASSETS
from ui.handlers import Handlers
from ui.owner import Access
from ui.personas import PersonaLibraries
from ui.service import ChatService, Limits

SYSTEM = "You are a helpful assistant."


def _request(username: str | None = None, session: str = "s1") -> gr.Request:
    return gr.Request(username=username, session_hash=session, client=types.SimpleNamespace(host="10.0.0.1"))


@pytest.fixture
def handlers(manager, tmp_path):
    libraries = PersonaLibraries(ASSETS / "personas", tmp_path / "personas")
    service = ChatService(manager, libraries.view(None), Limits())
    service.libraries = libraries
    return Handlers(service, libraries=libraries, access=Access(logins=True))


def _chat(h: Handlers, text: str) -> dict:
    store = h.service.ensure_store(None)
    h.service.add_user_message(store, text)
    store["conversations"][0]["messages"].append({"id": "r1", "role": "assistant", "content": "ok " + text})
    return store


def test_meter_while_typing_counts_the_pages_own_store_without_receiving_it(handlers):
    h = handlers
    store = _chat(h, "a long first turn about pomegranates " * 20)
    ann = _request("ann", "page-1")
    full = h.meter_view(store, SYSTEM, "draft", False, 6144, "[]", ann)
    live = h.meter_draft(SYSTEM, "draft", False, 6144, "[]", True, ann)  # no store sent
    assert live[:2] == full[:2]  # the same counts and raw prompt
    # The raw prompt (the whole history) travels only while its panel is open.
    closed = h.meter_draft(SYSTEM, "draft", False, 6144, "[]", False, ann)
    assert closed[0] == full[0] and closed[1] == gr.skip()
    assert "pomegranates" in live[1]
    # The draft still counts: a longer one gives a larger total.
    longer = h.meter_draft(SYSTEM, "draft " * 50, False, 6144, "[]", True, ann)
    assert "draft draft draft" in longer[1] and longer[0] != live[0]
    # A change to the chat (any event that sends the store) moves the meter's base with it.
    h.service.clear(store)
    h.persist(store, ann)
    assert "pomegranates" not in h.meter_draft(SYSTEM, "draft", False, 6144, "[]", True, ann)[1]


def test_a_forged_or_borrowed_session_never_reaches_another_users_store(handlers):
    h = handlers
    store = _chat(h, "ann's secret plan")
    h.load(store, _request("ann", "page-ann"))
    # A session the server never saw: nothing to count against, the page's meter is left as it is.
    assert h.meter_draft(SYSTEM, "x", False, 6144, "[]", True, _request("ann", "forged-session")) == (gr.skip(),) * 5
    # Ann's session hash used by another login (or by nobody logged in) does not read her chats.
    for other in (_request("bob", "page-ann"), _request(None, "page-ann")):
        out = h.meter_draft(SYSTEM, "x", False, 6144, "[]", True, other)
        assert out == (gr.skip(),) * 5
    assert "ann's secret plan" in h.meter_draft(SYSTEM, "x", False, 6144, "[]", True, _request("ann", "page-ann"))[1]
    # A closed page's copy goes with its session.
    h.forget_session(_request("ann", "page-ann"))
    assert h.meter_draft(SYSTEM, "x", False, 6144, "[]", True, _request("ann", "page-ann")) == (gr.skip(),) * 5
