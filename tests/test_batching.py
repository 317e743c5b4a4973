"""Continuous batching: replies decoded together equal the same replies decoded alone.

The checkpoint has a trained context of 16 tokens, so the prompts here run with
different dynamic-NTK alphas and LogN scales per row, in one batch.
"""

from __future__ import annotations

import threading

import pytest
import torch

from qwen_core import load_engine

PROMPTS = [
    ("Hi", []),
    ("Tell me a long story about a fox who learns to code in Rust " * 3, []),
    ("And then?", [("Who are you?", "A helpful assistant."), ("Where?", "Here.")]),
    ("What is 1+1?", []),
    ("写一首关于秋天的诗", []),
    ("x", []),
]
# A random-weight model's next-token distribution is nearly flat, so sampling from the
# whole nucleus would turn float noise of a different batch shape (1e-7) into a
# different draw; sampled rows here draw from a few candidates (top-k), and two rows
# share a seed to show each row draws from its own generator.
SETTINGS = [
    dict(do_sample=False, repetition_penalty=1.1),
    dict(do_sample=True, seed=7, top_k=8, temperature=0.7),
    dict(do_sample=False, repetition_penalty=1.0),
    dict(do_sample=True, seed=11, top_k=5, temperature=1.3, repetition_penalty=1.2),
    dict(do_sample=True, seed=7, top_k=8, top_p=0.8, temperature=0.7),
    dict(do_sample=False, repetition_penalty=1.1),
]


@pytest.fixture(scope="module")
def alone(long_ckpt_dir):
    """The same checkpoint with no batching: every reply runs its own ``generate``."""
    return load_engine(str(long_ckpt_dir), device="cpu", max_batch=0)


@pytest.fixture(scope="module")
def batched(long_ckpt_dir):
    return load_engine(str(long_ckpt_dir), device="cpu", max_batch=8)


def _all_at_once(engine, n_tokens: int) -> list:
    """Start every prompt at the same moment and collect each reply's token ids."""
    results: list = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        query, history = PROMPTS[i]
        start.wait()
        with engine.stream_chat(query, history, max_new_tokens=n_tokens, **SETTINGS[i]) as stream:
            stream.text()
            results[i] = stream.result

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None for r in results), "a reply never finished"
    return results


def test_replies_decoded_together_equal_replies_decoded_alone(alone, batched):
    want = [alone.stream_chat(q, h, max_new_tokens=40, **s) for (q, h), s in zip(PROMPTS, SETTINGS, strict=True)]
    for stream in want:
        stream.text()
    got = _all_at_once(batched, 40)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g.token_ids == w.result.token_ids, f"prompt {i} differs when batched"
        assert g.text == w.result.text and g.finish_reason == w.result.finish_reason
    assert batched.batcher.max_rows_seen > 1, "the replies were never in one batch"
    assert batched.batcher.stats()["rows"] == 0


def test_a_reply_joining_a_running_batch_is_unaffected_and_does_not_disturb(alone, batched):
    long_q, short_q = PROMPTS[1][0], "Hello there, who are you?"
    want_long = alone.stream_chat(long_q, max_new_tokens=60, do_sample=False).text()
    want_short = alone.stream_chat(short_q, max_new_tokens=20, do_sample=False).text()
    first = batched.stream_chat(long_q, max_new_tokens=60, do_sample=False)
    head = [next(first) for _ in range(5)]  # the first reply is well under way ...
    second = batched.stream_chat(short_q, max_new_tokens=20, do_sample=False)  # ... when this one joins
    assert second.text() == want_short
    assert first.text() == want_long and first.result.text.startswith("".join(head))


def test_cancelling_one_row_leaves_the_others_running(alone, batched):
    want = alone.stream_chat("Keep talking", max_new_tokens=50, do_sample=False).text()
    victim = batched.stream_chat("Go on forever", max_new_tokens=5000, do_sample=False)
    keeper = batched.stream_chat("Keep talking", max_new_tokens=50, do_sample=False)
    next(victim)
    next(keeper)
    victim.cancel()
    at = victim.tokens_so_far
    victim.close()
    assert victim.result.finish_reason == "cancelled" and victim.result.completion_tokens <= at + 2
    assert victim.worker_ended.is_set()
    assert next(keeper) is not None
    rest = keeper.text()
    assert rest and keeper.result.text == want and keeper.result.finish_reason in ("stop", "length")


def test_a_failing_step_fails_the_batch_visibly_and_the_engine_recovers(batched):
    armed = threading.Event()

    def oom_when_armed(module, args, output):
        if armed.is_set():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return output

    handle = batched.model.model.layers[0].mlp.register_forward_hook(oom_when_armed)
    try:
        streams = [batched.stream_chat(f"Question {i}", max_new_tokens=300, do_sample=False) for i in range(3)]
        for stream in streams:
            next(stream)  # every reply is in the batch now
        armed.set()
        for stream in streams:
            with pytest.raises(Exception, match="ran out of memory"):
                stream.text()
            assert stream.result.finish_reason == "error"
            assert stream.result.completion_tokens >= 1  # what came before the error is kept
    finally:
        handle.remove()
    assert batched.batcher.stats()["rows"] == batched.batcher.stats()["pending"] == 0
    assert batched.chat("Hi", max_new_tokens=5, do_sample=False)  # still serving


def test_more_replies_than_rows_wait_their_turn(long_ckpt_dir, alone):
    two_rows = load_engine(str(long_ckpt_dir), device="cpu", max_batch=2)
    got = _all_at_once(two_rows, 12)
    assert two_rows.batcher.max_rows_seen == 2
    for (q, h), s, g in zip(PROMPTS, SETTINGS, got, strict=True):
        assert g.text == alone.stream_chat(q, h, max_new_tokens=12, **s).text()


# New sampling parameters (qwen_core.sampling), mixed in one batch: rows with equal plans filter
# together, rows with logprobs, penalties, biases or stop rules of their own beside them.
MIXED = [
    dict(do_sample=False, presence_penalty=1.0, logprobs=3),
    dict(do_sample=True, seed=7, top_k=6, min_p=0.2, frequency_penalty=0.5),
    dict(do_sample=False, logit_bias={220: 3.0}, stop_token_ids=[13]),
    dict(do_sample=True, seed=7, top_k=6, min_p=0.2, frequency_penalty=0.5, logprobs=1),
    dict(do_sample=False, ignore_eos=True, min_tokens=4, repetition_penalty=1.0),
    dict(do_sample=False, presence_penalty=1.0),
]


def test_new_sampling_parameters_mixed_in_one_batch_equal_alone(alone, batched):
    def run(engine, i):
        query, history = PROMPTS[i]
        with engine.stream_chat(query, history, max_new_tokens=30, **MIXED[i]) as stream:
            stream.text()
            return stream.result

    want = [run(alone, i) for i in range(len(MIXED))]
    got: list = [None] * len(MIXED)
    start = threading.Barrier(len(MIXED))

    def worker(i: int) -> None:
        start.wait()
        got[i] = run(batched, i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(MIXED))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g is not None and g.token_ids == w.token_ids, f"row {i} differs when batched"
        assert g.text == w.text and g.finish_reason == w.finish_reason
        assert (g.logprobs is None) == (w.logprobs is None) == (MIXED[i].get("logprobs") is None)
        for a, b in zip(g.logprobs or [], w.logprobs or [], strict=True):
            assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t for t, _ in a.top] == [t for t, _ in b.top]
