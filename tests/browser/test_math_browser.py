"""#15 item 9: currency is not math; single-dollar math renders only where it is unambiguous."""

from __future__ import annotations

import json
import uuid

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

CURRENCY = "Price is $5 and $10, or $15 for both."
MATH = "Area $x^2$, display $$\\int_0^1 x\\,dx$$ and paren \\(a+b\\); code `$a$` stays."


def test_currency_stays_text_and_unambiguous_math_renders(page, base_url, tmp_path):
    ChatUI.open(page, base_url)
    conv = {
        "id": uuid.uuid4().hex[:12],
        "title": "Dollars",
        "messages": [{"role": "user", "content": CURRENCY}, {"role": "assistant", "content": MATH}],
    }
    path = tmp_path / "dollars.json"
    path.write_text(json.dumps(conv), encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    user = page.locator("#chat [data-testid=user]").first
    bot = page.locator("#chat [data-testid=bot]").first
    expect(bot.locator(".katex")).to_have_count(3)  # $x^2$, $$…$$, \(…\)
    expect(user).to_contain_text(CURRENCY)
    assert user.locator(".katex").count() == 0
    expect(bot.locator("code")).to_contain_text("$a$")
