"""Gradio event handlers: translate component values to :class:`ui.service.ChatService` calls."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path

import gradio as gr

from qwen_core.errors import QwenCoreError

from .conversations import ConversationError, export_json, parse_import, to_chatbot, to_markdown
from .owner import Access, Owner, owner_of
from .persona_handlers import PersonaHandlers
from .personas import DEFAULT_PERSONA_ID, Persona, PersonaError, PersonaLibraries, PersonaStore
from .service import ChatInputError, ChatService
from .sessions import SessionSweeper
from .settings_form import SETTING_ORDER, clamp_settings, settings_dict
from .storage import safe_name
from .user_store import UserStore

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
            raise gr.Error(self.access.admin_rule(), duration=10)

    # --- helpers -----------------------------------------------------------
    def _view(self, store: dict) -> tuple:
        """store, chatbot, chat list, chat name — the outputs most actions refresh."""
        conv = self.service.active(store)
        return store, to_chatbot(conv["messages"]), self.chat_list(store, ""), conv.get("title", "")

    def chat_list(self, store: dict, query: str):
        """Sidebar choices filtered by the search box."""
        convs = self.service.search(store, query)
        return gr.update(choices=[(c.get("title") or "New chat", c["id"]) for c in convs], value=store["active"])

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
            self.shared_button(request),  # save to the shared library
            self.shared_button(request),  # load model
        )

    def persist(self, store, request: gr.Request) -> None:
        """Save to server-side storage when the user is logged in and it is enabled."""
        owner = self.owner(request, store)
        if self.user_store and owner.kind != "browser" and owner.id and store:
            self.user_store.merge(owner.history_key, store)  # never drops what another tab of this user wrote

    # --- chat -------------------------------------------------------------------
    def _guard(self, request: gr.Request | None) -> None:
        """Refuse actions that would change the chat while its reply is streaming."""
        if request is not None and self.service.is_busy(request.session_hash or "anonymous"):
            raise gr.Error("A reply is still being generated: wait for it, or press Stop.", duration=5)

    def submit(self, message: str, store, request: gr.Request = None):
        """Show the user's message at once and clear the input; a bad message is refused."""
        self._guard(request)
        store = self.service.ensure_store(store)
        try:
            self.service.add_user_message(store, message)
        except ChatInputError as exc:
            raise gr.Error(str(exc), duration=8) from None
        return "", *self._view(store)

    def respond(
        self, store, system, in_first_turn, examples, temperature, top_p, top_k, rep_penalty, max_new, seed, window,
        request: gr.Request,
    ):  # fmt: skip
        """Stream the reply; errors end it with a visible note and the app keeps serving."""
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
            )
            for _, stats in replies:
                stats_text = self.stats_markdown(stats)
                yield gr.skip(), to_chatbot(conv["messages"]), stats_text, gr.update(interactive=True)
        except USER_ERRORS as exc:
            gr.Warning(str(exc), duration=10)
            conv["messages"].append({"role": "event", "content": f"⚠️ {exc}"})
        except Exception as exc:  # noqa: BLE001 - any failure is shown, and the server keeps serving
            gr.Warning(f"Generation failed: {exc}", duration=10)
            conv["messages"].append({"role": "event", "content": f"⚠️ Generation failed: {exc}"})
        yield store, to_chatbot(conv["messages"]), stats_text, gr.update(interactive=False)

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
            return gr.skip(), gr.skip(), gr.update(interactive=False)
        return store, to_chatbot(self.service.active(store)["messages"]), gr.update(interactive=False)

    def regenerate(self, store, request: gr.Request = None):
        """Drop the last reply (the chain then streams a new one)."""
        self._guard(request)
        try:
            self.service.regenerate(self.service.ensure_store(store))
        except ChatInputError as exc:
            raise gr.Error(str(exc)) from None
        return self._view(store)[:2]

    def undo(self, store, request: gr.Request = None):
        """Remove the last exchange and put the message back into the input."""
        self._guard(request)
        try:
            store, text = self.service.undo(self.service.ensure_store(store))
        except ChatInputError as exc:
            raise gr.Error(str(exc)) from None
        return *self._view(store)[:2], text

    def edit(self, store, data: gr.EditData, request: gr.Request = None):
        """An edited user message replaces the original and the conversation continues from it."""
        self._guard(request)
        try:
            index = data.index if isinstance(data.index, int) else data.index[0]
            self.service.edit(self.service.ensure_store(store), index, str(data.value))
        except ChatInputError as exc:
            raise gr.Error(str(exc)) from None
        return self._view(store)[:2]

    def clear(self, store, request: gr.Request = None):
        """Empty the conversation on screen."""
        self._guard(request)
        return self._view(self.service.clear(self.service.ensure_store(store)))

    # --- context meter ------------------------------------------------------------
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
            return f"<div data-dropped='[]'>⚠️ {html.escape(str(exc))}</div>", ""
        pct = min(100, round(100 * r.total_tokens / max(1, r.context_length)))
        kept_history = r.n_turns - len(r.dropped_turns)
        dropped = ""
        if r.dropped_turns:
            dropped = (
                f"<div class='dropped-note' role='status'>⛔ {len(r.dropped_turns)} oldest turn(s) will not be sent "
                f"(max_window_size {r.window}); marked in the chat.</div>"
            )
        text = (
            f"<div data-dropped='{json.dumps(r.dropped_messages)}'>"
            f"<b>{r.total_tokens:,}</b> tokens in the next prompt — system {r.system_tokens:,} · "
            f"history {r.history_tokens:,} ({kept_history}/{r.n_turns} turns) · message {r.draft_tokens:,} "
            f"· window {r.window:,} · context {r.context_length:,}"
            f"<div class='bar' role='progressbar' aria-label='context used' aria-valuenow='{pct}' "
            f"aria-valuemin='0' aria-valuemax='100'><div style='width:{pct}%'></div></div>{dropped}</div>"
        )
        return text, r.raw_prompt

    # --- model panel ------------------------------------------------------------------
    @staticmethod
    def stats_markdown(stats) -> str:
        """Live figures of the last reply."""
        parts = [f"**{stats.tokens}** tokens"]
        if stats.ttft_s is not None:
            parts.append(f"first token {stats.ttft_s * 1000:.0f} ms")
        if stats.tokens_per_s:
            parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
        if stats.finish_reason:
            parts.append(f"ended: {stats.finish_reason}")
        if stats.seed is not None:
            parts.append(f"seed {stats.seed}")
        return " · ".join(parts)

    def model_status(self, request: gr.Request | None = None) -> str:
        """The loaded variant, precision, device map and memory; who may switch models."""
        s = self.service.manager.status()
        if not s.get("loaded"):
            return f"⏳ The model is loading ({s.get('model') or 'model'}); chat works again once it is loaded."
        switch = ""
        if len(self.service.manager.specs) > 1 and not self.owner(request).is_admin:
            switch = f"  \n🔒 Switching models affects every user. {self.access.admin_rule()}"
        mem = s["memory"]
        gpu = " · ".join(
            f"{k}: {v['allocated_gb']} GB used, {v['free_gb']} GB free" for k, v in mem.items() if k != "rss_gb"
        )
        devices = ", ".join(sorted(set(s["device_map"].values())))
        return (
            f"**{s['model']}** — {s['precision']} ({s['dtype']}), {s['params_b']} B parameters  \n"
            f"device: {s['device']} ({devices}) · attention: {s['attention']} · decode: {s.get('decode', 'eager')} "
            f"· context {s['context_length']:,} tokens  \n"
            f"memory: process {mem['rss_gb']} GB{' · ' + gpu if gpu else ''}"
            f"{'  ' + chr(10) + s['prefix_cache'] if s.get('prefix_cache') else ''}{switch}"
        )

    def model_choices(self, request: gr.Request | None = None):
        """Configured variants for the switcher (disabled for those who may not switch)."""
        names = [spec.name for spec in self.service.manager.specs]
        current = self.service.manager.current
        admin = self.owner(request).is_admin
        return gr.update(choices=names, value=current.name if current else None, interactive=admin)

    def shared_button(self, request: gr.Request | None = None):
        """The shared-library and model-switch controls: enabled for admins only."""
        return gr.update(interactive=self.owner(request).is_admin)

    def switch_model(self, name: str, request: gr.Request = None, progress=gr.Progress()):
        """Unload and load another configured variant, with progress; the old one returns on failure.

        It changes the model for every user, so only an admin may (see :meth:`ui.owner.Access.admin_rule`).
        """
        self._require_admin(request)
        spec = next((s for s in self.service.manager.specs if s.name == name), None)
        if spec is None:
            raise gr.Error(f"{name} is not a configured model.")
        try:
            message = self.service.manager.switch(spec, progress=lambda f, m: progress(f, desc=m))
            gr.Info(message)
        except QwenCoreError as exc:
            gr.Warning(str(exc), duration=15)
        return self.model_status(request), self.model_choices(request), *self.default_settings()

    # --- conversations ---------------------------------------------------------------
    def new_chat(self, store, persona_id, request: gr.Request = None):
        """Start a new chat with the current persona."""
        self._guard(request)
        try:
            store = self.service.new_conversation(self.service.ensure_store(store), persona_id)
        except ChatInputError as exc:
            raise gr.Error(str(exc)) from None
        return self._view(store)

    def select_chat(self, store, conv_id, request: gr.Request = None):
        """Open a chat from the sidebar; its persona comes back with it."""
        self._guard(request)
        store = self.service.ensure_store(store)
        if conv_id and conv_id != store["active"]:
            try:
                self.service.select(store, conv_id)
            except ChatInputError as exc:
                raise gr.Error(str(exc)) from None
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
            raise gr.Error(str(exc)) from None
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
            raise gr.Error("No file was uploaded.")
        path = Path(file if isinstance(file, str) else file.name)
        try:
            return path.read_text(encoding="utf-8"), path.name
        except UnicodeDecodeError:
            raise gr.Error(f"{path.name}: cannot be read as UTF-8 text; export it again as JSON.") from None
        except OSError:
            raise gr.Error(f"{path.name}: the upload cannot be read; upload the file again.") from None

    def import_chat(self, store, file):
        """Add a chat from an exported JSON file."""
        text, name = self._read_upload(file)
        try:
            conv = parse_import(text, name)
            store = self.service.add_imported(self.service.ensure_store(store), conv)
        except ConversationError as exc:
            raise gr.Error(str(exc)) from None
        return self._view(store)
