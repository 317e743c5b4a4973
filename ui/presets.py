"""Sampler presets and the generation settings remembered per browser (Generation tab).

The browser keeps ``{"last": {setting: value}, "presets": {name: {setting: value}}}`` in its own
encrypted ``BrowserState`` (not the chat store): the values the user last set are put back on the
next visit, after the persona's, and named presets they saved are offered next to the built-in ones.
Only what the user changes is recorded (``.input``), so values set by the page itself never
overwrite what was remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .refusal import Refusal
from .settings_form import SETTING_ORDER, SLIDER_RANGES

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


class PresetActions:
    """Handlers, bound to the page's :class:`ui.handlers.Handlers` (for the model defaults)."""

    def __init__(self, handlers):
        self.h = handlers

    def _context(self) -> int | None:
        engine = self.h.service.manager.engine
        return engine.info.context_length if engine is not None else None

    def remember(self, saved, *values):
        """A setting changed by the user: remember every setting's value for this browser."""
        state = saved_state(saved)
        state["last"] = clean(dict(zip(SETTING_ORDER, values, strict=True)), self._context())
        return state

    def restore(self, saved):
        """On page load, after the persona's settings: the values this browser last used."""
        last = saved_state(saved)["last"]
        choices = gr.update(choices=[DEFAULTS, *BUILTIN, *saved_state(saved)["presets"]])
        return choices, *[last[k] if k in last else gr.skip() for k in SETTING_ORDER]

    def apply(self, saved, name):
        """A preset picked: its values into the sliders (and remembered, like any change)."""
        state = saved_state(saved)
        if name == DEFAULTS:
            values = dict(zip(SETTING_ORDER, self.h.default_settings(), strict=True))
        else:
            values = state["presets"].get(name) or BUILTIN.get(name) or {}
        out = [values[k] if k in values and values[k] is not None else gr.skip() for k in SETTING_ORDER]
        return *out, gr.update(value=name)

    def save(self, saved, name, *values):
        """Save the sliders' values as a named preset of this browser."""
        name = " ".join((name or "").split())[:60]
        if not name:
            raise Refusal("Give the preset a name first.", duration=6)
        if name in BUILTIN or name == DEFAULTS:
            raise Refusal(f"“{name}” is a built-in preset; choose another name.", duration=6)
        state = saved_state(saved)
        if name not in state["presets"] and len(state["presets"]) >= MAX_PRESETS:
            raise Refusal(
                f"This browser keeps at most {MAX_PRESETS} presets; save over one of them (same name).", duration=8
            )
        state["presets"][name] = clean(dict(zip(SETTING_ORDER, values, strict=True)), self._context())
        gr.Info(f"Preset “{name}” saved in this browser.", duration=4)
        return state, gr.update(choices=[DEFAULTS, *BUILTIN, *state["presets"]], value=name)


def wire_presets(page, h, loaded) -> None:
    """Connect the presets; ``loaded`` is the page's load event (restoring runs after it)."""
    p, c = page, page.presets
    actions = PresetActions(h)
    loaded.then(actions.restore, [c.saved], [c.pick, *p.settings], show_progress="hidden")
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
