"""The one exception a UI handler raises to refuse an action."""

from __future__ import annotations

import gradio as gr


class Refusal(gr.Error):
    """A refused action (bad input, wrong moment): Gradio shows its text as a toast and leaves the
    outputs as they were. It is the user's doing, not a server fault, so no traceback is logged."""

    def __init__(self, message: str, duration: float | None = 8, **kwargs):
        super().__init__(message, duration=duration, print_exception=False, **kwargs)
