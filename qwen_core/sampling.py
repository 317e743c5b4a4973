"""How a reply's next token is chosen: a :class:`SamplingPlan` made from :class:`GenerationSettings`.

One implementation of every operation serves every local decode path: the continuous
:class:`~qwen_core.batching.Batcher` calls :func:`sample_rows` on its whole batch (rows whose
plans share a :attr:`SamplingPlan.key` are filtered as one tensor), and the per-request
``generate`` reference path and the compiled path get the same function wrapped as a
``LogitsProcessor`` (:meth:`RowSampler.logits_processors`). Qwen's order, on float32 logits:

1. repetition penalty (HF semantics, over prompt + reply ids), then the padded vocabulary is cut;
2. presence / frequency penalties (OpenAI semantics, over the reply's generated tokens only);
3. ``logit_bias``; stop tokens suppressed while ``min_tokens`` is not reached or with ``ignore_eos``;
4. the row's constraint mask (:class:`TokenConstraint`, e.g. JSON output);
5. temperature — log-probabilities are taken here (after penalties, bias, mask and temperature,
   BEFORE truncation; greedy rows: of the logits after step 4);
6. top-k, top-p, min_p; then the draw with the row's own seeded ``torch.Generator`` (greedy: argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

from .errors import GenerationError
from .info import TokenLogprob  # torch-free (the remote backend relays logprobs too); re-exported here
from .settings import GenerationSettings

NEG_INF = -float("inf")
TOP_P_CANDIDATES = 512  # top-p looks at this many best logits before falling back to a full sort


@runtime_checkable
class TokenConstraint(Protocol):
    """Restricts which tokens one reply may generate (constrained decoding); one object per reply."""

    def mask_logits(self, scores: torch.Tensor) -> None:
        """``scores``: this row's float32 1-D logits [model vocab]; set disallowed ids to -inf in place."""

    def accept_token(self, token_id: int) -> None:
        """Called with every token chosen for the row, before the next mask."""

    def is_finished(self) -> bool:
        """True once the constrained text is complete: the reply then ends (finish_reason "stop")."""


