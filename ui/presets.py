"""Sampler presets and the generation settings remembered per browser, or per login (Generation tab).

The browser keeps ``{"last": {setting: value}, "presets": {name: {setting: value}}}`` in its own
encrypted ``BrowserState`` (not the chat store): the values the user last set are put back on the
next visit, after the persona's, and named presets they saved are offered next to the built-in ones.
With logins (``--auth``) the same state is also kept on the server per login
(:class:`SettingsStore`), so a user finds their presets in every browser they sign in from; the
server's copy is then the one that counts. Only what the user changes is recorded (``.input``), so
values set by the page itself never overwrite what was remembered.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .refusal import Refusal, notify_info
from .settings_form import SETTING_ORDER, SLIDER_RANGES
from .storage import atomic_write_text

SETTINGS_KEY = "qwen-chat-settings-v1"
MAX_PRESETS = 30
# Built-in sampler presets: only the sampling fields (length, seed and window stay as they are).
BUILTIN = {
    "Precise (greedy)": {"temperature": 0.0, "repetition_penalty": 1.1},
    "Balanced": {"temperature": 0.7, "top_p": 0.8, "top_k": 0, "repetition_penalty": 1.1},
    "Creative": {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.05},
}
DEFAULTS = "Model defaults"


@dataclass
class PresetControls:
    """The preset picker, the name a preset is saved under, and the browser's saved values."""

    pick: gr.Dropdown
    name: gr.Textbox
    save: gr.Button
    saved: gr.BrowserState


def settings_state(secret: str) -> gr.BrowserState:
    """The browser's saved settings; created at the top of the page, outside any tab (a tab's
    components mount when it is first opened, and the load event would read it empty)."""
    return gr.BrowserState(None, storage_key=SETTINGS_KEY, secret=secret)


def build_presets(i18n, saved: gr.BrowserState) -> PresetControls:
    """Create the controls where they are called (the Generation tab)."""
    pick = gr.Dropdown(
        label=i18n("preset"), choices=[DEFAULTS, *BUILTIN], value=None, interactive=True, elem_id="preset-pick"
    )
    with gr.Row():
        name = gr.Textbox(label=i18n("preset_name"), max_lines=1, scale=3, elem_id="preset-name")
        save = gr.Button(i18n("save_preset"), size="sm", scale=1, elem_id="save-preset")
    return PresetControls(pick, name, save, saved)


def clean(values: dict | None, context_length: int | None = None) -> dict:
    """Only known settings with numeric values inside their slider's range (a damaged store yields {})."""
    out = {}
    for key, value in (values or {}).items() if isinstance(values, dict) else ():
        if key not in SETTING_ORDER or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = SLIDER_RANGES.get(key, (None, None))
        if key == "max_window_size" and context_length:
            low, high = 1, context_length
        if low is not None and not low <= value <= high:
            continue
        out[key] = value
    return out


def saved_state(saved) -> dict:
    """The browser's saved value as ``{"last": {...}, "presets": {...}}`` (anything else: empty)."""
    saved = saved if isinstance(saved, dict) else {}
    presets = saved.get("presets") if isinstance(saved.get("presets"), dict) else {}
    return {"last": clean(saved.get("last")), "presets": {str(k)[:60]: clean(v) for k, v in presets.items()}}


