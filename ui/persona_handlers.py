"""The persona panel's handlers (a mixin of :class:`ui.handlers.Handlers`).

Every persona action works on the caller's own view (:mod:`ui.owner` decides whose):
built-ins and the shared library can be read by all, and changed only as
:class:`ui.personas.PersonaStore` allows (your own library; admins: the shared one).
"""

from __future__ import annotations

import html
import json
from dataclasses import replace

import gradio as gr

from .personas import DEFAULT_PERSONA_ID, Persona, PersonaError, PersonaStore, parse_persona
from .refusal import Refusal
from .render import safe_markdown  # persona names are user text, shown in a Markdown status line
from .server_text import current_lang
from .server_text import text as tr
from .settings_form import SETTING_ORDER, clamp_settings, settings_dict


class PersonaHandlers:
    """Persona handlers; needs the host's ``service``, ``personas()``, ``_view()``, ``_write()``,
    ``_read_upload()``, ``_require_admin()`` and ``default_settings()``."""

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

    def pick_persona(self, store, persona_id, request: gr.Request = None):
        """Load a persona into the editor and the settings; mid-chat the switch is noted in the transcript."""
        store = self.service.ensure_store(store)
        personas = self.personas(request, store)
        persona = personas.get(persona_id) if persona_id else None
        if persona:
            store = self.service.set_persona(store, persona.id, personas)
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

    def save_persona(
        self, store, persona_id, name, avatar, system, greeting, dialogue, first_turn,
        temperature, top_p, top_k, rep_penalty, max_new, seed, window, request: gr.Request = None,
    ):  # fmt: skip
        """Save the editor into your own library (editing a built-in or shared persona saves your copy)."""
        values = (temperature, top_p, top_k, rep_penalty, max_new, seed, window)
        return self._save_persona(
            store, persona_id, name, avatar, system, greeting, dialogue, first_turn, values, request, shared=False
        )

    def _save_persona(
        self, store, persona_id, name, avatar, system, greeting, dialogue, first_turn, values, request, shared: bool
    ):
        personas = self.personas(request, store)
        current = personas.get(persona_id or "")
        same_name = current is not None and (name or "").strip() == current.name
        # A new persona, or a renamed built-in/shared one (or one moved between libraries), gets a new id.
        keeps_id = current is not None and (
            (current.shared if shared else not current.builtin and not current.shared) or same_name
        )
        if not keeps_id:
            persona_id = personas.unique_id(name or "persona")
        try:
            persona = self._persona_from_fields(
                persona_id, name, avatar, system, greeting, dialogue, first_turn, values
            )
            persona = personas.save(persona, shared=shared)
        except PersonaError as exc:
            raise Refusal(str(exc)) from None
        status = tr(current_lang(), "saved_shared" if shared else "saved", name=safe_markdown(persona.name))
        return self.persona_choices(persona.id, personas), status

    def save_shared_persona(
        self, store, persona_id, name, avatar, system, greeting, dialogue, first_turn,
        temperature, top_p, top_k, rep_penalty, max_new, seed, window, request: gr.Request = None,
    ):  # fmt: skip
        """Save the editor into the instance-wide library (admins only)."""
        self._require_admin(request)
        values = (temperature, top_p, top_k, rep_penalty, max_new, seed, window)
        return self._save_persona(
            store, persona_id, name, avatar, system, greeting, dialogue, first_turn, values, request, shared=True
        )

    def duplicate_persona(
        self, store, persona_id, name, avatar, system, greeting, dialogue, first_turn,
        temperature, top_p, top_k, rep_penalty, max_new, seed, window, request: gr.Request = None,
    ):  # fmt: skip
        """Save the editor as a new persona of your own named “… (copy)”."""
        values = (temperature, top_p, top_k, rep_penalty, max_new, seed, window)
        personas = self.personas(request, store)
        try:
            copy_name = f"{name or 'Persona'} (copy)"
            persona = self._persona_from_fields(
                personas.unique_id(copy_name), copy_name, avatar, system, greeting, dialogue, first_turn, values
            )
            persona = personas.save(replace(persona, name=copy_name))
        except PersonaError as exc:
            raise Refusal(str(exc)) from None
        status = tr(current_lang(), "created", name=safe_markdown(persona.name))
        return self.persona_choices(persona.id, personas), status, persona.name

    def delete_persona(self, store, persona_id, request: gr.Request = None):
        """Delete one of your personas (a built-in it overrode comes back); admins: a shared one."""
        personas = self.personas(request, store)
        persona = personas.get(persona_id or "")
        if persona is not None and persona.builtin:
            raise Refusal(
                f"“{persona.name}” is a built-in persona and cannot be deleted. "
                "Press Duplicate to make your own copy, which you can edit or delete.",
                duration=10,
            )
        try:
            personas.delete(persona_id or "")
        except PersonaError as exc:
            raise Refusal(str(exc)) from None
        return self.persona_choices(DEFAULT_PERSONA_ID, personas), tr(current_lang(), "deleted")

    def export_persona(self, store, persona_id, request: gr.Request = None):
        """The persona as a JSON file, written only when asked (the Export button); shows its download button."""
        persona = self.personas(request, store).get(persona_id or "")
        if persona is None:
            raise Refusal("Pick a persona to export first.")
        text = json.dumps(persona.to_json(), ensure_ascii=False, indent=2)
        return gr.update(value=self._write(f"{persona.id}.persona.json", text, request), visible=True)

    def import_personas(self, file, store=None, request: gr.Request = None):
        """Import personas from a JSON file (one or a list, at most 100) into your library; each gets a fresh id."""
        text, name = self._read_upload(file)
        personas = self.personas(request, store)
        try:
            added = personas.import_json(text, name)
        except PersonaError as exc:
            raise Refusal(str(exc)) from None
        lang = current_lang()
        more = tr(lang, "and_more", n=len(added) - 10) if len(added) > 10 else ""
        names = ", ".join(p.name for p in added[:10]) + more
        return self.persona_choices(added[-1].id, personas), tr(lang, "imported", names=safe_markdown(names))
