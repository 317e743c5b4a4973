"""With logins on (``--auth``), in a real browser: the login page works, nothing else loads before
it, and two logged-in users chat at once without seeing each other's chats."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from conftest import started_server
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

USERS = {"ann": "ann-pw-1", "bob": "bob-pw-2", "cy": "cy-pw-3"}


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    auth = ",".join(f"{u}:{p}" for u, p in USERS.items())
    server = started_server(tmp_path_factory, "browser-login", "--auth", auth, "--server-history")
    yield server
    server.stop()
    assert not server.errors_in_log(), server.errors_in_log()


def _log_in(page, url: str, user: str, password: str) -> list[tuple[int, str]]:
    """Open the app, log in; returns the failed requests the page made before and after."""
    failed: list[tuple[int, str]] = []
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return failed


def test_login_page_then_the_app(new_context, login_server, shot):
    page = new_context().new_page()
    failed = _log_in(page, login_server.url, "cy", "wrong")
    expect(page.get_by_text("Incorrect credentials")).to_be_visible()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_have_count(0)
    # The login page needs nothing the guard refuses (only the wrong login itself failed).
    assert [(s, u) for s, u in failed if not u.endswith("/login")] == [], failed

    page.get_by_label("username").fill("cy")  # the form clears it after a failed attempt
    page.get_by_label("password").fill(USERS["cy"])
    page.get_by_role("button", name="Login").click()
    ui = ChatUI(page)
    ui.wait_ready()
    ui.max_new_tokens(6)
    ui.chat("Cy says hello", turns=1)
    assert [(s, u) for s, u in failed if not u.endswith("/login")] == [], failed  # nothing refused once in
    shot(page)


def test_two_logged_in_users_see_only_their_own_chats(new_context, login_server):
    ann, bob = new_context().new_page(), new_context().new_page()
    for page, user in ((ann, "ann"), (bob, "bob")):
        _log_in(page, login_server.url, user, USERS[user])
    ann_ui, bob_ui = ChatUI(ann), ChatUI(bob)
    for ui in (ann_ui, bob_ui):
        ui.wait_ready()
        ui.max_new_tokens(6)
    ann_ui.send("Ann's secret: the vault code is 4711")
    bob_ui.send("Bob wonders about the weather")
    ann_ui.wait_reply_done(turns=1)
    bob_ui.wait_reply_done(turns=1)
    bob_ui.reload()  # --server-history: what comes back is Bob's own saved chats only
    assert "4711" not in bob.content() and "Bob wonders" in bob.content()
    assert "Bob wonders" not in ann.content()


def _saved_presets(page) -> list[str]:
    pick = page.get_by_role("combobox", name="Sampler preset", exact=True)
    pick.click()
    names = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return [n.strip() for n in names]


def test_presets_follow_the_login_into_another_browser_and_no_one_else_sees_them(new_context, login_server):
    """Issue 15, item 7: with --auth, settings and presets are remembered per user, not per browser."""
    first = new_context()
    page = first.new_page()
    _log_in(page, login_server.url, "ann", USERS["ann"])
    ui = ChatUI(page)
    ui.wait_ready()
    ui.set_number("Temperature (0 = greedy)", 0.45, back_to="")
    page.locator("#preset-name input, #preset-name textarea").first.fill("Ann's sampler")
    page.locator("#save-preset").click()
    expect(page.locator("#preset-pick input")).to_have_value("Ann's sampler")
    expect(page.locator(".toast-body").last).to_contain_text("for your login")

    # Another browser, same login: the preset and the last values are there.
    other = new_context().new_page()
    _log_in(other, login_server.url, "ann", USERS["ann"])
    other_ui = ChatUI(other)
    other_ui.wait_ready()
    other_ui.tab("Generation")
    temperature = other.get_by_label("number input for Temperature (0 = greedy)", exact=True)
    expect(temperature).to_have_value("0.45")
    assert "Ann's sampler" in _saved_presets(other)

    # Bob signs in from Ann's first browser (its own copy holds Ann's state): he sees none of it.
    first.clear_cookies()
    bob = first.new_page()
    _log_in(bob, login_server.url, "bob", USERS["bob"])
    bob_ui = ChatUI(bob)
    bob_ui.wait_ready()
    bob_ui.tab("Generation")
    assert "Ann's sampler" not in _saved_presets(bob)
    expect(bob.get_by_label("number input for Temperature (0 = greedy)", exact=True)).not_to_have_value("0.45")
