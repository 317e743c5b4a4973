"""The llama.cpp engine: a :class:`~qwen_core.backend.Backend` whose forward passes run in llama.cpp.

Only the forward pass moves: prompts are ours (token ids from :class:`~qwen_core.prompt.PromptBuilder`,
fed to llama.cpp as tokens, never as text), and every token is chosen by our own sampler
(:func:`~qwen_core.sampling.sample_rows` on llama.cpp's float32 logits), so settings, seeds,
stop tokens, logprobs and constraints behave as on the torch engine. The reply streams are
:class:`~qwen_core.generation.ReplyStream` s fed by :class:`LlamaCppWorker`, which has the
batcher's ``submit`` interface, so text pieces, stop handling and finish reasons are the same code.

One llama.cpp context serves one reply at a time (replies queue, first come first served); it
keeps the K/V of the last prompt and reply, so a follow-up turn, whose prompt starts with the
previous one, prefills only its new tokens.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from ..backend import LocalPromptSide
from ..generation import ReplyResult, ReplyStream
from ..info import EngineInfo
from ..prompt import PromptBuilder
from ..sampling import RowSampler, SamplingPlan, TokenConstraint, sample_rows
from ..settings import GenerationSettings
from ..tokenizer import QwenTokenizer

_CPU = torch.device("cpu")


class LlamaCppWorker:
    """One thread that runs replies on a ``llama_cpp.Llama`` one after another (the Batcher's ``submit``)."""

    def __init__(self, llama, stop_ids: Sequence[int], prefill_chunk: int = 512):
        self.llama = llama
        self.stop_ids = tuple(stop_ids)
        self.prefill_chunk = prefill_chunk
        self.n_vocab = int(llama.n_vocab())
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.reused_tokens = 0  # prompt tokens whose K/V came from the previous reply (for tests and stats)
        self.prefilled_tokens = 0
        self.hits = self.misses = 0  # replies that did / did not reuse some of the previous K/V
        self.running = False
        self.kv_bytes = 0  # the context's K/V buffer (set by the loader), the "capacity" of its reuse

    def stats(self) -> dict:
        """Replies running and waiting, and the K/V reuse counters (the Batcher's ``stats`` shape)."""
        looked = self.hits + self.misses
        reuse = {
            "capacity_bytes": self.kv_bytes,
            "bytes": self.kv_bytes * self.llama.n_tokens // max(1, self.llama.n_ctx()) if self.llama else 0,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / looked if looked else 0.0,
            "tokens_reused": self.reused_tokens,
        }
        with self._cond:
            return {"mode": "llama.cpp", "rows": int(self.running), "pending": len(self._queue), "prefix_cache": reuse}

    def submit(self, prompt, sampler: RowSampler, max_new: int, cancel, streamer, errors: list) -> threading.Event:
        """Queue a reply; the returned event is set once it has ended (after ``streamer.end()``)."""
        prompt = list(prompt)
        return self._enqueue(lambda: self._reply(prompt, sampler, max_new, cancel, streamer, errors), errors, streamer)

    def run_exclusive(self, fn):
        """Run ``fn()`` on the worker thread between replies and return its result (or raise its exception)."""
        out: list = []
        errors: list[BaseException] = []
        self._enqueue(lambda: out.append(fn()), errors, None).wait()
        if errors:
            raise errors[0]
        return out[0]

    def _enqueue(self, fn, errors: list, streamer) -> threading.Event:
        done = threading.Event()
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._queue.append((fn, errors, streamer, done))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="qwen-llamacpp")
                self._thread.start()
            self._cond.notify()
        return done

    def close(self) -> None:
        """Stop taking replies; the running one finishes (its caller cancels it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
            fn, errors, streamer, done = job
            self.running = True
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
                errors.append(exc)
                self.llama.n_tokens = 0  # the context's state is unknown now: start the next reply afresh
            finally:
                self.running = False
                if streamer is not None:
                    streamer.end()
                done.set()

    def _prefill(self, prompt: list[int], cancel: threading.Event) -> bool:
        """Bring the context to ``prompt``, keeping the K/V of the longest common prefix; False if cancelled."""
        llama = self.llama
        cached = llama.input_ids[: llama.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)  # the last prompt token is always fed: its logits pick the first token
        if keep < llama.n_tokens and not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0  # this cache cannot drop a tail: start over
        llama.n_tokens = keep
        self.reused_tokens += keep
        if keep:
            self.hits += 1
        else:
            self.misses += 1
        for start in range(keep, len(prompt), self.prefill_chunk):
            if cancel.is_set():
                return False
            chunk = prompt[start : start + self.prefill_chunk]
            llama.eval(chunk)  # removes K/V past n_tokens first, then decodes in n_batch pieces
            self.prefilled_tokens += len(chunk)
        return True

    def _logits(self) -> torch.Tensor:
        raw = self.llama._ctx.get_logits_ith(-1)
        return torch.from_numpy(np.ctypeslib.as_array(raw, shape=(self.n_vocab,)).copy())[None]

    def _reply(self, prompt, sampler: RowSampler, max_new: int, cancel, streamer, errors: list) -> None:
        if not self._prefill(prompt, cancel):
            return
        ids = list(prompt)
        stops = sampler.plan.stop_ids
        history = lambda members: torch.tensor([ids], dtype=torch.long)  # noqa: E731 - prompt + reply ids
        for generated in range(1, max_new + 1):
            if cancel.is_set():
                return
            token = sample_rows([sampler], self._logits(), history)[0]
            if token < 0:
                errors.append(sampler.error)
                return
            ids.append(token)
            streamer.put(torch.tensor([token]))
            if token in stops or sampler.finished or generated == max_new:
                return
            self.llama.eval([token])


class LlamaReplyStream(ReplyStream):
    """:class:`~qwen_core.generation.ReplyStream` fed by a :class:`LlamaCppWorker` (no torch model)."""

    def __init__(
        self,
        worker: LlamaCppWorker,
        tokenizer: QwenTokenizer,
        prompt_ids: list[int],
        settings: GenerationSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
        constraint: TokenConstraint | None = None,
    ):
        import secrets

        from ..generation import QwenStreamer

        self.cancel_event = cancel or threading.Event()
        self.result = ReplyResult(prompt_tokens=len(prompt_ids))
        self._settings = settings
        self._max_new = max_new_tokens
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        plan = SamplingPlan(settings, seed, len(tokenizer), tokenizer.stop_ids)  # checks logit_bias ids
        self._sampler = RowSampler(plan, _CPU, constraint)
        self._streamer = QwenStreamer(tokenizer, plan.stop_ids)
        self._streamer.next_tokens_are_prompt = False  # the worker puts generated tokens only
        self._pieces: list[str] = []
        self._done = False
        self._started = time.perf_counter()
        self.result.seed = None if settings.greedy else seed
        self._errors: list[BaseException] = []
        self._thread = None
        self.worker_ended = worker.submit(
            prompt_ids, self._sampler, max_new_tokens, self.cancel_event, self._streamer, self._errors
        )


class LlamaCppEngine(LocalPromptSide):
    """A backend whose model runs in llama.cpp (GGUF weights, Q8_0 / Q4_K_M on CPU).

    Build it with :func:`~qwen_core.llamacpp.load_llamacpp_engine`. ``info.decode`` names the
    file type and threads; ``info.context_length`` is the trained context (llama.cpp has no
    dynamic NTK / LogN scaling, which Qwen-1 applies only past it).
    """

    supports_constraints = True  # our sampler masks llama.cpp's logits like the torch engine's
    supports_prompt_logprobs = False
    local_model = True  # decoded in this process although there is no torch ``model`` (server/v1 asks)

    def __init__(self, llama, tokenizer: QwenTokenizer, defaults: GenerationSettings, info: EngineInfo, gguf_path):
        self.llama = llama
        self.gguf_path = gguf_path
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.info = info
        self.prompts = PromptBuilder(tokenizer)
        self.last_result: ReplyResult | None = None
        self.worker = LlamaCppWorker(llama, tokenizer.stop_ids)

    @property
    def batcher(self) -> LlamaCppWorker | None:
        """The decode worker (``stats()`` for /readyz and the Model tab), None once unloaded."""
        return self.worker if self.llama is not None else None

    def stream_prompt(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        constraint: TokenConstraint | None = None,
    ) -> LlamaReplyStream:
        """Stream a reply to ready prompt ids (see :meth:`qwen_core.engine.Engine.stream_prompt`)."""
        if self.llama is None:
            raise RuntimeError("the model was unloaded")
        max_new = self.room_for(prompt_ids, settings)
        stream = LlamaReplyStream(self.worker, self.tokenizer, prompt_ids, settings, max_new, cancel, constraint)
        self.last_result = stream.result
        return stream

    def next_token_logits(self, prompt_ids: list[int]) -> torch.Tensor:
        """float32 logits [model vocab] after ``prompt_ids`` (fidelity checks; runs between replies)."""

        def job() -> torch.Tensor:
            self.worker._prefill(list(prompt_ids), threading.Event())
            return self.worker._logits()[0]

        return self.worker.run_exclusive(job)

    def unload(self) -> None:
        """Free the context and weights; the engine is unusable afterwards."""
        self.worker.close()
        llama, self.llama = self.llama, None
        if llama is not None:
            llama.close()
