"""Text the handlers write (meter, status lines, chat titles), in the page's language.

Component labels are translated in the browser (``gr.I18n``, :mod:`ui.i18n`); text a handler
returns is not, so the handler picks the language itself: the ``qwen-lang`` cookie that the
page's language control sets (:mod:`ui.page_js`), else the browser's ``Accept-Language``.
"""

from __future__ import annotations

import re
from http.cookies import CookieError, SimpleCookie

from ui.messages_zh import JSON_ERROR_STARTS, JSON_ERRORS, MESSAGES, PLACES, TITLES

LANG_COOKIE = "qwen-lang"
LANGS = ("en", "zh")

TEXT = {
    "en": {
        "new_chat": "New chat",
        "meter": (
            "<b>{total}</b> tokens in the next prompt — system {system} · history {history} "
            "({kept}/{turns} turns) · message {draft} · window {window} · context {context}"
        ),
        "meter_bar": "share of max_window_size used",
        "dropped": "⛔ {n} oldest turn(s) will not be sent (max_window_size {window}); marked in the chat.",
        "stats_tokens": "**{n}** tokens",
        "stats_ttft": "first token {ms} ms",
        "stats_speed": "{tps} tokens/s",
        "stats_end": "ended: {reason}",
        "stats_seed": "seed {seed}",
        "model_loading": "⏳ The model is loading ({model}); chat works again once it is loaded.",
        "model_line": "**{model}** — {precision} ({dtype}), {params} B parameters",
        "device_line": (
            "device: {device} ({devices}) · attention: {attention} · decode: {decode} · context {context} tokens"
        ),
        "memory_line": "memory: process {rss} GB",
        "gpu_mem": "{dev}: {used} GB used, {free} GB free",
        "switch_locked": "🔒 Switching models affects every user.",
        "saved": "✅ Saved “{name}”.",
        "saved_shared": "✅ Saved “{name}” to the shared library.",
        "created": "✅ Created “{name}”.",
        "deleted": "🗑️ Deleted.",
        "imported": "✅ Imported {names}.",
        "and_more": " and {n} more",
        "info_tokens": "{n} tokens",
        # the Tools tab (ui.tools_panel) and tool steps in the chat (ui.tool_view)
        "tools_intro": (
            "Tools the model may call in its next replies (Qwen's ReAct format, at most {steps} calls a reply). "
            "Built-in tools run here, safely (no shell, files or network). **Your own tools are never run or "
            "made up:** the chat shows the call and waits, and your next message is its result."
        ),
        "tool_calculator": "Calculator",
        "tool_current_time": "Date & time",
        "tool_auto": "auto: the model decides",
        "tool_required": "required: must call a tool",
        "tool_call": "call {name}",
        "tool_choice_info": "For the first step after each message of yours; small models rarely call tools unless told to.",
        "tools_example": "Example:",
        "tools_none": "No tool is enabled: replies are plain chat.",
        "tools_enabled": "✅ Enabled: {names}",
        "tools_yours": " (yours: you give its results)",
        "tool_result": "📋 Result of {name}",
        "tool_used": "🛠️ Used {name}",
        "tool_the": "the tool",
        "tool_action": "**Action:** `{name}`  \n**Action Input:**",
        "tool_waiting": (
            "⏳ Waiting for the result of `{name}`: send what it returned as your next message, and the "
            "model continues from it. (Regenerate or Undo to skip the call.)"
        ),
    },
    "zh": {
        "new_chat": "新对话",
        "meter": (
            "下一次提示共 <b>{total}</b> 个 token — 系统 {system} · 历史 {history} "
            "（{kept}/{turns} 轮）· 消息 {draft} · 窗口 {window} · 上下文 {context}"
        ),
        "meter_bar": "最大窗口已用比例",
        "dropped": "⛔ 最早的 {n} 轮不会发送（最大窗口 {window}），已在对话中标出。",
        "stats_tokens": "**{n}** 个 token",
        "stats_ttft": "首个 token {ms} 毫秒",
        "stats_speed": "每秒 {tps} 个 token",
        "stats_end": "结束原因：{reason}",
        "stats_seed": "随机种子 {seed}",
        "model_loading": "⏳ 模型（{model}）正在加载，加载完成后即可继续对话。",
        "model_line": "**{model}** — {precision}（{dtype}），{params} B 参数",
        "device_line": "设备：{device}（{devices}）· 注意力：{attention} · 解码：{decode} · 上下文 {context} 个 token",
        "memory_line": "内存：进程 {rss} GB",
        "gpu_mem": "{dev}：已用 {used} GB，空闲 {free} GB",
        "switch_locked": "🔒 切换模型会影响所有用户。",
        "saved": "✅ 已保存“{name}”。",
        "saved_shared": "✅ 已把“{name}”保存到共享角色库。",
        "created": "✅ 已创建“{name}”。",
        "deleted": "🗑️ 已删除。",
        "imported": "✅ 已导入 {names}。",
        "and_more": " 等另外 {n} 个",
        "info_tokens": "{n} 个 token",
        "tools_intro": (
            "模型在接下来的回复中可以调用的工具（通义千问的工具调用格式，每条回复最多调用 {steps} 次）。"
            "内置工具在本机安全运行（不能使用命令行、文件或网络）。**你自己的工具绝不会被运行或编造结果：**"
            "对话中会显示这次调用并等待，你的下一条消息就是它的结果。"
        ),
        "tool_calculator": "计算器",
        "tool_current_time": "日期和时间",
        "tool_auto": "自动：由模型决定",
        "tool_required": "必须：一定要调用工具",
        "tool_call": "调用 {name}",
        "tool_choice_info": "作用于你每条消息之后的第一步；小模型若不被要求，很少调用工具。",
        "tools_example": "示例：",
        "tools_none": "未启用任何工具：回复为普通对话。",
        "tools_enabled": "✅ 已启用：{names}",
        "tools_yours": "（你的工具：由你提供结果）",
        "tool_result": "📋 {name} 的结果",
        "tool_used": "🛠️ 调用了 {name}",
        "tool_the": "工具",
        "tool_action": "**调用：** `{name}`  \n**输入：**",
        "tool_waiting": "⏳ 正在等待 `{name}` 的结果：把它返回的内容作为你的下一条消息发送，模型会接着回复。（重新生成或撤销可跳过这次调用。）",
    },
}

