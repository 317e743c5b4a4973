"""The page's language control (issue 15, item 8): visible in the header, remembered across
reloads, and in 中文 no English UI text is left anywhere on the page (model names, numbers,
units and the technical names of settings excepted)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

# Words that are names, not interface text: the model (tiny-qwen, fp32, float32, cpu, sdpa ...),
# settings' own names (Top-p, max_window_size), file formats, token, and Gradio/API.
ALLOWED = {
    "english", "qwen", "tiny", "fp", "float", "bf", "cpu", "cuda", "sdpa", "eager", "flash", "attention",
    "top", "p", "k", "max", "window", "size", "json", "markdown", "token", "tokens", "gradio", "api", "gb",
    "mb", "ms", "b", "id", "chatml", "nan", "off",
}  # fmt: skip
# What the page shows that the user or the model wrote: message bodies and code (views, examples).
CONTENT = "#chat [data-testid=user], #chat [data-testid=bot], .cm-content, .cm-gutters, textarea, input, pre"

_VISIBLE_TEXT_JS = """
(skip) => {
  const skipped = new Set(document.querySelectorAll(skip));
  const out = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const el = node.parentElement;
    if (!el || !node.textContent.trim()) continue;
    let inside = false;
    for (let e = el; e; e = e.parentElement) if (skipped.has(e)) { inside = true; break; }
    if (inside || !el.checkVisibility({visibilityProperty: true, opacityProperty: false})) continue;
    out.push(node.textContent.trim());
  }
  // Labels drawn by CSS (::before) and the buttons' accessible text count too.
  document.querySelectorAll('#chat .qc-dropped').forEach((e) => out.push(getComputedStyle(e, '::before').content));
  return out;
}
"""


def english_words(page) -> list[str]:
    """English words in the visible UI text (content excluded), with their line."""
    found = []
    for line in page.evaluate(_VISIBLE_TEXT_JS, CONTENT):
        for word in re.findall(r"[A-Za-z]+", line):
            if word.lower() not in ALLOWED:
                found.append(f"{word!r} in {line[:80]!r}")
    return found


def _choose_chinese(page) -> ChatUI:
    control = page.get_by_role("radio", name="中文", exact=True)
    expect(control).to_be_visible()  # in the page itself, not in a settings modal
    control.click()
    ui = ChatUI(page, lang="zh")
    expect(ui.message).to_be_visible(timeout=30_000)  # the page came back in 中文
    ui.wait_ready()
    expect(page.get_by_role("tab", name="生成参数", exact=True)).to_be_visible()
    return ui


def test_language_control_is_remembered_and_everything_is_translated(page, base_url, shot):
    ChatUI.open(page, base_url).message.fill("a draft survives the switch")  # an English browser
    ui = _choose_chinese(page)
    expect(ui.message).to_have_value("a draft survives the switch")
    ui.set_number("最大生成长度", 4, tab="生成参数", back_to="角色")
    ui.send("你好")
    page.wait_for_function("() => document.querySelectorAll('#chat [data-testid=user]').length === 1")
    ui.wait_reply_done(turns=1)
    # Enough turns for the smallest window to drop the first (the "not sent" mark).
    ui.set_number("最大窗口 (保留的历史 token 数)", 256, tab="生成参数", back_to="角色")
    ui.send("再说一遍" * 60)
    ui.wait_reply_done(turns=2)
    ui.message.fill("草稿" * 80)

    problems = []
    for tab in ("角色", "生成参数", "工具", "模型"):
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_timeout(300)
        problems += [f"[{tab}] {p}" for p in english_words(page)]
    page.get_by_role("tab", name="角色", exact=True).click()
    shot(page, "zh")
    assert not problems, "English UI text in 中文:\n" + "\n".join(sorted(set(problems)))

    # Remembered: a reload comes back in 中文, with the control showing it.
    ui.reload()
    expect(page.get_by_role("radio", name="中文", exact=True)).to_be_checked()
    expect(page.get_by_role("button", name="发送", exact=True)).to_be_visible()
    expect(page.get_by_role("tab", name="模型", exact=True)).to_be_visible()
    assert "（2/2 轮）" in ui.meter.inner_text() or "轮" in ui.meter.inner_text()

    # And back to English.
    page.get_by_role("radio", name="English", exact=True).click()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible(timeout=30_000)
    expect(page.get_by_role("tab", name="Generation", exact=True)).to_be_visible()


def test_refusal_toasts_are_chinese(page, base_url, shot):
    """The server's toasts follow the page's language too (issue 15, item 8): an empty Send is
    refused in Chinese, with no English word in the toast's text."""
    ChatUI.open(page, base_url)
    ui = _choose_chinese(page)
    ui.message.fill("")
    ui.button("send").click()
    toast = page.locator(".toast-body").last
    expect(toast).to_contain_text("消息为空", timeout=15_000)
    shown = toast.locator("[data-testid=toast-text]").inner_text()
    assert shown == "消息为空：请先输入内容。", shown
    assert not re.findall(r"[A-Za-z]+", shown), f"English in the 中文 toast: {shown!r}"
    # Its heading too (Gradio 6.31 titles a toast with its type, in English: ui.page_js.TOAST_TITLES_JS).
    expect(toast.locator(".toast-title")).to_have_text(re.compile(r"^\s*错误\s*$"))
    whole = toast.inner_text()
    assert not re.findall(r"[A-Za-z]+", whole), f"English in the 中文 toast: {whole!r}"
    shot(page, "zh-toast")
