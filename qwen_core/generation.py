"""Streaming generation: a worker feeds a ``TextIteratorStreamer`` the consumer iterates.

The worker is the engine's :class:`~qwen_core.batching.Batcher` (all replies decoded in
one batch) or, without one, ``model.generate`` in a thread of its own. Cancellation is
a ``threading.Event`` read before every token (by the batcher, or by a
``StoppingCriteria``); closing the stream sets it and waits for the worker to let go,
and the worker's exception (if any) is raised to the consumer. On every path the tokens
are chosen by the reply's :class:`~qwen_core.sampling.SamplingPlan` (one implementation).
"""

from __future__ import annotations

import codecs
import queue
import secrets
import threading
import time
from collections.abc import Iterator

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .errors import GenerationError
from .info import ReplyResult as ReplyResult  # moved to the torch-free module; re-exported
from .sampling import RowSampler, SamplingPlan, TokenConstraint, TokenLogprob
from .settings import GenerationSettings
from .tokenizer import QwenTokenizer

__all__ = ["CancelCriteria", "QwenStreamer", "ReplyResult", "ReplyStream", "TokenConstraint", "TokenLogprob"]


class CancelCriteria(StoppingCriteria):
    """Stops every row as soon as the event is set (checked once per generated token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class QwenStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` that decodes each token once, holding back partial UTF-8.

    The stock streamer re-decodes the whole line on every token; this one feeds each
    token's bytes to an incremental UTF-8 decoder, so a piece never ends mid-character
    and the cost per token is constant. Stop tokens are not shown; ``<|extra_N|>``
    tokens appear as their text, as the original ``chat()`` shows them.
    """

    def __init__(self, tokenizer: QwenTokenizer, stop_ids, timeout: float | None = None):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = frozenset(stop_ids)
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None
        self.stopped_on: int | None = None
        self.started = threading.Event()  # the first token is out, or the reply ended without one

    def put(self, value: torch.Tensor) -> None:
        """Receive new token ids from ``generate`` (the prompt first, which is skipped)."""
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        if self.stopped_on is not None:
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.started.set()
        pieces = []
        for token in value.reshape(-1).tolist():
            self.token_ids.append(token)
            if token in self._stops:
                self.stopped_on = token
                break
            pieces.append(self._decoder.decode(self.tokenizer.token_bytes(token)))
        text = "".join(pieces)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        """Flush a trailing partial character (as U+FFFD, like the original's errors='replace')."""
        tail = self._decoder.decode(b"", final=True)
        self.on_finalized_text(tail, stream_end=True)
        self.started.set()


