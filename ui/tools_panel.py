"""The Tools tab: which tools a reply may use (built-ins, the user's pasted schemas) and the tool choice.

Layout (:func:`build`, called inside the side column's tabs) and handlers (:func:`tool_set`,
:func:`check_schemas`, :func:`wire`); the loop itself is :mod:`ui.tool_loop`. The panel's values go to
the reply handler as inputs, as the generation settings do, so a reply uses what the page shows.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import gradio as gr

from .builtin_tools import BUILTIN_SCHEMAS
from .i18n import EN
from .server_text import current_lang, localize
from .server_text import text as tr
from .tool_loop import MAX_STEPS, ToolSchemaError, ToolSet, parse_custom_tools

BUILTIN_CHOICES = [("Calculator", "calculator"), ("Date & time", "current_time")]  # English; load localizes
AUTO = "auto"
REQUIRED = "required"
STORAGE_KEY = "qwen-chat-tools-v1"
EXAMPLE = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ],
    indent=2,
)


@dataclass
class ToolsPanel:
    """The Tools tab's components."""

    intro: gr.Markdown
    builtin: gr.CheckboxGroup
    choice: gr.Dropdown
    custom: gr.Code
    status: gr.Markdown
    saved: gr.BrowserState  # the panel's values in this browser, so a reload keeps them

    @property
    def inputs(self) -> list:
        """What the reply handler gets, in :func:`tool_set`'s order."""
        return [self.builtin, self.choice, self.custom]


def tools_state(secret: str) -> gr.BrowserState:
    """The panel's values in this browser, so a reload keeps them (settings, not history: not in the chat
    store). Created at the top of the page, outside any tab: a tab's components mount when it is first
    opened, and the load event would read it empty."""
    return gr.BrowserState(None, storage_key=STORAGE_KEY, secret=secret)


def build(i18n: gr.I18n, saved: gr.BrowserState) -> ToolsPanel:
    """The Tools tab's components (inside an open ``gr.Tab``); ``i18n`` is the page's, ``saved`` from
    :func:`tools_state`."""

    def _t(key: str):
        return i18n(key) if key in EN else key

    # Text is English here and set in the page's language on load (restore): its labels use i18n.
    intro = gr.Markdown(tr("en", "tools_intro", steps=MAX_STEPS), elem_id="tools-intro")
    builtin = gr.CheckboxGroup(BUILTIN_CHOICES, value=[], label=_t("builtin_tools"), elem_id="tools-builtin")
    choice = gr.Dropdown(
        _choice_options("en", ()),
        value=AUTO,
        label=_t("tool_choice"),
        info=tr("en", "tool_choice_info"),
        elem_id="tools-choice",
        interactive=True,
    )
    custom = gr.Code(
        value="",
        language="json",
        lines=6,
        label=_t("custom_tools"),
        elem_id="tools-custom",
        interactive=True,
    )
    status = gr.Markdown(_example("en"), elem_id="tools-status")
    return ToolsPanel(intro, builtin, choice, custom, status, saved)


def _choice_options(lang: str, names) -> list[tuple[str, str]]:
    """The tool-choice menu: auto, required, and one entry per enabled tool."""
    options = [(tr(lang, "tool_auto"), AUTO), (tr(lang, "tool_required"), REQUIRED)]
    return options + [(tr(lang, "tool_call", name=n), n) for n in names]


def _example(lang: str) -> str:
    """The status line while nothing is pasted: an example schema."""
    return f"{tr(lang, 'tools_example')}\n```json\n{EXAMPLE}\n```"


def tool_set(builtin: list | None, choice: str | None, custom: str | None) -> ToolSet:
    """The panel's values as a :class:`ToolSet` (raises :class:`ToolSchemaError` for bad schemas)."""
    names = tuple(n for n in (builtin or []) if n in BUILTIN_SCHEMAS)
    try:
        schemas = parse_custom_tools(custom)
    except ToolSchemaError as exc:
        raise ToolSchemaError(f"Your tools (Tools tab): {exc}") from None
    return ToolSet(builtin=names, custom=schemas, choice=choice or AUTO)


def check_schemas(builtin: list | None, choice: str | None, custom: str | None):
    """Validate the panel as it is edited: a status line, and the tool choices it offers."""
    try:
        tools = tool_set(builtin, choice, custom)
    except ToolSchemaError as exc:
        return f"⚠️ {html.escape(localize(str(exc)))}", gr.update()
    lang = current_lang()
    options = _choice_options(lang, tools.names)
    value = choice if choice in (AUTO, REQUIRED, *tools.names) else AUTO
    if not tools.active:
        return tr(lang, "tools_none"), gr.update(choices=options, value=value)
    mine = {t["function"]["name"] for t in tools.custom}
    yours = tr(lang, "tools_yours")
    names = ", ".join(f"`{n}`" + (yours if n in mine else "") for n in tools.names)
    return tr(lang, "tools_enabled", names=names), gr.update(choices=options, value=value)


def save(builtin: list | None, choice: str | None, custom: str | None) -> dict:
    """The panel's values as kept in the browser."""
    return {"builtin": list(builtin or []), "choice": choice or AUTO, "custom": custom or ""}


def restore(saved) -> tuple:
    """The panel as this browser left it, in the page's language (nothing saved, or a damaged value:
    the defaults stay)."""
    lang = current_lang()
    intro = tr(lang, "tools_intro", steps=MAX_STEPS)
    builtin_choices = [(tr(lang, f"tool_{n}"), n) for _, n in BUILTIN_CHOICES]
    if not isinstance(saved, dict):
        builtin = gr.update(choices=builtin_choices)
        choice = gr.update(choices=_choice_options(lang, ()), info=tr(lang, "tool_choice_info"))
        return intro, builtin, gr.skip(), _example(lang), choice
    builtin = [n for n in saved.get("builtin") or [] if n in BUILTIN_SCHEMAS]
    custom = saved.get("custom") if isinstance(saved.get("custom"), str) else ""
    choice = saved.get("choice") if isinstance(saved.get("choice"), str) else AUTO
    status, choice_update = check_schemas(builtin, choice, custom)
    if isinstance(choice_update, dict):
        choice_update["info"] = tr(lang, "tool_choice_info")
    return intro, gr.update(choices=builtin_choices, value=builtin), custom, status, choice_update


def wire(panel: ToolsPanel, demo: gr.Blocks) -> None:
    """Keep the status line and the tool choices in step with what is enabled and pasted; keep the
    panel in the browser and bring it back on load."""
    quiet = dict(queue=False, show_progress="hidden", trigger_mode="always_last")
    # .input (what the user does), not .change: restore()'s own updates must not start a check that
    # reads the choice before the restored one arrives (it would put "auto" back).
    for trigger in (panel.builtin.input, panel.custom.input):
        trigger(check_schemas, panel.inputs, [panel.status, panel.choice], **quiet)
    for trigger in (panel.builtin.input, panel.choice.input, panel.custom.input):
        trigger(save, panel.inputs, [panel.saved], **quiet)
    outputs = [panel.intro, panel.builtin, panel.custom, panel.status, panel.choice]
    demo.load(restore, [panel.saved], outputs, queue=False)
