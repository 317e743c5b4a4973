"""Single-stream decode with a static KV cache and ``torch.compile`` (CUDA graphs on a GPU).

Eager decoding of a small model on a GPU is bound by launch overhead, not by memory
bandwidth: each token launches hundreds of small kernels from Python. A static KV cache
gives every decode step the same shapes, so transformers' ``generate`` can run the step
through ``torch.compile`` (mode ``reduce-overhead``: one CUDA graph replay per token).

The price is that replies run one at a time (on one long-lived thread: compiled graphs and
CUDA-graph trees are recorded per thread) and that each cache size is a graph of its own.
Cache sizes are therefore bucketed (powers of two from ``min_cache`` up to the model's
context), each bucket's cache is kept and reused, and the smallest is compiled at load so
the first reply does not pay for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

# torch and transformers are imported where used: CompileSettings is read by the loader,
# which must stay cheap to import.

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileSettings:
    """How the compiled decode path is built; bounds checked here, once."""

    backend: str = "inductor"
    mode: str = "reduce-overhead"  # CUDA graphs on a GPU; plain inductor code on a CPU
    fullgraph: bool = True  # the Qwen-1 forward traces without a break; a break is a bug, not a slowdown
    min_cache: int = 1024  # smallest static-cache bucket (tokens)
    warmup: bool = True  # compile the smallest bucket at load

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError("compile backend must be a torch.compile backend name")
        if self.mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"unknown torch.compile mode {self.mode!r}")
        if not 16 <= self.min_cache <= 1 << 20 or self.min_cache & (self.min_cache - 1):
            raise ValueError("min_cache must be a power of two between 16 and 1,048,576")


def cache_bucket(needed: int, min_cache: int, context_length: int) -> int:
    """Smallest power-of-two cache length >= ``needed`` (at least ``min_cache``, at most the context)."""
    size = min_cache
    while size < needed:
        size *= 2
    return min(size, context_length)


@dataclass
class _Job:
    prompt: list[int]
    sampler: object  # a qwen_core.sampling.RowSampler (None: plain greedy, for the warm-up)
    max_new: int
    cancel: threading.Event
    streamer: object
    errors: list
    done: threading.Event = field(default_factory=threading.Event)


class _Call:
    """A function run on the decoder's thread for another thread (e.g. prompt scoring)."""

    def __init__(self, fn) -> None:
        self.fn, self.result, self.error = fn, None, None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        finally:
            self.done.set()


class CompiledDecoder:
    """Runs replies one at a time through ``generate`` with a bucketed static cache, compiled.

    Has the :class:`~qwen_core.batching.Batcher` interface (``submit``, ``stats``, ``close``),
    so :class:`~qwen_core.generation.ReplyStream` uses either the same way.
    """

    def __init__(self, model, stop_ids, pad_id: int, context_length: int, settings: CompileSettings):
        from transformers import CompileConfig

        self.model = model
        self.settings = settings
        self.context_length = context_length
        self._stops = list(stop_ids)
        self._pad = pad_id
        self._device = model.get_input_embeddings().weight.device
        config = CompileConfig(backend=settings.backend, mode=settings.mode, fullgraph=settings.fullgraph)
        config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        self._compile_config = config
        self._caches: dict = {}  # bucket -> StaticCache
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        self.replies = 0
        self.first_reply_seconds: dict[int, float] = {}  # bucket -> its first (compiling) reply's time
        self._thread = threading.Thread(target=self._loop, daemon=True, name="qwen-compiled")
        self._thread.start()

    # --- public -------------------------------------------------------------
    def submit(self, prompt, sampler, max_new: int, cancel, streamer, errors: list) -> threading.Event:
        """Queue a reply; the returned event is set once it has ended (after ``streamer.end()``)."""
        job = _Job(list(prompt), sampler, max_new, cancel, streamer, errors)
        # generate() hands the streamer the prompt first; the streamer skips it.
        streamer.next_tokens_are_prompt = True
        with self._lock:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._waiting += 1
        self._jobs.put(job)
        return job.done

    def run_exclusive(self, fn):
        """Run ``fn()`` on the decoder's thread between replies (never beside a reply's forwards)."""
        call = _Call(fn)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model was unloaded")
        self._jobs.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def warm_up(self) -> float:
        """Compile the smallest bucket now (a 2-token reply to a 1-token prompt); returns seconds."""
        from .generation import QwenStreamer

        class _Sink(QwenStreamer):  # a streamer nobody reads: drop the text
            def __init__(self) -> None:
                pass

            def put(self, value) -> None:
                pass

            def end(self) -> None:
                pass

        started = time.perf_counter()
        errors: list = []
        self.submit([self._pad], None, 2, threading.Event(), _Sink(), errors).wait()
        if errors:
            raise errors[0]
        return time.perf_counter() - started

    def stats(self) -> dict:
        """Replies waiting, cache buckets compiled, and each bucket's first (compiling) reply time."""
        with self._lock:
            return {
                "mode": "compiled single-stream",
                "pending": self._waiting,
                "replies": self.replies,
                "buckets": sorted(self._caches),
                "first_reply_seconds": {str(k): round(v, 2) for k, v in self.first_reply_seconds.items()},
            }

    def close(self) -> None:
        """Finish the reply in flight and those queued, then stop; new submissions are refused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._caches.clear()

    # --- worker -------------------------------------------------------------
    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, _Call):
                job.run()
                continue
            with self._lock:
                self._waiting -= 1
            try:
                if not job.cancel.is_set():
                    self._run(job)
                else:
                    job.streamer.end()
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                job.errors.append(exc)
                job.streamer.end()
            finally:
                job.done.set()

    def _run(self, job: _Job) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from .generation import CancelCriteria

        bucket = cache_bucket(len(job.prompt) + job.max_new, self.settings.min_cache, self.context_length)
        max_new = min(job.max_new, bucket - len(job.prompt))
        cache = self._cache(bucket)
        first = bucket not in self.first_reply_seconds
        started = time.perf_counter()
        input_ids = torch.tensor([job.prompt], dtype=torch.long, device=self._device)
        sampler = job.sampler
        # The same sampling code as the batch (qwen_core.sampling), as generate's logits processor.
        processors = sampler.logits_processors() if sampler is not None else LogitsProcessorList()
        stops = sorted(sampler.plan.stop_ids) if sampler is not None else self._stops
        criteria = [CancelCriteria(job.cancel), *(sampler.stopping_criteria() if sampler is not None else [])]
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new,
            eos_token_id=stops,
            pad_token_id=self._pad,
            use_cache=True,
            compile_config=self._compile_config,
        )
        with self.model.pinned(self.model.prefill_alphas(len(job.prompt))):
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                past_key_values=cache,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList(criteria),
                streamer=job.streamer,
            )
        with self._lock:
            self.replies += 1
            if first:
                self.first_reply_seconds[bucket] = time.perf_counter() - started

    def _cache(self, bucket: int):
        from transformers import StaticCache

        cache = self._caches.get(bucket)
        if cache is None:
            # Kept for the engine's life: the compiled graph is specialised on these tensors.
            cache = StaticCache(config=self.model.config, max_cache_len=bucket)
            self._caches[bucket] = cache
        else:
            cache.reset()
        return cache
