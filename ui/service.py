"""What the chat UI does, as plain functions over plain data (no Gradio, no torch).

The browser keeps a *store*: ``{"version": 1, "active": id, "conversations": [conv, ...]}``
(see :mod:`ui.conversations`). Every action takes the store and returns the new one,
so the same functions serve the Gradio handlers, the tests and server-side storage.
This module holds the replies (sessions, streaming, the context meter's counts); the edits of
the store (messages, chats, personas) are :class:`ui.store_edits.StoreEdits`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from qwen_core.errors import QwenCoreError
from qwen_core.manager import ModelManager
from qwen_core.messages import from_store
from qwen_core.scheduler import Busy, Scheduler
from qwen_core.text import coalesced

from . import versions
from .conversations import (
    MAX_CONVERSATIONS,
    MAX_MESSAGES,
    message,
    to_model_history,
    turn_spans,
)
from .personas import PersonaStore
from .store_edits import ChatInputError, StoreEdits, empty_store
from .tool_loop import StepCancels, ToolSet, run_tool_reply

# The page shows Stop before the first token only when that token is slower than this (a long
# prompt prefilling): below it, the extra update would only delay the token on the page, and a
# fifth of a second without a Stop button is not something a user can act on.
EARLY_UPDATE_AFTER_S = 0.2


@dataclass(frozen=True)
class Limits:
    """Bounds on what one user can send (checked before anything reaches the model)."""

    max_message_chars: int = 64_000
    max_messages: int = MAX_MESSAGES
    max_conversations: int = MAX_CONVERSATIONS
    updates_per_second: float = 25.0  # stream updates sent to a page (0: one per token)


@dataclass
class ReplyStats:
    """Figures of the reply being streamed, for the model panel."""

    tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    seed: int | None = None
    waiting: bool = False  # the reply was accepted and its prompt is prefilling: no token yet


@dataclass
class ContextReport:
    """What the next prompt will hold, decided by the core's prompt builder."""

    system_tokens: int
    history_tokens: int
    draft_tokens: int
    total_tokens: int
    window: int
    context_length: int
    n_turns: int
    dropped_turns: list[int]  # turn numbers (0 = oldest) the next prompt leaves out
    dropped_messages: list[int]  # message indices of those turns
    raw_prompt: str


@dataclass
class _Session:
    cancel: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)  # set while no reply is generating
    api_cancels: set = field(default_factory=set)  # cancel events of this session's scripted (/chat) replies
    store: dict | None = None  # the store as the running (or last) reply left it
    trash: dict | None = None  # the chat last deleted or cleared, for Restore (ui.reply_controls)
    # The store this session's page last showed (load, every change, the meter after it), with the
    # login it was seen under: typing events send only the draft and the meter counts against this.
    view: dict | None = None
    view_login: str | None = None
    exported_rev: str | None = None  # the store revision the page's download buttons were written from

    def __post_init__(self) -> None:
        self.idle.set()


