"""Issue 15, item 8: in 中文 every toast and refusal the server writes is Chinese.

The messages are found in the source (every literal text given to ``Refusal``, the toast helpers
and the errors that become toasts), their variable parts filled with sample values, and each
must come back from :func:`ui.server_text.localize` in Chinese (technical names excepted) and
unchanged in English."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest

from ui.messages_zh import MESSAGES
from ui.owner import Access
from ui.server_text import localize, to_zh

UI = Path(__file__).resolve().parent.parent / "ui"
# What a handler raises or shows; the errors are turned into Refusal toasts by the handlers.
SHOWN = {"Refusal", "notify_info", "notify_warning", "ChatInputError", "PersonaError", "ConversationError"}
SHOWN |= {"ToolSchemaError"}  # a bad Tools tab: the reply's warning toast
NESTED = {"tool_view.py": {"ValueError"}}  # inside "<file>: <message>" of a chat import

# Sample values for the variable parts, by the expression in the f-string (and file), else text or a number.
NUMBER = "12"
TEXT = "甲乙"
SAMPLES = {
    "exc.msg": ["Expecting value", "Expecting ',' delimiter"],
    # a nested message: a generation setting out of range (personas), a tool step's (chat import)
    "exc": ["top_k must be between 0 and 200000, got -1", "messages[3].tool_calls must be a list of 1 to 8 calls"],
    "presets.py where": ["in this browser", "for your login (every browser you sign in from)"],
    "conv.get('title') or 'Chat'": ["Chat", "New chat", TEXT],
}
NUMERIC = re.compile(r"\b(i|k|at|limit|lineno|colno)\b|MAX_|len\(|max_|//")
# English that stays in the Chinese text: field and setting names, options, file formats, units.
TECHNICAL = {
    "JSON", "UTF", "KB", "MB", "API", "USER", "PASSWORD", "admins", "auth", "Schema", "schema", "token",
    "role", "user", "assistant", "tool", "event", "messages", "content", "name", "description", "parameters",
    "properties", "arguments", "function", "type", "object", "tool_calls", "settings", "system_prompt",
    "example_dialogue", "greeting", "avatar", "top_p", "top_k", "temperature", "max_window_size",
    "max_new_tokens", "min_tokens", "ignore_eos", "logit_bias", "seed", "tools", "required", "uXXXX",
}  # fmt: skip


def _samples(node: ast.expr, file: str) -> list[str]:
    """The message texts an argument can be, with sample values in its f-string's holes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if not isinstance(node, ast.JoinedStr):
        return []  # a text made elsewhere (str(exc)): checked where it is made
    texts = [""]
    for part in node.values:
        if isinstance(part, ast.Constant):
            options = [part.value]
        else:
            expr = ast.unparse(part.value)
            options = SAMPLES.get(f"{file} {expr}") or SAMPLES.get(expr) or [NUMBER if NUMERIC.search(expr) else TEXT]
            if part.format_spec is not None:
                options = ["64,000" if o == NUMBER else o for o in options]
            if part.conversion == ord("r"):
                options = [repr(o) for o in options]
        texts = [t + o for t in texts for o in options]
    return texts


