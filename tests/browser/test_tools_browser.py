"""#13 item 6: the Tools tab in a real browser: enable a built-in tool, send, see the collapsible steps and
the answer; the steps go out with the export and come back with the import.

A forced call is held to the tool's schema by the grammar, and a call cut off by Max new tokens is
neither run nor waited for: the tiny random model writes its arguments until the schema ends them, so
these tests use tools whose arguments it can finish (a bounded ``timezone``, an ``enum``) and a token
budget that fits them."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

STEP = "#chat [data-testid=bot] .thought-group"  # a message with a metadata title: a collapsible bubble


def _notes(page) -> list[str]:
    return [t.strip() for t in page.locator(STEP).locator(".title").all_inner_texts()]


def test_tool_step_is_shown_and_exported(page, base_url, tmp_path, shot):
    ui = ChatUI.open(page, base_url)
    # The call's argument (a time zone, at most 64 characters by the schema) fits in 160 tokens.
    ui.set_number("Max new tokens", 160, back_to="")
    ui.tab("Tools")
    page.get_by_label("Date & time", exact=True).check()
    # The tiny random model never calls a tool by itself: tell it to, as a user does with a weak model.
    choice = page.get_by_role("combobox", name="Tool choice", exact=True)
    choice.click()
    page.get_by_role("option", name="call current_time").click()
    expect(page.locator("#tools-status")).to_contain_text("✅")

    ui.chat("What time is it in Paris?", turns=1)
    expect(page.locator(STEP)).to_have_count(2)
    assert _notes(page) == ["🛠️ Used current_time", "📋 Result of current_time"]
    # Collapsed until opened: the call's arguments are inside.
    step = page.locator(STEP).first
    step.locator(".title").click()
    expect(step).to_contain_text("Action Input")
    shot(page, "steps")
    assert page.locator("#chat [data-testid=bot]").count() == 3  # call, result, answer

    # Export: the steps are data (the call with its arguments, the result answering it by id).
    page.get_by_role("button", name="Export chat", exact=True).click()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON", exact=True).click()
    exported = json.loads(open(download.value.path(), encoding="utf-8").read())
    roles = [m["role"] for m in exported["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"], roles
    call, result = exported["messages"][1], exported["messages"][2]
    assert call["tool_calls"][0]["function"]["name"] == "current_time"
    assert result["tool_call_id"] == call["tool_calls"][0]["id"]
    # stored as data, never as what the chat rendered
    assert set(call) == {"id", "role", "content", "tool_calls"}, call
    assert set(result) == {"id", "role", "content", "tool_call_id", "name"}, result

    # Import it back as a new chat: the same collapsible steps.
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    ui.page.get_by_role("button", name="New chat", exact=True).click()
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    expect(page.locator(STEP)).to_have_count(2)
    assert _notes(page) == ["🛠️ Used current_time", "📋 Result of current_time"]
    shown = page.locator(STEP).nth(1)
    shown.locator(".title").click()
    expect(shown).to_contain_text(result["content"][:20])

    # The panel's settings are kept in this browser: a reload brings them back.
    ui.reload()
    ui.tab("Tools")
    expect(page.get_by_label("Date & time", exact=True)).to_be_checked()
    expect(page.get_by_role("combobox", name="Tool choice", exact=True)).to_have_value("call current_time")


WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
                "required": ["city"],
            },
        },
    }
]


def test_pasted_tool_call_waits_for_the_users_result(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.set_number("Max new tokens", 24, back_to="")  # the call is {"city":"Paris"} or another of the enum
    ui.tab("Tools")
    editor = page.locator("#tools-custom .cm-content")
    editor.click()
    page.keyboard.insert_text(json.dumps(WEATHER))
    expect(page.locator("#tools-status")).to_contain_text("get_weather")
    page.get_by_role("combobox", name="Tool choice", exact=True).click()
    page.get_by_role("option", name="call get_weather").click()

    ui.chat("Weather in Paris?", turns=0)  # the call waits: no finished turn yet
    step = page.locator(STEP).first
    expect(step.locator(".title")).to_contain_text("Used get_weather")
    step.locator(".title").click()
    expect(step).to_contain_text("Waiting for the result of get_weather")

    ui.send("22 °C and sunny")  # this message is the tool's result, not a new question
    ui.wait_reply_done(1)
    assert _notes(page) == ["🛠️ Used get_weather", "📋 Result of get_weather"]
    assert page.locator("#chat [data-testid=user]").count() == 1
    assert page.locator("#chat [data-testid=bot]").count() == 3  # call, result, answer
