"""The context meter follows every edit of the draft (issue 15, item 4): paste, cut, deleting the
draft and input-method (IME) entry, not only typed keys; it is live while a reply streams; its bar
is drawn against max_window_size. The chat search resets when its query is deleted."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _message_tokens(ui: ChatUI) -> int:
    return ui.settled_meter_numbers()["message"]


def test_meter_follows_paste_cut_delete_and_ime(new_context, base_url, shot):
    context = new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    ui = ChatUI.open(page, base_url)
    empty = _message_tokens(ui)

    # Paste a document (Ctrl+V): no key is typed into the box but the paste itself.
    text = "A pasted paragraph about lighthouses and the sea. " * 20
    page.evaluate("t => navigator.clipboard.writeText(t)", text)
    ui.message.click()
    page.keyboard.press("Control+V")
    expect(ui.message).to_have_value(text)
    pasted = _message_tokens(ui)
    assert pasted > empty + 100, (empty, pasted)

    # Cut all of it (Ctrl+A, Ctrl+X): back to an empty draft.
    page.keyboard.press("Control+A")
    page.keyboard.press("Control+X")
    expect(ui.message).to_have_value("")
    assert _message_tokens(ui) == empty

    # Paste again, then delete the whole draft (select all, Backspace).
    page.keyboard.press("Control+V")
    assert _message_tokens(ui) == pasted
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    assert _message_tokens(ui) == empty

    # Input-method entry: a composition, committed (as a Chinese IME does).
    cdp = context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "ni", "selectionStart": 2, "selectionEnd": 2})
    cdp.send("Input.imeSetComposition", {"text": "nihao", "selectionStart": 5, "selectionEnd": 5})
    cdp.send("Input.insertText", {"text": "你好，灯塔和大海的故事很长很长"})
    expect(ui.message).to_have_value("你好，灯塔和大海的故事很长很长")
    assert _message_tokens(ui) > empty
    shot(page)


def test_meter_bar_is_drawn_against_the_window_and_live_while_streaming(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.set_number("Max window size (history tokens kept)", 1024)
    n = ui.settled_meter_numbers()
    bar = page.locator("#meter [role=progressbar]")
    assert int(bar.get_attribute("aria-valuenow")) == min(100, round(100 * n["total"] / 1024))

    ui.send("Tell me a very long story about a lighthouse.")
    expect(page.locator("button#stop")).to_be_visible(timeout=15_000)
    seen = set()
    for _ in range(100):  # while it streams, the history count grows with the reply
        if not page.locator("button#stop").is_visible():
            break
        seen.add(ui.meter_numbers()["history"])
        page.wait_for_timeout(250)
    if page.locator("button#stop").is_visible():
        page.locator("button#stop").click()
    assert len(seen) >= 2, f"the meter did not change while the reply streamed: {seen}"
    shot(page)


def test_search_resets_when_the_query_is_deleted(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(2)
    ui.chat("Lighthouse question", turns=1)
    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.locator("#chat [data-testid=user]")).to_have_count(0)
    ui.chat("Garden question", turns=1)
    search = page.get_by_role("textbox", name="Search chats", exact=True)
    search.fill("garden")
    expect(page.get_by_role("radio", name="Lighthouse question", exact=True)).to_have_count(0)
    # Delete the query as a user would (select all, Backspace): every chat is listed again.
    search.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    expect(page.get_by_role("radio", name="Lighthouse question", exact=True)).to_have_count(1)
    expect(page.get_by_role("radio", name="Garden question", exact=True)).to_have_count(1)
