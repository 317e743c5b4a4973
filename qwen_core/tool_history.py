"""OpenAI chat messages as the turns of Qwen's ``openai_api.py`` ``parse_messages`` (L234-279).

Every tool call becomes its own assistant message followed by its result (results matched to calls by
``tool_call_id``), then calls, observations and answers are written out in the ReAct form. Used by
:mod:`qwen_core.tools`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .messages import Message
from .prompt import DEFAULT_SYSTEM

Flat = list[tuple[str, str, tuple[str, str] | None]]  # (role, content, (name, arguments) or None)


def strip(text: str) -> str:
    """The original strips every piece of content this way (leading newlines, trailing whitespace)."""
    return text.lstrip("\n").rstrip()


def as_text(value: Any, where: str) -> str:
    """A message's content as text (None is empty; a list of text parts is joined); ValueError otherwise."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # text parts, in case the caller did not flatten them
        parts = [p.get("text", "") if isinstance(p, dict) else p for p in value]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise ValueError(f"{where} must be text")


def _calls(msg: dict, i: int) -> list[tuple[str | None, str, str]]:
    """An assistant message's calls as (id, name, arguments text)."""
    calls = []
    raw = msg.get("tool_calls") or []
    if not isinstance(raw, list):
        raise ValueError(f"messages[{i}].tool_calls must be a list")
    if msg.get("function_call"):
        raw = [*raw, {"function": msg["function_call"]}]
    for k, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"messages[{i}].tool_calls[{k}].function must have a name")
        args = fn.get("arguments", "")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        calls.append((call.get("id"), fn["name"], args))
    return calls


def _match_tool_results(msgs: list) -> list:
    """Each run of tool results reordered to follow the order of the calls they answer (by tool_call_id)."""
    msgs = list(msgs)
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)):
            continue
        j = i + 1
        while j < len(msgs) and isinstance(msgs[j], dict) and msgs[j].get("role") == "tool":
            j += 1
        order = {c.get("id"): k for k, c in enumerate(m["tool_calls"]) if isinstance(c, dict) and c.get("id")}
        msgs[i + 1 : j] = sorted(msgs[i + 1 : j], key=lambda r: order.get(r.get("tool_call_id"), len(order)))
    return msgs


def flatten(messages: Sequence[dict | Message]) -> tuple[str, Flat]:
    """The system text, and the messages as the original's list of (role, content, function_call): a
    message with several tool calls becomes one assistant message per call, each followed by its result.

    ``messages``: OpenAI-style dicts or :class:`~qwen_core.messages.Message` s (read through their
    OpenAI form, so both are checked alike)."""
    msgs = [m.to_openai() if isinstance(m, Message) else m for m in messages]
    system_parts: list[str] = []
    while msgs and isinstance(msgs[0], dict) and msgs[0].get("role") in ("system", "developer"):
        system_parts.append(strip(as_text(msgs.pop(0).get("content"), f"messages[{len(system_parts)}].content")))
    offset = len(system_parts)
    out: Flat = []
    remaining: list[tuple[str | None, str, str]] = []  # calls of the last assistant message not written yet

    def flush() -> None:
        out.extend(("assistant", "", (name, args)) for _, name, args in remaining)
        remaining.clear()

    for n, msg in enumerate(_match_tool_results(msgs)):
        i = n + offset
        if not isinstance(msg, dict):
            raise ValueError(f"messages[{i}] must be an object with a role")
        role = msg.get("role")
        content = as_text(msg.get("content"), f"messages[{i}].content")
        if role == "tool":
            out.append(("function", content, None))
            if remaining:  # the next call of a parallel batch comes after this result
                _, name, args = remaining.pop(0)
                out.append(("assistant", "", (name, args)))
            continue
        flush()
        if role == "assistant":
            calls = _calls(msg, i)
            first = (calls[0][1], calls[0][2]) if calls else None
            remaining.extend(calls[1:])
            out.append(("assistant", content, first))
        elif role == "function":
            out.append(("function", content, None))
        elif role == "user":
            out.append(("user", content, None))
        elif role in ("system", "developer"):
            raise ValueError(f"messages[{i}].role: a system message may only come first")
        else:
            raise ValueError(f"messages[{i}].role must be system, developer, user, assistant, tool or function")
    flush()
    return ("\n\n".join(system_parts) if system_parts else DEFAULT_SYSTEM), out


def turns(flat: Flat, tools_on: bool) -> list[list[str]]:
    """openai_api.py L234-279: [role, content] turns with calls, observations and answers written out."""
    turns: list[list[str]] = []
    for m_idx, (role, raw, call) in enumerate(flat):
        content = strip(raw)
        if role == "function":
            if not turns or turns[-1][0] != "assistant":
                raise ValueError(f"messages: a tool result (message {m_idx}) must follow the assistant call it answers")
            turns[-1][1] += f"\nObservation: {content}"
            if m_idx == len(flat) - 1:
                turns[-1][1] += "\nThought:"  # L248-250: the model continues this turn
        elif role == "assistant":
            if not turns:
                raise ValueError("messages: an assistant message must come after a user message")
            if call is None:
                if tools_on:
                    content = f"Thought: I now know the final answer.\nFinal Answer: {content}"
            else:
                if not content.startswith("Thought:"):
                    content = f"Thought: {content}"
                content = f"{content}\nAction: {call[0]}\nAction Input: {call[1]}"
            if turns[-1][0] == "user":
                turns.append(["assistant", strip(content)])
            else:
                turns[-1][1] += "\n" + content
        elif turns and turns[-1][0] == "user":  # two user turns in a row (the original refuses them)
            turns[-1][1] += "\n\n" + content
        else:
            turns.append(["user", content])
    if not any(role == "user" for role, _ in turns):
        raise ValueError("messages: expecting at least one user message")
    return turns
