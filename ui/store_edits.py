"""The browser's store and the edits made to it, as plain functions over plain data (no model).

The browser keeps a *store*: ``{"version": 1, "active": id, "conversations": [conv, ...]}``
(see :mod:`ui.conversations`). Every edit takes the store and returns the new one, so the same
code serves the Gradio handlers, the tests and server-side storage. :class:`StoreEdits` is a
mixin of :class:`ui.service.ChatService`, which adds the replies.
"""

from __future__ import annotations

import time

from qwen_core.text import is_blank, lone_surrogate

from . import versions
from .conversations import ConversationError, ensure_ids, forget, message, new_conversation, title_from
from .merge import MAX_DELETED_CHATS  # ids of deleted chats kept (a merge must not bring them back)
from .owner import BROWSER_ID_KEY, new_browser_id
from .personas import DEFAULT_PERSONA_ID, PersonaStore
from .tool_loop import pending_call


class ChatInputError(ValueError):
    """The user's action can't be done as asked; the message says what to do instead."""


def empty_store(browser_id: str | None = None) -> dict:
    """A store with one empty conversation (and this browser's id; see :mod:`ui.owner`)."""
    conv = new_conversation(DEFAULT_PERSONA_ID)
    return {"version": 1, "active": conv["id"], "conversations": [conv], BROWSER_ID_KEY: browser_id or new_browser_id()}


