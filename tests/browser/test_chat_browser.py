"""The chat app in a real browser (Chromium), driven as a user would: keyboard, clicks, reloads.

One app server serves every test (tiny random-weight Qwen model on CPU, so replies are
gibberish but stream token by token); each test gets a fresh browser context, i.e. a
fresh localStorage, so conversations never leak between tests. Replies are kept short
with the "Max new tokens" setting except where a long one is the point.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser  # deselect with -m "not browser"


def _import(page, tmp_path, conversation: dict) -> None:
    """Import a conversation through the sidebar's "Import chat (JSON)" button and file chooser."""
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(conversation, ensure_ascii=False), encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))


# --- 1. send and stream -----------------------------------------------------------------------


def test_enter_sends_and_the_reply_streams(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(64)  # long enough to be sampled mid-stream on a loaded 2-core machine

    ui.message.fill("Hello, who are you?")
    ui.arm()  # so "finished" below means this reply's chain, not the moment before it started
    ui.message.press("Enter")
    # The user's message is on screen at once and the input is emptied for the next one.
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["Hello, who are you?"], timeout=3_000)
    expect(ui.message).to_have_value("")

    # Sample the reply while it streams, until the chain has finished.
    lengths, stop_was_enabled = [], False
    for _ in range(600):
        t = ui.transcript()
        lengths.append(len(t["bot"][-1]) if t["bot"] else 0)
        stop_was_enabled |= ui.stop.is_enabled()
        # The meter can read "1/1 turns" before the chain starts (it counts the sent message),
        # so "finished" also needs the armed observer to have seen Stop enabled.
        if page.evaluate("() => window.__qcReplyStarted && document.querySelector('button#stop').disabled") and (
            "(1/1 turns)" in ui.meter.inner_text()
        ):
            break
        page.wait_for_timeout(100)
    else:
        pytest.fail(f"the reply did not finish; lengths seen: {lengths}")
    growths = sum(1 for a, b in itertools.pairwise(lengths) if b > a)
    assert growths >= 2, f"the reply did not grow token by token: lengths sampled {lengths}"
    assert stop_was_enabled, "Stop was never enabled while the reply streamed"
    assert lengths[-1] > 0
    assert len(ui.transcript()["user"]) == 1
    shot(page)


# --- 2. Stop ---------------------------------------------------------------------------------


def _start_long_reply(ui: ChatUI) -> None:
    """Send a message with the default 512-token budget and wait until the reply is visibly streaming."""
    ui.send("Tell me a very long story about a lighthouse.")
    expect(ui.stop).to_be_enabled(timeout=15_000)
    ui.page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('#chat [data-testid=bot]:not(:has(.thought-group))')];"
        " return b.length > 0 && b[b.length - 1].innerText.length > 15; }",
        timeout=30_000,
    )


