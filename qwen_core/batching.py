"""Continuous batching: every reply of one engine is decoded in one shared batch.

One worker thread owns the model. A new reply is prefilled on its own (its prompt's
KV cache is built at batch size 1, so its first token is exactly what ``generate``
gives), then joins the running batch at the next step: its cache is left-padded to
the batch's length (or the batch to its length) and concatenated along the batch
dimension. Each step feeds every row's last token with an explicit position id and a
2-D attention mask that hides the padding, so a row sees exactly its own tokens.
Finished, stopped and cancelled rows leave the batch at once and the columns no row
needs any more are cut off, so a long reply that ended does not tax the others.

Why not transformers' ``ContinuousBatchingManager``: it applies one generation config
to all requests, while every reply here has its own sampling settings, seed and
repetition penalty (each row's :class:`~qwen_core.sampling.SamplingPlan`), and it
knows nothing of Qwen-1's per-prompt dynamic-NTK alpha, which rides along per row
here (``qwen_ntk_alphas`` on the cache, read by :mod:`.modeling`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .memory import Trimmer
from .prefill import PrefillPacer, seeded_cache, stack_kv
from .prefix_cache import PrefixCache, default_capacity_bytes
from .sampling import RowSampler, sample_rows

log = logging.getLogger(__name__)

# Prompts submitted within this many seconds of each other are one burst (a class pressing Send
# together): none owes the others' first replies a steady pace, they are prefilled whole, first
# come first served. Over HTTP such a burst reaches the worker spread over tens of milliseconds, and
# on a fast prefill (a GPU, a small model) the first reply is already answering when the last
# prompt arrives; pacing those prompts against it made the burst's first tokens wait up to 2.6x
# longer (bench/side_by_side.py, 8 users). A stream running longer than this is protected.
BURST_WINDOW_S = 0.25


@dataclass(eq=False)
class _Row:
    """One reply in flight."""

    prompt: list[int]
    sampler: RowSampler  # the reply's sampling plan and state (seeded generator, counts, constraint, logprobs)
    max_new: int
    cancel: threading.Event
    streamer: object  # QwenStreamer: put(tensor) / end()
    errors: list
    done: threading.Event = field(default_factory=threading.Event)
    ids: torch.Tensor | None = None  # prompt + generated, preallocated
    length: int = 0  # valid entries of ids
    generated: int = 0
    cached: int = 0  # tokens whose K/V are in the cache (the last token chosen is fed by the next step)
    alpha: float = 1.0
    submitted: float = field(default_factory=time.perf_counter)
    answering: float = float("inf")  # when its first token was out and it joined the batch

    @property
    def key(self) -> tuple:
        """Rows with equal keys filter their logits together."""
        return self.sampler.plan.key

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.errors.append(error)
        try:
            self.streamer.end()
        finally:
            self.done.set()


class _Job:
    """A function the worker runs between steps for another thread (e.g. prompt scoring)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        finally:
            self.done.set()

    def wait(self):
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(eq=False)
class _Prefill:
    """A reply whose prompt is being prefilled, possibly over several loop turns (chunked)."""

    row: _Row
    cache: DynamicCache | None = None  # None until its prefix-cache lookup ran
    fed: int = 0  # prompt tokens whose K/V are in ``cache``
    token_s: float | None = None  # seconds per token of its last chunk (paces the next one)
    ended: bool = False  # merged into the batch, finished or failed: leaves the queue


