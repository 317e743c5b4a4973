"""Issue #15 item 3: events carry the chat store by reference (ui.store_ref), not every chat.

A Send in a long chat uploads a reference instead of the store; a page whose copy the server no
longer holds is told to do it again, loses nothing, and then sends its store whole once."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from conftest import started_server
from playwright.sync_api import expect

from ui.store_ref import RESYNC_MESSAGE

pytestmark = pytest.mark.browser


def _long_chat(turns: int = 40, chars: int = 1800) -> dict:
    msgs = []
    for t in range(turns):
        for role in ("user", "assistant"):
            msgs.append({"role": role, "content": f"{role} {t}: " + ("lorem ipsum dolor sit amet " * 80)[:chars]})
    return {"title": "long chat", "messages": msgs}


def _bytes_sent(page) -> list[int]:
    """A counter of the request bytes the page puts on the wire to Gradio (read it as ``sent[0]``)."""
    sent = [0]

    def count(request) -> None:
        if request.method == "POST" and "/gradio_api/" in request.url:
            sent[0] += len(request.post_data_buffer or b"")

    page.on("request", count)
    return sent


def test_a_send_in_a_long_chat_uploads_a_reference_not_the_chats(page, base_url, tmp_path):
    chat = _long_chat()
    path = tmp_path / "long.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    size = len(path.read_bytes())
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(4)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    expect(page.locator("#chat [data-testid=user]")).to_have_count(40, timeout=60_000)
    page.wait_for_timeout(1500)  # the import's own events
    sent = _bytes_sent(page)
    reply = ui.chat("one more question", turns=41)
    # The whole Send chain (submit, reply, meter, save, reply controls) in far less than one copy.
    assert sent[0] < size / 10, f"{sent[0]:,} bytes sent for a Send in a {size:,}-byte chat"
    ui.reload()  # and what was sent by reference was saved in the browser as usual
    assert ui.transcript()["user"][-1] == "one more question" and ui.last_reply() == reply


@pytest.fixture(scope="module")
def no_cache_server(tmp_path_factory):
    """An app that keeps only the latest browser's store (--store-cache-mb 0)."""
    server = started_server(tmp_path_factory, "store-ref-app", "--store-cache-mb", "0")
    yield server
    server.stop()


def test_a_page_whose_copy_was_dropped_is_told_and_loses_nothing(new_context, no_cache_server, shot):
    alice = ChatUI.open(new_context().new_page(), no_cache_server.url)
    alice.max_new_tokens(4)
    first = alice.chat("alice asks first", turns=1)
    bob = ChatUI.open(new_context().new_page(), no_cache_server.url)  # his store pushes hers out
    bob.max_new_tokens(4)
    bob.chat("bob asks", turns=1)

    alice.message.fill("alice asks again")
    alice.button("send").click()
    toast = alice.page.locator(".toast-body").last
    expect(toast).to_contain_text(RESYNC_MESSAGE, timeout=15_000)
    shot(alice.page, "resync")
    time.sleep(0.5)
    t = alice.transcript()
    assert t["user"] == ["alice asks first"] and t["bot"] == [first]  # nothing lost, nothing half-done
    expect(alice.message).to_have_value("alice asks again")  # the draft is still there
    alice.arm()
    alice.button("send").click()  # done again: the store goes whole once, and the reply comes
    alice.wait_reply_done(turns=2)
    assert alice.transcript()["user"] == ["alice asks first", "alice asks again"]
    alice.reload()
    assert alice.transcript()["user"] == ["alice asks first", "alice asks again"]
    assert bob.transcript()["user"] == ["bob asks"]
