"""Gradio event handlers: translate component values to :class:`ui.service.ChatService` calls.

:class:`Handlers` holds who is asking, page load and the chat itself; the chat list, the context
meter, the Model tab and the persona panel are mixins of their own modules."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from .chat_list_handlers import ChatListHandlers
from .conversations import to_chatbot
from .meter_handlers import USER_ERRORS, MeterHandlers, parse_examples
from .model_handlers import ModelHandlers
from .owner import Access, Owner, owner_of
from .persona_handlers import PersonaHandlers
from .personas import DEFAULT_PERSONA_ID, PersonaLibraries, PersonaStore
from .refusal import Refusal, notify_warning
from .server_text import chat_title, current_lang, localize
from .service import ChatInputError, ChatService
from .sessions import SessionSweeper
from .settings_form import SETTING_ORDER, clamp_settings, settings_dict
from .tools_panel import tool_set
from .user_store import UserStore

METER_EVERY_S = 1.0  # how often the meter is refreshed while a reply streams
log = logging.getLogger("qwen_chat.ui")
__all__ = ["Handlers", "parse_examples"]


class Handlers(ChatListHandlers, MeterHandlers, ModelHandlers, PersonaHandlers):
    """Handlers bound to one service; every method is a plain function of component values."""

    def __init__(
        self,
        service: ChatService,
        user_store: UserStore | None = None,
        sessions: SessionSweeper | None = None,
        libraries: PersonaLibraries | None = None,
        access: Access | None = None,
        log_content: bool = False,
    ):
        self.service = service
        self.user_store = user_store
        self.sessions = sessions
        self.libraries = libraries or getattr(service, "libraries", None)
        self.access = access or Access()
        self.log_content = log_content  # --log-content: message text in the log at INFO (off by default)
        self._tmp = Path(tempfile.mkdtemp(prefix="qwen-chat-exports-"))

    # --- who is asking ---------------------------------------------------------
    def owner(self, request: gr.Request | None, store: dict | None = None) -> Owner:
        """The caller (see :func:`ui.owner.owner_of`, the one place that decides it)."""
        return owner_of(request, self.access, store)

    def personas(self, request: gr.Request | None, store: dict | None = None) -> PersonaStore:
        """The persona libraries this caller sees and may change."""
        if self.libraries is None:
            return self.service.personas
        return self.libraries.view(self.owner(request, store))

    def _require_admin(self, request: gr.Request | None) -> None:
        if not self.owner(request).is_admin:
            raise Refusal(self.access.admin_rule(), duration=10)

    # --- helpers -----------------------------------------------------------
    def _view(self, store: dict) -> tuple:
        """store, chatbot, chat list, chat name — the outputs most actions refresh."""
        conv = self.service.active(store)
        title = chat_title(current_lang(), conv.get("title"))
        return store, to_chatbot(conv["messages"]), self.chat_list(store, ""), title

    def chat_list(self, store: dict, query: str):
        """Sidebar choices filtered by the search box."""
        convs = self.service.search(store, query)
        lang = current_lang()
        return gr.update(choices=[(chat_title(lang, c.get("title")), c["id"]) for c in convs], value=store["active"])

    def default_settings(self) -> list:
        """The loaded checkpoint's generation defaults as slider values."""
        engine = self.service.manager.engine
        if engine is None:  # a model switch is under way: keep what the page shows
            return [gr.skip()] * len(SETTING_ORDER)
        d = engine.defaults
        temperature = 0.0 if not d.do_sample else d.temperature
        values = [temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_new_tokens, -1, d.max_window_size]
        clamped = clamp_settings(dict(zip(SETTING_ORDER, values, strict=True)), engine.info.context_length)
        return [clamped[k] for k in SETTING_ORDER]

    # --- page load ------------------------------------------------------------
    def load(self, store, request: gr.Request):
        """Restore the browser's (or the user's server-side) conversations and fill every panel."""
        if self.sessions:
            self.sessions.opened(getattr(request, "session_hash", None))
        owner = self.owner(request, store)
        if self.user_store and owner.kind != "browser" and owner.id:
            # The server's copy wins over this browser's: the browser may hold another login's chats.
            store = self.user_store.load(owner.history_key) or store
        store = self.service.ensure_store(store)
        self._remember_view(store, request)
        personas = self.personas(request, store)
        conv = self.service.active(store)
        persona = personas.get(conv.get("persona_id") or DEFAULT_PERSONA_ID)
        fields = self.persona_fields(persona)
        if conv.get("system_used"):
            fields[2] = conv["system_used"]
        return (
            *self._view(store),
            self.persona_choices(persona.id if persona else None, personas),
            *fields,
            *self.persona_settings(persona),
            self.persona_errors(personas),
            self.model_status(request),
            self.model_choices(request),
            self.shared_button(request, "save_shared"),  # save to the shared library
            self.shared_button(request, "load_model"),
        )

    def persist(self, store, request: gr.Request) -> None:
        """Save to server-side storage when the user is logged in and it is enabled."""
        owner = self.owner(request, store)
        if store:
            self._remember_view(self.service.ensure_store(store), request)
        if self.user_store and owner.kind != "browser" and owner.id and store:
            self.user_store.merge(owner.history_key, store)  # never drops what another tab of this user wrote

    def _remember_view(self, store: dict, request: gr.Request | None) -> None:
        """Keep the store this page shows on the server, for events that send only the draft."""
        session_id = getattr(request, "session_hash", None)
        if session_id:
            session = self.service.session(session_id)
            session.view, session.view_login = store, self.owner(request).id

    def _view_of(self, request: gr.Request | None) -> dict | None:
        """The store this session's page showed last, or None (unknown session, or another login's)."""
        session_id = getattr(request, "session_hash", None)
        if not session_id:
            return None
        session = self.service.session(session_id)
        # A session hash used under another login (or none) never reaches the first one's chats.
        return session.view if session.view_login == self.owner(request).id else None

    # --- chat -------------------------------------------------------------------
    def _guard(self, request: gr.Request | None) -> None:
        """Refuse actions that would change the chat while its reply is streaming."""
        if request is not None and self.service.is_busy(request.session_hash or "anonymous"):
            raise Refusal("A reply is still being generated: wait for it, or press Stop.", duration=5)

    def submit(self, message: str, store, request: gr.Request = None):
        """Show the user's message at once and clear the input; a bad message is refused."""
        self._guard(request)
        store = self.service.ensure_store(store)
        try:
            self.service.add_user_message(store, message)
        except ChatInputError as exc:
            raise Refusal(str(exc), duration=8) from None
        return "", *self._view(store)

    def respond(
        self, store, system, in_first_turn, examples, temperature, top_p, top_k, rep_penalty, max_new, seed, window,
        request: gr.Request, builtin_tools=None, tool_choice=None, custom_tools=None, reply_start=None,
    ):  # fmt: skip
        """Stream the reply; errors end it with a visible note and the app keeps serving.

        Then the Tools tab's values (:func:`ui.tools_panel.tool_set`) and "Start reply with…"
        (the reply begins with that text; :mod:`ui.reply_controls`)."""
        values = (temperature, top_p, top_k, rep_penalty, max_new, seed, window)
        store = self.service.ensure_store(store)
        session = request.session_hash or "anonymous"
        owner = self.owner(request, store)
        conv = self.service.active(store)
        stats_text = ""
        if self.log_content and conv["messages"]:
            log.info("ui message owner=%s text=%r", owner.rate_key, conv["messages"][-1]["content"])
        try:
            settings = settings_dict(values)
            # While streaming only the chatbot changes; the store (all chats, encrypted into
            # localStorage) is sent once at the end, or by after_stop() when Stop cancels this.
            replies = self.service.stream_reply(
                store,
                system,
                settings,
                session,
                bool(in_first_turn),
                parse_examples(examples),
                user=owner.rate_key,  # per login (or address), never per session: sessions are free
                personas=self.personas(request, store),
                tools=tool_set(builtin_tools, tool_choice, custom_tools),
                reply_prefix=reply_start if isinstance(reply_start, str) else "",
            )
            streaming = self.streaming_buttons(True)
            meter_at, meter = 0.0, ""
            for _, stats in replies:
                stats_text = self.stats_markdown(stats)
                if time.monotonic() - meter_at >= METER_EVERY_S:  # the reply so far counts as history
                    meter_at = time.monotonic()
                    meter = self.meter(store, system, "", in_first_turn, window, examples)[0]
                shown = conv["messages"]
                if stats.waiting and shown and shown[-1]["role"] == "assistant" and not shown[-1]["content"]:
                    shown = shown[:-1]  # accepted, no text yet: Stop now, the chat as the user left it
                # The meter as a value even when unchanged, not gr.skip(): a skip makes Gradio rebuild
                # the component for every update (~1.6 ms a yield), an unchanged value streams as an
                # empty diff (no bytes).
                yield gr.skip(), to_chatbot(shown), stats_text, *streaming, meter
        except USER_ERRORS as exc:
            notify_warning(str(exc), duration=10)
            # The note stays in the chat in the language it was shown in (an event row: never sent).
            conv["messages"].append({"role": "event", "content": f"⚠️ {localize(str(exc))}"})
        except Exception as exc:  # noqa: BLE001 - any failure is shown, and the server keeps serving
            notify_warning(f"Generation failed: {exc}", duration=10)
            conv["messages"].append({"role": "event", "content": "⚠️ " + localize(f"Generation failed: {exc}")})
        # The meter is recomputed (with the draft) by the event chained after this one.
        yield store, to_chatbot(conv["messages"]), stats_text, *self.streaming_buttons(False), gr.skip()

    def forget_session(self, request: gr.Request) -> None:
        """The browser session ended (tab closed, client gone): stop its replies and drop its state."""
        self.service.forget_session(request.session_hash or "anonymous")
        if self.sessions:
            self.sessions.closed(request.session_hash)
        if request.session_hash:  # this session's export files go with it
            shutil.rmtree(self._session_folder(request), ignore_errors=True)

    def stop(self, request: gr.Request) -> None:
        """Stop this session's reply within one token."""
        self.service.cancel(request.session_hash or "anonymous")

    def after_stop(self, request: gr.Request):
        """Once the stopped reply has ended, save the conversation with its partial reply."""
        store = self.service.wait_idle(request.session_hash or "anonymous")
        if store is None:
            return gr.skip(), gr.skip(), *self.streaming_buttons(False)
        return store, to_chatbot(self.service.active(store)["messages"]), *self.streaming_buttons(False)

    @staticmethod
    def streaming_buttons(streaming: bool) -> tuple:
        """Stop and Send, which share one slot: Stop (enabled) while a reply streams, Send otherwise."""
        stop = gr.update(interactive=streaming, visible=True if streaming else "hidden")
        send = gr.update(visible="hidden" if streaming else True)
        return stop, send

    def action_state(self, store) -> tuple:
        """Regenerate, Undo and Clear: enabled only when the chat on screen has something to act on."""
        messages = self.service.active(self.service.ensure_store(store))["messages"]
        has_user = any(m["role"] == "user" for m in messages)
        return gr.update(interactive=has_user), gr.update(interactive=has_user), gr.update(interactive=bool(messages))

    def regenerate(self, store, request: gr.Request = None):
        """Drop the last reply (the chain then streams a new one)."""
        self._guard(request)
        try:
            self.service.regenerate(self.service.ensure_store(store))
        except ChatInputError as exc:
            raise Refusal(str(exc)) from None
        return self._view(store)[:2]

    def undo(self, store, request: gr.Request = None):
        """Remove the last exchange and put the message back into the input."""
        self._guard(request)
        try:
            store, text = self.service.undo(self.service.ensure_store(store))
        except ChatInputError as exc:
            raise Refusal(str(exc)) from None
        return *self._view(store)[:2], text

    def edit(self, store, data: gr.EditData, request: gr.Request = None):
        """An edited user message replaces the original and the conversation continues from it."""
        self._guard(request)
        try:
            index = data.index if isinstance(data.index, int) else data.index[0]
            self.service.edit(self.service.ensure_store(store), index, str(data.value))
        except ChatInputError as exc:
            raise Refusal(str(exc)) from None
        return self._view(store)[:2]

    def clear(self, store, request: gr.Request = None):
        """Empty the conversation on screen."""
        self._guard(request)
        return self._view(self.service.clear(self.service.ensure_store(store)))
