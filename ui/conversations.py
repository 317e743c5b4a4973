"""Conversations as plain data: one message format end to end.

A conversation is a JSON-able dict::

    {"id", "title", "created", "updated", "persona_id",
     "messages": [{"id", "role": "user"|"assistant"|"event", "content": str, ...}],
     "deleted": [message id, ...]}

Every message has an id (new ones a random one; messages of older stores get one derived
from where they are, so two copies of an old store agree): with ``--server-history`` two
tabs of one user are merged message by message (see :mod:`ui.merge`), and ``deleted``
keeps the ids of removed messages so a merge does not bring them back.

``event`` messages (a persona switch) are shown in the transcript but never sent to
the model. Rendering (Markdown, LaTeX) happens in the Chatbot only; the text kept
here and sent to the model is exactly what the user typed or the model said.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from qwen_core.messages import from_store, history_pairs
from qwen_core.text import lone_surrogate

from .render import display_markdown, safe_markdown
from .tool_view import imported_tool_fields, is_tool_step, tool_item, tool_markdown

MAX_IMPORT_BYTES = 20 * 1024 * 1024
MAX_MESSAGES = 10_000
MAX_CONVERSATIONS = 500
MAX_TOMBSTONES = 2000  # deleted message ids kept per conversation (oldest forgotten first)


class ConversationError(ValueError):
    """An import or edit that cannot be applied; says why."""


def new_conversation(persona_id: str, title: str = "New chat") -> dict:
    """An empty conversation."""
    now = time.time()
    return {
        "id": uuid.uuid4().hex[:12],
        "title": title,
        "created": now,
        "updated": now,
        "persona_id": persona_id,
        "messages": [],
    }


def message_id() -> str:
    """A fresh message id."""
    return uuid.uuid4().hex[:12]


def message(role: str, content: str, **extra) -> dict:
    """A new message with its id."""
    return {"id": message_id(), "role": role, "content": content, **extra}


def ensure_ids(conv: dict) -> dict:
    """Give messages of an older store an id (derived, so every copy of that store gets the same ones)."""
    for i, msg in enumerate(conv.get("messages") or []):
        if isinstance(msg, dict) and not isinstance(msg.get("id"), str):
            seed = f"{conv.get('id')}|{i}|{msg.get('role')}|{msg.get('content')}"
            msg["id"] = "m" + hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:11]
    return conv


def forget(conv: dict, removed: list[dict]) -> None:
    """Record removed messages' ids so a merge with another tab's copy does not bring them back."""
    ids = [m["id"] for m in removed if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if ids:
        conv["deleted"] = (list(conv.get("deleted") or []) + ids)[-MAX_TOMBSTONES:]


def title_from(text: str) -> str:
    """A sidebar title from the first user message."""
    line = " ".join(text.split())
    return (line[:40] + "…") if len(line) > 40 else (line or "New chat")


def to_model_history(messages: list[dict]) -> list[tuple[str, str]]:
    """(user, assistant) pairs for the prompt builder; events, tool steps and an unanswered last user
    turn left out (the one conversion is :func:`qwen_core.messages.from_store`)."""
    return history_pairs(from_store(messages))


def turn_spans(messages: list[dict]) -> list[list[int]]:
    """Message indices belonging to each model turn, aligned with :func:`to_model_history`."""
    spans: list[list[int]] = []
    pending: list[int] = []
    for i, msg in enumerate(messages):
        if msg.get("role") == "user":
            pending.append(i)
        elif is_tool_step(msg) and pending:
            pending.append(i)
        elif msg.get("role") == "assistant" and pending:
            spans.append([*pending, i])
            pending = []
    return spans


def to_chatbot(messages: list[dict]) -> list[dict]:
    """Gradio Chatbot (messages format) value, one item per message; persona events as notes.

    The text is vetted for rendering (:func:`ui.render.safe_markdown`); the messages keep theirs.
    """
    out = []
    for i, msg in enumerate(messages):
        if is_tool_step(msg):
            out.append(tool_item(messages, i))
        elif msg["role"] == "event":
            title = "🎭 " + safe_markdown(msg["content"])
            out.append({"role": "assistant", "content": "", "metadata": {"title": title}})
        else:
            out.append({"role": msg["role"], "content": display_markdown(msg["content"])})
    return out


def last_user_index(messages: list[dict]) -> int | None:
    """Index of the newest user message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return i
    return None


