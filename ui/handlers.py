"""Gradio event handlers: translate component values to :class:`ui.service.ChatService` calls."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from qwen_core.errors import QwenCoreError

from .conversations import ConversationError, export_json, parse_import, to_chatbot, to_markdown
from .i18n import EN, ZH
from .owner import Access, Owner, owner_of
from .persona_handlers import PersonaHandlers
from .personas import DEFAULT_PERSONA_ID, Persona, PersonaError, PersonaLibraries, PersonaStore
from .refusal import Refusal, notify_info, notify_warning
from .server_text import chat_title, current_lang, decode_mode, localize, prefix_cache_line, reason
from .server_text import text as tr
from .service import ChatInputError, ChatService
from .sessions import SessionSweeper
from .settings_form import SETTING_ORDER, clamp_settings, settings_dict
from .storage import safe_name
from .tools_panel import tool_set
from .user_store import UserStore

METER_EVERY_S = 1.0  # how often the meter is refreshed while a reply streams
USER_ERRORS = (ChatInputError, QwenCoreError, PersonaError, ConversationError, ValueError)
log = logging.getLogger("qwen_chat.ui")


def parse_examples(text: str | None) -> list[tuple[str, str]]:
    """The persona editor's example dialogue (JSON ``[[user, assistant], ...]``); bad JSON is ignored here
    (saving the persona reports it)."""
    try:
        pairs = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    if not isinstance(pairs, list):
        return []
    return [(p[0], p[1]) for p in pairs if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)]


class Handlers(PersonaHandlers):
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

    def persona_settings(self, persona: Persona | None) -> list:
        """Model defaults with the persona's suggested settings on top."""
        engine = self.service.manager.engine
        values = dict(zip(SETTING_ORDER, self.default_settings(), strict=True))
        if engine is None:
            return list(values.values())
        if persona:
            values.update({k: v for k, v in persona.settings.items() if k in values})
        # A persona written for a longer context (or another model) must not push a slider past its range.
        values = clamp_settings(values, engine.info.context_length)
        return [values[k] for k in SETTING_ORDER]

    def persona_fields(self, persona: Persona | None) -> list:
        """name, avatar, system prompt, greeting, example dialogue, first-turn flag."""
        if persona is None:
            return ["", "🤖", "You are a helpful assistant.", "", "[]", False]
        dialogue = json.dumps([list(t) for t in persona.example_dialogue], ensure_ascii=False, indent=1)
        return [
            persona.name,
            persona.avatar,
            persona.system_prompt,
            persona.greeting,
            dialogue,
            persona.system_in_first_turn,
        ]

    @staticmethod
    def persona_choices(selected: str | None, personas: PersonaStore):
        """Persona dropdown: yours marked ✎, the shared library's 👥, built-ins plain."""
        choices = [
            (f"{p.avatar} {p.name}" + ("" if p.builtin else " 👥" if p.shared else " ✎"), p.id) for p in personas.all()
        ]
        return gr.update(choices=choices, value=selected)

    @staticmethod
    def persona_errors(personas: PersonaStore) -> str:
        """Persona files that could not be read, for the persona panel (file names, never server paths)."""
        personas.all()
        return "\n".join(f"⚠️ `{html.escape(e)}`" for e in personas.errors)

    def _session_folder(self, request: gr.Request | None) -> Path:
        session = getattr(request, "session_hash", None)
        return self._tmp / (hashlib.sha256(session.encode()).hexdigest()[:24] if session else uuid.uuid4().hex)

    def _write(self, name: str, text: str, request: gr.Request | None = None) -> str:
        """A file for a download button, in a folder of this browser session's own: two sessions
        exporting chats of the same title never write (and so never hand out) the same file."""
        folder = self._session_folder(request)
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)

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
            meter_at = 0.0
            for _, stats in replies:
                stats_text = self.stats_markdown(stats)
                meter = gr.skip()
                if time.monotonic() - meter_at >= METER_EVERY_S:  # the reply so far counts as history
                    meter_at = time.monotonic()
                    meter = self.meter(store, system, "", in_first_turn, window, examples)[0]
                yield gr.skip(), to_chatbot(conv["messages"]), stats_text, *streaming, meter
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

    # --- context meter ------------------------------------------------------------
    def meter_view(
        self, store, system, draft, in_first_turn, window, examples=None, request: gr.Request = None
    ):  # fmt: skip
        """:meth:`meter` plus :meth:`action_state`: the meter runs after every change to the chat."""
        store = self.service.ensure_store(store)
        self._remember_view(store, request)
        args = (system, draft, in_first_turn, window, examples)
        return (*self.meter(store, *args), *self.action_state(store))

    def meter_draft(
        self, system, draft, in_first_turn, window, examples=None, raw_open=False, request: gr.Request = None
    ):
        """:meth:`meter_view` while typing: the event carries the draft and the prompt fields only,
        never the store; the rest is counted from the store this page showed last (server-side).
        The raw prompt (the whole history) is sent back only while its panel is open."""
        store = self._view_of(request)
        if store is None:  # not known yet (the page is loading): the meter after load fills it in
            return (gr.skip(),) * 5
        meter, raw = self.meter(store, system, draft, in_first_turn, window, examples)
        return (meter, raw if raw_open else gr.skip(), *self.action_state(store))

    def meter(self, store, system, draft, in_first_turn, window, examples=None):
        """Counts of the next prompt against the window and the context, and the raw prompt."""
        try:
            r = self.service.context(
                self.service.ensure_store(store),
                system,
                draft or "",
                int(window),
                bool(in_first_turn),
                parse_examples(examples),
            )
        except USER_ERRORS as exc:
            return f"<div data-dropped='[]'>⚠️ {html.escape(localize(str(exc)))}</div>", ""
        lang = current_lang()
        # The bar is drawn against max_window_size: the window, not the context, decides what is dropped.
        pct = min(100, round(100 * r.total_tokens / max(1, r.window)))
        dropped = ""
        if r.dropped_turns:
            note = tr(lang, "dropped", n=len(r.dropped_turns), window=r.window)
            dropped = f"<div class='dropped-note' role='status'>{note}</div>"
        counts = tr(
            lang, "meter", total=f"{r.total_tokens:,}", system=f"{r.system_tokens:,}", history=f"{r.history_tokens:,}",
            kept=r.n_turns - len(r.dropped_turns), turns=r.n_turns, draft=f"{r.draft_tokens:,}",
            window=f"{r.window:,}", context=f"{r.context_length:,}",
        )  # fmt: skip
        html_text = (
            f"<div data-dropped='{json.dumps(r.dropped_messages)}' data-window='{r.window}'>{counts}"
            f"<div class='bar' role='progressbar' aria-label='{tr(lang, 'meter_bar')}' aria-valuenow='{pct}' "
            f"aria-valuemin='0' aria-valuemax='100'><div style='width:{pct}%'></div></div>{dropped}</div>"
        )
        return html_text, r.raw_prompt

    # --- model panel ------------------------------------------------------------------
    @staticmethod
    def stats_markdown(stats) -> str:
        """Live figures of the last reply."""
        lang = current_lang()
        parts = [tr(lang, "stats_tokens", n=stats.tokens)]
        if stats.ttft_s is not None:
            parts.append(tr(lang, "stats_ttft", ms=f"{stats.ttft_s * 1000:.0f}"))
        if stats.tokens_per_s:
            parts.append(tr(lang, "stats_speed", tps=f"{stats.tokens_per_s:.1f}"))
        if stats.finish_reason:
            parts.append(tr(lang, "stats_end", reason=reason(lang, stats.finish_reason)))
        if stats.seed is not None:
            parts.append(tr(lang, "stats_seed", seed=stats.seed))
        return " · ".join(parts)

    def model_status(self, request: gr.Request | None = None) -> str:
        """The loaded variant, precision, device map and memory; who may switch models."""
        s = self.service.manager.status()
        lang = current_lang()
        if not s.get("loaded"):
            return tr(lang, "model_loading", model=s.get("model") or "model")
        switch = ""
        if len(self.service.manager.specs) > 1 and not self.owner(request).is_admin:
            switch = f"  \n{tr(lang, 'switch_locked')} {self.access.admin_rule()}"
        mem = s["memory"]
        gpu = " · ".join(
            tr(lang, "gpu_mem", dev=k, used=v["allocated_gb"], free=v["free_gb"])
            for k, v in mem.items()
            if k != "rss_gb"
        )
        devices = ", ".join(sorted(set(s["device_map"].values())))
        line = tr(
            lang, "model_line", model=s["model"], precision=s["precision"], dtype=s["dtype"], params=s["params_b"]
        )
        device = tr(
            lang, "device_line", device=s["device"], devices=devices, attention=s["attention"],
            decode=decode_mode(lang, s.get("decode", "eager")), context=f"{s['context_length']:,}",
        )  # fmt: skip
        return (
            f"{line}  \n{device}  \n"
            f"{tr(lang, 'memory_line', rss=mem['rss_gb'])}{' · ' + gpu if gpu else ''}"
            f"{'  ' + chr(10) + prefix_cache_line(lang, s['prefix_cache']) if s.get('prefix_cache') else ''}{switch}"
        )

    def model_choices(self, request: gr.Request | None = None):
        """Configured variants for the switcher (disabled for those who may not switch)."""
        names = [spec.name for spec in self.service.manager.specs]
        current = self.service.manager.current
        admin = self.owner(request).is_admin
        return gr.update(choices=names, value=current.name if current else None, interactive=admin)

    def shared_button(self, request: gr.Request | None = None, label: str | None = None):
        """The shared-library and model-switch controls: enabled for admins only. With ``label`` (an
        :mod:`ui.i18n` key) its text in the page's language too: Gradio 6.31 may draw a button of a
        tab that mounts later in the language the page started in."""
        if label is None:
            return gr.update(interactive=self.owner(request).is_admin)
        text = (ZH if current_lang() == "zh" else EN)[label]
        return gr.update(interactive=self.owner(request).is_admin, value=text)

    def switch_model(self, name: str, request: gr.Request = None, progress=gr.Progress()):
        """Unload and load another configured variant, with progress; the old one returns on failure.

        It changes the model for every user, so only an admin may (see :meth:`ui.owner.Access.admin_rule`).
        """
        self._require_admin(request)
        spec = next((s for s in self.service.manager.specs if s.name == name), None)
        if spec is None:
            raise Refusal(f"{name} is not a configured model.")
        try:
            message = self.service.manager.switch(spec, progress=lambda f, m: progress(f, desc=m))
            notify_info(message)
        except QwenCoreError as exc:
            notify_warning(str(exc), duration=15)
        return self.model_status(request), self.model_choices(request), *self.default_settings()

    # --- conversations ---------------------------------------------------------------
    def new_chat(self, store, persona_id, request: gr.Request = None):
        """Start a new chat with the current persona."""
        self._guard(request)
        try:
            store = self.service.ensure_store(store)
            store = self.service.new_conversation(store, persona_id, self.personas(request, store))
        except ChatInputError as exc:
            raise Refusal(str(exc)) from None
        return self._view(store)

    def select_chat(self, store, conv_id, request: gr.Request = None):
        """Open a chat from the sidebar; its persona comes back with it."""
        self._guard(request)
        store = self.service.ensure_store(store)
        if conv_id and conv_id != store["active"]:
            try:
                self.service.select(store, conv_id)
            except ChatInputError as exc:
                raise Refusal(str(exc)) from None
        conv = self.service.active(store)
        persona = self.personas(request, store).get(conv.get("persona_id") or DEFAULT_PERSONA_ID)
        fields = self.persona_fields(persona)
        if conv.get("system_used"):
            fields[2] = conv["system_used"]
        return *self._view(store), gr.update(value=persona.id if persona else None), *fields

    def rename_chat(self, store, title):
        """Rename the chat on screen."""
        try:
            store = self.service.rename(self.service.ensure_store(store), title)
        except ChatInputError as exc:
            raise Refusal(str(exc)) from None
        return self._view(store)

    def delete_chat(self, store, request: gr.Request = None):
        """Delete the chat on screen."""
        self._guard(request)
        return self._view(self.service.delete(self.service.ensure_store(store)))

    def exports(self, store, request: gr.Request = None):
        """Current chat as JSON and Markdown files, written only when the user asks (the Export button)."""
        store = self.service.ensure_store(store)
        conv = self.service.active(store)
        persona = self.personas(request, store).get(conv.get("persona_id") or "")
        name = safe_name(conv.get("title") or "chat", "chat")
        return (
            self._write(f"{name}.json", export_json(conv), request),
            self._write(f"{name}.md", to_markdown(conv, persona.name if persona else ""), request),
        )

    def prepare_exports(self, store, request: gr.Request = None):
        """The Export button: write the files and show their download buttons."""
        json_path, md_path = self.exports(store, request)
        return gr.update(value=json_path, visible=True), gr.update(value=md_path, visible=True)

    @staticmethod
    def _read_upload(file) -> tuple[str, str]:
        """The uploaded file's text and its own name; errors name only that name, never a server path."""
        if file is None:
            raise Refusal("No file was uploaded.")
        path = Path(file if isinstance(file, str) else file.name)
        try:
            return path.read_text(encoding="utf-8"), path.name
        except UnicodeDecodeError:
            raise Refusal(f"{path.name}: cannot be read as UTF-8 text; export it again as JSON.") from None
        except OSError:
            raise Refusal(f"{path.name}: the upload cannot be read; upload the file again.") from None

    def import_chat(self, store, file):
        """Add a chat from an exported JSON file."""
        text, name = self._read_upload(file)
        try:
            conv = parse_import(text, name)
            store = self.service.add_imported(self.service.ensure_store(store), conv)
        except ConversationError as exc:
            raise Refusal(str(exc)) from None
        return self._view(store)