class SettingsStore:
    """``DATA/settings/<owner hash>.json``: one login's remembered settings and presets.

    The file name is the owner's fixed-length hash (:attr:`ui.owner.Owner.folder_name`), so no user
    text ever names a path; what is read back goes through :func:`saved_state` like the browser's copy.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()

    def load(self, key: str) -> dict | None:
        """The saved state, or None (none yet, or a damaged file: the browser's copy is used then)."""
        try:
            return saved_state(json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def save(self, key: str, state: dict) -> None:
        with self._lock:
            atomic_write_text(self.folder / f"{key}.json", json.dumps(state))


class PresetActions:
    """Handlers, bound to the page's :class:`ui.handlers.Handlers` (for the model defaults and the
    caller's login) and, with logins, the server's :class:`SettingsStore`."""

    def __init__(self, handlers, store: SettingsStore | None = None):
        self.h = handlers
        self.store = store

    def _context(self) -> int | None:
        engine = self.h.service.manager.engine
        return engine.info.context_length if engine is not None else None

    def _login_key(self, request) -> str | None:
        if self.store is None:
            return None
        owner = self.h.owner(request)
        return owner.folder_name if owner.kind == "user" and owner.id else None

    def _state(self, saved, request) -> dict:
        """The caller's state: with a login, only their login's copy on the server (a browser's copy
        may be another login's, who used this browser before), else the browser's."""
        key = self._login_key(request)
        if key:
            return self.store.load(key) or saved_state(None)
        return saved_state(saved)

    def _keep(self, state: dict, request) -> dict:
        key = self._login_key(request)
        if key:
            self.store.save(key, state)
        return state

    def remember(self, saved, request: gr.Request, *values):
        """A setting changed by the user: remember every setting's value for this browser (and login).

        ``request`` comes before ``*values``: Gradio passes it only to a parameter before them."""
        state = self._state(saved, request)
        state["last"] = clean(dict(zip(SETTING_ORDER, values, strict=True)), self._context())
        return self._keep(state, request)

    def restore(self, saved, request: gr.Request = None):
        """On page load, after the persona's settings: the values this browser (or login) last used."""
        state = self._state(saved, request)
        last = state["last"]
        choices = gr.update(choices=[DEFAULTS, *BUILTIN, *state["presets"]])
        return state, choices, *[last[k] if k in last else gr.skip() for k in SETTING_ORDER]

    def apply(self, saved, name, request: gr.Request = None):
        """A preset picked: its values into the sliders (and remembered, like any change)."""
        state = self._state(saved, request)
        if name == DEFAULTS:
            values = dict(zip(SETTING_ORDER, self.h.default_settings(), strict=True))
        else:
            values = state["presets"].get(name) or BUILTIN.get(name) or {}
        out = [values[k] if k in values and values[k] is not None else gr.skip() for k in SETTING_ORDER]
        return *out, gr.update(value=name)

    def save(self, saved, name, request: gr.Request, *values):
        """Save the sliders' values as a named preset of this browser (and login)."""
        name = " ".join((name or "").split())[:60]
        if not name:
            raise Refusal("Give the preset a name first.", duration=6)
        if name in BUILTIN or name == DEFAULTS:
            raise Refusal(f"“{name}” is a built-in preset; choose another name.", duration=6)
        state = self._state(saved, request)
        if name not in state["presets"] and len(state["presets"]) >= MAX_PRESETS:
            raise Refusal(
                f"This browser keeps at most {MAX_PRESETS} presets; save over one of them (same name).", duration=8
            )
        state["presets"][name] = clean(dict(zip(SETTING_ORDER, values, strict=True)), self._context())
        where = "for your login (every browser you sign in from)" if self._login_key(request) else "in this browser"
        notify_info(f"Preset “{name}” saved {where}.", duration=4)
        return self._keep(state, request), gr.update(choices=[DEFAULTS, *BUILTIN, *state["presets"]], value=name)


def wire_presets(page, h, loaded, store: SettingsStore | None = None) -> None:
    """Connect the presets; ``loaded`` is the page's load event (restoring runs after it);
    ``store``: the server's per-login copies (with logins only)."""
    p, c = page, page.presets
    actions = PresetActions(h, store)
    loaded.then(actions.restore, [c.saved], [c.saved, c.pick, *p.settings], show_progress="hidden")
    for component in p.settings:
        component.input(actions.remember, [c.saved, *p.settings], [c.saved], queue=False, show_progress="hidden")
    c.pick.input(actions.apply, [c.saved, c.pick], [*p.settings, c.pick], show_progress="hidden").then(
        actions.remember, [c.saved, *p.settings], [c.saved], show_progress="hidden"
    )
    c.save.click(actions.save, [c.saved, c.name, *p.settings], [c.saved, c.pick])
    # "Reset to model defaults" is remembered too (its handler sets the sliders, which is no .input)
    p.reset_settings.click(None, None, None, queue=False).then(
        actions.remember, [c.saved, *p.settings], [c.saved], show_progress="hidden"
    )