def test_stop_halts_the_reply_and_frees_the_engine(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    _start_long_reply(ui)
    ui.stop.click()

    # Stop is disabled again once the reply has ended ...
    expect(ui.stop).to_be_disabled(timeout=5_000)
    # ... and the text stops changing (within a token) and stays put for the next 2 s.
    page.wait_for_timeout(500)
    frozen = ui.last_reply()
    page.wait_for_timeout(2_000)
    assert ui.last_reply() == frozen, "the reply kept growing after Stop"
    assert 0 < len(frozen) < 2_000  # far from the 512 tokens it was allowed

    # The engine is free: the next message gets a full (short) reply, and the stopped one stays.
    ui.max_new_tokens(8)
    ui.chat("Shorter, please.", turns=2)
    t = ui.transcript()
    assert t["user"] == ["Tell me a very long story about a lighthouse.", "Shorter, please."]
    assert len(t["bot"]) == 2 and t["bot"][0] == frozen and t["bot"][1]
    expect(ui.stop).to_be_disabled()
    shot(page)


# --- 3. Regenerate, Undo, Clear ------------------------------------------------------------------


def test_regenerate_undo_and_clear(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(8)
    first = ui.chat("First question", turns=1)
    old = ui.chat("Second question", turns=2)
    assert first and old

    # Regenerate: the last reply is removed and streamed anew (watched every animation frame).
    ui.arm()
    ui.button("regenerate").click()
    page.wait_for_function(
        "old => { const b = [...document.querySelectorAll('#chat [data-testid=bot]:not(:has(.thought-group))')];"
        " if (b.length < 2) return true; const t = b[b.length - 1].innerText;"
        " return t.length < old.length && t !== old; }",
        arg=old,
        polling="raf",
    )
    ui.wait_reply_done(turns=2)
    t = ui.transcript()
    assert t["user"] == ["First question", "Second question"], "Regenerate must not add or drop user messages"
    assert len(t["bot"]) == 2 and t["bot"][0] == first
    assert t["bot"][1] and t["bot"][1] != old, "the last reply was not replaced"
    shot(page, "regenerated")

    # Undo: the last exchange goes, and its message comes back into the input for editing.
    ui.button("undo").click()
    expect(ui.message).to_have_value("Second question")
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["First question"])
    assert ui.transcript()["bot"] == [first]

    # Clear: the conversation on screen is empty.
    ui.button("clear").click()
    expect(page.locator("#chat .message-row")).to_have_count(0)
    expect(page.get_by_role("radio", name="New chat", exact=True)).to_be_checked()
    shot(page, "cleared")


# --- 4. Personas and the system prompt --------------------------------------------------------------


def test_persona_and_own_system_prompt_reach_the_raw_prompt(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    system_box = ui.textbox("System prompt")

    ui.pick_persona("Translator")
    expect(system_box).to_have_value(re.compile(r"^You are a professional translator between Chinese and English"))
    expect(ui.textbox("Persona name")).to_have_value("Translator (中英互译)")
    # Its greeting opens the (empty) chat.
    expect(page.locator("#chat [data-testid=bot]").first).to_contain_text("I will translate it")
    shot(page, "translator", docs="screenshot-persona.png")

    own = "You are Captain Zorblax, a space pirate who always answers in rhyme."
    system_box.fill(own)
    ui.max_new_tokens(8)  # after the persona: picking one loads its suggested settings
    ui.chat("Ahoy there", turns=2)  # the meter counts the Translator's example exchange as a turn too

    raw = ui.wait_raw_prompt(f"<|im_start|>system\n{own}<|im_end|>\n")
    assert "<|im_start|>user\nAhoy there<|im_end|>\n<|im_start|>assistant\n" in raw, raw

    # Switching persona mid-chat is noted in the transcript and applies from the next turn.
    ui.pick_persona("Code reviewer")
    expect(system_box).to_have_value(re.compile(r"^You are a senior software engineer doing a code review"))
    expect(page.locator("#chat .thought-group")).to_contain_text("🎭 Persona: Code reviewer")
    ui.max_new_tokens(8)
    ui.chat("def f(): pass", turns=3)  # the Code reviewer's example exchange, then the chat's two
    raw = ui.wait_raw_prompt("<|im_start|>system\nYou are a senior software engineer doing a code review")
    assert own not in raw and "<|im_start|>user\ndef f(): pass<|im_end|>" in raw, raw
    assert any("Code reviewer" in n for n in ui.transcript()["notes"])
    shot(page, "switched")


def test_persona_example_dialogue_is_in_the_prompt(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.pick_persona("Translator")
    raw = ui.wait_raw_prompt("You are a professional translator")
    assert "今天天气真好，我们去公园散步吧。" in raw and "The weather is lovely today" in raw, raw


def test_saved_persona_survives_a_reload(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    name = f"Pirate poet {uuid.uuid4().hex[:6]}"
    prompt = "You are a pirate poet. Answer every question with a sea shanty."

    ui.pick_persona("Compliment writer")
    expect(ui.textbox("System prompt")).to_have_value(re.compile("compliments"))
    ui.textbox("Persona name").fill(name)
    ui.textbox("Avatar").fill("🦜")
    ui.textbox("System prompt").fill(prompt)
    page.get_by_role("button", name="Save persona", exact=True).click()
    expect(page.get_by_text(f"✅ Saved “{name}”.")).to_be_visible()

    ui.reload()
    options = ui.persona_options()
    assert f"🦜 {name} ✎" in options, options
    ui.pick_persona(name)
    expect(ui.textbox("System prompt")).to_have_value(prompt)
    expect(ui.textbox("Persona name")).to_have_value(name)
    shot(page)

    # Deleting one's own copy brings the built-in back (and keeps the shared server's library as it was).
    page.get_by_role("button", name="Delete persona", exact=True).click()
    expect(page.get_by_text("🗑️ Deleted.")).to_be_visible()
    options = ui.persona_options()
    assert "💐 Compliment writer" in options and not any(name in o for o in options), options


# --- 6. Conversations persist ----------------------------------------------------------------------


def test_conversations_survive_a_reload(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    reply_a = ui.chat("Remember the word pomegranate", turns=1)
    ui.new_chat()
    reply_b = ui.chat("Second chat about tea", turns=1)

    ui.reload()
    chat_a = page.get_by_role("radio", name="Remember the word pomegranate", exact=True)
    chat_b = page.get_by_role("radio", name="Second chat about tea", exact=True)
    expect(chat_b).to_be_checked()
    expect(chat_a).not_to_be_checked()
    t = ui.transcript()
    assert t["user"] == ["Second chat about tea"] and t["bot"] == [reply_b]

    chat_a.click()
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["Remember the word pomegranate"])
    assert ui.transcript()["bot"] == [reply_a]
    shot(page)


def test_conversation_survives_a_server_restart(page, base_url, app_server, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    reply = ui.chat("Will you remember me after a restart?", turns=1)

    app_server.restart()  # same port (same origin, same localStorage) and same --data-dir (same secret)
    ui.reload()
    t = ui.transcript()
    assert t["user"] == ["Will you remember me after a restart?"] and t["bot"] == [reply]
    expect(page.get_by_role("radio", name="Will you remember me after a restart?", exact=True)).to_be_checked()
    # and the restarted server still chats
    ui.max_new_tokens(6)
    ui.chat("Yes you do.", turns=2)
    shot(page)


# --- 7. Two users ----------------------------------------------------------------------------------


def test_two_users_chat_at_once_without_seeing_each_other(new_context, base_url, shot):
    alice = ChatUI.open(new_context().new_page(), base_url)
    bob = ChatUI.open(new_context().new_page(), base_url)
    alice.max_new_tokens(8)
    bob.max_new_tokens(9)
    # Alice's own system prompt and settings are hers alone.
    alice_prompt = "You are Alice's private assistant. The code word is marmalade."
    alice.textbox("System prompt").fill(alice_prompt)
    expect(bob.textbox("System prompt")).to_have_value("You are a helpful assistant.")
    for ui, n in ((alice, "8"), (bob, "9")):
        ui.tab("Generation")
        expect(ui.page.get_by_label("number input for Max new tokens", exact=True)).to_have_value(n)
        ui.tab("Persona")

    alice.send("Alice asks about apples")
    bob.send("Bob asks about bananas")
    alice.wait_reply_done(turns=1)
    bob.wait_reply_done(turns=1)
    alice.wait_raw_prompt(f"<|im_start|>system\n{alice_prompt}<|im_end|>")

    for reloaded in (False, True):  # as streamed, then as restored from each browser's own storage
        if reloaded:
            alice.reload()
            bob.reload()
        a, b = alice.transcript(), bob.transcript()
        assert a["user"] == ["Alice asks about apples"] and len(a["bot"]) == 1
        assert b["user"] == ["Bob asks about bananas"] and len(b["bot"]) == 1
        assert a["bot"] != b["bot"]
        for ui, other in ((alice, "Bob asks about bananas"), (bob, "Alice asks about apples")):
            expect(ui.page.get_by_text(other)).to_have_count(0)
            # the chat list, in the sidebar (the header's language control is a radio group too)
            expect(ui.page.locator(".sidebar").get_by_role("radio")).to_have_count(1)
        expect(alice.page.get_by_role("radio", name="Alice asks about apples", exact=True)).to_be_checked()
        expect(bob.page.get_by_role("radio", name="Bob asks about bananas", exact=True)).to_be_checked()
        # The system prompt each chat was answered under comes back with it, and only to its owner.
        expect(alice.textbox("System prompt")).to_have_value(alice_prompt)
        expect(bob.textbox("System prompt")).to_have_value("You are a helpful assistant.")
        assert "marmalade" not in bob.raw_prompt() and "marmalade" in alice.raw_prompt()
    shot(alice.page, "alice")
    shot(bob.page, "bob")


# --- 8. 中文 ------------------------------------------------------------------------------------------


def test_chinese_browser_locale_shows_chinese_labels(new_context, base_url, shot):
    page = new_context(locale="zh-CN").new_page()
    ui = ChatUI.open(page, base_url, lang="zh")
    for key in ("send", "regenerate", "undo", "clear"):  # Stop shares Send's slot, shown while a reply streams
        expect(ui.button(key)).to_be_visible()
    expect(ui.message).to_be_visible()
    expect(page.get_by_role("button", name="Send", exact=True)).to_have_count(0)
    expect(page.get_by_role("tab", name="角色", exact=True)).to_be_visible()
    shot(page)


def test_language_switch_in_settings_panel(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    expect(ui.button("send")).to_be_visible()

    page.locator("footer").get_by_text("Settings", exact=True).click()
    page.get_by_role("combobox", name="Language", exact=True).click()
    page.get_by_role("option", name="简体中文", exact=True).click()
    expect(page.get_by_role("heading", name="设置")).to_be_visible()  # the panel itself switched at once
    page.locator(".banner-wrap button").first.click()  # Gradio's close (✖) button, which has no accessible name

    zh = ChatUI(page, lang="zh")
    for key in ("send", "regenerate", "undo", "clear"):
        expect(zh.button(key)).to_be_visible()
    expect(zh.message).to_be_visible()
    expect(page.get_by_role("button", name="Send", exact=True)).to_have_count(0)
    shot(page)


# --- 9. Context meter ------------------------------------------------------------------------------------

# For the screenshot: page scrolled to the bottom (meter and raw prompt in view), and the
# chat scrolled so that the last dropped row and the first kept one are both visible.
SHOW_DROPPED_BOUNDARY_JS = """
() => {
  window.scrollTo(0, document.documentElement.scrollHeight);
  const scroller = document.querySelector('#chat [role=log]');
  const kept = [...document.querySelectorAll('#chat [data-testid=user], #chat [data-testid=bot]')].find((r) => !r.classList.contains('qc-dropped'));
  const top = Math.max(scroller.getBoundingClientRect().top, 0);
  scroller.scrollTop += kept.getBoundingClientRect().top - (top + 150);
}
"""

FILLER = 3 * (
    "The quick brown fox jumps over the lazy dog while the patient lighthouse keeper counts the waves, "
    "writes them down in a worn notebook, and wonders how many tokens a sentence like this one needs. "
)


def test_context_meter_counts_the_draft_and_marks_dropped_turns(page, base_url, shot):
    ui = ChatUI.open(page, base_url)

    # The draft's tokens are counted as it is typed.
    counts = [ui.meter_numbers()["message"]]
    ui.message.click()
    for chunk in ("The quick brown fox ", "jumps over the lazy dog ", "and keeps on running far away."):
        ui.message.press_sequentially(chunk)
        page.wait_for_function(
            "n => { const m = document.querySelector('#meter').innerText.match(/message ([\\d,]+)/);"
            " return m && Number(m[1].replace(/,/g, '')) > n; }",
            arg=counts[-1],
        )
        counts.append(ui.settled_meter_numbers()["message"])  # the last update wins, not a stale one
    assert counts == sorted(set(counts)), f"the draft's token count did not rise while typing: {counts}"
    numbers = ui.settled_meter_numbers()
    assert numbers["total"] == numbers["system"] + numbers["history"] + numbers["message"]
    ui.message.fill("")

    # With the smallest window, long turns push the oldest ones out of the prompt.
    ui.max_new_tokens(4)
    ui.set_number("Max window size (history tokens kept)", 256)  # the slider's minimum
    for n, marker in enumerate(["TURN-ONE", "TURN-TWO", "TURN-THREE"], start=1):
        ui.chat(f"{marker}: {FILLER}", turns=n)

    expect(ui.meter).to_contain_text("oldest turn(s) will not be sent")
    assert ui.meter_numbers()["window"] == 256
    kept, total = map(int, re.search(r"\((\d+)/(\d+) turns\)", ui.meter.inner_text()).groups())
    assert total == 3 and kept < 3

    rows = page.locator("#chat [data-testid=user], #chat [data-testid=bot]")  # one per message; marks go on these
    expect(rows).to_have_count(6)
    dropped = 3 - kept
    for i in range(6):
        if i < 2 * dropped:
            expect(rows.nth(i)).to_have_class(re.compile(r"\bqc-dropped\b"))
        else:
            expect(rows.nth(i)).not_to_have_class(re.compile(r"\bqc-dropped\b"))

    raw = ui.wait_raw_prompt("TURN-THREE")
    assert "TURN-ONE" not in raw, "a dropped turn is still in the raw prompt"
    page.evaluate(SHOW_DROPPED_BOUNDARY_JS)
    shot(page, docs="screenshot-context-meter.png")


def test_dropped_marks_stay_on_the_dropped_turns_after_a_persona_note(page, base_url, tmp_path):
    ui = ChatUI.open(page, base_url)
    _import(
        page,
        tmp_path,
        {
            "title": "Persona switched mid-chat",
            "messages": [
                {"role": "user", "content": f"U-ZERO {FILLER}"},
                {"role": "assistant", "content": "A-ZERO"},
                {"role": "event", "content": "Persona: Code reviewer (from the next turn on)"},
                {"role": "user", "content": f"U-ONE {FILLER}"},
                {"role": "assistant", "content": "A-ONE"},
                {"role": "user", "content": f"U-TWO {FILLER}"},
                {"role": "assistant", "content": "A-TWO"},
                {"role": "user", "content": "U-THREE"},
                {"role": "assistant", "content": "A-THREE"},
            ],
        },
    )
    expect(page.locator("#chat [data-testid=user]")).to_have_count(4)
    ui.set_number("Max window size (history tokens kept)", 256)
    expect(ui.meter).to_contain_text("2 oldest turn(s) will not be sent")  # turns U-ZERO and U-ONE
    dropped_class = re.compile(r"\bqc-dropped\b")
    row = lambda text: page.locator("#chat [data-testid=user], #chat [data-testid=bot]").filter(has_text=text)  # noqa: E731
    for text in ("U-ZERO", "A-ZERO", "U-ONE", "A-ONE"):
        expect(row(text)).to_have_class(dropped_class, timeout=3_000)
    for text in ("U-TWO", "A-TWO", "U-THREE", "A-THREE"):
        expect(row(text)).not_to_have_class(dropped_class, timeout=3_000)


# --- 10. Keyboard only ----------------------------------------------------------------------------------------


def test_keyboard_only(page, base_url, shot):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(8)
    ui.message.focus()

    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(ui.message).to_have_value("first line\nsecond line")
    expect(page.locator("#chat .message-row")).to_have_count(0)  # Shift+Enter did not send

    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "send"
    ui.arm()
    page.keyboard.press("Enter")  # activates the focused Send button
    expect(page.locator("#chat [data-testid=user]")).to_have_text(["first line\nsecond line"], use_inner_text=True)
    ui.wait_reply_done(turns=1)
    shot(page)


def test_meter_follows_the_window_slider_moved_by_keyboard(page, base_url):
    ui = ChatUI.open(page, base_url)
    assert ui.meter_numbers()["window"] > 256
    ui.tab("Generation")
    slider = page.get_by_label("range slider for Max window size (history tokens kept)", exact=True)
    slider.focus()
    page.keyboard.press("Home")
    expect(page.get_by_label("number input for Max window size (history tokens kept)", exact=True)).to_have_value("256")
    expect(ui.meter).to_contain_text("window 256 ", timeout=3_000)


# --- Import, and the main docs screenshot -------------------------------------------------------------------

SHOWCASE = {
    "title": "Fibonacci in Python",
    "messages": [
        {"role": "user", "content": "How do I compute Fibonacci numbers in Python? Is there a closed form?"},
        {
            "role": "assistant",
            "content": (
                "Sure! An iterative version runs in $O(n)$ time and constant memory:\n\n"
                "```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n"
                "        a, b = b, a + b\n    return a\n```\n\n"
                "The closed form is **Binet's formula**:\n\n"
                "$$F_n = \\frac{\\varphi^n - \\psi^n}{\\sqrt{5}}, \\qquad "
                "\\varphi = \\frac{1+\\sqrt{5}}{2},\\; \\psi = \\frac{1-\\sqrt{5}}{2}$$"
            ),
        },
        {"role": "user", "content": "用一句话解释黄金分割。"},
        {
            "role": "assistant",
            "content": "黄金分割把线段分成两部分，使长段与全长之比等于短段与长段之比，比值约为 $\\varphi \\approx 1.618$。🌻",
        },
        {"role": "user", "content": "Any tips for very large n?"},
        {
            "role": "assistant",
            "content": (
                "Use **fast doubling**, which needs only $O(\\log n)$ steps:\n\n"
                "- $F_{2k} = F_k\\,(2F_{k+1} - F_k)$\n- $F_{2k+1} = F_{k+1}^2 + F_k^2$\n\n"
                "| n | 10 | 20 | 30 |\n|---|---|---|---|\n| $F_n$ | 55 | 6765 | 832040 |\n\n"
                "> Python integers never overflow, but avoid floating-point Binet for $n > 70$."
            ),
        },
    ],
}


def test_import_chat_renders_markdown_code_and_latex(page, base_url, tmp_path, shot):
    ui = ChatUI.open(page, base_url)
    _import(page, tmp_path, SHOWCASE)

    expect(page.get_by_role("radio", name="Fibonacci in Python", exact=True)).to_be_checked()
    expect(page.locator("#chat [data-testid=user]")).to_have_count(3)
    expect(page.locator("#chat pre code").first).to_contain_text("def fib(n: int) -> int:")
    expect(page.locator("#chat .katex").first).to_be_visible()
    expect(page.locator("#chat table")).to_have_count(1)
    expect(ui.meter).to_contain_text("(3/3 turns)")  # the meter follows the imported history
    page.mouse.move(0, 0)
    page.locator("#chat [role=log]").evaluate("e => { e.scrollTop = 0; }")  # code and formula in view
    shot(page, docs="screenshot-main.png")

    # The imported chat goes on like any other ...
    ui.max_new_tokens(6)
    ui.chat("Thanks!", turns=4)
    assert ui.transcript()["user"][-1] == "Thanks!"
    # ... "New chat" starts an empty one (and the meter follows) ...
    chats = page.locator(".sidebar").get_by_role("radio").count()
    ui.new_chat()
    expect(ui.meter).to_contain_text("(0/0 turns)")
    expect(page.locator(".sidebar").get_by_role("radio")).to_have_count(chats + 1)
    # ... and deleting it brings the imported chat back on screen.
    page.get_by_role("button", name="Delete chat", exact=True).click()
    expect(page.locator(".sidebar").get_by_role("radio")).to_have_count(chats)
    expect(page.get_by_role("radio", name="Fibonacci in Python", exact=True)).to_be_checked()
    expect(page.locator("#chat [data-testid=user]")).to_have_count(4)
    expect(ui.meter).to_contain_text("(4/4 turns)")