class StoreEdits:
    """Edits of the store; needs the host's ``limits`` and ``personas``."""

    # --- store -------------------------------------------------------------
    def ensure_store(self, store: dict | None) -> dict:
        """A valid store from whatever the browser sent (nothing, an old or a damaged value)."""
        browser_id = store.get(BROWSER_ID_KEY) if isinstance(store, dict) else None
        if not isinstance(browser_id, str) or not 16 <= len(browser_id) <= 64:
            browser_id = None  # a damaged or missing id: this browser gets a fresh one
        if not isinstance(store, dict) or not isinstance(store.get("conversations"), list):
            return empty_store(browser_id)
        convs = [c for c in store["conversations"] if isinstance(c, dict) and isinstance(c.get("messages"), list)]
        if not convs:
            return empty_store(browser_id)
        for conv in convs:
            ensure_ids(conv)
        active = store.get("active")
        if active not in {c.get("id") for c in convs}:
            active = convs[0]["id"]
        out = {"version": 1, "active": active, "conversations": convs, BROWSER_ID_KEY: browser_id or new_browser_id()}
        if isinstance(store.get("rev"), str):  # the revision it came as (ui.store_ref keeps its parent)
            out["rev"] = store["rev"][:64]
        deleted = store.get("deleted")
        if isinstance(deleted, list):
            out["deleted"] = [d for d in deleted if isinstance(d, str)][-MAX_DELETED_CHATS:]
        return out

    @staticmethod
    def active(store: dict) -> dict:
        """The conversation on screen."""
        return next(c for c in store["conversations"] if c["id"] == store["active"])

    @staticmethod
    def _touch(conv: dict) -> None:
        conv["updated"] = time.time()

    # --- chat ----------------------------------------------------------------
    def add_user_message(self, store: dict, text: str) -> dict:
        """Append the user's message (checked); the reply is streamed by :meth:`stream_reply`."""
        if not isinstance(text, str) or is_blank(text):
            raise ChatInputError("The message is empty: type something first.")
        self._check_chars(text)
        if len(text) > self.limits.max_message_chars:
            raise ChatInputError(
                f"The message has {len(text):,} characters; the limit is {self.limits.max_message_chars:,}. "
                "Split it, or attach less text."
            )
        conv = self.active(store)
        if len(conv["messages"]) >= self.limits.max_messages:
            raise ChatInputError("This conversation is too long to continue; start a new chat.")
        if not any(m["role"] == "user" for m in conv["messages"]):
            conv["title"] = title_from(text)
        call = pending_call(conv["messages"])
        if call is not None:  # a call of the user's own tool waits: this message is its result (ui.tool_loop)
            conv["messages"].append(message("tool", text, tool_call_id=call.get("id"), name=call["function"]["name"]))
        else:
            conv["messages"].append(message("user", text))
        self._touch(conv)
        return store

    @staticmethod
    def _check_chars(text: str) -> None:
        at = lone_surrogate(text)
        if at is not None:
            raise ChatInputError(
                f"The message holds an invalid character (an unpaired surrogate at position {at}); "
                "retype or paste it again as plain text."
            )

    def regenerate(self, store: dict) -> dict:
        """Remove the last reply so :meth:`stream_reply` writes a new one."""
        conv = self.active(store)
        msgs = conv["messages"]
        found = versions.last_reply(msgs)
        if found is not None and (user := versions.user_before(msgs, found[0])) is not None:
            versions.stash(conv, found[1], user["content"], user["id"])  # the new reply gets it as a version
        while msgs and msgs[-1]["role"] in ("assistant", "event", "tool"):
            forget(conv, [msgs.pop()])
        if not msgs:
            raise ChatInputError("Nothing to regenerate yet: send a message first.")
        self._touch(conv)
        return store

    def undo(self, store: dict) -> tuple[dict, str]:
        """Remove the last exchange; returns the user's text so it can go back into the input."""
        conv = self.active(store)
        msgs = conv["messages"]
        removed = []
        while msgs and msgs[-1]["role"] in ("assistant", "event", "tool"):
            removed.append(msgs.pop())
        if not msgs:
            forget(conv, removed)
            raise ChatInputError("Nothing to undo.")
        removed.append(msgs.pop())
        text = removed[-1]["content"]
        while msgs and msgs[-1]["role"] == "event":
            removed.append(msgs.pop())
        forget(conv, removed)
        self._touch(conv)
        return store, text

    def edit(self, store: dict, index: int, text: str) -> dict:
        """Replace user message ``index`` and drop everything after it (the reply is regenerated)."""
        conv = self.active(store)
        msgs = conv["messages"]
        if not 0 <= index < len(msgs) or msgs[index]["role"] != "user":
            raise ChatInputError("Only your own messages can be edited.")
        if not isinstance(text, str) or is_blank(text):
            raise ChatInputError("An edited message cannot be empty; use Undo to remove it.")
        self._check_chars(text)
        if len(text) > self.limits.max_message_chars:
            raise ChatInputError(f"The message is longer than {self.limits.max_message_chars:,} characters.")
        found = versions.last_reply(msgs)
        edited = message("user", text)
        if found is not None and versions.user_before(msgs, found[0]) is msgs[index]:
            # the last exchange: its reply stays a version (with the text it answered) of the new one
            versions.stash(conv, found[1], msgs[index]["content"], edited["id"])
        forget(conv, msgs[index:])
        del msgs[index + 1 :]
        msgs[index] = edited
        self._touch(conv)
        return store

    def clear(self, store: dict) -> dict:
        """Empty the conversation on screen."""
        conv = self.active(store)
        forget(conv, conv["messages"])
        conv["messages"] = []
        conv.pop("system_used", None)
        conv["title"] = "New chat"
        self._touch(conv)
        return store

    def set_persona(self, store: dict, persona_id: str, personas: PersonaStore | None = None) -> dict:
        """Record the persona on the conversation; mid-chat it is noted in the transcript."""
        persona = (personas or self.personas).get(persona_id)
        if persona is None:
            raise ChatInputError(f"Persona '{persona_id}' no longer exists.")
        conv = self.active(store)
        if conv.get("persona_id") != persona_id:
            conv["persona_id"] = persona_id
            if any(m["role"] != "event" for m in conv["messages"]):
                conv["messages"].append(message("event", f"Persona: {persona.name} (from the next turn on)"))
                conv["system_used"] = persona.system_prompt
            elif persona.greeting and not conv["messages"]:
                conv["messages"].append(message("assistant", persona.greeting, greeting=True))
            self._touch(conv)
        return store

    # --- conversations --------------------------------------------------------
    def new_conversation(
        self, store: dict, persona_id: str | None = None, personas: PersonaStore | None = None
    ) -> dict:
        """Start a new chat (reusing an empty one on screen), opened by the persona's greeting."""
        conv = self.active(store)
        pid = persona_id or conv.get("persona_id") or DEFAULT_PERSONA_ID
        persona = (personas or self.personas).get(pid)
        greeting = persona.greeting if persona is not None else ""
        if not conv["messages"] or all(m.get("greeting") for m in conv["messages"]):  # nothing said yet
            if conv.get("persona_id") != pid or not conv["messages"]:
                forget(conv, conv["messages"])
                conv["persona_id"] = pid
                conv["messages"] = [message("assistant", greeting, greeting=True)] if greeting else []
            return store
        if len(store["conversations"]) >= self.limits.max_conversations:
            raise ChatInputError(f"You have {self.limits.max_conversations} chats; delete some first.")
        fresh = new_conversation(pid)
        if greeting:  # the greeting opens every new chat, not only the first one
            fresh["messages"].append(message("assistant", greeting, greeting=True))
        store["conversations"].insert(0, fresh)
        store["active"] = fresh["id"]
        return store

    def select(self, store: dict, conv_id: str) -> dict:
        """Show another conversation."""
        if conv_id not in {c["id"] for c in store["conversations"]}:
            raise ChatInputError("That chat no longer exists.")
        store["active"] = conv_id
        return store

    def rename(self, store: dict, title: str) -> dict:
        """Rename the conversation on screen."""
        title = " ".join((title or "").split())[:100]
        if not title:
            raise ChatInputError("A chat name cannot be empty.")
        self.active(store)["title"] = title
        return store

    def delete(self, store: dict) -> dict:
        """Delete the conversation on screen; another (or a new empty one) takes its place."""
        store["deleted"] = (list(store.get("deleted") or []) + [store["active"]])[-MAX_DELETED_CHATS:]
        store["conversations"] = [c for c in store["conversations"] if c["id"] != store["active"]]
        if not store["conversations"]:
            fresh = empty_store(store.get(BROWSER_ID_KEY))
            fresh["deleted"] = store["deleted"]
            return fresh
        store["active"] = store["conversations"][0]["id"]
        return store

    @staticmethod
    def search(store: dict, query: str) -> list[dict]:
        """Conversations whose title or text contains ``query`` (case-insensitive), newest first."""
        q = (query or "").strip().lower()
        convs = sorted(store["conversations"], key=lambda c: c.get("updated", 0), reverse=True)
        if not q:
            return convs
        return [
            c
            for c in convs
            if q in c.get("title", "").lower() or any(q in m.get("content", "").lower() for m in c["messages"])
        ]

    def add_imported(self, store: dict, conv: dict | list[dict]) -> dict:
        """Add imported conversations (one, or an archive's list) and show the first; all or none."""
        convs = conv if isinstance(conv, list) else [conv]
        if len(convs) > self.limits.max_conversations - len(store["conversations"]):
            if len(convs) == 1:
                raise ConversationError(f"You have {self.limits.max_conversations} chats; delete some first.")
            raise ConversationError(
                f"The file holds {len(convs)} chats and there is room for "
                f"{max(0, self.limits.max_conversations - len(store['conversations']))} more "
                f"(at most {self.limits.max_conversations}): delete some first. Nothing was imported."
            )
        store["conversations"][0:0] = convs
        store["active"] = convs[0]["id"]
        return store
