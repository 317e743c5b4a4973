"""The backend contract: what the UI, ``/chat`` and ``/v1`` may use of an engine, and nothing more.

Every backend (the local :class:`~qwen_core.engine.Engine`, the remote
:class:`~qwen_core.remote.RemoteEngine`, any engine added later) satisfies :class:`Backend`;
every reply stream it returns satisfies :class:`ReplyStreamProtocol`. Front ends must not
reach past these (no ``engine.model``, no private attributes), so a new backend is learned
from this file alone.

What a backend takes: a prompt (token ids from :meth:`Backend.plan_prompt`, or the chat
that :meth:`Backend.stream_chat` plans itself) and :class:`~qwen_core.settings.GenerationSettings`.
What it gives: a stream of text pieces whose ``result`` (a :class:`~qwen_core.info.ReplyResult`)
says, once the stream is exhausted, why it ended (``"stop"``, ``"length"``, ``"cancelled"``,
``"error"``), the prompt and completion token counts, time to first token and speed.

Capabilities a backend may lack are flags, not exceptions found by trying:
``supports_constraints`` (a per-step :class:`~qwen_core.sampling.TokenConstraint`, e.g. JSON
output by a grammar) and ``supports_prompt_logprobs`` (:meth:`Backend.prompt_logprobs`).

:class:`PromptSide` is the torch-free half both engines share: the prompt builder, settings
and the message/chat conveniences built on ``stream_chat``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import InputTooLong
from .info import EngineInfo, ReplyResult
from .messages import Message, split
from .prompt import DEFAULT_SYSTEM, PromptBuilder, PromptPlan
from .settings import GenerationSettings

if TYPE_CHECKING:
    from .tokenizer import QwenTokenizer

__all__ = ["Backend", "EngineInfo", "PromptSide", "ReplyResult", "ReplyStreamProtocol", "split_messages"]


@runtime_checkable
class ReplyStreamProtocol(Protocol):
    """A reply being generated: iterate it for text pieces (already cut at stop strings).

    ``result`` is filled in when iteration ends (finish reason, token counts, speed);
    ``cancel()`` asks it to stop from any thread (it ends within one token or poll slice);
    ``close()`` stops and frees the slot (idempotent; the context manager calls it);
    ``tokens_so_far`` counts generated tokens while it runs; ``result.logprobs`` holds one
    :class:`~qwen_core.sampling.TokenLogprob` per token when ``settings.logprobs`` asked for
    them and the backend provides them.
    """

    result: ReplyResult

    def __iter__(self) -> Iterator[str]: ...

    def __next__(self) -> str: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> ReplyStreamProtocol: ...

    def __exit__(self, *exc: object) -> None: ...

    @property
    def tokens_so_far(self) -> int: ...

    def text(self) -> str: ...


@runtime_checkable
class Backend(Protocol):
    """An engine the front ends can drive. ``info.decode`` names how it decodes (shown to users)."""

    tokenizer: QwenTokenizer
    info: EngineInfo
    defaults: GenerationSettings
    supports_constraints: bool
    supports_prompt_logprobs: bool

    def settings(self, **gen: Any) -> GenerationSettings:
        """The defaults with ``gen`` applied and checked (raises ValueError naming the bad field)."""
        ...

    def plan_prompt(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        max_window_size: int | None = None,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """The exact prompt for ``query`` and what the window kept and dropped (``reply_prefix``: the
        reply's given start, after the assistant header)."""
        ...

    def plan_messages(
        self,
        messages: Sequence[Message | dict],
        max_window_size: int | None = None,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """:meth:`plan_prompt` for a chat given as :class:`~qwen_core.messages.Message` s."""
        ...

    def build_prompt(
        self, query: str, history: Sequence | None = None, system: str | None = None, max_window_size: int | None = None
    ) -> list[int]:
        """The prompt's token ids (Qwen's ``make_context``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as message content."""
        ...

    def stream_prompt(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        constraint: Any = None,
    ) -> ReplyStreamProtocol:
        """Stream a reply to ready prompt ids. Raises InputTooLong past the context; ``constraint``
        only where ``supports_constraints``."""
        ...

    def stream_chat(
        self, query: str, history: Sequence | None = None, system: str | None = None, **kw: Any
    ) -> ReplyStreamProtocol:
        """Plan the chat's prompt and stream the reply (``cancel=``, ``system_in_first_turn=``,
        ``reply_prefix=``, settings). With ``reply_prefix`` the stream holds only the continuation."""
        ...

    def stream_messages(self, messages: Sequence[Message | dict], **kw: Any) -> ReplyStreamProtocol:
        """Stream a reply to Messages or OpenAI-style dicts (system?, user/assistant turns, ending with user)."""
        ...

    def chat(self, query: str, history: Sequence | None = None, system: str | None = None, **gen: Any) -> str:
        """The whole reply, stripped as Qwen's ``chat()`` strips it."""
        ...

    def prompt_logprobs(self, prompt_ids: list[int], top: int = 0) -> list:
        """Each prompt token's log-probability (for scoring); only where ``supports_prompt_logprobs``."""
        ...

    def tool_constraint(self, plan: Any) -> Any:
        """For a tool plan whose call is forced (tool_choice required/named): a constraint that keeps
        the call's name and JSON arguments valid, for ``stream_prompt(constraint=)``; None when nothing
        is forced or this backend takes no constraints."""
        ...


class PromptSide:
    """The prompt half every backend shares (torch-free): needs ``tokenizer``, ``defaults``, ``info``.

    Subclasses implement ``stream_prompt`` and ``stream_chat``.
    """

    tokenizer: QwenTokenizer
    defaults: GenerationSettings
    info: EngineInfo
    prompts: PromptBuilder
    supports_constraints: bool = False
    supports_prompt_logprobs: bool = False

    def plan_prompt(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        max_window_size: int | None = None,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """The prompt for ``query`` with what it keeps and drops (see :class:`PromptPlan`)."""
        window = self.defaults.max_window_size if max_window_size is None else max_window_size
        return self.prompts.plan(
            query, history, DEFAULT_SYSTEM if system is None else system, window, system_in_first_turn, reply_prefix
        )

    def plan_messages(
        self,
        messages: Sequence[Message | dict],
        max_window_size: int | None = None,
        system_in_first_turn: bool = False,
        reply_prefix: str = "",
    ) -> PromptPlan:
        """The prompt for a chat given as :class:`~qwen_core.messages.Message` s (or OpenAI dicts)."""
        system, history, query = split(messages)
        return self.plan_prompt(query, history, system, max_window_size, system_in_first_turn, reply_prefix)

    def build_prompt(
        self, query: str, history: Sequence | None = None, system: str | None = None, max_window_size: int | None = None
    ) -> list[int]:
        """Token ids of Qwen's ChatML prompt, identical to the original ``make_context``."""
        return self.plan_prompt(query, history, system, max_window_size).ids

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as message content."""
        return len(self.tokenizer.encode(text))

    def settings(self, **gen) -> GenerationSettings:
        """The checkpoint's defaults with ``gen`` applied and checked."""
        return self.defaults.merged(**gen)

    def stream_chat(self, query: str, history: Sequence | None = None, system: str | None = None, **kw):
        raise NotImplementedError

    def stream_messages(
        self, messages: Sequence, *, cancel: threading.Event | None = None, constraint: Any = None, **gen
    ):
        """Stream a reply to Messages or OpenAI-style dicts (system?, then user/assistant turns, ending
        with user); ``reply_prefix=`` and the settings as :meth:`stream_chat` takes them."""
        system, history, query = split(messages)
        if constraint is not None:  # only when given: a backend without constraints keeps its signature
            gen["constraint"] = constraint
        return self.stream_chat(query, history, system, cancel=cancel, **gen)

    def chat(self, query: str, history: Sequence | None = None, system: str | None = None, **gen) -> str:
        """The whole reply, stripped as Qwen's ``chat()`` strips it."""
        with self.stream_chat(query, history, system, **gen) as stream:
            return stream.text().strip()

    def tool_constraint(self, plan: Any) -> Any:
        """None: this backend takes no constraints (a remote server gets no grammar for tool calls)."""
        return None

    def scoring_prompt(self, prompt_ids, top: int) -> list[int]:
        """``prompt_ids`` as a list, checked for :meth:`prompt_logprobs` (non-empty, fits the context,
        ``top`` 0..20); raises ValueError or InputTooLong."""
        ids = list(prompt_ids)
        if not ids:
            raise ValueError("prompt_logprobs needs at least one token")
        if len(ids) > self.info.context_length:
            raise InputTooLong(
                f"The prompt is {len(ids)} tokens but {self.info.model_id} handles at most {self.info.context_length}."
            )
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise ValueError(f"top must be an integer between 0 and 20, got {top!r}")
        return ids

    def prompt_logprobs(self, prompt_ids: list[int], top: int = 0) -> list:
        """Not available on this backend (see ``supports_prompt_logprobs``)."""
        raise NotImplementedError(
            "prompt log-probabilities (echo with logprobs and max_tokens 0) need a model loaded in this "
            f"process; this backend ({self.info.decode}) has none"
        )


class LocalPromptSide(PromptSide):
    """The prompt half of a backend that decodes in this process (transformers, llama.cpp): it knows
    the context length, so it checks a prompt fits and takes token constraints.

    Subclasses implement ``stream_prompt(prompt_ids, settings, cancel, constraint=None)``.
    """

    supports_constraints = True

    def tool_constraint(self, plan: Any) -> Any:
        """The forced call's name and arguments as a grammar (:func:`qwen_core.grammar.tool_constraint`),
        or None when the plan forces nothing."""
        if not getattr(plan, "forced_prefix", None):
            return None
        from .grammar import tool_constraint  # torch and llguidance: only when a call is forced

        config = getattr(getattr(self, "model", None), "config", None)  # logits rows: 151,936 for Qwen-1
        return tool_constraint(plan, self.tokenizer, int(getattr(config, "vocab_size", 0) or len(self.tokenizer)))

    def room_for(self, prompt_ids: list[int], settings: GenerationSettings) -> int:
        """How many new tokens the reply may take; raises :class:`InputTooLong` if the prompt fills the context."""
        limit = self.info.context_length
        if len(prompt_ids) >= limit:
            raise InputTooLong(
                f"The prompt is {len(prompt_ids)} tokens but {self.info.model_id} handles at most {limit}. "
                "Shorten the message, or lower max_window_size so fewer past turns are kept."
            )
        return min(settings.max_new_tokens, limit - len(prompt_ids))

    def stream_chat(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        *,
        cancel: threading.Event | None = None,
        system_in_first_turn: bool = False,
        constraint: Any = None,
        reply_prefix: str = "",
        **gen,
    ):
        """Stream the reply to ``query`` as text pieces.

        ``reply_prefix``: the reply's given start, written into the prompt after the assistant
        header; the stream (and ``result.text``) holds only what the model writes after it, so
        the caller joins the two (Continue, "Start reply with…").

        ``gen``: any :class:`GenerationSettings` field (do_sample, temperature, top_p, top_k,
        repetition_penalty, max_new_tokens, seed, max_window_size, presence_penalty,
        frequency_penalty, min_p, logit_bias, min_tokens, ignore_eos, stop_token_ids, logprobs).
        The returned stream's ``result`` says why it ended, with token counts and speed, once it
        is exhausted. ``constraint``: a token constraint (see the backend's ``stream_prompt``).
        """
        settings = self.settings(**gen)
        plan = self.plan_prompt(query, history, system, settings.max_window_size, system_in_first_turn, reply_prefix)
        return self.stream_prompt(plan.ids, settings, cancel, constraint)


def split_messages(messages: Sequence[dict | Message]) -> tuple[str, list[tuple[str, str]], str]:
    """``[{"role", "content"}, ...]`` → (system, history pairs, query), checking the order of roles
    (kept for old imports; see :func:`qwen_core.messages.split`)."""
    return split(messages)