class SamplingPlan:
    """What one reply's settings do to its logits; rows with equal :attr:`key` are filtered together."""

    def __init__(self, settings: GenerationSettings, seed: int, n_valid: int, stop_ids: Sequence[int]):
        self.settings = settings
        self.seed = seed
        self.n_valid = n_valid  # ids >= n_valid are padded vocabulary: never sampled
        self.greedy = settings.greedy
        for token, _ in settings.logit_bias:
            if token >= n_valid:
                raise ValueError(f"logit_bias: token id {token} is not in the vocabulary (ids 0..{n_valid - 1})")
        for token in settings.stop_token_ids:
            if token >= n_valid:
                raise ValueError(f"stop_token_ids: token id {token} is not in the vocabulary (ids 0..{n_valid - 1})")
        self.eos_ids = tuple(dict.fromkeys(stop_ids))  # the model's own stop tokens
        self.stop_ids = frozenset(self.eos_ids) | frozenset(settings.stop_token_ids)  # any of these ends the reply
        self.needs_history = settings.repetition_penalty != 1.0
        self.needs_counts = settings.presence_penalty != 0.0 or settings.frequency_penalty != 0.0
        s = settings
        shared = (s.repetition_penalty, s.presence_penalty, s.frequency_penalty, s.logit_bias)
        self.key = ("greedy", *shared) if self.greedy else ("sample", *shared, s.temperature, s.top_k, s.top_p, s.min_p)
        self._bias: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def bias(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``logit_bias`` as (ids, values) tensors on ``device`` (built once)."""
        if device not in self._bias:
            ids, values = zip(*self.settings.logit_bias, strict=True)
            self._bias[device] = (
                torch.tensor(ids, dtype=torch.long, device=device),
                torch.tensor(values, dtype=torch.float32, device=device),
            )
        return self._bias[device]


class RowSampler:
    """One reply's sampling state: its plan, seeded generator, reply counts, constraint and logprobs."""

    def __init__(self, plan: SamplingPlan, device: torch.device, constraint: TokenConstraint | None = None):
        self.plan = plan
        self.device = device
        self.constraint = constraint
        self.generator: torch.Generator | None = None
        if not plan.greedy:
            # Its own generator: replies sampled in one batch must not interleave one RNG.
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(plan.seed)
        self.generated = 0
        self.logprobs: list[TokenLogprob] = []  # appended as tokens are chosen (read while streaming)
        self.finished = False  # the constraint said the text is complete
        self.error: GenerationError | None = None  # set when no token was allowed
        self._counts: torch.Tensor | None = None
        self._stop_index: dict[tuple[int, ...], torch.Tensor] = {}

    def counts(self, vocab: int) -> torch.Tensor:
        """How often each id occurs in the reply so far, float32 [vocab] (kept up to date by :meth:`observe`)."""
        if self._counts is None:
            self._counts = torch.zeros(vocab, dtype=torch.float32, device=self.device)
        return self._counts

    def suppressed(self) -> tuple[int, ...]:
        """Ids that must not be chosen now: the stop tokens under ignore_eos / before min_tokens."""
        s = self.plan.settings
        if self.generated < s.min_tokens:
            return tuple(sorted(self.plan.stop_ids))
        return self.plan.eos_ids if s.ignore_eos else ()

    def stop_index(self, ids: tuple[int, ...]) -> torch.Tensor:
        """``ids`` as an index tensor on the row's device (built once per set)."""
        if ids not in self._stop_index:
            self._stop_index[ids] = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._stop_index[ids]

    def observe(self, token: int, logprob: TokenLogprob | None) -> None:
        """Record the chosen token: counts, logprobs, and the constraint's state."""
        self.generated += 1
        if self._counts is not None:
            self._counts[token] += 1
        if logprob is not None:
            self.logprobs.append(logprob)
        if self.constraint is not None:
            self.constraint.accept_token(token)
            self.finished = bool(self.constraint.is_finished())

    def logits_processors(self) -> LogitsProcessorList:
        """This sampler as ``generate``'s logits processing (it picks the token; greedy search takes it)."""
        return LogitsProcessorList([_PlanProcessor(self)])

    def stopping_criteria(self) -> list[StoppingCriteria]:
        """For ``generate``: end the reply when the constraint is complete."""
        return [_ConstraintDone(self)] if self.constraint is not None else []


# --- the operations (row-wise: stacking rows changes no row's result) ---------------------------
def repetition_penalty(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's rule over every id in ``history`` [rows, L]: negative logits times, positive ones divided by it
    (in place: a repeated id writes the same value each time)."""
    seen = torch.gather(scores, 1, history)
    return scores.scatter_(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))


def count_penalties(scores: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's rule: minus ``frequency`` per occurrence in the reply, minus ``presence`` once if it occurred."""
    return scores - (counts * frequency + (counts > 0).to(scores.dtype) * presence)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` best logits of each row (ties at the k-th kept, as HF's ``TopKLogitsWarper``)."""
    kth = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus: keep a token while the mass ranked strictly above it is below ``top_p``.

    A full sort of Qwen's 151,936 logits costs ~10 ms per row on a CPU, more than a small
    model's whole decode step, so the nucleus is looked for among the best few hundred; a
    row whose nucleus is wider (rare after temperature) takes HF's exact sort, on its own.
    """
    k = min(TOP_P_CANDIDATES, scores.shape[-1])
    top, idx = torch.topk(scores, k, dim=-1)
    probs = torch.exp(top - torch.logsumexp(scores, dim=-1, keepdim=True))
    above = probs.cumsum(-1) - probs
    keep = above < top_p
    keep[:, 0] = True
    out = torch.full_like(scores, NEG_INF).scatter_(1, idx, torch.where(keep, top, torch.full_like(top, NEG_INF)))
    wide = above[:, -1] < top_p
    if bool(wide.any()):
        rows = torch.nonzero(wide).squeeze(1)
        out[rows] = _top_p_sorted(scores[rows], top_p)
    return out


def _top_p_sorted(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_idx, remove), NEG_INF)


def min_p_filter(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens less probable than ``min_p`` times the row's most probable one."""
    probs = torch.softmax(scores, dim=-1)
    return scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), NEG_INF)


# --- one step for many rows -----------------------------------------------------------------------
def sample_rows(
    samplers: Sequence[RowSampler], logits: torch.Tensor, history: Callable[[list[int]], torch.Tensor]
) -> list[int]:
    """Choose each row's next token from ``logits`` [rows, vocab] float32 (modified in place).

    ``history(members)`` gives those rows' prompt + reply ids [len(members), L] (left-padded
    with a token of the row's own, so the padding penalises nothing new); it is called only for
    plans with a repetition penalty. Each sampler :meth:`~RowSampler.observe`\\ s its token.
    Returns -1 for a row where no token is allowed (its sampler's error is set).
    """
    groups: dict[tuple, list[int]] = {}
    for i, sampler in enumerate(samplers):
        groups.setdefault(sampler.plan.key, []).append(i)
    order: list[int] = []
    picked: list[torch.Tensor] = []
    asked: list[tuple[list[int], list[int], torch.Tensor, torch.Tensor]] = []
    for members in groups.values():
        scores = logits if len(members) == len(samplers) else logits[members]
        tokens, asking, logprobs = _filter_group([samplers[i] for i in members], members, scores, history)
        order.extend(members)
        picked.append(tokens)
        if asking:
            asked.append((members, asking, logprobs, tokens))
    chosen = dict(zip(order, torch.cat(picked).tolist(), strict=True))  # the step's one device sync
    entries: dict[int, TokenLogprob] = {}
    for members, asking, logprobs, tokens in asked:  # (one more sync, only when some row asks)
        rows = [samplers[i] for i in members]
        entries.update(_logprob_entries(rows, members, asking, logprobs, tokens, chosen))
    out = []
    for i, sampler in enumerate(samplers):
        token = chosen[i]
        if token < 0:
            sampler.error = GenerationError(
                "No token is allowed at this point of the reply: the output constraint, logit_bias and "
                "min_tokens/ignore_eos together exclude every token. Loosen one of them."
            )
        else:
            sampler.observe(token, entries.get(i))
        out.append(token)
    return out


def _filter_group(rows: list[RowSampler], members: list[int], scores: torch.Tensor, history):
    """Steps 1-6 for rows sharing one plan key: (chosen ids on the device, -1 where none is allowed;
    the rows asking for logprobs; their log-probabilities)."""
    plan, s = rows[0].plan, rows[0].plan.settings
    if plan.needs_history:
        scores = repetition_penalty(scores, history(members), s.repetition_penalty)
    scores[:, plan.n_valid :] = NEG_INF
    if plan.needs_counts:
        counts = torch.stack([r.counts(scores.shape[-1]) for r in rows])
        scores = count_penalties(scores, counts, s.presence_penalty, s.frequency_penalty)
    if s.logit_bias:
        ids, values = plan.bias(scores.device)
        scores[:, ids] += values
    for j, r in enumerate(rows):  # per row: these depend on the row's own progress
        if stops := r.suppressed():
            scores[j].index_fill_(0, r.stop_index(stops), NEG_INF)
        if r.constraint is not None:
            r.constraint.mask_logits(scores[j])
    if not plan.greedy and s.temperature != 1.0:
        scores = scores.div_(s.temperature)
    asking = [j for j, r in enumerate(rows) if r.plan.settings.logprobs is not None]
    logprobs = torch.log_softmax(scores[asking], dim=-1) if asking else None
    if plan.greedy:
        tokens = torch.argmax(scores, dim=-1)
        if any(r.constraint is not None for r in rows):  # a mask may have left nothing
            finite = torch.isfinite(scores.gather(1, tokens[:, None])).squeeze(1)
            tokens = torch.where(finite, tokens, torch.full_like(tokens, -1))
        return tokens, asking, logprobs
    if s.top_k > 0:
        scores = top_k_filter(scores, s.top_k)
    if s.top_p < 1.0:
        scores = top_p_filter(scores, s.top_p)
    if s.min_p > 0.0:
        scores = min_p_filter(scores, s.min_p)
    return _draw(rows, scores), asking, logprobs


def _draw(rows: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
    """Each row draws among the tokens truncation left (a handful), with its own generator."""
    picked = []
    for j, r in enumerate(rows):
        candidates = torch.nonzero(scores[j] > NEG_INF).squeeze(1)
        if candidates.numel() == 0:  # only a constraint's mask can leave nothing
            picked.append(torch.full((1,), -1, dtype=torch.long, device=scores.device))
            continue
        probs = torch.softmax(scores[j, candidates], dim=-1)
        picked.append(candidates[torch.multinomial(probs, num_samples=1, generator=r.generator)])
    return torch.cat(picked)


def _logprob_entries(rows, members, asking, logprobs, tokens, chosen: dict[int, int]) -> dict[int, TokenLogprob]:
    """Each asking row's chosen-token log-probability and its ``logprobs`` best alternatives, by row index."""
    own = logprobs.gather(1, tokens[asking].clamp(min=0)[:, None]).squeeze(1).tolist()
    most = max(rows[j].plan.settings.logprobs for j in asking)
    top_v, top_i = logprobs.topk(most, dim=-1) if most else (logprobs[:, :0], logprobs[:, :0].long())
    top_v, top_i = top_v.tolist(), top_i.tolist()
    out = {}
    for n, j in enumerate(asking):
        k = rows[j].plan.settings.logprobs
        alts = tuple((t, v) for t, v in zip(top_i[n][:k], top_v[n][:k], strict=True) if v > NEG_INF)
        out[members[j]] = TokenLogprob(chosen[members[j]], own[n], alts)
    return out


class _PlanProcessor(LogitsProcessor):
    """:func:`sample_rows` for ``generate``: leaves only the chosen token selectable."""

    def __init__(self, sampler: RowSampler):
        self.sampler = sampler

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token = sample_rows([self.sampler], scores.to(torch.float32), lambda members: input_ids)[0]
        if token < 0:
            raise self.sampler.error
        out = torch.full_like(scores, NEG_INF)
        out[0, token] = 0.0
        return out


class _ConstraintDone(StoppingCriteria):
    def __init__(self, sampler: RowSampler):
        self.sampler = sampler

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.sampler.finished, dtype=torch.bool, device=input_ids.device)
