"""How tool steps look: collapsible Chatbot items and Markdown export lines, made from the stored messages.

The conversation keeps a step as data (an assistant message with ``tool_calls``, then a ``tool`` message);
only these functions turn it into something to show. Each message stays one Chatbot item (edits and the
context meter find messages by their position), with Gradio's ``metadata`` title, so it shows as a
collapsed bubble: the call (thought, tool, arguments) and its result. A call still waiting for a result
(a call of the user's own tool) is ``pending`` and says what to do.
"""

from __future__ import annotations

import json
import re
import uuid

from qwen_core.text import lone_surrogate

from .render import display_markdown, safe_markdown
from .server_text import current_lang
from .server_text import text as tr


def _fenced(text: str, lang: str = "") -> str:
    """``text`` as a code block whose fence no backtick run inside can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def is_tool_step(msg: dict) -> bool:
    """Whether a message is part of a tool step (a call or a result)."""
    return msg.get("role") == "tool" or (msg.get("role") == "assistant" and bool(msg.get("tool_calls")))


def _call(msg: dict) -> tuple[str, str, str]:
    call = (msg.get("tool_calls") or [{}])[0]
    fn = call.get("function") or {}
    name = str(fn.get("name") or "?").replace("`", "'")  # shown in inline code
    return str(call.get("id") or ""), name, str(fn.get("arguments") or "")


def _answered(messages: list[dict], at: int, call_id: str) -> bool:
    for msg in messages[at + 1 :]:
        if msg.get("role") == "tool":
            if not call_id or msg.get("tool_call_id") == call_id:
                return True
        elif msg.get("role") != "event":
            return False
    return False


def tool_item(messages: list[dict], at: int) -> dict:
    """The Chatbot item of tool-step message ``messages[at]``."""
    msg = messages[at]
    lang = current_lang()  # the event's page language: this is rendering, never stored
    if msg.get("role") == "tool":
        name = safe_markdown(str(msg.get("name") or tr(lang, "tool_the")))
        return {
            "role": "assistant",
            "content": _fenced(str(msg.get("content") or "")),
            "metadata": {"title": tr(lang, "tool_result", name=name), "status": "done"},
        }
    call_id, name, arguments = _call(msg)
    parts = [display_markdown(msg["content"])] if msg.get("content") else []
    parts.append(f"{tr(lang, 'tool_action', name=name)}\n{_fenced(arguments, 'json')}")
    done = _answered(messages, at, call_id)
    if not done:
        parts.append(tr(lang, "tool_waiting", name=name))
    return {
        "role": "assistant",
        "content": "\n\n".join(parts),
        "metadata": {"title": tr(lang, "tool_used", name=safe_markdown(name)), "status": "done" if done else "pending"},
    }


def tool_markdown(msg: dict) -> list[str]:
    """Export lines (Markdown) of a tool-step message."""
    if msg.get("role") == "tool":
        return [f"**Result of {msg.get('name') or 'the tool'}**", "", _fenced(str(msg.get("content") or "")), ""]
    _, name, arguments = _call(msg)
    lines = ["**Assistant (tool call)**", ""]
    if msg.get("content"):
        lines += [msg["content"], ""]
    return lines + [f"Action: `{name}`", "", _fenced(arguments, "json"), ""]


def imported_tool_fields(msg: dict, where: str) -> dict:
    """The tool-step fields of an imported message, checked (``tool_calls`` of an assistant message;
    ``tool_call_id`` and ``name`` of a tool result); raises ValueError saying what is wrong."""

    def text(value, field: str, limit: int) -> str:
        if not isinstance(value, str) or len(value) > limit or lone_surrogate(value) is not None:
            raise ValueError(f"{where}.{field} must be text of at most {limit:,} characters")
        return value

    if msg.get("role") == "tool":
        out = {"name": text(msg.get("name") or "tool", "name", 200)}
        if msg.get("tool_call_id") is not None:
            out["tool_call_id"] = text(msg["tool_call_id"], "tool_call_id", 200)
        return out
    calls = msg.get("tool_calls")
    if calls is None:
        return {}
    if not isinstance(calls, list) or not 1 <= len(calls) <= 8:
        raise ValueError(f"{where}.tool_calls must be a list of 1 to 8 calls")
    checked = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.tool_calls[{k}].function must be an object with a name and arguments")
        args = fn.get("arguments", "")
        if not isinstance(args, str):  # an object, as some exporters write it
            args = json.dumps(args, ensure_ascii=False)
        checked.append(
            {
                "id": text(call.get("id") or f"call_{uuid.uuid4().hex[:24]}", f"tool_calls[{k}].id", 200),
                "type": "function",
                "function": {
                    "name": text(fn.get("name"), f"tool_calls[{k}].function.name", 200),
                    "arguments": text(args, f"tool_calls[{k}].function.arguments", 100_000),
                },
            }
        )
    return {"tool_calls": checked}
