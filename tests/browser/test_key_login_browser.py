"""With ``--api-key`` alone, in a real browser: the page asks for a login whose password is an API
key (any user name), and then works on the login cookie: a chat runs, nothing is refused."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from conftest import started_server
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

KEY = "sk-browser-key-1"


@pytest.fixture(scope="module")
def key_server(tmp_path_factory):
    server = started_server(tmp_path_factory, "browser-key", "--api-key", KEY)
    yield server
    server.stop()
    assert not server.errors_in_log(), server.errors_in_log()


def test_the_login_form_takes_an_api_key(new_context, key_server, shot):
    page = new_context().new_page()
    failed: list[tuple[int, str]] = []
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
    page.goto(key_server.url)
    page.get_by_label("username").fill("anyone")
    page.get_by_label("password").fill("not-the-key")
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_text("Incorrect credentials")).to_be_visible()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_have_count(0)

    page.get_by_label("username").fill("anyone")
    page.get_by_label("password").fill(KEY)
    page.get_by_role("button", name="Login").click()
    ui = ChatUI(page)
    ui.wait_ready()
    ui.max_new_tokens(6)
    ui.chat("Hello with a key", turns=1)
    assert [(s, u) for s, u in failed if not u.endswith("/login")] == [], failed
    shot(page)
