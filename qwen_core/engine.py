"""The engine: one loaded Qwen-1 chat model with its tokenizer, prompt builder and defaults.

This is the public API every front end (UI, CLI, HTTP) consumes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InputTooLong
from .generation import ReplyResult, ReplyStream, TokenConstraint, TokenLogprob
from .prompt import DEFAULT_SYSTEM, PromptBuilder, PromptPlan
from .settings import GenerationSettings
from .tokenizer import QwenTokenizer


@dataclass(frozen=True)
class EngineInfo:
    """What is loaded, for the model panel and health endpoints."""

    model_id: str
    path: str
    precision: str
    dtype: str
    device: str
    device_map: dict
    attn_implementation: str
    n_params: int
    weight_bytes: int
    context_length: int  # longest prompt + reply the model handles
    seq_length: int  # trained context
    load_seconds: float
    decode: str = "eager"  # "batched", "eager", or "compiled (<backend>, <mode>)"


class Engine:
    """A loaded model. Build it with :func:`qwen_core.load_engine`."""

    def __init__(
        self,
        model,
        tokenizer: QwenTokenizer,
        defaults: GenerationSettings,
        info: EngineInfo,
        max_batch: int = 16,
        compile=None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.info = info
        self.prompts = PromptBuilder(tokenizer)
        self.last_result: ReplyResult | None = None
        # max_batch > 0: replies running at once are decoded together in one batch
        # (continuous batching); 0: each reply runs its own ``generate`` (no batching).
        if not 0 <= max_batch <= 1024:
            raise ValueError("max_batch must be between 0 and 1024")
        self.max_batch = max_batch
        # compile (a CompileSettings): replies run one at a time through a static KV cache
        # and torch.compile instead of the batch (see qwen_core/compiled.py).
        self.compile = compile
        self._batcher = None
        self._batcher_lock = threading.Lock()
        # Batcher keywords (prefix_cache_bytes, prefill_chunk), set by load_engine.
        self.batch_options: dict = {}

    @property
    def batcher(self):
        """The worker all replies go through: the decode :class:`~qwen_core.batching.Batcher`,
        the :class:`~qwen_core.compiled.CompiledDecoder`, or None (each reply its own ``generate``)."""
        if (not self.max_batch and self.compile is None) or self.model is None:
            return None
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = self._make_worker()
            return self._batcher

    def _make_worker(self):
        if self.compile is not None:
            from .compiled import CompiledDecoder

            return CompiledDecoder(
                self.model, self.tokenizer.stop_ids, self.tokenizer.eod_id, self.info.context_length, self.compile
            )
        from .batching import Batcher

        return Batcher(self.model, self.tokenizer.stop_ids, self.max_batch, **self.batch_options)

    # --- prompts -------------------------------------------------------------
    def plan_prompt(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        max_window_size: int | None = None,
        system_in_first_turn: bool = False,
    ) -> PromptPlan:
        """The prompt for ``query`` with what it keeps and drops (see :class:`PromptPlan`)."""
        window = self.defaults.max_window_size if max_window_size is None else max_window_size
        return self.prompts.plan(
            query, history, DEFAULT_SYSTEM if system is None else system, window, system_in_first_turn
        )

    def build_prompt(
        self, query: str, history: Sequence | None = None, system: str | None = None, max_window_size: int | None = None
    ) -> list[int]:
        """Token ids of Qwen's ChatML prompt, identical to the original ``make_context``."""
        return self.plan_prompt(query, history, system, max_window_size).ids

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as message content."""
        return len(self.tokenizer.encode(text))

    # --- generation ----------------------------------------------------------
    def settings(self, **gen) -> GenerationSettings:
        """The checkpoint's defaults with ``gen`` applied and checked."""
        return self.defaults.merged(**gen)

    def stream_prompt(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        constraint: TokenConstraint | None = None,
    ) -> ReplyStream:
        """Stream a reply to ready prompt ids (the lowest level every other call goes through).

        ``constraint``: a :class:`~qwen_core.sampling.TokenConstraint` (one per reply) that masks
        the logits of every step, e.g. to guarantee JSON output.
        """
        limit = self.info.context_length
        if len(prompt_ids) >= limit:
            raise InputTooLong(
                f"The prompt is {len(prompt_ids)} tokens but {self.info.model_id} handles at most {limit}. "
                "Shorten the message, or lower max_window_size so fewer past turns are kept."
            )
        max_new = min(settings.max_new_tokens, limit - len(prompt_ids))
        stream = ReplyStream(
            self.model, self.tokenizer, prompt_ids, settings, max_new, cancel, self.batcher, constraint=constraint
        )
        self.last_result = stream.result
        return stream

    def stream_chat(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        *,
        cancel: threading.Event | None = None,
        system_in_first_turn: bool = False,
        constraint: TokenConstraint | None = None,
        **gen,
    ) -> ReplyStream:
        """Stream the reply to ``query`` as text pieces.

        ``gen``: any :class:`GenerationSettings` field (do_sample, temperature, top_p, top_k,
        repetition_penalty, max_new_tokens, seed, max_window_size, presence_penalty,
        frequency_penalty, min_p, logit_bias, min_tokens, ignore_eos, stop_token_ids, logprobs).
        The returned stream's ``result`` says why it ended, with token counts and speed, once it
        is exhausted. ``constraint``: see :meth:`stream_prompt`.
        """
        settings = self.settings(**gen)
        plan = self.plan_prompt(query, history, system, settings.max_window_size, system_in_first_turn)
        if constraint is None:
            return self.stream_prompt(plan.ids, settings, cancel)
        return self.stream_prompt(plan.ids, settings, cancel, constraint=constraint)

    def chat(self, query: str, history: Sequence | None = None, system: str | None = None, **gen) -> str:
        """The whole reply, stripped as Qwen's ``chat()`` strips it."""
        with self.stream_chat(query, history, system, **gen) as stream:
            return stream.text().strip()

    def stream_messages(
        self,
        messages: Sequence[dict],
        *,
        cancel: threading.Event | None = None,
        constraint: TokenConstraint | None = None,
        **gen,
    ) -> ReplyStream:
        """Stream a reply to OpenAI-style messages (system?, then user/assistant pairs, ending with user)."""
        system, history, query = split_messages(messages)
        if constraint is not None:  # only when given: a backend without constraints keeps its signature
            gen["constraint"] = constraint
        return self.stream_chat(query, history, system, cancel=cancel, **gen)

    def prompt_logprobs(self, prompt_ids: list[int], top: int = 0) -> list[TokenLogprob | None]:
        """Each prompt token's log-probability given the ones before it (None for the first), with the
        ``top`` most probable alternatives: exact fp32 ``log_softmax`` of the model's logits under the
        NTK alpha a prefill of this prompt uses (no temperature, no penalties; the padded vocabulary is
        excluded, as in sampling). For scoring (``/v1/completions`` with ``echo`` and ``max_tokens: 0``).

        Runs on the decode worker between steps, so it never overlaps a running reply's forward.
        """
        if self.model is None:
            raise NotImplementedError(
                "prompt log-probabilities (echo with logprobs and max_tokens 0) need a model loaded in this "
                "process; this engine has none (a remote backend, or the model was unloaded)"
            )
        from .scoring import score_prompt

        ids = list(prompt_ids)
        if not ids:
            raise ValueError("prompt_logprobs needs at least one token")
        if len(ids) > self.info.context_length:
            raise InputTooLong(
                f"The prompt is {len(ids)} tokens but {self.info.model_id} handles at most {self.info.context_length}."
            )
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise ValueError(f"top must be an integer between 0 and 20, got {top!r}")
        job = lambda: score_prompt(self.model, ids, top, len(self.tokenizer))  # noqa: E731
        worker = self.batcher
        if worker is None:  # each reply runs its own generate: forwards already run side by side
            return job()
        return worker.run_exclusive(job)

    def unload_worker(self) -> None:
        """Stop the decode worker after its replies end; the next reply builds a fresh one."""
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()

    def unload(self) -> None:
        """Drop the weights (for switching variants); the engine is unusable afterwards."""
        import gc

        import torch

        self.unload_worker()
        self.model = None
        if self.compile is not None:
            torch._dynamo.reset()  # compiled graphs hold the weights; drop them with the model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def split_messages(messages: Sequence[dict]) -> tuple[str, list[tuple[str, str]], str]:
    """``[{"role", "content"}, ...]`` → (system, history pairs, query), checking the order of roles."""
    msgs = list(messages)
    system = DEFAULT_SYSTEM
    if msgs and msgs[0].get("role") == "system":
        system = str(msgs.pop(0).get("content") or "")
    if not msgs or msgs[-1].get("role") != "user":
        raise ValueError("the last message must come from the user")
    *past, last = msgs
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for i, msg in enumerate(past):
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be text")
        if role == "user":
            if pending is not None:  # two user turns in a row: join them, as a person would read them
                pending += "\n\n" + content
            else:
                pending = content
        elif role == "assistant":
            history.append((pending or "", content))
            pending = None
        else:
            raise ValueError(f"messages[{i}].role must be 'user' or 'assistant' (a system message may only come first)")
    query = last.get("content")
    if not isinstance(query, str):
        raise ValueError("the last message's content must be text")
    if pending is not None:
        query = pending + "\n\n" + query
    return system, history, query
