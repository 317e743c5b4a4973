"""Reply versions, Continue, "Start reply with…", per-reply figures, Restore after Delete/Clear, the
greeting on New chat and a persona switch as its own row — in a real browser (issue 15, item 7).

The tiny random-weight model samples gibberish; what is checked is where text goes, not what it says.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _tokens(page) -> int:
    """The token count the info line under the chat shows for the last reply."""
    line = page.locator("#reply-info .reply-info")
    expect(line).to_contain_text(re.compile(r"\d+ tokens"))
    text = line.inner_text()
    match = re.search(r"(\d+) tokens", text)
    assert match, f"no figures in the info line: {text!r}"
    return int(match.group(1))


def test_versions_continue_and_start_reply_with(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    first = ui.chat("Tell me about foxes", turns=1)
    # the reply's figures: under the chat, and as the tooltip of its bubble
    expect(page.locator("#reply-info .reply-info")).to_contain_text("first token")
    assert _tokens(page) == 6
    bubble = page.locator("#chat [data-testid=bot]").last
    expect(bubble).to_have_attribute("title", re.compile(r"^ⓘ 6 tokens"))
    expect(page.locator("#version-position")).to_be_hidden()  # one version: no switcher

    # Regenerate keeps the old reply as version 1 of 2
    ui.arm()
    ui.button("regenerate").click()
    ui.wait_reply_done(turns=1)
    position = page.locator("#version-position")
    expect(position).to_have_text("2/2")
    second = ui.last_reply()
    page.locator("#version-prev").click()
    expect(position).to_have_text("1/2")
    # innerText, as ui.last_reply() read it: a reply with a line break renders it as <br>, which
    # textContent (to_have_text's default) drops.
    expect(page.locator("#chat [data-testid=bot]:not(:has(.thought-group))")).to_have_text([first], use_inner_text=True)
    expect(page.locator("#version-prev")).to_be_disabled()
    page.locator("#version-next").click()
    expect(position).to_have_text("2/2")
    expect(page.locator("#chat [data-testid=bot]:not(:has(.thought-group))")).to_have_text(
        [second], use_inner_text=True
    )
    shot(page, "versions", docs="screenshot-reply-versions.png")

    # Continue extends the shown reply in place (no new message)
    ui.arm()
    page.locator("#continue").click()
    ui.wait_reply_done(turns=1)
    expect(page.locator("#reply-info .reply-info")).to_contain_text("12 tokens")
    t = ui.transcript()
    assert t["user"] == ["Tell me about foxes"] and len(t["bot"]) == 1
    assert t["bot"][0].startswith(second[: max(1, len(second) // 2)])
    expect(position).to_have_text("2/2")  # still the same reply, with the same versions

    # "Start reply with…": the next reply begins with the given text
    page.locator("#reply-start textarea, #reply-start input").first.fill("Once upon a time")
    reply = ui.chat("A story, please", turns=2)
    assert reply.startswith("Once upon a time"), reply
    # the given start is not counted as generated
    expect(page.locator("#reply-info .reply-info")).to_have_text(re.compile(r"^ⓘ 6 tokens"))
    shot(page, "start-reply-with")


def test_restore_after_delete_and_clear_greeting_and_persona_row(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(4)
    ui.chat("keep me", turns=1)
    # the chat list dates each chat (in the browser's time zone); the chat's name stays its title
    date = page.locator("#chat-list label .qc-date")
    expect(date).to_have_count(1)
    expect(date).to_have_text(re.compile(r"\d"))
    expect(page.get_by_role("radio", name="keep me", exact=True)).to_be_checked()
    restore = page.locator("#restore-chat")
    expect(restore).to_be_hidden()

    page.get_by_role("button", name="Delete chat", exact=True).click()
    expect(page.locator("#chat [data-testid=user]")).to_have_count(0)
    expect(restore).to_be_visible()
    restore.click()
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["keep me"])
    expect(restore).to_be_hidden()

    ui.button("clear").click()
    expect(page.locator("#chat [data-testid=user]")).to_have_count(0)
    expect(restore).to_be_visible()
    restore.click()
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["keep me"])
    expect(page.locator("#chat [data-testid=bot]:not(:has(.thought-group))")).to_have_count(1)

    # A persona switch mid-chat is a transcript row of its own, not part of the reply bubble before it
    ui.pick_persona("Classical")
    note = page.locator("#chat .thought-group .title")
    expect(note).to_contain_text("Persona")
    rows = page.locator("#chat .message-row")
    expect(rows).to_have_count(3)  # user, reply, note
    expect(rows.nth(2).locator(".thought-group")).to_have_count(1)
    expect(rows.nth(1).locator(".thought-group")).to_have_count(0)
    shot(page, "persona-row")

    # New chat opens with the persona's greeting
    page.get_by_role("button", name="New chat", exact=True).click()
    bot = page.locator("#chat [data-testid=bot]:not(:has(.thought-group))")
    expect(bot).to_have_count(1)
    expect(bot).to_contain_text("赋诗")
    expect(page.locator("#chat [data-testid=user]")).to_have_count(0)


def test_settings_and_presets_are_remembered_per_browser(context, base_url, shot):
    page = context.new_page()
    ui = ChatUI.open(page, base_url)
    temperature = page.get_by_label("number input for Temperature (0 = greedy)", exact=True)
    ui.set_number("Temperature (0 = greedy)", 0.35, back_to="")
    ui.set_number("Max new tokens", 21, back_to="")
    page.locator("#preset-name input, #preset-name textarea").first.fill("Mine")
    page.locator("#save-preset").click()
    expect(page.locator("#preset-pick input")).to_have_value("Mine")

    # a built-in preset changes the sampler only
    pick = page.get_by_role("combobox", name="Sampler preset", exact=True)
    pick.click()
    page.get_by_role("option", name="Precise (greedy)").click()
    expect(temperature).to_have_value("0")
    ui.set_number("Max new tokens", 22, back_to="")

    # another visit from this browser: the values last used and the saved preset are back
    ui.reload()
    ui.tab("Generation")
    expect(temperature).to_have_value("0")
    expect(page.get_by_label("number input for Max new tokens", exact=True)).to_have_value("22")
    pick.click()
    page.get_by_role("option", name="Mine").click()
    expect(temperature).to_have_value("0.35")
    expect(page.get_by_label("number input for Max new tokens", exact=True)).to_have_value("21")
    shot(page, "presets")

    # a browser of its own starts from the model's defaults
    other = context.browser.new_context(viewport={"width": 1400, "height": 950})
    try:
        fresh = ChatUI.open(other.new_page(), base_url)
        fresh.tab("Generation")
        expect(fresh.page.get_by_label("number input for Max new tokens", exact=True)).not_to_have_value("22")
    finally:
        other.close()