def ui_messages() -> list[tuple[str, str]]:
    """``(where, message)`` for every literal message shown in ui/*.py."""
    found = []
    for path in sorted(UI.glob("*.py")):
        names = SHOWN | NESTED.get(path.name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in names:
                found += [(f"{path.name}:{node.lineno}", text) for text in _samples(node.args[0], path.name)]
    return found


def admin_rules() -> list[str]:
    flags = [Access(), Access(logins=True), Access(logins=True, admins=frozenset({"a"})), Access(api_keys=True)]
    return [a.admin_rule() for a in flags]


# What the model server (qwen_core) writes that the chat's handlers show as a toast.
CORE = [
    "The server is busy (4 replies running, 16 waiting). Try again in a moment.",
    "Waited too long for a free slot; the server is overloaded. Try again later.",
    "Too many requests: the limit is 20 per minute per user. Try again shortly.",
    "The prompt is 9,000 tokens but Qwen-7B-Chat handles at most 8192. "
    "Shorten the message, or lower max_window_size so fewer past turns are kept.",
    "The model ran out of memory while generating this reply. Shorten the conversation "
    "(lower max_window_size), lower max_new_tokens, or load a smaller or quantized variant.",
    "Another model switch is in progress; wait for it to finish.",
    "Generation failed: The model is being switched; try again in a moment.",
    "persona editor: 'settings': top_p must be above 0 (use temperature 0 for greedy decoding)",
    "import[3]: 'settings': temperature must be a finite number, got nan",
]
MODEL_NAMES = ["Qwen-7B-Chat", "Qwen-1_8B-Chat"]  # the switch's own messages, with model names
CORE_WITH_NAMES = ["Loaded Qwen-7B-Chat.", "Qwen-7B-Chat is already loaded.", "Qwen-7B-Chat is not a configured model."]


def _english_left(zh: str, message: str) -> list[str]:
    """English words in ``zh`` that are not a sample value, a technical name or a word quoted in ``message``."""
    for sample in sorted({*MODEL_NAMES, "notes.json", "nan"}, key=len, reverse=True):
        zh = zh.replace(sample, " ")
    quoted = set(re.findall(r"'([^']*)'", message))
    return [w for w in re.findall(r"[A-Za-z][A-Za-z_]*", zh) if w not in TECHNICAL and w not in quoted]


ALL = ui_messages() + [("owner.py", m) for m in admin_rules()] + [("core", m) for m in CORE + CORE_WITH_NAMES]


def test_the_source_has_the_messages_this_test_expects():
    """The collector finds the messages (a rename of the helpers would leave this test empty)."""
    texts = {m for _, m in ALL}
    assert len(texts) > 80
    assert "The message is empty: type something first." in texts
    assert "甲乙: invalid JSON at line 12, column 12: Expecting value" in texts  # an f-string, filled


def test_no_handler_shows_a_toast_past_the_translation():
    """gr.Info/gr.Warning are called only by ui.refusal's helpers, which translate."""
    direct = []
    for path in sorted(UI.glob("*.py")):
        if path.name == "refusal.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("Info", "Warning") and ast.unparse(node.func.value) == "gr":
                    direct.append(f"{path.name}:{node.lineno}")
    assert not direct, f"call notify_info/notify_warning (ui.refusal) instead: {direct}"


@pytest.mark.parametrize(("where", "message"), ALL, ids=[f"{w}-{i}" for i, (w, _) in enumerate(ALL)])
def test_every_message_is_translated(where, message):
    zh = to_zh(message)
    assert zh is not None, f"{where}: no Chinese for {message!r} (add it to ui/messages_zh.py)"
    assert not _english_left(zh, message), f"{where}: English left in {zh!r}"
    assert re.search(r"[\u4e00-\u9fff]", zh)
    assert localize(message, "zh") == zh
    assert localize(message, "en") == message  # English unchanged


def test_each_chinese_template_uses_the_same_variable_parts():
    hole = re.compile(r"\{([a-z_]+)\}")
    for en, zh in MESSAGES:
        assert set(hole.findall(en)) == set(hole.findall(zh)), en


def test_variable_parts_are_kept_and_places_translated():
    assert localize("notes.json: more than 2000 messages", "zh") == "notes.json：超过 2000 条消息"
    assert localize("import[2]: 'name' must be non-empty text", "zh") == "导入[2]：'name' 必须是非空文本"
    assert localize("Preset “a: b” saved in this browser.", "zh") == "预设“a: b”已保存在这个浏览器中。"
    assert localize("“Chat” was removed. Press ↩ Restore chat to bring it back.", "zh").startswith("“对话”已移除")
    line = localize("Example dialogue: invalid JSON at line 1: Expecting ',' delimiter", "zh")
    assert line == "示例对话：JSON 无效（第 1 行）：此处缺少逗号 ','"


def test_unknown_text_and_user_content_stay_as_they_are():
    for text in ("hello", "你好", "The model said: Nothing to undo. Really", "a: b: c", "", "x" * 10_000):
        assert localize(text, "zh") == text


@pytest.fixture
def zh_event():
    """A 中文 page's event being handled (what Gradio's context holds while a handler runs)."""
    from gradio.context import LocalContext

    token = LocalContext.request.set(types.SimpleNamespace(headers={"cookie": "qwen-lang=zh"}))
    yield
    LocalContext.request.reset(token)


def test_refusals_and_toasts_follow_the_events_language(zh_event, monkeypatch):
    import ui.refusal as refusal

    err = refusal.Refusal("The message is empty: type something first.")
    assert (err.message, err.title) == ("消息为空：请先输入内容。", "错误")
    shown = []
    monkeypatch.setattr(refusal.gr, "Info", lambda message, **kw: shown.append((message, kw["title"])))
    monkeypatch.setattr(refusal.gr, "Warning", lambda message, **kw: shown.append((message, kw["title"])))
    refusal.notify_info("Preset “快” saved in this browser.", duration=4)
    refusal.notify_warning("Nothing to undo.")
    assert shown == [("预设“快”已保存在这个浏览器中。", "提示"), ("没有可以撤销的内容。", "警告")]


def test_without_a_chinese_event_everything_stays_english():
    from ui.refusal import Refusal

    err = Refusal("The message is empty: type something first.")
    assert (err.message, err.title) == ("The message is empty: type something first.", "Error")


def test_the_tools_tab_and_tool_steps_follow_the_events_language(zh_event):
    """The Tools tab's text (set on load) and a tool step in the chat are in 中文 for a 中文 page."""
    import json as _json
    import re

    from ui.conversations import to_chatbot
    from ui.tools_panel import check_schemas, restore

    intro, builtin, _, status, choice = restore(None)
    assert "工具" in intro and not re.search(r"[A-Za-z]{3,}", intro.replace("Qwen", ""))
    assert [label for label, _ in builtin["choices"]] == ["计算器", "日期和时间"]
    assert choice["choices"][0][0] == "自动：由模型决定" and "小模型" in choice["info"]
    assert status.startswith("示例：")
    schema = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    status, choice = check_schemas(["calculator"], "auto", _json.dumps([schema]))
    assert status == "✅ 已启用：`calculator`, `get_weather`（你的工具：由你提供结果）"
    assert ("调用 get_weather", "get_weather") in choice["choices"]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    items = to_chatbot(
        [{"role": "user", "content": "天气？"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    )
    assert items[1]["metadata"] == {"title": "🛠️ 调用了 get_weather", "status": "pending"}
    assert "正在等待 `get_weather` 的结果" in items[1]["content"]
