"""The chat list's per-chat menu (⋯): Rename, Export and Delete a chat that is not the one on
screen, which stays on screen (issue 15, item 7). Headless Chromium against the real app."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _menu(page, title: str):
    page.get_by_role("button", name=f"Chat menu: {title}", exact=True).click()
    menu = page.get_by_role("menu")
    expect(menu).to_be_visible()
    return menu


def test_the_menu_of_another_chat_renames_exports_and_deletes_it_and_the_open_chat_stays(page, base_url, tmp_path):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(4)
    ui.chat("first chat alpha", turns=1)
    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.locator("#chat .message-row")).to_have_count(0)
    ui.chat("second chat beta", turns=1)
    second = page.get_by_role("radio", name="second chat beta", exact=True)
    expect(second).to_be_checked()

    # Rename: the other chat gets the new name; the open chat is still the second one.
    menu = _menu(page, "first chat alpha")
    menu.get_by_role("menuitem", name="Rename").click()
    box = menu.get_by_role("textbox", name="New name")
    expect(box).to_be_focused()
    box.fill("renamed alpha")
    box.press("Enter")
    expect(page.get_by_role("radio", name="renamed alpha", exact=True)).to_be_visible()
    expect(page.get_by_role("radio", name="first chat alpha", exact=True)).to_have_count(0)
    expect(second).to_be_checked()
    assert ui.transcript()["user"] == ["second chat beta"]

    # Esc closes a menu without acting.
    _menu(page, "renamed alpha")
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_have_count(0)

    # Export: the files are the other chat's.
    _menu(page, "renamed alpha").get_by_role("menuitem", name="Export").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON", exact=True).click()
    path = tmp_path / "exported.json"
    download.value.save_as(str(path))
    exported = json.loads(path.read_text(encoding="utf-8"))
    assert exported["title"] == "renamed alpha"
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == ["first chat alpha"]
    expect(second).to_be_checked()

    # Delete: that chat goes (Restore can bring it back); the open chat stays.
    _menu(page, "renamed alpha").get_by_role("menuitem", name="🗑 Delete").click()
    expect(page.get_by_role("radio", name="renamed alpha", exact=True)).to_have_count(0)
    expect(second).to_be_checked()
    assert ui.transcript()["user"] == ["second chat beta"]
    restore = page.locator("#restore-chat")
    expect(restore).to_be_visible()
    restore.click()
    expect(page.get_by_role("radio", name="renamed alpha", exact=True)).to_be_checked()
    assert ui.transcript()["user"] == ["first chat alpha"]

    # ...and it survives a reload, with its menu drawn again.
    ui.reload()
    expect(page.get_by_role("radio", name="renamed alpha", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Chat menu: second chat beta", exact=True)).to_be_visible()


def test_a_forged_menu_command_is_refused_with_a_sentence_and_changes_nothing(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(4)
    ui.chat("stays put", turns=1)
    for command in ("not json", json.dumps({"action": "delete", "id": "no-such-chat"}), "x" * 10_000):
        page.evaluate("(c) => { window.__qcChatMenu = c; document.getElementById('chat-menu-run').click(); }", command)
        expect(page.locator(".toast-body").last).to_contain_text(
            "chat menu action was not understood" if "no-such" not in command else "no longer in the list"
        )
    expect(page.get_by_role("radio", name="stays put", exact=True)).to_be_checked()
    assert ui.transcript()["user"] == ["stays put"]
