"""One chat-message type from the UI to the prompt builder, and the one place messages are converted.

A chat is a sequence of :class:`Message` (system?, then user/assistant turns; tool calls and their
results for the ReAct path). Every front end converts its own shape here, and nowhere else:

* :func:`from_openai` — OpenAI-style dicts (``/v1``, ``/chat``, :meth:`Backend.stream_messages`);
* :func:`from_pairs` — the legacy ``(query, [(user, assistant), ...], system)`` of ``stream_chat``;
* :func:`from_store` — the UI store's message dicts (``ui.conversations``): persona events are left
  out, and so is an assistant message that answers no user message (a persona's greeting), as the
  model never saw them.

:func:`split` turns a message list into what Qwen's ``make_context`` takes (system, history pairs,
query); :class:`~qwen_core.prompt.PromptBuilder` builds the exact prompt from that. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROLES",
    "Message",
    "ToolCall",
    "as_messages",
    "from_openai",
    "from_pairs",
    "from_store",
    "history_pairs",
    "split",
]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DEFAULT_SYSTEM = "You are a helpful assistant."  # the same text as qwen_core.prompt.DEFAULT_SYSTEM


@dataclass(frozen=True)
class ToolCall:
    """One call an assistant message makes: the function's name and its arguments as JSON text."""

    name: str
    arguments: str = ""
    id: str | None = None

    def to_openai(self) -> dict:
        """OpenAI's ``tool_calls[]`` item."""
        out: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Message:
    """One chat message. ``tool_calls`` (assistant) / ``function_call`` (legacy), ``tool_call_id`` (a
    ``tool`` result) and ``name`` (a ``function`` result, or a participant's name) are only for tools."""

    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    function_call: ToolCall | None = None
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a message's role must be one of {', '.join(ROLES)}, got {self.role!r:.40}")
        if not isinstance(self.content, str):
            raise ValueError("a message's content must be text")

    @property
    def has_tools(self) -> bool:
        """Whether this message is part of a tool exchange (a call or a result)."""
        return self.role in ("tool", "function") or bool(self.tool_calls) or self.function_call is not None

    def to_openai(self) -> dict:
        """The message as an OpenAI-style dict (what :mod:`qwen_core.tool_history` reads)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.function_call is not None:
            out["function_call"] = {"name": self.function_call.name, "arguments": self.function_call.arguments}
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _call(raw: Any, where: str) -> ToolCall:
    fn = raw.get("function", raw) if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"{where}.function must have a name")
    args = fn.get("arguments", "")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    call_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    return ToolCall(fn["name"], args, call_id)


def from_openai(messages: Iterable[dict | Message]) -> list[Message]:
    """OpenAI-style ``{"role", "content", ...}`` dicts (Messages pass through) as Messages.

    ``content`` None is empty text (an assistant message that only calls tools); a list of text parts
    is joined. Raises ValueError naming the message for anything else.
    """
    out: list[Message] = []
    for i, msg in enumerate(messages):
        if isinstance(msg, Message):
            out.append(msg)
            continue
        if not isinstance(msg, dict):
            raise ValueError(f"messages[{i}] must be an object with a role")
        role, content = msg.get("role"), msg.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be text")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        raw_calls = msg.get("tool_calls")
        if raw_calls is not None and not isinstance(raw_calls, list):
            raise ValueError(f"messages[{i}].tool_calls must be a list")
        calls = tuple(_call(c, f"messages[{i}].tool_calls[{k}]") for k, c in enumerate(raw_calls or ())) or None
        legacy = _call(msg["function_call"], f"messages[{i}].function_call") if msg.get("function_call") else None
        name, call_id = msg.get("name"), msg.get("tool_call_id")
        out.append(
            Message(
                role,
                content,
                name=name if isinstance(name, str) else None,
                tool_calls=calls,
                function_call=legacy,
                tool_call_id=call_id if isinstance(call_id, str) else None,
            )
        )
    return out


def as_messages(messages: Iterable[dict | Message]) -> list[Message]:
    """Messages as given, dicts converted (:func:`from_openai`)."""
    return from_openai(messages)


def from_pairs(query: str | None, history: Sequence | None = None, system: str | None = None) -> list[Message]:
    """The legacy ``stream_chat`` arguments as Messages (``query`` None: no trailing user message).

    An assistant part ``None`` (allowed by the original) becomes an unanswered user turn.
    """
    out = [Message("system", system)] if system is not None else []
    for i, turn in enumerate(history or ()):
        if not isinstance(turn, (tuple, list)) or len(turn) != 2:
            raise ValueError(f"history[{i}] must be a (user, assistant) pair, got {turn!r:.80}")
        user, assistant = turn
        if not isinstance(user, str) or not (assistant is None or isinstance(assistant, str)):
            raise ValueError(f"history[{i}] must hold text: (str, str or None)")
        out.append(Message("user", user))
        if assistant is not None:
            out.append(Message("assistant", assistant))
    if query is not None:
        out.append(Message("user", query))
    return out


def from_store(
    messages: Iterable[dict], examples: Sequence[tuple[str, str]] | None = None, system: str | None = None
) -> list[Message]:
    """The UI store's message dicts (``{"role": "user"|"assistant"|"event", "content"}``) as the model
    sees them: ``system`` first, a persona's example dialogue (``examples`` pairs) as the oldest turns,
    then the user and assistant messages; events and an assistant message that answers no user message
    (a greeting) are left out."""
    out = from_pairs(None, examples, system)
    waiting = False  # a user message is waiting for its answer
    for msg in messages:
        role = msg.get("role")
        if role == "user":
            out.append(Message("user", msg["content"]))
            waiting = True
        elif role == "assistant" and waiting and not msg.get("tool_calls"):
            # a tool step's call and result are left out: the turn's reply is its final answer
            out.append(Message("assistant", msg["content"]))
            waiting = False
    return out


def history_pairs(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """The answered turns as (user, assistant) pairs, user messages in a row joined with a blank line;
    a system message and a trailing unanswered user turn are left out."""
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for msg in messages:
        if msg.role == "user":
            pending = msg.content if pending is None else pending + "\n\n" + msg.content
        elif msg.role == "assistant" and pending is not None:
            pairs.append((pending, msg.content))
            pending = None
    return pairs


def split(messages: Sequence[dict | Message]) -> tuple[str, list[tuple[str, str]], str]:
    """Messages → (system, history pairs, query) as ``make_context`` takes them, checking the roles.

    A leading system message is the system prompt (the default one without it); the last message must
    be the user's; user messages in a row are joined with a blank line (as a person reads them); an
    assistant message that answers nothing is paired with an empty user turn.
    """
    msgs = as_messages(messages)
    system = DEFAULT_SYSTEM
    if msgs and msgs[0].role == "system":
        system = msgs.pop(0).content
    if not msgs or msgs[-1].role != "user":
        raise ValueError("the last message must come from the user")
    *past, last = msgs
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for i, msg in enumerate(past):
        if msg.role == "user":
            pending = msg.content if pending is None else pending + "\n\n" + msg.content
        elif msg.role == "assistant" and not msg.has_tools:
            history.append((pending or "", msg.content))
            pending = None
        else:
            raise ValueError(f"messages[{i}].role must be 'user' or 'assistant' (a system message may only come first)")
    query = last.content if pending is None else pending + "\n\n" + last.content
    return system, history, query
