"""Refused actions read as sentences (issue 15, item 1): a toast that says what to do, never a bare
"Error" badge over the chat; the chat, the chat list and the persona library stay as they were.
Buttons that cannot act are disabled; Send turns into Stop in the same place; Esc stops."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

# Gradio's "Error" badge: the status tracker of an event's outputs, shown over them.
ERROR_BADGE = "[data-testid=status-tracker] .error:visible"


def _toast(page, text: str):
    return page.locator(".toast-body").filter(has_text=text)


def _dismiss_toasts(page) -> None:
    for close in page.locator(".toast-close").all():
        close.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def test_refusals_are_sentences_and_leave_the_page_as_it_was(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(4)
    ui.chat("A first question", turns=1)
    before = ui.transcript()

    # Empty Send.
    ui.message.fill("   ")
    ui.button("send").click()
    expect(_toast(page, "The message is empty: type something first.")).to_be_visible()
    expect(page.locator(ERROR_BADGE)).to_have_count(0)
    assert ui.transcript() == before
    _dismiss_toasts(page)

    # A message over the 64,000-character limit: refused, and it stays in the box to be shortened.
    long = "x" * 70_000
    ui.message.fill(long)
    ui.button("send").click()
    expect(_toast(page, "the limit is 64,000")).to_be_visible()
    expect(_toast(page, "Split it")).to_be_visible()
    expect(page.locator(ERROR_BADGE)).to_have_count(0)
    assert ui.transcript() == before
    assert len(ui.message.input_value()) == 70_000
    expect(page.get_by_role("radio", name="A first question", exact=True)).to_be_checked()
    shot(page, "too-long")
    _dismiss_toasts(page)

    # Deleting a built-in persona: says why and what to do instead; the library keeps it.
    page.get_by_role("button", name="Delete persona", exact=True).click()
    expect(_toast(page, "is a built-in persona and cannot be deleted")).to_be_visible()
    expect(_toast(page, "Duplicate")).to_be_visible()
    expect(page.locator(ERROR_BADGE)).to_have_count(0)
    expect(ui.persona_library).to_have_value(re.compile("Default assistant"))
    assert any("Default assistant" in label for label in ui.persona_options())
    assert ui.transcript() == before
    shot(page, "builtin-persona")


def test_buttons_that_cannot_act_are_disabled(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    for key in ("regenerate", "undo", "clear"):
        expect(page.locator(f"button#{key}")).to_be_disabled()
    expect(page.locator("button#stop")).to_be_hidden()  # idle: Send holds the slot
    expect(page.locator("button#send")).to_be_visible()
    ui.max_new_tokens(4)
    ui.chat("Something to act on", turns=1)
    for key in ("regenerate", "undo", "clear"):
        expect(page.locator(f"button#{key}")).to_be_enabled()
    ui.button("clear").click()
    expect(page.locator("#chat .message-row")).to_have_count(0)
    for key in ("regenerate", "undo", "clear"):
        expect(page.locator(f"button#{key}")).to_be_disabled()
    shot(page)


def test_send_becomes_stop_in_place_and_esc_stops(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    send_box = page.locator("button#send").bounding_box()
    ui.send("Tell me a very long story about a lighthouse.")
    stop = page.locator("button#stop")
    expect(stop).to_be_visible(timeout=15_000)
    expect(stop).to_be_enabled()
    expect(page.locator("button#send")).to_be_hidden()
    stop_box = stop.bounding_box()
    assert abs(stop_box["x"] - send_box["x"]) < 2 and abs(stop_box["y"] - send_box["y"]) < 2, (send_box, stop_box)
    page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('#chat [data-testid=bot]:not(:has(.thought-group))')];"
        " return b.length > 0 && b[b.length - 1].innerText.length > 10; }",
        timeout=30_000,
    )
    shot(page, "streaming")

    # Enter while the reply streams: refused with a sentence; the chat keeps its one message.
    ui.message.fill("Another one")
    ui.message.press("Enter")
    expect(_toast(page, "A reply is still being generated")).to_be_visible()
    expect(page.locator(ERROR_BADGE)).to_have_count(0)
    assert ui.transcript()["user"] == ["Tell me a very long story about a lighthouse."]

    # Esc stops it (focus anywhere), and Send comes back in the slot.
    page.locator("#meter").click()
    page.keyboard.press("Escape")
    expect(page.locator("button#send")).to_be_visible(timeout=15_000)
    expect(stop).to_be_hidden()
    page.wait_for_timeout(500)
    frozen = ui.last_reply()
    page.wait_for_timeout(1_500)
    assert ui.last_reply() == frozen, "the reply kept growing after Esc"
    assert 0 < len(frozen) < 2_000
    shot(page, "stopped")
