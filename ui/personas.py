"""Personas: a system prompt with a name, avatar, greeting, example dialogue and sampling settings.

Built-in personas live in ``assets/personas/*.json`` (read-only); the user's own in
``DATA/personas/*.json``, written atomically. A malformed file is reported with its
path and line and skipped; it never hides the other personas or stops the app.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qwen_core.settings import GenerationSettings
from qwen_core.text import lone_surrogate

from .storage import atomic_write_json, safe_name

MAX_PERSONA_BYTES = 256 * 1024
SETTING_KEYS = {"temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed", "max_window_size"}
DEFAULT_PERSONA_ID = "default-assistant"


class PersonaError(ValueError):
    """A persona file or import that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Persona:
    """One persona card."""

    id: str
    name: str
    system_prompt: str
    avatar: str = "🤖"  # an emoji, or a file name under assets/
    greeting: str = ""
    example_dialogue: list[tuple[str, str]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # suggested sampling settings
    system_in_first_turn: bool = False
    builtin: bool = False

    def to_json(self) -> dict:
        """The file/export form (``builtin`` is where it lives, not what it is)."""
        data = asdict(self)
        data.pop("builtin")
        data["example_dialogue"] = [list(t) for t in self.example_dialogue]
        return data


def parse_persona(data, source: str, builtin: bool = False) -> Persona:
    """Validate decoded JSON into a :class:`Persona`; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise PersonaError(f"{source}: a persona must be a JSON object")
    name = data.get("name")
    prompt = data.get("system_prompt")
    if not isinstance(name, str) or not name.strip():
        raise PersonaError(f"{source}: 'name' must be non-empty text")
    if not isinstance(prompt, str):
        raise PersonaError(f"{source}: 'system_prompt' must be text")
    if len(name) > 100 or len(prompt) > 32_000:
        raise PersonaError(f"{source}: name (max 100) or system_prompt (max 32000 characters) too long")
    dialogue = data.get("example_dialogue") or []
    if not isinstance(dialogue, list) or not all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in dialogue
    ):
        raise PersonaError(f"{source}: 'example_dialogue' must be a list of [user, assistant] text pairs")
    if len(dialogue) > 100 or sum(len(x) for t in dialogue for x in t) > 64_000:
        raise PersonaError(f"{source}: 'example_dialogue' is too long (at most 100 pairs, 64000 characters)")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict) or set(settings) - SETTING_KEYS:
        raise PersonaError(f"{source}: 'settings' may only hold {', '.join(sorted(SETTING_KEYS))}")
    try:
        GenerationSettings().merged(**settings)  # the engine's own checks: types, finite, in range
    except (TypeError, ValueError) as exc:
        raise PersonaError(f"{source}: 'settings': {exc}") from None
    for key, limit in (("avatar", 100), ("greeting", 32_000)):
        if key in data and not isinstance(data[key], str):
            raise PersonaError(f"{source}: '{key}' must be text")
        if len(data.get(key) or "") > limit:
            raise PersonaError(f"{source}: '{key}' is longer than {limit} characters")
    texts = [("name", name), ("system_prompt", prompt), ("avatar", data.get("avatar") or ""),
             ("greeting", data.get("greeting") or "")] + [("example_dialogue", x) for t in dialogue for x in t]  # fmt: skip
    for key, text in texts:
        if lone_surrogate(text) is not None:
            raise PersonaError(f"{source}: '{key}' holds an unpaired surrogate, which is not valid text")
    return Persona(
        id=safe_name(str(data.get("id") or name), "persona"),
        name=name.strip(),
        system_prompt=prompt,
        avatar=data.get("avatar") or "🤖",
        greeting=data.get("greeting") or "",
        example_dialogue=[tuple(t) for t in dialogue],
        settings=dict(settings),
        system_in_first_turn=bool(data.get("system_in_first_turn", False)),
        builtin=builtin,
    )


def load_persona_file(path: Path, builtin: bool = False) -> Persona:
    """Read one persona file; :class:`PersonaError` with path and line on any problem."""
    try:
        if path.stat().st_size > MAX_PERSONA_BYTES:
            raise PersonaError(f"{path}: larger than {MAX_PERSONA_BYTES // 1024} KB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PersonaError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(f"{path}: cannot be read ({exc})") from exc
    persona = parse_persona(data, str(path), builtin)
    return replace(persona, id=path.stem)


class PersonaStore:
    """Built-in plus user personas; the user's override built-ins of the same id."""

    def __init__(self, builtin_dir: Path, user_dir: Path):
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def all(self) -> list[Persona]:
        """Every usable persona, default assistant first; problems land in ``self.errors``."""
        found: dict[str, Persona] = {}
        errors: list[str] = []
        for folder, builtin in ((self.builtin_dir, True), (self.user_dir, False)):
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    persona = load_persona_file(path, builtin)
                except PersonaError as exc:
                    errors.append(str(exc))
                    continue
                found[persona.id] = persona
        self.errors = errors
        ordered = sorted(found.values(), key=lambda p: (p.id != DEFAULT_PERSONA_ID, not p.builtin, p.name.lower()))
        return ordered

    def get(self, persona_id: str) -> Persona | None:
        """One persona by id."""
        return next((p for p in self.all() if p.id == persona_id), None)

    def save(self, persona: Persona) -> Persona:
        """Create or replace a user persona (a built-in is copied to the user folder, never changed)."""
        persona = parse_persona(persona.to_json(), "persona")  # same checks as files
        with self._lock:
            atomic_write_json(self.user_dir / f"{persona.id}.json", persona.to_json())
        return persona

    def unique_id(self, name: str) -> str:
        """An id for a new persona that no existing one uses."""
        base = safe_name(name, "persona").lower()
        taken = {p.id for p in self.all()}
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def delete(self, persona_id: str) -> None:
        """Delete a user persona; built-ins cannot be deleted."""
        path = self.user_dir / f"{safe_name(persona_id)}.json"
        if not path.is_file():
            raise PersonaError(f"'{persona_id}' is a built-in persona or does not exist; only your own can be deleted")
        with self._lock:
            path.unlink()

    def import_json(self, text: str, source: str = "import") -> list[Persona]:
        """Import one persona or a list of them; each gets a fresh id so nothing is overwritten."""
        if len(text.encode("utf-8", "replace")) > MAX_PERSONA_BYTES * 16:
            raise PersonaError(f"{source}: file too large")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PersonaError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        items = data if isinstance(data, list) else [data]
        parsed = [parse_persona(item, f"{source}[{i}]") for i, item in enumerate(items)]
        return [self.save(replace(p, id=self.unique_id(p.name))) for p in parsed]
