"""The chat list's handlers (a mixin of :class:`ui.handlers.Handlers`): new, open, rename, delete,
export and import a chat. Export files are written per browser session, on request only."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import gradio as gr

from .archive import export_archive, parse_chats
from .conversations import ConversationError, export_json, to_markdown
from .personas import DEFAULT_PERSONA_ID
from .refusal import Refusal, notify_info
from .service import ChatInputError
from .storage import safe_name


class ChatListHandlers:
    """Chat-list handlers; needs the host's ``service``, ``_tmp``, ``personas()``, ``_view()``,
    ``_guard()`` and ``persona_fields()``."""

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

    def export_all(self, store, request: gr.Request = None) -> str:
        """Every chat in one JSON file (:mod:`ui.archive`); Import chat takes it back."""
        store = self.service.ensure_store(store)
        return self._write(time.strftime("qwen-chats-%Y-%m-%d.json"), export_archive(store), request)

    def prepare_exports(self, store, request: gr.Request = None):
        """The Export button: write the files (this chat as JSON and Markdown, all chats as JSON) and
        show their download buttons."""
        json_path, md_path = self.exports(store, request)
        all_path = self.export_all(store, request)
        if getattr(request, "session_hash", None):
            self.service.session(request.session_hash).exported_rev = (store or {}).get("rev")
        shown = (json_path, md_path, all_path)
        return tuple(gr.update(value=path, visible=True) for path in shown)

    def hide_downloads(self, request: gr.Request = None) -> tuple:
        """After the chats changed (chained after :meth:`persist`, which keeps what the page shows): the
        three download buttons hidden again when their files are older than that, or left as they are."""
        shown = self._view_of(request)
        session_id = getattr(request, "session_hash", None)
        exported = self.service.session(session_id).exported_rev if session_id else None
        if shown is not None and exported is not None and shown.get("rev") == exported:
            return (gr.skip(),) * 3  # written from the store the page shows now
        return tuple(gr.update(visible=False) for _ in range(3))

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
        """Add the chats of an exported JSON file: one chat, or all of an archive (all or none)."""
        text, name = self._read_upload(file)
        try:
            convs = parse_chats(text, name)
            store = self.service.add_imported(self.service.ensure_store(store), convs)
        except ConversationError as exc:
            raise Refusal(str(exc)) from None
        if len(convs) > 1:
            notify_info(f"Imported {len(convs)} chats.", duration=5)
        return self._view(store)
