"""Gradio event handlers: translate component values to :class:`ui.service.ChatService` calls."""

from __future__ import annotations

import hashlib
import html
import json
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import gradio as gr

from qwen_core.errors import QwenCoreError

from .conversations import ConversationError, export_json, parse_import, to_chatbot, to_markdown
from .personas import DEFAULT_PERSONA_ID, Persona, PersonaError, parse_persona
from .service import ChatInputError, ChatService
from .sessions import SessionSweeper
from .storage import safe_name
from .user_store import UserStore

SETTING_ORDER = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "max_window_size")
USER_ERRORS = (ChatInputError, QwenCoreError, PersonaError, ConversationError, ValueError)


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


def settings_dict(values) -> dict:
    """Slider values → engine settings (temperature 0 = greedy, seed -1 = random)."""
    s = dict(zip(SETTING_ORDER, values, strict=True))
    temperature = float(s["temperature"])
    seed = None if s["seed"] is None or int(s["seed"]) < 0 else int(s["seed"])
    return {
        "do_sample": temperature > 0,
        "temperature": temperature,
        "top_p": float(s["top_p"]),
        "top_k": int(s["top_k"]),
        "repetition_penalty": float(s["repetition_penalty"]),
        "max_new_tokens": int(s["max_new_tokens"]),
        "seed": seed,
        "max_window_size": int(s["max_window_size"]),
    }


