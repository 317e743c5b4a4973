"""All chats in one file: the store's conversations exported together and imported back (issue 15 item 7).

An archive is ``{"format": "qwen-chat-archive", "version": 1, "exported": <unix time>, "conversations":
[<conversation as Export chat writes it>, ...]}``. It is written compactly so that any store the page
can hold (its events take a 20 MiB store, ``server.middleware.PAGE_MAX_BYTES``) exports to a file the
import takes back (:data:`ui.conversations.MAX_IMPORT_BYTES`, 20 MiB). Import checks every chat before
adding any: a bad one names its place (``conversations[3]: messages[2]``) and nothing is added.
"""

from __future__ import annotations

import json
import time

from .conversations import MAX_CONVERSATIONS, ConversationError, conversation_from, load_json

ARCHIVE_FORMAT = "qwen-chat-archive"


def export_archive(store: dict) -> str:
    """Every conversation of ``store`` (in the chat list's order, newest first) as one JSON document."""
    convs = sorted(store["conversations"], key=lambda c: c.get("updated", 0), reverse=True)
    doc = {"format": ARCHIVE_FORMAT, "version": 1, "exported": round(time.time(), 3), "conversations": convs}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def is_archive(data) -> bool:
    """Whether parsed JSON is an archive (ours, or any object with a ``conversations`` list)."""
    return isinstance(data, dict) and (data.get("format") == ARCHIVE_FORMAT or "conversations" in data)


def parse_chats(text: str, source: str = "import") -> list[dict]:
    """New conversations from an uploaded file: an archive (all of its chats), one exported chat, or a
    plain ``[{"role", "content"}]`` list. Raises :class:`ConversationError` naming what is wrong."""
    data = load_json(text, source)
    if not is_archive(data):
        return [conversation_from(data, source)]
    convs = data.get("conversations")
    if not isinstance(convs, list):
        raise ConversationError(f"{source}: 'conversations' must be a list of chats")
    if not convs:
        raise ConversationError(f"{source}: the archive holds no chats")
    if len(convs) > MAX_CONVERSATIONS:
        raise ConversationError(f"{source}: {len(convs)} chats; at most {MAX_CONVERSATIONS} can be kept")
    return [conversation_from(c, f"{source}: conversations[{i}]", keep_times=True) for i, c in enumerate(convs)]