class Batcher:
    """Decodes all submitted replies together, at most ``max_batch`` rows at a time.

    Thread-safe. Replies beyond ``max_batch`` wait (in order) for a row to free up;
    admission control with fairness and 429s is the :class:`~qwen_core.scheduler.Scheduler`'s
    job in front of this.

    ``prefix_cache_bytes``: bound of the :class:`~qwen_core.prefix_cache.PrefixCache` that
    lets a prompt reuse the K/V of a cached prefix (None: the device's default, 0: off).
    ``prefill_chunk``: while other replies are decoding, a joining prompt is prefilled at
    most this many tokens per decode step, so running streams keep their pace (0: whole
    prompts at once); ``prefill_share``: and at most about this many decode steps' time
    per step (0: by tokens only). See :class:`~qwen_core.prefill.PrefillPacer`.
    ``steps``: a :class:`~qwen_core.compiled.CompiledSteps` (``--compile``) runs the prefills
    and decode steps of one row at a time through a static cache and a compiled step; None:
    eager steps over the whole batch. Either way this is the one loop every local reply runs in.
    """

    def __init__(
        self,
        model,
        stop_ids,
        max_batch: int = 16,
        trim_interval: float = 30.0,
        *,
        prefix_cache_bytes: int | None = None,
        prefill_chunk: int = 512,
        prefill_share: float = 1.0,
        steps=None,
    ):
        if not 1 <= max_batch <= 1024:
            raise ValueError("max_batch must be between 1 and 1024")
        if prefill_chunk < 0:
            raise ValueError("prefill_chunk must be 0 (whole prompts) or a positive number of tokens")
        self.model = model
        self.steps = steps
        self.max_batch = 1 if steps is not None else max_batch  # a static cache holds one row
        self._stops = frozenset(stop_ids)
        self._device = model.get_input_embeddings().weight.device
        self._cond = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._jobs: deque[_Job] = deque()  # run_exclusive calls, run by the worker between steps
        self._prefilling: deque[_Prefill] = deque()  # admitted, prompt not fully fed yet
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length]; 0 marks left padding
        self._thread: threading.Thread | None = None
        self._closed = False
        self.decode_steps = 0  # decode steps run (for stats and tests)
        self.replies = 0  # replies ended
        self.trimmer = Trimmer(trim_interval)
        self.max_rows_seen = 0
        if prefix_cache_bytes is None:
            prefix_cache_bytes = default_capacity_bytes(self._device)
        self.prefix = PrefixCache(prefix_cache_bytes)
        # Where each layer's K/V live (several GPUs: different devices); the prefix cache
        # keeps all of them on the first one.
        self._layer_devices = [layer.input_layernorm.weight.device for layer in model.model.layers]
        self.prefill_chunk = prefill_chunk
        self.pacer = PrefillPacer(prefill_chunk, prefill_share)
        self.prefill_chunks = 0  # prefill forwards that fed part of a prompt (chunked prefill)

    # --- public -------------------------------------------------------------
    def submit(self, prompt, sampler: RowSampler, max_new: int, cancel, streamer, errors: list) -> threading.Event:
        """Queue a reply; the returned event is set once it has ended (after ``streamer.end()``)."""
        row = _Row(list(prompt), sampler, max_new, cancel, streamer, errors)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._pending.append(row)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="qwen-batcher")
                self._thread.start()
            self._cond.notify()
        return row.done

    def run_exclusive(self, fn):
        """Run ``fn()`` on the worker thread between decode steps (its forwards never overlap a
        reply's) and return its result or raise its exception."""
        job = _Job(fn)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="qwen-batcher")
                self._thread.start()
            self._cond.notify()
        return job.wait()

    def _run_jobs(self) -> None:
        while self._jobs:
            self._jobs.popleft().run()

    def stats(self) -> dict:
        """Rows decoding, prefilling and waiting now, and the prefix cache's counters."""
        with self._cond:
            stats = {
                "mode": "batched",
                "rows": len(self._rows),
                "pending": len(self._pending),
                "prefilling": len(self._prefilling),
                "max_batch": self.max_batch,
                "max_rows_seen": self.max_rows_seen,
                "steps": self.decode_steps,
                "replies": self.replies,
                "prefill_chunks": self.prefill_chunks,
                "prefix_cache": self.prefix.stats(),
            }
            if self.steps is not None:
                stats.update(self.steps.stats())
            return stats

    def warm_up(self, sampler: RowSampler, token: int) -> float:
        """Run a 2-token reply to the 1-token prompt ``[token]`` (with the compiled step runner:
        compiles the smallest cache bucket's step now, so no user waits for it); returns seconds."""
        started = time.perf_counter()
        errors: list = []
        self.submit([token], sampler, 2, threading.Event(), _Sink(), errors).wait()
        if errors:
            raise errors[0]
        return time.perf_counter() - started

    def close(self) -> None:
        """Stop the worker once the replies in flight have ended; new submissions are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.steps is not None:
            self.steps.close()

    # --- worker -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admit = self._wait_for_work()
            if admit is None:
                return
            self._run_jobs()
            self._prefilling.extend(_Prefill(row) for row in admit)
            self._prefill_some()
            if self._rows:
                started = time.perf_counter()
                self._step()  # (its sampling syncs with the device: wall time is the step's time)
                self.pacer.record_step(time.perf_counter() - started)
            # Every step allocates tensors of new shapes; hand the freed ones back to the OS
            # now and then, or RSS creeps up over days (see qwen_core.memory).
            self.trimmer.maybe_trim()

    def _wait_for_work(self) -> list[_Row] | None:
        """The replies to admit now (waiting while there is nothing to do); None once closed."""
        with self._cond:
            trimmed = False
            while not self._pending and not self._rows and not self._prefilling and not self._jobs:
                if self._closed:
                    return None
                # Idle: trim once as soon as the rate limit allows, then sleep until woken.
                due = None if trimmed else self.trimmer.seconds_until_due()
                if due == 0:
                    self.trimmer.maybe_trim()
                    trimmed = True
                else:
                    self._cond.wait(timeout=due)
            admit = []
            while self._pending and len(self._rows) + len(self._prefilling) + len(admit) < self.max_batch:
                admit.append(self._pending.popleft())
            return admit

    def _prefill_some(self) -> None:
        """Feed queued prompts, first come first served: whole, unless a reply that was already
        answering when the prompt arrived (and was not sent with it, :data:`BURST_WINDOW_S`) is
        decoding; then a paced chunk per loop turn.

        A prompt joining running streams is fed in chunks between decode steps (what vLLM
        and SGLang call chunked prefill), so a 4,000-token prompt does not freeze the
        streams already being read for the whole of its prefill. Prompts that arrive
        together (a burst: a class pressing Send at once) owe nothing to each other's
        streams: none of them was being read when the others arrived, so they are prefilled
        back to back and the last one's first token is not delayed by decode steps of the
        first ones (``bench/burst.py``).
        """
        budget: int | None = None
        while self._prefilling:
            job = self._prefilling[0]
            answering = self._answering_before(job.row) if self.pacer.max_tokens else 0  # (0: chunking off)
            limit = None
            if answering:
                if budget is None:
                    budget = self.pacer.budget(
                        len(self._prefilling), answering, on_cache=job.fed > 0, token_s=job.token_s
                    )
                if budget <= 0:
                    return
                limit = budget
            fed = self._advance(job, limit)
            if job.ended:
                self._prefilling.popleft()
            if limit is not None:
                budget -= fed

    def _answering_before(self, row: _Row) -> int:
        """How many decoding rows ``row`` owes a steady pace: already answering when it was
        submitted, and not sent together with it (more than :data:`BURST_WINDOW_S` earlier)."""
        since = row.submitted - BURST_WINDOW_S
        return sum(1 for other in self._rows if other.answering < row.submitted and other.submitted < since)

    @torch.inference_mode()
    def _advance(self, job: _Prefill, limit: int | None) -> int:
        """Feed up to ``limit`` (None: all) more prompt tokens of ``job``; returns how many were fed.

        Its first call looks the prompt up in the prefix cache; the last one picks the first
        token, stores the prompt's K/V in the prefix cache and merges the row into the batch.
        """
        row = job.row
        if row.cancel.is_set():
            job.ended = True
            self._end(row)
            return 0
        try:
            n = len(row.prompt)
            if job.cache is None:
                self._start_prefill(job)
            end = n if limit is None else min(n, job.fed + limit)
            started, on_cache = time.perf_counter(), job.fed > 0
            logits = self._feed_prompt(row.ids[:, job.fed : end], job.fed, job.cache, row.alpha)
            fed, job.fed = end - job.fed, end
            row.cached = end
            if end < n:
                if self._device.type == "cuda":
                    torch.cuda.synchronize(self._device)  # the forward was only queued: time the work
                job.token_s = self.pacer.record_prefill(fed, time.perf_counter() - started, on_cache)
                self.prefill_chunks += 1
                return fed
            self.pacer.record_prefill(fed, time.perf_counter() - started, on_cache)  # (the first token's sync below)
            job.ended = True
            row.answering = time.perf_counter()  # (before its first token can reach a reader)
            ended = self._take(row, logits)
            # Stored after the first token is out: copying a fresh prompt's K/V into the tree
            # (1.8B bf16: ~200 KB per token) is not the user's wait for that token.
            layers = job.cache.layers
            self.prefix.insert(row.prompt, row.alpha, lambda a, b: stack_kv(layers, 0, a, b, self._device))
            if ended:
                self._end(row)
            else:
                self._merge(row, job.cache)
            return fed
        except BaseException as exc:  # handed to that reply's reader
            log.debug("prefill failed", exc_info=True)
            job.ended = True
            self._out_of_memory(exc)
            self._end(row, exc)
            return 0

    def _feed_prompt(self, ids: torch.Tensor, start: int, cache, alpha: float) -> torch.Tensor:
        """Prefill ``ids`` ([1, n]) from position ``start`` into ``cache``; the last position's logits."""
        if self.steps is not None:
            return self.steps.prefill(ids, start, cache, alpha)
        end = start + ids.shape[1]
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones((1, end), dtype=torch.long, device=self._device),
            position_ids=torch.arange(start, end, device=self._device)[None, :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def _start_prefill(self, job: _Prefill) -> None:
        """Set up ``job``'s row and a cache holding the longest cached prefix of its prompt."""
        row = job.row
        n = len(row.prompt)
        row.ids = torch.empty((1, n + row.max_new), dtype=torch.long, device=self._device)
        row.ids[0, :n] = torch.tensor(row.prompt, dtype=torch.long)
        row.length = n
        # The alpha the original picks for this whole prompt: every chunk, and any reused
        # prefix, must have been computed under it (see qwen_core.prefix_cache).
        alphas = getattr(self.model, "prefill_alphas", lambda length: (1.0,))(n)
        row.alpha = alphas[0]
        # At least the last token is fed again: its logits give the reply's first token.
        reused, kv = self.prefix.match(row.prompt, row.alpha, limit=n - 1)
        if self.steps is not None:  # copied into the bucket's static cache
            job.cache, job.fed = self.steps.cache_for(n + row.max_new, kv), reused
            return
        cache = seeded_cache(self.model.config, kv, self._layer_devices)
        cache.qwen_prompt_alphas = cache.qwen_ntk_alphas = tuple(alphas)
        job.cache, job.fed = cache, reused

    def _take(self, row: _Row, logits: torch.Tensor) -> bool:
        """Choose the row's next token from its logits; True when the row has ended."""
        return self._take_all([row], logits)[0]

    def _take_all(self, rows: list[_Row], logits: torch.Tensor) -> list[bool]:
        """``_take`` for every row: :func:`~qwen_core.sampling.sample_rows` filters rows with equal
        plans as one tensor (every operation is row-wise, so stacking changes no row's result) and
        each row draws with its own seeded generator; one device sync per step."""
        if not rows:
            return []
        tokens = sample_rows([r.sampler for r in rows], logits.to(dtype=torch.float32), lambda m: _history(rows, m))
        return [self._push(row, token) for row, token in zip(rows, tokens, strict=True)]

    def _push(self, row: _Row, token: int) -> bool:
        """Append the chosen token and stream it; True when the row has ended."""
        if token < 0:  # no token allowed (constraint vs. logit_bias / min_tokens): the reply fails
            row.errors.append(row.sampler.error)
            return True
        row.ids[0, row.length] = token
        row.length += 1
        row.generated += 1
        row.streamer.put(row.ids[0, row.length - 1 : row.length])
        return (
            token in row.sampler.plan.stop_ids
            or row.sampler.finished
            or row.generated >= row.max_new
            or row.cancel.is_set()
        )

    def _merge(self, row: _Row, cache: DynamicCache) -> None:
        if self.steps is not None:  # one row at a time: its static cache is the batch's
            self._cache, self._mask = cache, None
            self._rows.append(row)
            self.max_rows_seen = 1
            return
        new_len = cache.get_seq_length()
        new_mask = torch.ones((1, new_len), dtype=torch.long, device=self._device)
        if not self._rows:
            self._cache, self._mask = cache, new_mask
        else:
            old_len = self._mask.shape[1]
            grow_old, grow_new = max(0, new_len - old_len), max(0, old_len - new_len)
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, grow_old), _pad_left(theirs.keys, grow_new)])
                mine.values = torch.cat([_pad_left(mine.values, grow_old), _pad_left(theirs.values, grow_new)])
            self._mask = torch.cat([F.pad(self._mask, (grow_old, 0)), F.pad(new_mask, (grow_new, 0))])
        self._rows.append(row)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    @torch.inference_mode()
    def _step(self) -> None:
        """One decode step for every row; then drop the rows that ended (or were cancelled)."""
        rows = self._rows
        if all(r.cancel.is_set() for r in rows):
            self._drop(list(range(len(rows))))
            return
        try:
            logits = self._decode(rows)
            self.decode_steps += 1
            for r in rows:
                r.cached += 1
            live = [i for i, r in enumerate(rows) if not r.cancel.is_set()]
            if len(live) == len(rows):  # the usual step: no copy of the logits
                over = self._take_all(rows, logits)
            else:
                over = self._take_all([rows[i] for i in live], logits[live])
            ended = sorted(set(range(len(rows))) - set(live) | {i for i, o in zip(live, over, strict=True) if o})
        except BaseException as exc:  # every reply in the batch gets the error
            log.debug("decode step failed", exc_info=True)
            self._fail_all(exc)
            return
        if ended:
            self._drop(ended)

    def _decode(self, rows: list[_Row]) -> torch.Tensor:
        """Feed every row's last token; the next-token logits, [rows, vocab]."""
        if self.steps is not None:
            row = rows[0]
            return self.steps.decode(row.ids[:, row.length - 1 : row.length], row.length - 1, self._cache, row.alpha)
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=self._device)], 1)
        # Each row's position is its own token count, not the padded column index.
        positions = torch.tensor([[r.length - 1] for r in rows], device=self._device)
        self._cache.qwen_ntk_alphas = tuple(r.alpha for r in rows)
        out = self.model(
            input_ids=torch.stack([r.ids[0, r.length - 1 : r.length] for r in rows]),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._mask = mask
        return out.logits[:, -1, :]

    def _end(self, row: _Row, error: BaseException | None = None) -> None:
        self.replies += 1
        row.finish(error)

    def _drop(self, ended: list[int]) -> None:
        gone = set(ended)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        for i in ended:
            self._store_reply(i)
            self._end(self._rows[i])
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self._device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        # Columns that are padding for every remaining row are dead weight: cut them.
        first = int(self._mask.any(0).long().argmax())
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _store_reply(self, i: int) -> None:
        """Put the K/V of row ``i``'s prompt + reply in the prefix cache: the chat's next turn starts with them.

        The row's tokens fill the rightmost columns of the batch cache (rows are left-padded;
        a static cache holds its one row from column 0); the last token chosen was never fed,
        so it is not there.
        """
        if not self.prefix.enabled:
            return
        row = self._rows[i]
        try:
            valid = row.cached
            offset = 0 if self._mask is None else self._mask.shape[1] - valid
            layers = self._cache.layers
            self.prefix.insert(
                row.ids[0, :valid].tolist(),
                row.alpha,
                lambda a, b: stack_kv(layers, i, offset + a, offset + b, self._device),
            )
        except Exception:
            log.warning("could not store a reply in the prefix cache", exc_info=True)

    def _out_of_memory(self, exc: BaseException) -> None:
        """Out of device memory: give the prefix cache's memory back before the next reply."""
        if isinstance(exc, torch.OutOfMemoryError) and self.prefix.bytes:
            log.warning("out of memory: dropping the prefix cache (%d MB)", self.prefix.bytes // 2**20)
            self.prefix.clear()

    def _fail_all(self, exc: BaseException) -> None:
        self._out_of_memory(exc)
        rows, self._rows, self._cache, self._mask = self._rows, [], None, None
        for row in rows:
            self._end(row, exc)


class _Sink:
    """A streamer nobody reads (the warm-up's)."""

    def put(self, value) -> None:
        pass

    def end(self) -> None:
        pass


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad the sequence dimension (-2) of a [batch, heads, seq, dim] cache tensor."""
    return F.pad(t, (0, 0, n, 0)) if n else t


def _history(rows: list[_Row], members: list[int]) -> torch.Tensor:
    """Prompt + reply ids of ``members``, left-padded with each row's own first token (a
    token already in its set, so a repetition penalty sees exactly the row's tokens)."""
    if len(members) == 1:
        row = rows[members[0]]
        return row.ids[:, : row.length]  # a view: nothing to pad
    longest = max(rows[i].length for i in members)
    out = torch.empty((len(members), longest), dtype=torch.long, device=rows[members[0]].ids.device)
    for j, i in enumerate(members):
        row = rows[i]
        out[j, : longest - row.length] = row.prompt[0]
        out[j, longest - row.length :] = row.ids[0, : row.length]
    return out