class Handlers:
    """Handlers bound to one service; every method is a plain function of component values."""

    def __init__(
        self, service: ChatService, user_store: UserStore | None = None, sessions: SessionSweeper | None = None
    ):
        self.service = service
        self.user_store = user_store
        self.sessions = sessions
        self._tmp = Path(tempfile.mkdtemp(prefix="qwen-chat-exports-"))

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
        d = self.service.manager.engine.defaults
        temperature = 0.0 if not d.do_sample else d.temperature
        return [temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_new_tokens, -1, d.max_window_size]

    def persona_settings(self, persona: Persona | None) -> list:
        """Model defaults with the persona's suggested settings on top."""
        values = dict(zip(SETTING_ORDER, self.default_settings(), strict=True))
        if persona:
            values.update({k: v for k, v in persona.settings.items() if k in values})
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

    def persona_choices(self, selected: str | None):
        """Persona dropdown, built-ins marked."""
        personas = self.service.personas.all()
        choices = [(f"{p.avatar} {p.name}" + ("" if p.builtin else " ✎"), p.id) for p in personas]
        return gr.update(choices=choices, value=selected)

    def persona_errors(self) -> str:
        """Persona files that could not be read, for the persona panel."""
        errors = self.service.personas.errors
        return "\n".join(f"⚠️ `{html.escape(e)}`" for e in errors)

    def _write(self, name: str, text: str, request: gr.Request | None = None) -> str:
        """A file for a download button, in a folder of this browser session's own: two sessions
        exporting chats of the same title never write (and so never hand out) the same file."""
        session = getattr(request, "session_hash", None)
        folder = self._tmp / (hashlib.sha256(session.encode()).hexdigest()[:24] if session else uuid.uuid4().hex)
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    # --- page load ------------------------------------------------------------
    def load(self, store, request: gr.Request):
        """Restore the browser's (or the user's server-side) conversations and fill every panel."""
        username = getattr(request, "username", None)
        if self.sessions:
            self.sessions.opened(getattr(request, "session_hash", None))
        if self.user_store and username:
            store = self.user_store.load(username) or store
        store = self.service.ensure_store(store)
        conv = self.service.active(store)
        persona = self.service.personas.get(conv.get("persona_id") or DEFAULT_PERSONA_ID)
        fields = self.persona_fields(persona)
        if conv.get("system_used"):
            fields[2] = conv["system_used"]
        return (
            *self._view(store),
            self.persona_choices(persona.id if persona else None),
            *fields,
            *self.persona_settings(persona),
            self.persona_errors(),
            self.model_status(),
            self.model_choices(),
        )

    def persist(self, store, request: gr.Request) -> None:
        """Save to server-side storage when the user is logged in and it is enabled."""
        username = getattr(request, "username", None)
        if self.user_store and username and store:
            self.user_store.save(username, store)

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
        conv = self.service.active(store)
        stats_text = ""
        try:
            settings = settings_dict(values)
            # While streaming only the chatbot changes; the store (all chats, encrypted into
            # localStorage) is sent once at the end, or by after_stop() when Stop cancels this.
            replies = self.service.stream_reply(
                store, system, settings, session, bool(in_first_turn), parse_examples(examples)
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

    def model_status(self) -> str:
        """The loaded variant, precision, device map and memory."""
        s = self.service.manager.status()
        if not s.get("loaded"):
            return f"⏳ Loading {s.get('model') or 'model'}…"
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
        )

    def model_choices(self):
        """Configured variants for the switcher."""
        names = [spec.name for spec in self.service.manager.specs]
        current = self.service.manager.current
        return gr.update(choices=names, value=current.name if current else None)

    def switch_model(self, name: str, progress=gr.Progress()):
        """Unload and load another configured variant, with progress; the old one returns on failure."""
        spec = next((s for s in self.service.manager.specs if s.name == name), None)
        if spec is None:
            raise gr.Error(f"{name} is not a configured model.")
        try:
            message = self.service.manager.switch(spec, progress=lambda f, m: progress(f, desc=m))
            gr.Info(message)
        except QwenCoreError as exc:
            gr.Warning(str(exc), duration=15)
        return self.model_status(), self.model_choices(), *self.default_settings()

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
        persona = self.service.personas.get(conv.get("persona_id") or DEFAULT_PERSONA_ID)
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
        """Current chat as JSON and Markdown files for the download buttons."""
        store = self.service.ensure_store(store)
        conv = self.service.active(store)
        persona = self.service.personas.get(conv.get("persona_id") or "")
        name = safe_name(conv.get("title") or "chat", "chat")
        return (
            self._write(f"{name}.json", export_json(conv), request),
            self._write(f"{name}.md", to_markdown(conv, persona.name if persona else ""), request),
        )

    def import_chat(self, store, file):
        """Add a chat from an exported JSON file."""
        if file is None:
            raise gr.Error("No file was uploaded.")
        path = Path(file if isinstance(file, str) else file.name)
        try:
            text = path.read_text(encoding="utf-8")
            conv = parse_import(text, path.name)
            store = self.service.add_imported(self.service.ensure_store(store), conv)
        except (OSError, UnicodeDecodeError) as exc:
            raise gr.Error(f"{path.name}: cannot be read as UTF-8 text ({exc})") from None
        except ConversationError as exc:
            raise gr.Error(str(exc)) from None
        return self._view(store)

    # --- personas ----------------------------------------------------------------------
    def pick_persona(self, store, persona_id):
        """Load a persona into the editor and the settings; mid-chat the switch is noted in the transcript."""
        persona = self.service.personas.get(persona_id) if persona_id else None
        store = self.service.ensure_store(store)
        if persona:
            store = self.service.set_persona(store, persona.id)
        return *self._view(store)[:2], *self.persona_fields(persona), *self.persona_settings(persona)

    def _persona_from_fields(self, persona_id, name, avatar, system, greeting, dialogue, first_turn, values) -> Persona:
        try:
            pairs = json.loads(dialogue or "[]")
        except json.JSONDecodeError as exc:
            raise PersonaError(f"Example dialogue: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        s = settings_dict(values)
        data = {
            "id": persona_id,
            "name": name,
            "avatar": avatar,
            "system_prompt": system,
            "greeting": greeting,
            "example_dialogue": pairs,
            "settings": {k: s[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")},
            "system_in_first_turn": bool(first_turn),
        }
        return parse_persona(data, "persona editor")

    def save_persona(self, persona_id, name, avatar, system, greeting, dialogue, first_turn, *values):
        """Save the editor as a user persona (editing a built-in saves your own copy over it)."""
        current = self.service.personas.get(persona_id or "")
        if current is None or (current.builtin and (name or "").strip() != current.name):
            persona_id = self.service.personas.unique_id(name or "persona")
        try:
            persona = self._persona_from_fields(
                persona_id,
                name, avatar, system, greeting, dialogue, first_turn, values,
            )  # fmt: skip
            persona = self.service.personas.save(persona)
        except PersonaError as exc:
            raise gr.Error(str(exc)) from None
        return self.persona_choices(persona.id), f"✅ Saved “{persona.name}”.", self.export_persona(persona.id)

    def duplicate_persona(self, persona_id, name, avatar, system, greeting, dialogue, first_turn, *values):
        """Save the editor as a new persona named “… (copy)”."""
        try:
            copy_name = f"{name or 'Persona'} (copy)"
            persona = self._persona_from_fields(
                self.service.personas.unique_id(copy_name),
                copy_name,
                avatar,
                system,
                greeting,
                dialogue,
                first_turn,
                values,
            )
            persona = self.service.personas.save(replace(persona, name=copy_name))
        except PersonaError as exc:
            raise gr.Error(str(exc)) from None
        return self.persona_choices(persona.id), f"✅ Created “{persona.name}”.", persona.name

    def delete_persona(self, persona_id):
        """Delete a user persona (a built-in one it overrode comes back)."""
        try:
            self.service.personas.delete(persona_id or "")
        except PersonaError as exc:
            raise gr.Error(str(exc)) from None
        return self.persona_choices(DEFAULT_PERSONA_ID), "🗑️ Deleted."

    def export_persona(self, persona_id, request: gr.Request = None):
        """The persona as a JSON file for its download button."""
        persona = self.service.personas.get(persona_id or "")
        if persona is None:
            return None
        text = json.dumps(persona.to_json(), ensure_ascii=False, indent=2)
        return self._write(f"{persona.id}.persona.json", text, request)

    def import_personas(self, file):
        """Import personas from a JSON file (one or a list); each gets a fresh id."""
        if file is None:
            raise gr.Error("No file was uploaded.")
        path = Path(file if isinstance(file, str) else file.name)
        try:
            added = self.service.personas.import_json(path.read_text(encoding="utf-8"), path.name)
        except (OSError, UnicodeDecodeError) as exc:
            raise gr.Error(f"{path.name}: cannot be read as UTF-8 text ({exc})") from None
        except PersonaError as exc:
            raise gr.Error(str(exc)) from None
        names = ", ".join(p.name for p in added)
        return self.persona_choices(added[-1].id), f"✅ Imported {names}."
