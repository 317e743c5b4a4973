"""The context meter's handlers (a mixin of :class:`ui.handlers.Handlers`).

The meter counts the next prompt (system, examples, kept history, the draft) against the window
that decides what is dropped, and marks the dropped turns; it runs after every change to the chat
and, while typing, from the draft alone (:meth:`MeterHandlers.meter_draft`).
"""

from __future__ import annotations

import html
import json

import gradio as gr

from qwen_core.errors import QwenCoreError

from .conversations import ConversationError
from .personas import PersonaError
from .server_text import current_lang, localize
from .server_text import text as tr
from .service import ChatInputError

# What a handler shows as a sentence to the user (not as a server fault).
USER_ERRORS = (ChatInputError, QwenCoreError, PersonaError, ConversationError, ValueError)


def parse_examples(text: str | None) -> list[tuple[str, str]]:
    """The persona editor's example dialogue (JSON ``[[user, assistant], ...]``); bad JSON is ignored here
    (saving the persona reports it)."""
    try:
        pairs = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    if not isinstance(pairs, list):
        return []
    return [(p[0], p[1]) for p in pairs if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)]


class MeterHandlers:
    """Meter handlers; needs the host's ``service``, ``_remember_view()``, ``_view_of()`` and
    ``action_state()``."""

    def meter_view(
        self, store, system, draft, in_first_turn, window, examples=None, request: gr.Request = None
    ):  # fmt: skip
        """:meth:`meter` plus :meth:`action_state`: the meter runs after every change to the chat."""
        store = self.service.ensure_store(store)
        self._remember_view(store, request)
        args = (system, draft, in_first_turn, window, examples)
        return (*self.meter(store, *args), *self.action_state(store))

    def meter_draft(
        self, system, draft, in_first_turn, window, examples=None, raw_open=False, request: gr.Request = None
    ):
        """:meth:`meter_view` while typing: the event carries the draft and the prompt fields only,
        never the store; the rest is counted from the store this page showed last (server-side).
        The raw prompt (the whole history) is sent back only while its panel is open."""
        store = self._view_of(request)
        if store is None:  # not known yet (the page is loading): the meter after load fills it in
            return (gr.skip(),) * 5
        meter, raw = self.meter(store, system, draft, in_first_turn, window, examples)
        return (meter, raw if raw_open else gr.skip(), *self.action_state(store))

    def meter(self, store, system, draft, in_first_turn, window, examples=None):
        """Counts of the next prompt against the window and the context, and the raw prompt."""
        try:
            r = self.service.context(
                self.service.ensure_store(store),
                system,
                draft or "",
                int(window),
                bool(in_first_turn),
                parse_examples(examples),
            )
        except USER_ERRORS as exc:
            return f"<div data-dropped='[]'>⚠️ {html.escape(localize(str(exc)))}</div>", ""
        lang = current_lang()
        # The bar is drawn against max_window_size: the window, not the context, decides what is dropped.
        pct = min(100, round(100 * r.total_tokens / max(1, r.window)))
        dropped = ""
        if r.dropped_turns:
            note = tr(lang, "dropped", n=len(r.dropped_turns), window=r.window)
            dropped = f"<div class='dropped-note' role='status'>{note}</div>"
        counts = tr(
            lang, "meter", total=f"{r.total_tokens:,}", system=f"{r.system_tokens:,}", history=f"{r.history_tokens:,}",
            kept=r.n_turns - len(r.dropped_turns), turns=r.n_turns, draft=f"{r.draft_tokens:,}",
            window=f"{r.window:,}", context=f"{r.context_length:,}",
        )  # fmt: skip
        html_text = (
            f"<div data-dropped='{json.dumps(r.dropped_messages)}' data-window='{r.window}'>{counts}"
            f"<div class='bar' role='progressbar' aria-label='{tr(lang, 'meter_bar')}' aria-valuenow='{pct}' "
            f"aria-valuemin='0' aria-valuemax='100'><div style='width:{pct}%'></div></div>{dropped}</div>"
        )
        return html_text, r.raw_prompt
