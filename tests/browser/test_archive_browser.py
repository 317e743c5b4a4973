"""#15 item 7: export and import of *all* chats, in a real browser. Export chat offers "⬇ All chats"
(every chat in one JSON file, :mod:`ui.archive`); in another browser (empty storage) Import chat takes
that file and every chat comes back, with its messages and its title; a download written before the
chats changed is hidden again (it would hand out an old copy)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_all_chats_export_and_import_into_another_browser(page, new_context, base_url, tmp_path):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    reply_a = ui.chat("Archive me: first chat about lynxes", turns=1)
    ui.new_chat()
    reply_b = ui.chat("Archive me too: second chat about otters", turns=1)

    page.get_by_role("button", name="Export chat", exact=True).click()
    all_chats = page.get_by_role("button", name="⬇ All chats", exact=True)
    with page.expect_download() as download:
        all_chats.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    archive = json.loads(path.read_text(encoding="utf-8"))
    assert archive["format"] == "qwen-chat-archive"
    titles = [c["title"] for c in archive["conversations"]]
    assert titles == ["Archive me too: second chat about otters", "Archive me: first chat about lynxes"], titles

    # The chats change: the old download goes away (Export writes a fresh one).
    ui.chat("one more", turns=2)
    expect(all_chats).to_be_hidden()

    other = new_context().new_page()  # another browser: nothing stored
    ui2 = ChatUI.open(other, base_url)
    with other.expect_file_chooser() as chooser:
        other.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    chat_a = other.get_by_role("radio", name="Archive me: first chat about lynxes", exact=True)
    chat_b = other.get_by_role("radio", name="Archive me too: second chat about otters", exact=True)
    expect(chat_a).to_be_visible()
    expect(chat_b).to_be_checked()  # the archive's first (newest) chat is shown
    expect(other.locator(".toast-body").last).to_contain_text("Imported 2 chats")
    t = ui2.transcript()
    assert t["user"] == ["Archive me too: second chat about otters"] and t["bot"] == [reply_b]
    chat_a.click()
    expect(other.locator("#chat [data-testid=user]")).to_have_text(["Archive me: first chat about lynxes"])
    assert ui2.transcript()["bot"] == [reply_a]
    # Kept across a reload, like any chat.
    ui2.reload()
    expect(other.get_by_role("radio", name="Archive me: first chat about lynxes", exact=True)).to_be_visible()
