"""The engine: one loaded Qwen-1 chat model with its tokenizer, prompt builder and defaults.

This is the public API every front end (UI, CLI, HTTP) consumes.
"""

from __future__ import annotations

import threading

from .backend import LocalPromptSide
from .backend import split_messages as split_messages  # moved to the torch-free contract module
from .generation import ReplyResult, ReplyStream, TokenConstraint, TokenLogprob
from .info import EngineInfo as EngineInfo  # moved to the torch-free module; re-exported for old imports
from .prompt import PromptBuilder
from .settings import GenerationSettings
from .tokenizer import QwenTokenizer


class Engine(LocalPromptSide):
    """A loaded model. Build it with :func:`qwen_core.load_engine`.

    Implements :class:`~qwen_core.backend.Backend`; the prompt side (``plan_prompt``, ``build_prompt``,
    ``count_tokens``, ``settings``, ``stream_messages``, ``chat``) is :class:`~qwen_core.backend.PromptSide`.
    """

    supports_prompt_logprobs = True

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
        """The one decode worker all replies go through, a :class:`~qwen_core.batching.Batcher` (with the
        compiled step runner when compiled), or None (each reply its own ``generate``: the reference path)."""
        if (not self.max_batch and self.compile is None) or self.model is None:
            return None
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = self._make_worker()
            return self._batcher

    def _make_worker(self):
        from .batching import Batcher

        steps = None
        if self.compile is not None:  # the compiled step runner, inside the same decode loop
            from .compiled import CompiledSteps

            steps = CompiledSteps(self.model, self.info.context_length, self.compile)
        return Batcher(self.model, self.tokenizer.stop_ids, self.max_batch or 1, steps=steps, **self.batch_options)

    def warm_up(self) -> float:
        """Run one 2-token reply through the decode worker (compiling the step when compiled); seconds."""
        from .sampling import RowSampler, SamplingPlan

        plan = SamplingPlan(self.settings(do_sample=False), 0, len(self.tokenizer), self.tokenizer.stop_ids)
        device = self.model.get_input_embeddings().weight.device
        return self.batcher.warm_up(RowSampler(plan, device), self.tokenizer.eod_id)

    # --- generation ----------------------------------------------------------
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
        max_new = self.room_for(prompt_ids, settings)
        stream = ReplyStream(
            self.model, self.tokenizer, prompt_ids, settings, max_new, cancel, self.batcher, constraint=constraint
        )
        self.last_result = stream.result
        return stream

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

        ids = self.scoring_prompt(prompt_ids, top)
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