def to_markdown(conv: dict, persona_name: str = "") -> str:
    """A readable export: title, persona, then each message."""
    lines = [f"# {conv.get('title') or 'Chat'}", ""]
    if persona_name:
        lines += [f"*Persona: {persona_name}*", ""]
    names = {"user": "**You**", "assistant": "**Assistant**"}
    for msg in conv.get("messages", []):
        if msg["role"] == "event":
            lines += [f"> 🎭 {msg['content']}", ""]
        elif is_tool_step(msg):
            lines += tool_markdown(msg)
        else:
            lines += [names[msg["role"]], "", msg["content"], ""]
    return "\n".join(lines)


def export_json(conv: dict) -> str:
    """The conversation as a JSON document (the import format)."""
    return json.dumps({"format": "qwen-chat-conversation", "version": 1, **conv}, ensure_ascii=False, indent=2)


def load_json(text: str, source: str = "import"):
    """An uploaded file's JSON, within :data:`MAX_IMPORT_BYTES`; errors name ``source`` and the place."""
    if len(text.encode("utf-8", "replace")) > MAX_IMPORT_BYTES:
        raise ConversationError(f"{source}: larger than {MAX_IMPORT_BYTES // 2**20} MB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversationError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def parse_import(text: str, source: str = "import") -> dict:
    """Validate an exported conversation (ours, or a plain ``[{"role", "content"}]`` list) into a new one."""
    return conversation_from(load_json(text, source), source)


def conversation_from(data, source: str = "import", keep_times: bool = False) -> dict:
    """A new conversation from one exported conversation's data (``keep_times``: its own dates, if sane)."""
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ConversationError(f"{source}: expected an object with a 'messages' list")
    if len(data["messages"]) > MAX_MESSAGES:
        raise ConversationError(f"{source}: more than {MAX_MESSAGES} messages")
    messages = []
    for i, msg in enumerate(data["messages"]):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "event", "system", "tool"):
            raise ConversationError(f"{source}: messages[{i}] needs a role of user, assistant, tool or event")
        if msg.get("content") is None and msg.get("tool_calls"):  # OpenAI's form of a call without a thought
            msg = {**msg, "content": ""}
        if not isinstance(msg.get("content"), str):
            raise ConversationError(f"{source}: messages[{i}].content must be text")
        if lone_surrogate(msg["content"]) is not None:
            raise ConversationError(f"{source}: messages[{i}].content holds an unpaired surrogate (not valid text)")
        role = "event" if msg["role"] == "system" else msg["role"]
        try:  # tool steps keep their data: the call (name, arguments) and which call a result answers
            extra = imported_tool_fields(msg, f"messages[{i}]") if role in ("assistant", "tool") else {}
        except ValueError as exc:
            raise ConversationError(f"{source}: {exc}") from None
        messages.append(message(role, msg["content"], **extra))
    persona_id = data.get("persona_id")
    ok_id = isinstance(persona_id, str) and 0 < len(persona_id) <= 100 and lone_surrogate(persona_id) is None
    conv = new_conversation(persona_id if ok_id else "default-assistant")
    title = data.get("title")
    if isinstance(title, str) and lone_surrogate(title) is not None:
        title = None
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    conv["title"] = str(title)[:100] if isinstance(title, str) and title.strip() else title_from(first_user)
    conv["messages"] = messages
    if keep_times:  # an archive keeps when each chat was made and last used (the chat list's dates)
        for key in ("created", "updated"):
            when = data.get(key)
            if isinstance(when, (int, float)) and not isinstance(when, bool) and 0 < when <= conv[key] + 86_400:
                conv[key] = float(when)
    return conv
