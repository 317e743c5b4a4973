"""The one exception a UI handler raises to refuse an action, and the toasts a handler shows.

Their text is in the page's language: a known message (:mod:`ui.messages_zh`) is shown in
中文 when the event being handled comes from a page in 中文 (:func:`ui.server_text.localize`)."""

from __future__ import annotations

import gradio as gr

from ui.server_text import localize


class Refusal(gr.Error):
    """A refused action (bad input, wrong moment): Gradio shows its text as a toast and leaves the
    outputs as they were. It is the user's doing, not a server fault, so no traceback is logged."""

    def __init__(self, message: str, duration: float | None = 8, title: str = "Error", **kwargs):
        super().__init__(localize(message), duration=duration, title=localize(title), print_exception=False, **kwargs)


def notify_info(message: str, duration: float | None = 10) -> None:
    """``gr.Info`` in the page's language."""
    gr.Info(localize(message), duration=duration, title=localize("Info"))


def notify_warning(message: str, duration: float | None = 10) -> None:
    """``gr.Warning`` in the page's language."""
    gr.Warning(localize(message), duration=duration, title=localize("Warning"))
