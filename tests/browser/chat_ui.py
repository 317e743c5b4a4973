"""A page object for the chat app: what a user sees and does, in Playwright terms.

Locators go by role and accessible name (as a screen reader would), with ``exact=True``
because Gradio adds its own labels ("Copy message", "user's message: …") that a
substring match would also hit. ``#chat``/``#meter`` are the app's elem_ids.
"""

from __future__ import annotations

import re
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

# Texts of what is on screen, read in one round trip.
_TRANSCRIPT_JS = """
() => {
  const text = (sel) => [...document.querySelectorAll(sel)].map((e) => e.innerText.trim());
  return {
    user: text('#chat [data-testid=user]'),
    bot: text('#chat [data-testid=bot]:not(:has(.thought-group))'),
    notes: text('#chat .thought-group .title'),
    rows: document.querySelectorAll('#chat .message-row').length,
  };
}
"""

# Armed before an action that starts a reply: notes (without polling, so it cannot miss a
# short reply) that Stop has been enabled, i.e. that the reply has started.
_ARM_JS = """
() => {
  window.__qcReplyStarted = false;
  const seen = () => {
    const stop = document.querySelector('button#stop');
    if (stop && !stop.disabled) window.__qcReplyStarted = true;
  };
  if (!window.__qcObserver) {
    window.__qcObserver = new MutationObserver(seen);
    window.__qcObserver.observe(document.body, {subtree: true, childList: true, attributes: true,
                                                attributeFilter: ['disabled']});
  }
  seen();
}
"""

# True once the armed reply chain has finished: the reply started, Stop is disabled again
# and the meter, recomputed after the reply, counts ``turns`` turns of history.
_REPLY_DONE_JS = """
(turns) => {
  const stop = document.querySelector('button#stop');
  const meter = document.querySelector('#meter');
  if (!window.__qcReplyStarted || !stop || !meter || !stop.disabled) return false;
  const m = meter.innerText.match(/[(（](\\d+)\\/(\\d+) (turns|轮)[)）]/);
  return !!m && Number(m[2]) === turns;
}
"""

_RAW_PROMPT_JS = """
(el) => {
  const view = el.cmTile && el.cmTile.view;  // CodeMirror's own document, not just the rendered lines
  if (view && view.state) return view.state.doc.toString();
  return [...el.querySelectorAll('.cm-line')].map((l) => l.textContent).join('\\n');
}
"""

LABELS = {
    "en": {
        "message": "Message",
        "send": "Send",
        "stop": "Stop",
        "regenerate": "Regenerate",
        "undo": "Undo",
        "clear": "Clear",
    },
    "zh": {
        "message": "消息",
        "send": "发送",
        "stop": "停止",
        "regenerate": "重新生成",
        "undo": "撤销",
        "clear": "清空",
    },
}


