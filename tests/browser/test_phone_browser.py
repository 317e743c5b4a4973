"""The phone layout at 390x844 (issue 15, item 5): the sidebar starts closed, the action buttons
sit in one compact row with the composer, and persona and settings open in a drawer from that
row instead of two screens down. At desktop size nothing of this shows."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
ACTIONS = ("send", "regenerate", "undo", "clear", "panel-open")


def _boxes(page) -> dict:
    return {key: page.locator(f"button#{key}").bounding_box() for key in ACTIONS}


def test_phone_layout(new_context, base_url, shot):
    page = new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
    ui = ChatUI.open(page, base_url)

    # The sidebar is closed: the chat list does not cover the chat.
    expect(page.locator(".sidebar")).not_to_have_class(re.compile(r"\bopen\b"))
    expect(ui.message).to_be_in_viewport()

    # One compact row: every action button on the same line, none a full-width bar.
    boxes = _boxes(page)
    tops = {round(b["y"]) for b in boxes.values()}
    assert max(tops) - min(tops) <= 4, f"the action buttons are not in one row: {boxes}"
    assert all(b["width"] < PHONE["width"] / 2 for b in boxes.values()), boxes
    assert boxes["send"]["y"] + boxes["send"]["height"] <= PHONE["height"], "the action row is below the screen"

    # Persona and settings: one tap away, in a drawer on screen (no scrolling).
    page.get_by_role("button", name="Persona & settings", exact=True).click()
    system = page.get_by_role("textbox", name="System prompt", exact=True)
    expect(system).to_be_in_viewport()
    page.get_by_role("tab", name="Generation", exact=True).click()
    expect(page.get_by_label("number input for Max new tokens", exact=True)).to_be_in_viewport()
    shot(page, "drawer", docs="screenshot-phone.png")
    assert page.evaluate("() => window.scrollY") == 0
    ui.max_new_tokens(4)  # settings work from the drawer
    page.get_by_role("button", name="✕ Close", exact=True).click()
    expect(system).not_to_be_in_viewport()

    # The chat works from this layout, and the sidebar can still be opened.
    ui.chat("Hello from a phone", turns=1)
    page.locator(".sidebar .toggle-button").click()
    expect(page.get_by_role("radio", name="Hello from a phone", exact=True)).to_be_in_viewport()
    shot(page, "sidebar")


def test_desktop_keeps_its_layout(page, base_url):
    ChatUI.open(page, base_url)
    expect(page.locator(".sidebar")).to_have_class(re.compile(r"\bopen\b"))
    expect(page.locator("button#panel-open")).to_be_hidden()
    expect(page.locator("button#panel-close")).to_be_hidden()
    expect(page.get_by_role("textbox", name="System prompt", exact=True)).to_be_in_viewport()
