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
repetition penalty (the logits processors of :mod:`.generation` run per row), and it
knows nothing of Qwen-1's per-prompt dynamic-NTK alpha, which rides along per row
here (``qwen_ntk_alphas`` on the cache, read by :mod:`.modeling`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from .generation import SeededSampler
from .memory import Trimmer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Row:
    """One reply in flight."""

    prompt: list[int]
    processors: LogitsProcessorList
    max_new: int
    cancel: threading.Event
    streamer: object  # QwenStreamer: put(tensor) / end()
    errors: list
    done: threading.Event = field(default_factory=threading.Event)
    ids: torch.Tensor | None = None  # prompt + generated, preallocated
    length: int = 0  # valid entries of ids
    generated: int = 0
    alpha: float = 1.0
    key: tuple = ()  # rows with equal keys filter their logits together

    def __post_init__(self) -> None:
        self.key = tuple(
            (type(p).__name__, repr(sorted(vars(p).items())))
            for p in self.processors
            if not isinstance(p, SeededSampler)
        )

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.errors.append(error)
        try:
            self.streamer.end()
        finally:
            self.done.set()


class Batcher:
    """Decodes all submitted replies together, at most ``max_batch`` rows at a time.

    Thread-safe. Replies beyond ``max_batch`` wait (in order) for a row to free up;
    admission control with fairness and 429s is the :class:`~qwen_core.scheduler.Scheduler`'s
    job in front of this.
    """

    def __init__(self, model, stop_ids, max_batch: int = 16, trim_interval: float = 30.0):
        if not 1 <= max_batch <= 1024:
            raise ValueError("max_batch must be between 1 and 1024")
        self.model = model
        self.max_batch = max_batch
        self._stops = frozenset(stop_ids)
        self._device = model.get_input_embeddings().weight.device
        self._cond = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length]; 0 marks left padding
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # decode steps run (for stats and tests)
        self.trimmer = Trimmer(trim_interval)
        self.max_rows_seen = 0

    # --- public -------------------------------------------------------------
    def submit(self, prompt, processors, max_new: int, cancel, streamer, errors: list) -> threading.Event:
        """Queue a reply; the returned event is set once it has ended (after ``streamer.end()``)."""
        row = _Row(list(prompt), processors, max_new, cancel, streamer, errors)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._pending.append(row)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="qwen-batcher")
                self._thread.start()
            self._cond.notify()
        return row.done

    def stats(self) -> dict:
        """Rows decoding and waiting now."""
        with self._cond:
            return {
                "rows": len(self._rows),
                "pending": len(self._pending),
                "max_batch": self.max_batch,
                "max_rows_seen": self.max_rows_seen,
                "steps": self.steps,
            }

    def close(self) -> None:
        """Stop the worker once the replies in flight have ended; new submissions are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # --- worker -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            admit = self._wait_for_work()
            if admit is None:
                return
            for row in admit:
                self._admit(row)
            if self._rows:
                self._step()
            # Every step allocates tensors of new shapes; hand the freed ones back to the OS
            # now and then, or RSS creeps up over days (see qwen_core.memory).
            self.trimmer.maybe_trim()

    def _wait_for_work(self) -> list[_Row] | None:
        """The replies to admit now (waiting while there is nothing to do); None once closed."""
        with self._cond:
            trimmed = False
            while not self._pending and not self._rows:
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
            while self._pending and len(self._rows) + len(admit) < self.max_batch:
                admit.append(self._pending.popleft())
            return admit

    @torch.inference_mode()
    def _admit(self, row: _Row) -> None:
        """Prefill ``row`` alone, pick its first token and merge it into the batch."""
        if row.cancel.is_set():
            row.finish()
            return
        try:
            n = len(row.prompt)
            row.ids = torch.empty((1, n + row.max_new), dtype=torch.long, device=self._device)
            row.ids[0, :n] = torch.tensor(row.prompt, dtype=torch.long)
            row.length = n
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=row.ids[:, :n],
                attention_mask=torch.ones((1, n), dtype=torch.long, device=self._device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            row.alpha = getattr(cache, "qwen_ntk_alphas", (1.0,))[0]
            if self._take(row, out.logits[:, -1, :]):
                row.finish()
                return
            self._merge(row, out.past_key_values)
        except BaseException as exc:  # handed to that reply's reader
            log.debug("prefill failed", exc_info=True)
            row.finish(exc)

    def _take(self, row: _Row, logits: torch.Tensor) -> bool:
        """Choose the row's next token from its logits; True when the row has ended."""
        scores = row.processors(row.ids[:, : row.length], logits.to(dtype=torch.float32))
        return self._push(row, int(torch.argmax(scores, dim=-1)))

    def _take_all(self, rows: list[_Row], logits: torch.Tensor) -> list[bool]:
        """``_take`` for every row, running the filters of rows with equal settings as one batch.

        Repetition penalty, temperature, top-k and top-p are row-wise operations, so
        stacking rows changes no result, but one ``sort`` over 8 rows costs far less
        than 8 sorts. Each row still draws with its own seeded generator.
        """
        if not rows:
            return []
        logits = logits.to(dtype=torch.float32)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.key, []).append(i)
        order: list[int] = []
        picked: list[torch.Tensor] = []
        for members in groups.values():
            procs = rows[members[0]].processors
            shared = [p for p in procs if not isinstance(p, SeededSampler)]
            ids = (
                self._history(rows, members)
                if any(isinstance(p, RepetitionPenaltyLogitsProcessor) for p in procs)
                else None
            )
            scores = logits[members]
            for proc in shared:
                scores = proc(ids, scores)
            if any(isinstance(p, SeededSampler) for p in procs):
                scores = torch.cat(
                    [
                        next(p for p in rows[i].processors if isinstance(p, SeededSampler))(None, scores[j : j + 1])
                        for j, i in enumerate(members)
                    ]
                )
            order.extend(members)
            picked.append(torch.argmax(scores, dim=-1))
        tokens = dict(zip(order, torch.cat(picked).tolist(), strict=True))  # one device sync per step
        return [self._push(row, tokens[i]) for i, row in enumerate(rows)]

    @staticmethod
    def _history(rows: list[_Row], members: list[int]) -> torch.Tensor:
        """Prompt + reply ids of ``members``, left-padded with each row's own first token (a
        token already in its set, so a repetition penalty sees exactly the row's tokens)."""
        longest = max(rows[i].length for i in members)
        out = torch.empty((len(members), longest), dtype=torch.long, device=rows[members[0]].ids.device)
        for j, i in enumerate(members):
            row = rows[i]
            out[j, : longest - row.length] = row.prompt[0]
            out[j, longest - row.length :] = row.ids[0, : row.length]
        return out

    def _push(self, row: _Row, token: int) -> bool:
        row.ids[0, row.length] = token
        row.length += 1
        row.generated += 1
        row.streamer.put(row.ids[0, row.length - 1 : row.length])
        return token in self._stops or row.generated >= row.max_new or row.cancel.is_set()

    def _merge(self, row: _Row, cache: DynamicCache) -> None:
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
            self.steps += 1
            live = [i for i, r in enumerate(rows) if not r.cancel.is_set()]
            over = self._take_all([rows[i] for i in live], out.logits[live, -1, :])
            ended = sorted(set(range(len(rows))) - set(live) | {i for i, o in zip(live, over, strict=True) if o})
        except BaseException as exc:  # every reply in the batch gets the error
            log.debug("decode step failed", exc_info=True)
            self._fail_all(exc)
            return
        if ended:
            self._drop(ended)

    def _drop(self, ended: list[int]) -> None:
        gone = set(ended)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        for i in ended:
            self._rows[i].finish()
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

    def _fail_all(self, exc: BaseException) -> None:
        rows, self._rows, self._cache, self._mask = self._rows, [], None, None
        for row in rows:
            row.finish(exc)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad the sequence dimension (-2) of a [batch, heads, seq, dim] cache tensor."""
    return F.pad(t, (0, 0, n, 0)) if n else t