class ChatUI:
    """One browser tab showing the app."""

    def __init__(self, page: Page, lang: str = "en"):
        self.page = page
        self.lang = lang

    # --- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, page: Page, url: str, lang: str = "en") -> ChatUI:
        ui = cls(page, lang)
        page.goto(url)
        ui.wait_ready()
        return ui

    def wait_ready(self) -> None:
        """The page has loaded the store (demo.load) and the meter has been computed from it."""
        # The store guard (ui.browser_storage) has read IndexedDB and will not reload this page.
        self.page.locator("html[data-qc-store=ready]").wait_for(state="attached", timeout=30_000)
        expect(self.message).to_be_visible(timeout=30_000)
        self.page.locator("#meter [data-dropped]").wait_for(state="attached", timeout=30_000)

    def reload(self) -> None:
        """Reload the page. After a server restart Gradio's own reconnect logic may navigate the
        page at the same moment (net::ERR_ABORTED), so a navigation that was cut off is retried."""
        url = self.page.url
        for attempt in range(3):
            try:
                self.page.goto(url) if attempt else self.page.reload()
                break
            except PlaywrightError:
                if attempt == 2:
                    raise
                self.page.wait_for_timeout(500)
        self.wait_ready()

    def settled_meter_numbers(self, quiet_ms: int = 800, timeout_s: float = 20) -> dict:
        """The meter's numbers once they stop changing (typing fires several updates in a row)."""
        deadline = time.monotonic() + timeout_s
        last = self.meter_numbers()
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(quiet_ms)
            now = self.meter_numbers()
            if now == last:
                return now
            last = now
        raise AssertionError(f"the meter never settled: last {last}")

    # --- controls ----------------------------------------------------------------------
    @property
    def message(self) -> Locator:
        return self.page.get_by_role("textbox", name=LABELS[self.lang]["message"], exact=True)

    def button(self, key: str) -> Locator:
        """Send/Stop/Regenerate/Undo/Clear in the row under the input (the chat box has its own
        icon buttons also named "Undo" and "Clear")."""
        row = self.page.locator("#send").locator("xpath=..")
        return row.get_by_role("button", name=LABELS[self.lang][key], exact=True)

    @property
    def stop(self) -> Locator:
        """Stop shares Send's slot and is hidden while idle (so it has no role then): found by id."""
        return self.page.locator("button#stop")

    def textbox(self, name: str) -> Locator:
        return self.page.get_by_role("textbox", name=name, exact=True)

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name, exact=True).click()

    def set_number(self, label: str, value: int, tab: str = "Generation", back_to: str = "Persona") -> None:
        """Type a value into a slider's number box (on its tab) and leave the box, as a user would."""
        self.tab(tab)
        box = self.page.get_by_label(f"number input for {label}", exact=True)
        expect(box).to_be_editable()
        # A tab opened for the first time mounts its sliders; on a loaded machine the mount can
        # finish after the first keystrokes and put the slider's own value back. A user would
        # see that and type again, and so do we (at most three times).
        for attempt in range(3):
            box.fill(str(value))
            box.press("Tab")  # the change event fires on blur
            try:
                expect(box).to_have_value(str(value), timeout=3_000)
                self.page.wait_for_timeout(300)
                if box.input_value() == str(value):
                    break
            except AssertionError:
                if attempt == 2:
                    raise
        expect(box).to_have_value(str(value))
        if back_to:
            self.tab(back_to)

    def max_new_tokens(self, n: int) -> None:
        self.set_number("Max new tokens", n)

    # --- chatting ------------------------------------------------------------------------
    def arm(self) -> None:
        """Call before any action that starts a reply, so :meth:`wait_reply_done` waits for *that* reply."""
        self.page.evaluate(_ARM_JS)

    def send(self, text: str) -> None:
        """Type a message and press Enter."""
        self.message.fill(text)
        self.arm()
        self.message.press("Enter")

    def transcript(self) -> dict:
        """``{"user": [...], "bot": [...], "notes": [...], "rows": n}`` as shown right now."""
        return self.page.evaluate(_TRANSCRIPT_JS)

    def last_reply(self) -> str:
        bot = self.transcript()["bot"]
        return bot[-1] if bot else ""

    def wait_reply_done(self, turns: int, timeout: float = 60_000) -> None:
        """Wait for the armed reply chain to finish with ``turns`` complete turns in the conversation."""
        self.page.wait_for_function(_REPLY_DONE_JS, arg=turns, timeout=timeout)

    def chat(self, text: str, turns: int) -> str:
        """Send ``text``, wait for the whole reply; returns the reply text."""
        before = len(self.transcript()["user"])
        self.send(text)
        self.page.wait_for_function("n => document.querySelectorAll('#chat [data-testid=user]').length > n", arg=before)
        self.wait_reply_done(turns)
        return self.last_reply()

    def new_chat(self) -> None:
        """Press "New chat" and wait for the empty transcript."""
        self.page.get_by_role("button", name="New chat", exact=True).click()
        expect(self.page.locator("#chat .message-row")).to_have_count(0)

    # --- context meter ---------------------------------------------------------------------
    @property
    def meter(self) -> Locator:
        return self.page.locator("#meter")

    def meter_numbers(self) -> dict:
        """Token counts the meter shows: total, system, history, message, window."""
        text = self.meter.inner_text()
        num = lambda pattern: int(re.search(pattern, text).group(1).replace(",", ""))  # noqa: E731
        return {
            "total": num(r"([\d,]+)\s+tokens in the next prompt"),
            "system": num(r"system ([\d,]+)"),
            "history": num(r"history ([\d,]+)"),
            "message": num(r"message ([\d,]+)"),
            "window": num(r"window ([\d,]+)"),
        }

    # --- persona ------------------------------------------------------------------------------
    @property
    def persona_library(self) -> Locator:
        return self.page.get_by_role("combobox", name="Persona library", exact=True)

    def _open_persona_library(self) -> None:
        box = self.persona_library
        box.click()
        if box.get_attribute("aria-expanded") != "true":  # it opens on focus: already focused, so refocus
            box.blur()
            box.click()
        expect(box).to_have_attribute("aria-expanded", "true")

    def pick_persona(self, name_part: str) -> None:
        """Open the persona library and click the persona whose label contains ``name_part``."""
        self._open_persona_library()
        self.page.get_by_role("option", name=name_part).click()

    def persona_options(self) -> list[str]:
        """Labels in the persona library dropdown (opened and closed again)."""
        self._open_persona_library()
        options = self.page.get_by_role("option")
        options.first.wait_for()
        labels = [o.get_attribute("aria-label") or o.inner_text() for o in options.all()]
        self.page.keyboard.press("Escape")
        self.persona_library.blur()
        return labels

    # --- raw prompt -----------------------------------------------------------------------------
    def open_raw_prompt(self) -> Locator:
        """Open the "View raw prompt" accordion; returns the code view inside it."""
        header = self.page.get_by_text("View raw prompt", exact=True).first
        code = self.page.locator(".cm-content").filter(has_text="<|im_start|>").first
        if not code.is_visible():
            header.click()
        expect(code).to_be_visible()
        return code

    def raw_prompt(self) -> str:
        """The raw ChatML text of the next prompt (the accordion is opened if needed)."""
        return self.open_raw_prompt().evaluate(_RAW_PROMPT_JS)

    def wait_raw_prompt(self, contains: str, timeout_ms: int = 10_000) -> str:
        """Wait (polling every 100 ms) until the raw prompt contains ``contains``; returns it."""
        text = ""
        for _ in range(max(1, timeout_ms // 100)):
            text = self.raw_prompt()
            if contains in text:
                return text
            self.page.wait_for_timeout(100)
        raise AssertionError(f"the raw prompt does not contain {contains!r}:\n{text}")
