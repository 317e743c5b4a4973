"""Merge two copies of one user's store (two tabs, or a tab and the server's copy) without losing either.

Conversations are united by id, and so are the messages of a conversation in both copies;
ids recorded as deleted (a deleted chat in ``store["deleted"]``, removed messages in
``conv["deleted"]``) stay deleted. The incoming copy's order is kept, and a message only the
other copy has is placed right after the message it followed there.
"""

from __future__ import annotations

import copy

from .conversations import MAX_TOMBSTONES, ensure_ids

MAX_DELETED_CHATS = 2000


def _merge_messages(newer: list[dict], older: list[dict], deleted: set[str]) -> list[dict]:
    out = [m for m in newer if m.get("id") not in deleted]
    at = {m["id"]: i for i, m in enumerate(out)}
    previous = None
    for msg in older:
        mid = msg.get("id")
        if mid in deleted:
            continue
        if mid not in at:
            pos = at[previous] + 1 if previous in at else 0
            out.insert(pos, msg)
            at = {m["id"]: i for i, m in enumerate(out)}
        previous = mid
    return out


def _merge_conv(a: dict, b: dict) -> dict:
    """One conversation from two copies; the more recently updated copy's fields and texts win."""
    newer, older = (a, b) if a.get("updated", 0) >= b.get("updated", 0) else (b, a)
    deleted = list(dict.fromkeys([*(older.get("deleted") or []), *(newer.get("deleted") or [])]))[-MAX_TOMBSTONES:]
    merged = {**older, **newer}
    merged["messages"] = _merge_messages(newer["messages"], older["messages"], set(deleted))
    if deleted:
        merged["deleted"] = deleted
    return merged


def merge_stores(incoming: dict, saved: dict | None) -> dict:
    """``incoming`` (what a tab sends now) merged with ``saved`` (what is on file); neither is changed."""
    incoming = copy.deepcopy(incoming)
    if not isinstance(saved, dict) or not isinstance(saved.get("conversations"), list):
        return incoming
    deleted_chats = list(dict.fromkeys([*(saved.get("deleted") or []), *(incoming.get("deleted") or [])]))
    gone = set(deleted_chats)
    saved_convs = {
        c["id"]: ensure_ids(copy.deepcopy(c))
        for c in saved["conversations"]
        if isinstance(c, dict) and isinstance(c.get("messages"), list) and "id" in c
    }
    out = []
    for conv in incoming.get("conversations") or []:
        if conv.get("id") in gone:
            continue
        other = saved_convs.pop(conv.get("id"), None)
        out.append(_merge_conv(ensure_ids(conv), other) if other else ensure_ids(conv))
    out += [c for cid, c in saved_convs.items() if cid not in gone]
    incoming["conversations"] = out
    if deleted_chats:
        incoming["deleted"] = [d for d in deleted_chats if isinstance(d, str)][-MAX_DELETED_CHATS:]
    if out and incoming.get("active") not in {c["id"] for c in out}:
        incoming["active"] = out[0]["id"]
    return incoming