class ChatService(StoreEdits):
    """The UI's operations; one instance serves every browser session."""

    def __init__(
        self,
        manager: ModelManager,
        personas: PersonaStore,
        limits: Limits | None = None,
        scheduler: Scheduler | None = None,
    ):
        self.manager = manager
        self.personas = personas
        self.limits = limits or Limits()
        self.scheduler = scheduler or Scheduler()
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    # --- chat ----------------------------------------------------------------
    def session(self, session_id: str) -> _Session:
        """Per-browser-session state that must not live in the browser (the cancel event)."""
        with self._lock:
            return self._sessions.setdefault(session_id, _Session())

    def cancel(self, session_id: str) -> None:
        """Stop the reply being generated for this session (within one token)."""
        self.session(session_id).cancel.set()

    def forget_session(self, session_id: str) -> None:
        """Drop a closed browser session's server-side state and stop its replies (within one token)."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session:
            session.cancel.set()
            for event in list(session.api_cancels):
                event.set()

    def is_busy(self, session_id: str) -> bool:
        """Whether a reply is being generated for this session."""
        return not self.session(session_id).idle.is_set()

    def wait_idle(self, session_id: str, timeout: float = 30.0) -> dict | None:
        """Wait for this session's reply to end; returns the store it left (with the partial reply)."""
        session = self.session(session_id)
        session.idle.wait(timeout)
        return session.store

    def _engine(self):
        engine = self.manager.engine
        if engine is None:
            raise ChatInputError("The model is being switched; try again in a moment.")
        return engine

    def stream_reply(
        self,
        store: dict,
        system: str,
        settings: dict,
        session_id: str,
        system_in_first_turn: bool = False,
        examples: list[tuple[str, str]] | None = None,
        user: str | None = None,
        personas: PersonaStore | None = None,
        tools: ToolSet | None = None,
        reply_prefix: str = "",
        continue_last: bool = False,
    ) -> Iterator[tuple[dict, ReplyStats]]:
        """Generate the reply to the last user message, yielding the growing store.

        ``reply_prefix`` ("Start reply with…"): the reply starts with this text and the model goes on
        from it. ``continue_last`` (Continue): the last reply is extended instead, its text being the
        prefix. Either way the prompt is the model's own ChatML with the text after the assistant
        header (``qwen_core``'s ``reply_prefix``), and the message holds prefix + continuation.

        ``user`` is what rate limits and fair turns count by (the login, or the client's
        address; never the session, which a client can renew at will); ``personas`` is the
        caller's persona view (to name a persona switch). The partial reply stays in the
        conversation if generation is stopped; closing this generator (Gradio does when Stop
        cancels the event) stops the worker. With ``tools`` enabled (or a tool result to answer), the
        reply runs Qwen's ReAct loop (:mod:`ui.tool_loop`), its steps kept in the conversation.
        """
        conv = self.active(store)
        msgs = conv["messages"]
        target = None  # the reply Continue extends
        mark = conv.pop(versions.CONTINUE_KEY, None)  # Continue pressed (ui.reply_controls): for this reply only
        if mark is not None and (found := versions.last_reply(msgs)) is not None and found[1].get("id") == mark:
            continue_last = True
        if continue_last:
            found = versions.last_reply(msgs)
            if found is None or not found[1]["content"].strip() or versions.user_before(msgs, found[0]) is None:
                raise ChatInputError("There is no reply to continue yet: send a message first.")
            target, tools = found[1], None  # a plain reply goes on as plain text
            reply_prefix = target["content"]
            asked = msgs[: found[0]]  # what the reply answers (events after it are only notes)
        elif not msgs or msgs[-1]["role"] not in ("user", "tool"):
            raise ChatInputError("There is no message waiting for a reply.")
        else:
            asked = list(msgs)
        if not isinstance(reply_prefix, str):
            raise ChatInputError("The start of the reply must be text.")
        self._check_chars(reply_prefix)
        engine = self._engine()
        query_at = len(asked) - 1
        while query_at > 0 and asked[query_at - 1]["role"] == "user":  # several unanswered messages
            query_at -= 1
        # One conversion from the store to the model's messages (qwen_core.messages.from_store): a
        # persona's example dialogue leads the history, as character cards do; being the oldest
        # turns, it is the first thing the window drops. Unanswered user messages are joined.
        chat = from_store(asked, examples, system)
        if target is None:
            self._note_system_change(conv, system, query_at, personas)
        session = self.session(session_id)
        if not session.idle.is_set():
            raise ChatInputError("A reply is still being generated; wait for it or press Stop.")
        cancel = threading.Event()
        session.cancel = cancel
        gen = {k: v for k, v in (settings or {}).items() if v is not None}
        session.store = store
        session.idle.clear()  # busy from here, also while queued for a slot
        yield from self._take_slot(user or session_id, cancel, session, store)
        if target is None and (msgs[-1]["role"] == "tool" or (tools is not None and tools.active)):
            yield from self._tool_reply(
                engine, store, system, gen, list(examples or []), tools or ToolSet(), session, cancel
            )
            return
        try:
            if reply_prefix:  # only when given: a backend without it keeps its signature
                gen["reply_prefix"] = reply_prefix
            stream = engine.stream_messages(chat, cancel=cancel, system_in_first_turn=system_in_first_turn, **gen)
        except BaseException:
            self.scheduler.release()
            session.idle.set()
            raise
        if target is None:
            reply = message("assistant", reply_prefix)
            conv["messages"].append(reply)
        else:
            reply = target
        answered = versions.user_before(conv["messages"], conv["messages"].index(reply))
        stats = ReplyStats(prompt_tokens=stream.result.prompt_tokens, seed=stream.result.seed)
        started = time.perf_counter()
        try:
            # Once before the first token, if it is slow to come: the prompt may take long to
            # prefill (seconds on a CPU, minutes for a long chat without the cache), and the page
            # shows Stop from then on. A first token that comes within EARLY_UPDATE_AFTER_S makes
            # it needless: skipped, its update (the chat sent and rendered once more) does not
            # delay that token on the page.
            first_in = getattr(stream, "wait_started", None)
            if first_in is None or not first_in(EARLY_UPDATE_AFTER_S):
                stats.waiting = True
                yield store, stats
                stats.waiting = False
            for piece in coalesced(stream, self.limits.updates_per_second):
                reply["content"] += piece
                stats.tokens = stream.tokens_so_far
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - started
                yield store, stats
        finally:
            stream.close()
            if target is None and not reply["content"] and stream.result.finish_reason == "cancelled":
                conv["messages"].remove(reply)  # stopped before its first token: nothing to keep
                stats.finish_reason = "cancelled"
            else:
                self._settle(conv, reply, stream.result, stats, extended=target is not None, answered=answered)
            self._touch(conv)
            session.idle.set()
            self.scheduler.release()
        yield store, stats

    def _take_slot(self, user: str, cancel: threading.Event, session: _Session, store: dict) -> Iterator:
        """A generation slot for ``session``'s reply; yields once, before waiting, if it has to queue
        (the page shows Stop while it waits). A refusal becomes :class:`ChatInputError`; on any
        failure, a close (Stop) while queued included, the session is idle again."""
        try:
            ticket = self.scheduler.enter(user)
            if ticket is not None:
                try:
                    yield store, ReplyStats(waiting=True)
                except BaseException:  # closed while queued: out of the queue (or the slot back)
                    self.scheduler.abandon(ticket)
                    raise
                self.scheduler.wait(ticket, cancel)
        except Busy as exc:
            session.idle.set()
            raise ChatInputError(str(exc)) from None
        except BaseException:
            session.idle.set()
            raise

    @staticmethod
    def _settle(conv: dict, reply: dict, res, stats: ReplyStats, extended: bool, answered: dict | None) -> None:
        """The ended reply's final text, figures and version (``res``: the stream's result)."""
        stats.finish_reason = res.finish_reason
        stats.tokens = res.completion_tokens
        stats.ttft_s = res.time_to_first_token_s
        stats.tokens_per_s = res.tokens_per_s
        reply["content"] = reply["content"].strip()
        if res.finish_reason == "cancelled":
            reply["stopped"] = True
        else:
            reply.pop("stopped", None)
        # this reply's figures, shown under it (a Continue adds its tokens to the reply's)
        before = (reply.get("info") or {}).get("tokens", 0) if extended else 0
        reply["info"] = {
            "tokens": before + res.completion_tokens,
            "ttft_s": res.time_to_first_token_s,
            "tokens_per_s": res.tokens_per_s,
            "finish": res.finish_reason,
        }
        versions.attach(conv, reply, answered)

    def _tool_reply(
        self, engine, store, system, gen, examples, tools, session, cancel
    ) -> Iterator[tuple[dict, ReplyStats]]:
        """The reply as a ReAct loop (the slot is held; released here)."""
        conv, stats = self.active(store), ReplyStats()
        try:
            steps = run_tool_reply(
                engine, conv["messages"], system, tools, gen, StepCancels(session, cancel), stats, examples,
                self.limits.updates_per_second,
            )  # fmt: skip
            for _ in steps:
                yield store, stats
        finally:
            self._touch(conv)
            session.idle.set()
            self.scheduler.release()
        yield store, stats

    def _note_system_change(self, conv: dict, system: str, before: int, personas: PersonaStore | None = None) -> None:
        """Show in the transcript when the system prompt differs from the one the last reply used."""
        last = conv.get("system_used")
        if last is not None and last != system and conv["messages"][:before]:
            name = next((p.name for p in (personas or self.personas).all() if p.system_prompt == system), None)
            text = f"Persona: {name}" if name else "System prompt changed"
            conv["messages"].insert(before, message("event", f"{text} (from this turn on)"))
        conv["system_used"] = system

    # --- context meter --------------------------------------------------------
    def context(
        self,
        store: dict,
        system: str,
        draft: str,
        window: int | None,
        system_in_first_turn=False,
        examples: list[tuple[str, str]] | None = None,
    ):
        """Token counts of the next prompt and which turns it drops, from the core's builder."""
        engine = self._engine()
        conv = self.active(store)
        msgs = conv["messages"]
        examples = list(examples or [])
        history = examples + to_model_history(msgs)
        msg_spans = turn_spans(msgs)
        spans = [[] for _ in examples] + msg_spans  # example turns have no rows in the chat
        after = msg_spans[-1][-1] + 1 if msg_spans else 0
        pending = [m["content"] for m in msgs[after:] if m["role"] == "user"]
        query = "\n\n".join([*pending, draft] if draft else pending)
        plan = engine.plan_prompt(query, history, system, window, system_in_first_turn)
        dropped_msgs = [i for t in plan.dropped_turns for i in spans[t]]
        return ContextReport(
            system_tokens=plan.system_tokens,
            history_tokens=plan.history_tokens,
            draft_tokens=plan.query_tokens,
            total_tokens=plan.n_tokens,
            window=window or engine.defaults.max_window_size,
            context_length=engine.info.context_length,
            n_turns=plan.n_turns,
            dropped_turns=plan.dropped_turns,
            dropped_messages=dropped_msgs,
            raw_prompt=plan.text,
        )


__all__ = [
    "ChatInputError",
    "ChatService",
    "ContextReport",
    "Limits",
    "QwenCoreError",
    "ReplyStats",
    "empty_store",
]