# Finish reasons and decode modes as the model panel shows them.
REASONS = {"zh": {"stop": "完成", "length": "达到长度上限", "cancelled": "已停止"}}
DECODE = {"zh": {"batched": "连续批处理", "eager": "逐条", "compiled": "编译"}}
# qwen_core.prefix_cache.describe's lines (the core writes English; the UI translates them).
_PREFIX = re.compile(
    r"Prefix cache: (?:(?P<rate>\d+%) hits \((?P<hits>\d+)/(?P<looked>\d+)\)|no lookups yet), "
    r"(?P<reused>[\d,]+) tokens reused, (?P<mb>\d+) MB of (?P<cap>\d+) MB"
)


def lang_of(request) -> str:
    """``"en"`` or ``"zh"`` for this request (``None``: English, e.g. a handler called from a test)."""
    headers = getattr(request, "headers", None)
    if not headers:
        return "en"
    try:
        cookie = SimpleCookie(headers.get("cookie") or "")
    except CookieError:
        cookie = SimpleCookie()
    chosen = cookie.get(LANG_COOKIE)
    if chosen is not None and chosen.value in LANGS:
        return chosen.value
    accept = (headers.get("accept-language") or "").strip().lower()
    return "zh" if accept.startswith("zh") else "en"


def text(lang: str, key: str, **values) -> str:
    """The ``key`` string in ``lang`` (English when it has no translation), filled with ``values``."""
    template = TEXT.get(lang, TEXT["en"]).get(key) or TEXT["en"][key]
    return template.format(**values)


def chat_title(lang: str, title: str | None) -> str:
    """A chat's title for the list: an untitled (“New chat”) one in the page's language."""
    return text(lang, "new_chat") if not title or title == TEXT["en"]["new_chat"] else title


def decode_mode(lang: str, mode: str) -> str:
    """The decode mode (batched/eager/compiled) for the model panel."""
    return DECODE.get(lang, {}).get(mode, mode)


