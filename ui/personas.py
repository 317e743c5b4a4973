"""Personas: a system prompt with a name, avatar, greeting, example dialogue and sampling settings.

Three libraries, each a folder of ``*.json`` files written atomically:

* built-ins, ``assets/personas/`` — read-only, shared by everyone;
* the instance-wide library, ``DATA/personas/shared/`` — everyone reads it, only admins change it;
* each owner's own, ``DATA/personas/owners/<hash of the owner id>/`` (see :mod:`ui.owner`).

A user sees built-ins + the shared library + their own (their own wins on an id clash).
A malformed file is reported with its path and line and skipped; it never hides the
other personas or stops the app. Folders are indexed: a file is read again only when its
size or modification time changed, so listing personas does not reopen every file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qwen_core.settings import GenerationSettings
from qwen_core.text import lone_surrogate

from .storage import atomic_write_json, safe_name

log = logging.getLogger(__name__)

MAX_PERSONA_BYTES = 256 * 1024
MAX_IMPORT_PERSONAS = 100  # most personas one import may add
MAX_OWN_PERSONAS = 1000  # most personas one owner's library may hold
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
    shared: bool = False  # from the instance-wide library (admins change it)

    def to_json(self) -> dict:
        """The file/export form (``builtin``/``shared`` are where it lives, not what it is)."""
        data = asdict(self)
        data.pop("builtin")
        data.pop("shared")
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


class _FolderIndex:
    """The parsed personas of one folder, re-read per file only when the file changed on disk."""

    def __init__(self, folder: Path, builtin: bool = False, shared: bool = False):
        self.folder = folder
        self.builtin = builtin
        self.shared = shared
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple[int, int, int], Persona | None, str | None]] = {}

    def scan(self) -> tuple[dict[str, Persona], list[str]]:
        """Every usable persona by id, and the problems of the others (file name, never the server path)."""
        try:
            entries = {e.name: e for e in os.scandir(self.folder) if e.name.endswith(".json") and e.is_file()}
        except FileNotFoundError:
            entries = {}
        with self._lock:
            for name in list(self._files):
                if name not in entries:
                    del self._files[name]
            for name, entry in entries.items():
                st = entry.stat()
                # Files are replaced atomically (a new inode per write): the inode catches a rewrite
                # of the same size within the clock's resolution.
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._files.get(name)
                if cached is not None and cached[0] == key:
                    continue
                path = Path(entry.path)
                try:
                    persona = load_persona_file(path, self.builtin)
                    if self.shared:
                        persona = replace(persona, shared=True)
                    self._files[name] = (key, persona, None)
                except PersonaError as exc:
                    self._files[name] = (key, None, str(exc).replace(str(path), name))
            found = {p.id: p for _, p, _ in (self._files[n] for n in sorted(self._files)) if p is not None}
            errors = [e for _, _, e in (self._files[n] for n in sorted(self._files)) if e is not None]
        return found, errors

    def has(self, persona_id: str) -> bool:
        """Whether this folder holds a persona file of that id."""
        return (self.folder / f"{safe_name(persona_id)}.json").is_file()


_INDEXES: dict[tuple[str, bool, bool], _FolderIndex] = {}
_INDEXES_LOCK = threading.Lock()


def _index(folder: Path, builtin: bool = False, shared: bool = False) -> _FolderIndex:
    """One index per folder for the whole process, so every view of a library shares it."""
    key = (str(folder.resolve()), builtin, shared)
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = _FolderIndex(folder, builtin, shared)
        return _INDEXES[key]


class PersonaStore:
    """What one caller sees: built-ins, the shared library (if any) and their own library on top.

    ``user_dir`` is the caller's own library (None: read-only). ``shared_dir`` is the
    instance-wide library; ``can_write_shared`` (admins) lets ``shared=True`` writes reach it.
    """

    def __init__(
        self,
        builtin_dir: Path,
        user_dir: Path | None,
        shared_dir: Path | None = None,
        can_write_shared: bool = False,
    ):
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self.shared_dir = shared_dir
        self.can_write_shared = can_write_shared and shared_dir is not None
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def _layers(self) -> list[_FolderIndex]:
        layers = [_index(self.builtin_dir, builtin=True)]
        if self.shared_dir is not None:
            layers.append(_index(self.shared_dir, shared=True))
        if self.user_dir is not None:
            layers.append(_index(self.user_dir))
        return layers

    def all(self) -> list[Persona]:
        """Every usable persona, default assistant first; problems land in ``self.errors``."""
        found: dict[str, Persona] = {}
        errors: list[str] = []
        for layer in self._layers():
            personas, problems = layer.scan()
            found.update(personas)
            errors += problems
        self.errors = errors
        return sorted(
            found.values(),
            key=lambda p: (p.id != DEFAULT_PERSONA_ID, 0 if p.builtin else 1 if p.shared else 2, p.name.lower()),
        )

    def get(self, persona_id: str) -> Persona | None:
        """One persona by id."""
        return next((p for p in self.all() if p.id == persona_id), None)

    def _target(self, shared: bool) -> Path:
        if shared:
            if not self.can_write_shared:
                raise PersonaError("Only an admin (--admins) can change the shared persona library.")
            return self.shared_dir
        if self.user_dir is None:
            raise PersonaError(
                "Personas can't be saved here: this browser has no persona library yet (reload the page)."
            )
        return self.user_dir

    def save(self, persona: Persona, shared: bool = False) -> Persona:
        """Create or replace a persona in the caller's own library (or, for admins, the shared one).

        Built-ins and other libraries are never changed: saving a built-in's id writes a copy.
        """
        folder = self._target(shared)
        persona = parse_persona(persona.to_json(), "persona")  # same checks as files
        path = folder / f"{persona.id}.json"
        with self._lock:
            if not path.is_file() and self._count(folder) >= MAX_OWN_PERSONAS:
                raise PersonaError(f"This library already holds {MAX_OWN_PERSONAS} personas; delete some first.")
            atomic_write_json(path, persona.to_json())
        return replace(persona, shared=shared)

    @staticmethod
    def _count(folder: Path) -> int:
        try:
            return sum(1 for e in os.scandir(folder) if e.name.endswith(".json"))
        except FileNotFoundError:
            return 0

    def unique_id(self, name: str, taken: set[str] | None = None) -> str:
        """An id for a new persona that no persona this caller sees uses (nor any in ``taken``)."""
        base = safe_name(name, "persona").lower()
        if taken is None:
            taken = {p.id for p in self.all()}
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def delete(self, persona_id: str, shared: bool = False) -> None:
        """Delete one of the caller's own personas (admins: ``shared=True`` deletes from the shared library)."""
        name = f"{safe_name(persona_id)}.json"
        own = self.user_dir / name if self.user_dir is not None else None
        if not shared and own is not None and own.is_file():
            with self._lock:
                own.unlink()
            return
        if self.shared_dir is not None and (self.shared_dir / name).is_file():
            if not self.can_write_shared:
                raise PersonaError(
                    f"'{persona_id}' belongs to the shared library; only an admin (--admins) can delete it."
                )
            with self._lock:
                (self.shared_dir / name).unlink()
            return
        raise PersonaError(f"'{persona_id}' is a built-in persona or does not exist; only your own can be deleted")

    def import_json(self, text: str, source: str = "import", shared: bool = False) -> list[Persona]:
        """Import one persona or a list (at most :data:`MAX_IMPORT_PERSONAS`); each gets a fresh id."""
        folder = self._target(shared)
        if len(text.encode("utf-8", "replace")) > MAX_PERSONA_BYTES * 16:
            raise PersonaError(f"{source}: file too large")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PersonaError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        items = data if isinstance(data, list) else [data]
        if len(items) > MAX_IMPORT_PERSONAS:
            raise PersonaError(
                f"{source}: holds {len(items)} personas; one import may add at most {MAX_IMPORT_PERSONAS}. "
                "Split the file and import the parts one by one."
            )
        if self._count(folder) + len(items) > MAX_OWN_PERSONAS:
            raise PersonaError(f"{source}: the library would hold more than {MAX_OWN_PERSONAS} personas")
        parsed = [parse_persona(item, f"{source}[{i}]") for i, item in enumerate(items)]
        taken = {p.id for p in self.all()}  # listed once, not once per persona
        added = []
        for p in parsed:
            fresh = replace(p, id=self.unique_id(p.name, taken))
            taken.add(fresh.id)
            added.append(self.save(fresh, shared))
        return added


