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
from .server_text import localize
from .tool_loop import MAX_STEPS, ToolSchemaError, ToolSet, parse_custom_tools

BUILTIN_CHOICES = [("Calculator", "calculator"), ("Date & time", "current_time")]
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

    gr.Markdown(
        f"Tools the model may call in its next replies (Qwen's ReAct format, at most {MAX_STEPS} calls a reply). "
        "Built-in tools run here, safely (no shell, files or network). **Your own tools are never run or made "
        "up:** the chat shows the call and waits, and your next message is its result."
    )
    builtin = gr.CheckboxGroup(BUILTIN_CHOICES, value=[], label=_t("builtin_tools"), elem_id="tools-builtin")
    choice = gr.Dropdown(
        [("auto: the model decides", AUTO), ("required: must call a tool", REQUIRED)],
        value=AUTO,
        label=_t("tool_choice"),
        info="For the first step after each message of yours; small models rarely call tools unless told to.",
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
    status = gr.Markdown(f"Example:\n```json\n{EXAMPLE}\n```", elem_id="tools-status")
    return ToolsPanel(builtin, choice, custom, status, saved)


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
    options = [("auto: the model decides", AUTO), ("required: must call a tool", REQUIRED)]
    options += [(f"call {n}", n) for n in tools.names]
    value = choice if choice in (AUTO, REQUIRED, *tools.names) else AUTO
    if not tools.active:
        return "No tool is enabled: replies are plain chat.", gr.update(choices=options, value=value)
    mine = {t["function"]["name"] for t in tools.custom}
    names = ", ".join(f"`{n}`" + (" (yours: you give its results)" if n in mine else "") for n in tools.names)
    return f"✅ Enabled: {names}", gr.update(choices=options, value=value)


def save(builtin: list | None, choice: str | None, custom: str | None) -> dict:
    """The panel's values as kept in the browser."""
    return {"builtin": list(builtin or []), "choice": choice or AUTO, "custom": custom or ""}


def restore(saved) -> tuple:
    """The panel as this browser left it (nothing saved, or a damaged value: the defaults stay)."""
    if not isinstance(saved, dict):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    builtin = [n for n in saved.get("builtin") or [] if n in BUILTIN_SCHEMAS]
    custom = saved.get("custom") if isinstance(saved.get("custom"), str) else ""
    choice = saved.get("choice") if isinstance(saved.get("choice"), str) else AUTO
    status, choice_update = check_schemas(builtin, choice, custom)
    return builtin, custom, status, choice_update


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
    demo.load(restore, [panel.saved], [panel.builtin, panel.custom, panel.status, panel.choice], queue=False)