def prefix_cache_line(lang: str, line: str) -> str:
    """The Model tab's prefix-cache line in ``lang`` (English lines from the core are kept in English)."""
    if lang != "zh":
        return line
    if line == "Prefix cache: off":
        return "前缀缓存：已关闭"
    if line == "Prefix cache: not available for this decoder":
        return "前缀缓存：此解码方式不可用"
    m = _PREFIX.fullmatch(line)
    if not m:
        return line
    rate = f"命中率 {m['rate']}（{m['hits']}/{m['looked']}）" if m["rate"] else "尚无查询"
    return f"前缀缓存：{rate}，已复用 {m['reused']} 个 token，已用 {m['mb']} MB / 共 {m['cap']} MB"


def reason(lang: str, finish_reason: str) -> str:
    """A finish reason (stop/length/cancelled) for the model panel."""
    return REASONS.get(lang, {}).get(finish_reason, finish_reason)


def current_lang() -> str:
    """The language of the event being handled (Gradio keeps its request in a context variable)."""
    from gradio.context import LocalContext  # the UI's own dependency; imported here to keep this module light

    return lang_of(LocalContext.request.get(None))


# --- toasts and refusals (ui.refusal): English messages matched, Chinese ones filled (ui.messages_zh) ---
_HOLE = re.compile(r"\{([a-z_]+)\}")
_NUMBER = r"-?[\d,.]+"
_TEXT = r"(?:(?!: ).)+"
# What a variable part of a message may be, by its name (anything else: text without ": ", which
# starts a message's place, so "notes.json: 'x' is given twice" is that message at that place).
HOLES = {
    "field": r"[^\s:]+",  # a field path: 'name', messages[3].content, tools[0].function
    "exc": r".+",  # a message inside the message
    "keys": r".+",  # a list of names
    "name": r".+",  # a persona's, preset's or model's name (a tool's is "tool": it follows its place)
    **dict.fromkeys(("n", "limit", "at", "line", "col", "size", "active", "waiting", "lo", "hi"), _NUMBER),
}
_MAX_LOCALIZED = 4000  # longer texts (a pasted file name, a huge error) are left as they are


def _compile(pattern: str) -> re.Pattern:
    parts = _HOLE.split(pattern)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{HOLES.get(p, _TEXT)}?)" for i, p in enumerate(parts))
    return re.compile(rx, re.DOTALL)


_ZH = [(_compile(en), zh) for en, zh in MESSAGES]


def _json_error(msg: str) -> str:
    if msg in JSON_ERRORS:
        return JSON_ERRORS[msg]
    for start, zh in JSON_ERROR_STARTS.items():
        if msg.startswith(start):
            return zh + msg[len(start) :].removesuffix(" at")
    return msg


def _value(name: str, value: str) -> str:
    if name == "exc":  # a message inside the message
        return _message_zh(value) or value
    if name == "msg":
        return _json_error(value)
    if name == "title":
        return TITLES.get(value, value)
    return value


def _message_zh(text: str) -> str | None:
    """The Chinese of one whole known message, or None."""
    found = next(((m, zh) for rx, zh in _ZH if (m := rx.fullmatch(text))), None)
    if found is None:
        return None
    m, template = found
    values = {name: _value(name, value) for name, value in m.groupdict().items()}
    return _HOLE.sub(lambda h: values[h[1]], template)


def _place(where: str) -> str:
    """A message's place ("import[2]", "persona editor", a file name): our own words translated."""
    m = re.fullmatch(r"(.*?)((?:\[\d+\])*)", where, re.DOTALL)
    return PLACES.get(m[1], m[1]) + m[2]


def to_zh(text: str) -> str | None:
    """The Chinese of a known message (``"<place>: <message>"`` included), or None when it is not known."""
    if not isinstance(text, str) or len(text) > _MAX_LOCALIZED:
        return None
    found = _message_zh(text)
    if found is not None:
        return found
    at = text.find(": ")
    while at != -1:  # the message after one or more places: "notes.json: messages[3].content must be text"
        found = _message_zh(text[at + 2 :])
        if found is not None:
            return "：".join(_place(p) for p in text[:at].split(": ")) + "：" + found
        at = text.find(": ", at + 1)
    return None


def localize(text: str, lang: str | None = None) -> str:
    """A toast's or refusal's text in ``lang`` (default: the language of the event being handled).

    In 中文 a known message (:mod:`ui.messages_zh`) comes back in Chinese; in English, and for a
    text that is not a known message (what a user or the model wrote), ``text`` comes back unchanged."""
    if (lang or current_lang()) != "zh":
        return text
    found = to_zh(text)
    return text if found is None else found