class ReplyStream(Iterator[str]):
    """An iterator of text pieces of one reply; ``result`` is filled when it ends.

    Close it (or use it as a context manager) to stop early: the worker is cancelled
    within one token and joined.
    """

    def __init__(
        self,
        model,
        tokenizer: QwenTokenizer,
        prompt_ids: list[int],
        settings: GenerationSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
        batcher=None,
        constraint: TokenConstraint | None = None,
    ):
        self.cancel_event = cancel or threading.Event()
        self.result = ReplyResult(prompt_tokens=len(prompt_ids))
        self._settings = settings
        self._max_new = max_new_tokens
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        plan = SamplingPlan(settings, seed, len(tokenizer), tokenizer.stop_ids)  # checks logit_bias ids
        device = model.get_input_embeddings().weight.device
        self._sampler = RowSampler(plan, device, constraint)
        self._streamer = QwenStreamer(tokenizer, plan.stop_ids)
        self._pieces: list[str] = []
        self._done = False
        self._started = time.perf_counter()
        self.result.seed = None if settings.greedy else seed
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        if batcher is not None:
            self._streamer.next_tokens_are_prompt = False  # the batcher puts generated tokens only
            self.worker_ended = batcher.submit(
                prompt_ids, self._sampler, max_new_tokens, self.cancel_event, self._streamer, self._errors
            )
            return
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=GenerationConfig(
                do_sample=False,  # the sampler draws; greedy search takes its pick
                num_beams=1,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(plan.stop_ids),
                pad_token_id=tokenizer.eod_id,
                use_cache=True,
            ),
            logits_processor=self._sampler.logits_processors(),
            stopping_criteria=StoppingCriteriaList(
                [CancelCriteria(self.cancel_event), *self._sampler.stopping_criteria()]
            ),
            streamer=self._streamer,
        )
        # The worker gets no reference to this object, so an abandoned stream is
        # collected and its finaliser cancels the worker.
        self.worker_ended = threading.Event()
        self._thread = threading.Thread(
            target=_run_generate,
            args=(model, kwargs, self._streamer, self._errors, self.worker_ended),
            daemon=True,
            name="qwen-generate",
        )
        self._thread.start()

    def __iter__(self) -> ReplyStream:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            while True:
                piece = self._streamer.__next__()
                if piece:
                    self._pieces.append(piece)
                    return piece
        except StopIteration:
            self._finish()
            raise

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._thread is not None:
            self._thread.join()
        self.worker_ended.wait()
        res, streamer = self.result, self._streamer
        res.text = "".join(self._pieces)
        res.token_ids = streamer.token_ids
        res.completion_tokens = len(streamer.token_ids)
        if self._settings.logprobs is not None:
            res.logprobs = self.logprobs
        res.elapsed_s = time.perf_counter() - self._started
        if streamer.first_token_at is not None:
            res.time_to_first_token_s = streamer.first_token_at - self._started
        if self._errors:
            res.finish_reason = "error"
            error = self._errors[0]
            friendly = _user_facing(error)
            if friendly is error:
                raise error
            raise friendly from error
        if streamer.stopped_on is not None or self._sampler.finished:
            res.finish_reason = "stop"  # a stop token, or the constraint's text is complete
        elif self.cancel_event.is_set() and res.completion_tokens < self._max_new:
            # A cancel that came after the budget ran out (Stop, or close() before the end was read)
            # cut nothing: the reply is whole, so it ended by length.
            res.finish_reason = "cancelled"
        else:
            res.finish_reason = "length"  # max_new_tokens, or the model's context, ran out

    def wait_started(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first token (or the end); True once it is there."""
        return self._streamer.started.wait(timeout)

    def ready_pieces(self) -> list[str]:
        """The pieces already generated, taken without waiting (see :func:`qwen_core.text.coalesced`)."""
        out: list[str] = []
        pending = self._streamer.text_queue
        while not self._done:
            try:
                value = pending.get_nowait()
            except queue.Empty:
                break
            if value is self._streamer.stop_signal:
                pending.put(value)  # the end stays last, for __next__ to finish on
                break
            if value:
                out.append(value)
        self._pieces.extend(out)
        return out

    @property
    def logprobs(self) -> list[TokenLogprob]:
        """One entry per generated token so far (empty unless ``settings.logprobs`` is set); grows while streaming."""
        return self._sampler.logprobs

    @property
    def tokens_so_far(self) -> int:
        """Tokens generated up to now (the stop token included)."""
        return len(self._streamer.token_ids)

    def cancel(self) -> None:
        """Ask the worker to stop; it does so before the next token."""
        self.cancel_event.set()

    def close(self) -> None:
        """Cancel, wait for the worker to end, and drain; safe to call twice."""
        if self._done:
            return
        self.cancel_event.set()
        try:
            for _ in self:
                pass
        except Exception:  # noqa: BLE001 - closing: the error is in result.finish_reason
            pass

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # Never join from a finaliser; just make sure the worker stops soon.
        if not getattr(self, "_done", True):
            self.cancel_event.set()

    def text(self) -> str:
        """Consume the rest and return the whole reply text (unstripped)."""
        for _ in self:
            pass
        return self.result.text


def _run_generate(model, kwargs: dict, streamer: QwenStreamer, errors: list, ended: threading.Event) -> None:
    """Worker body: generate, and on failure hand the exception over and end the stream."""
    try:
        model.generate(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
        errors.append(exc)
        streamer.end()
    finally:
        ended.set()


def _user_facing(exc: BaseException) -> BaseException:
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return GenerationError(
            "The model ran out of memory while generating this reply. Shorten the conversation "
            "(lower max_window_size), lower max_new_tokens, or load a smaller or quantized variant."
        )
    return exc
