"""Qwen-1's ChatML prompt, built token by token as the original ``make_context`` builds it.

Role and content are encoded separately and joined with a lone ``"\\n"`` id: encoding
the rendered string instead gives different ids at the segment borders. History is
kept newest-first while ``system + kept turns`` stays under ``max_window_size``
(the query is not counted, as in the original); the first turn that doesn't fit
drops itself and every older turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .messages import DEFAULT_SYSTEM, Message, split
from .tokenizer import IM_END, IM_START, QwenTokenizer

__all__ = ["DEFAULT_SYSTEM", "PromptBuilder", "PromptPlan", "normalize_history"]
Turn = tuple[str, str | None]


@dataclass(frozen=True)
class PromptPlan:
    """A built prompt and how it was made, for the UI's context meter and raw-prompt view."""

    ids: list[int]
    text: str  # the exact ChatML text the ids spell
    n_turns: int  # history turns given
    kept_from: int  # index of the oldest kept turn; turns before it were dropped
    system_tokens: int
    history_tokens: int  # tokens of the kept turns
    query_tokens: int  # tokens of the current query turn and the assistant header (and the reply prefix)
    reply_prefix_tokens: int = 0  # tokens of the reply's given start, the prompt's last ids

    @property
    def dropped_turns(self) -> list[int]:
        """Indices (oldest = 0) of the history turns this prompt leaves out."""
        return list(range(self.kept_from))

    @property
    def n_tokens(self) -> int:
        """Length of the prompt in tokens."""
        return len(self.ids)


def normalize_history(history: Sequence | None) -> list[Turn]:
    """Accept ``[(user, assistant), ...]`` (lists too); assistant may be ``None`` as in the original."""
    turns: list[Turn] = []
    for i, turn in enumerate(history or ()):
        if not isinstance(turn, (tuple, list)) or len(turn) != 2:
            raise ValueError(f"history[{i}] must be a (user, assistant) pair, got {turn!r:.80}")
        user, assistant = turn
        if not isinstance(user, str) or not (assistant is None or isinstance(assistant, str)):
            raise ValueError(f"history[{i}] must hold text: (str, str or None)")
        turns.append((user, assistant))
    return turns


class PromptBuilder:
    """Builds Qwen-1 ChatML prompts for one tokenizer."""

    def __init__(self, tokenizer: QwenTokenizer):
        self.tok = tokenizer
        self._nl = tokenizer.nl_ids
        self._start = [tokenizer.im_start_id]
        self._end = [tokenizer.im_end_id]
        self._role_ids = {r: tokenizer.encode(r) for r in ("system", "user", "assistant")}

    def _segment(self, role: str, content: str) -> list[int]:
        """``<|im_start|>role\\ncontent<|im_end|>`` with role and content encoded apart."""
        return self._start + self._role_ids[role] + self._nl + self.tok.encode(content) + self._end

    def _turn(self, user: str, assistant: str | None) -> list[int]:
        ids = self._nl + self._segment("user", user) + self._nl
        if assistant is not None:
            ids += self._segment("assistant", assistant)
        return ids

    def plan(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = DEFAULT_SYSTEM,
        max_window_size: int = 6144,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """Build the prompt for ``query`` after ``history`` under ``system``; see the module docstring.

        ``reply_prefix``: the start of the reply, written after ``<|im_start|>assistant\\n`` (encoded
        as content is), so that the model continues it (Continue, "Start reply with…").

        ``system_in_first_turn`` moves a persona out of the system turn into the
        oldest *kept* user message (or the query), as Qwen's maintainers advise for
        the 7B/14B chat models, which follow the system turn weakly. Its tokens
        count against the window like the system turn's.
        """
        if not isinstance(query, str):
            raise ValueError("query must be text")
        if not isinstance(reply_prefix, str):
            raise ValueError("reply_prefix must be text")
        system = DEFAULT_SYSTEM if system is None else system
        turns = normalize_history(history)
        persona = ""
        if system_in_first_turn and system.strip() and system != DEFAULT_SYSTEM:
            persona, system = system + "\n\n", DEFAULT_SYSTEM
        system_ids = self._segment("system", system)
        budget_used = len(system_ids) + (len(self.tok.encode(persona)) if persona else 0)
        kept: list[int] = []
        kept_from = len(turns)
        for index in range(len(turns) - 1, -1, -1):
            turn_ids = self._turn(*turns[index])
            if budget_used + len(turn_ids) + len(kept) >= max_window_size:
                break
            kept = turn_ids + kept
            kept_from = index
        kept_turns = list(turns[kept_from:])
        if persona and kept_turns:
            kept_turns[0] = (persona + kept_turns[0][0], kept_turns[0][1])
            kept = [i for turn in kept_turns for i in self._turn(*turn)]
        elif persona:
            query = persona + query
        tail = self._nl + self._segment("user", query) + self._nl + self._start + self._role_ids["assistant"] + self._nl
        prefix_ids = self.tok.encode(reply_prefix) if reply_prefix else []
        tail += prefix_ids
        text = f"{IM_START}system\n{system}{IM_END}"
        for user, assistant in kept_turns:
            text += f"\n{IM_START}user\n{user}{IM_END}\n"
            if assistant is not None:
                text += f"{IM_START}assistant\n{assistant}{IM_END}"
        text += f"\n{IM_START}user\n{query}{IM_END}\n{IM_START}assistant\n{reply_prefix}"
        return PromptPlan(
            ids=system_ids + kept + tail,
            text=text,
            n_turns=len(turns),
            kept_from=kept_from,
            system_tokens=len(system_ids),
            history_tokens=len(kept),
            query_tokens=len(tail),
            reply_prefix_tokens=len(prefix_ids),
        )

    def plan_messages(
        self,
        messages: Sequence[Message | dict],
        max_window_size: int = 6144,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """The prompt for a chat given as :class:`~qwen_core.messages.Message` s (or OpenAI dicts), ending
        with the user's message; the same ids as :meth:`plan` of its (query, history, system)."""
        system, history, query = split(messages)
        return self.plan(query, history, system, max_window_size, system_in_first_turn, reply_prefix)