class PersonaLibraries:
    """Every library on disk; :meth:`view` gives one caller's :class:`PersonaStore`."""

    def __init__(self, builtin_dir: Path, root: Path):
        self.builtin_dir = builtin_dir
        self.root = root  # DATA/personas
        self.shared_dir = root / "shared"
        self.owners_dir = root / "owners"

    def migrate(self) -> int:
        """Move personas of the old single-library layout (``DATA/personas/*.json``) into the shared library."""
        old = sorted(self.root.glob("*.json")) if self.root.is_dir() else []
        if not old:
            return 0
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        moved = 0
        for path in old:
            target = self.shared_dir / path.name
            if target.exists():  # never overwrite: keep the old file beside it under a new name
                target = self.shared_dir / f"{path.stem}-migrated{path.suffix}"
            os.replace(path, target)
            moved += 1
        log.info("migrated %d personas to the shared library %s/", moved, self.shared_dir)
        return moved

    def view(self, owner=None) -> PersonaStore:
        """What ``owner`` (a :class:`ui.owner.Owner`; None: nobody) sees and may change."""
        own = self.owners_dir / owner.folder_name if owner is not None and owner.id else None
        admin = bool(owner is not None and owner.is_admin)
        return PersonaStore(self.builtin_dir, own, self.shared_dir, can_write_shared=admin)
