"""Chunked prefill: a prompt fed in pieces gives exactly what one prefill gives.

Qwen-1's dynamic-NTK alpha is chosen from the WHOLE prompt's length at prefill; every
chunk must rotate under that alpha, not under its own length (checked against the
independent reference forward, inside and past the 16-token trained context of
``long_ckpt_dir``). Then through the batcher: a long prompt that joins a running batch
is prefilled in chunks between decode steps, and every reply still equals the
per-request ``generate`` reference.
"""

from __future__ import annotations

import time

import pytest
import torch
from reference_qwen1 import ReferenceQwen1
from transformers import DynamicCache
from worker_hold import worker_held

from qwen_core import load_engine
from qwen_core.batching import BURST_WINDOW_S

TOL = 1e-3
RUNNER_TOKENS = 6000  # a running reply's budget: far more than it decodes while a prompt joins


def _chunked_logits(model, ids: list[int], chunk: int, whole_prompt_alpha: bool = True) -> torch.Tensor:
    """Logits [len(ids), vocab] of ``ids`` fed ``chunk`` tokens at a time through one cache."""
    cache = DynamicCache(config=model.config)
    if whole_prompt_alpha:
        cache.qwen_prompt_alphas = model.prefill_alphas(len(ids))
    pieces = []
    with torch.no_grad():
        for start in range(0, len(ids), chunk):
            end = min(len(ids), start + chunk)
            out = model(
                input_ids=torch.tensor([ids[start:end]]),
                attention_mask=torch.ones((1, end), dtype=torch.long),
                position_ids=torch.arange(start, end)[None, :],
                past_key_values=cache,
                use_cache=True,
            )
            pieces.append(out.logits[0].float())
    return torch.cat(pieces)


@pytest.mark.parametrize("n,chunk", [(12, 5), (40, 7), (100, 16), (100, 33)])
def test_chunks_use_the_whole_prompts_alpha(long_engine, long_ckpt_dir, n, chunk):
    ref = ReferenceQwen1(long_ckpt_dir)
    ids = [(i * 7919) % 150000 for i in range(n)]
    want = ref.logits(ids)  # alpha from all n tokens, LogN by position
    got = _chunked_logits(long_engine.model, ids, chunk)
    assert (got - want).abs().max().item() < TOL
    if n > 16 and chunk < n:  # past the trained context: a chunk's own length would pick another alpha
        wrong = _chunked_logits(long_engine.model, ids, chunk, whole_prompt_alpha=False)
        assert (wrong[-1] - want[-1]).abs().max().item() > 10 * TOL


def test_chunks_inside_the_trained_context(engine, ckpt_dir):
    ids = list(range(3000, 3064))
    want = ReferenceQwen1(ckpt_dir).logits(ids)
    assert (_chunked_logits(engine.model, ids, 10) - want).abs().max().item() < TOL


@pytest.fixture(scope="module", params=["ckpt_dir", "long_ckpt_dir"])
def pair(request) -> dict:
    folder = request.getfixturevalue(request.param)
    return {
        # Tiny chunks so every prompt here is cut in several; the prefix cache off to see chunking alone.
        "chunked": load_engine(str(folder), device="cpu", max_batch=4, prefill_chunk=6, prefix_cache_mb=0),
        "cached": load_engine(str(folder), device="cpu", max_batch=4, prefill_chunk=6, prefix_cache_mb=16),
        "alone": load_engine(str(folder), device="cpu", max_batch=0),
    }


def _tokens(engine, query, history=(), **settings) -> list[int]:
    with engine.stream_chat(query, list(history), **settings) as stream:
        stream.text()
        return stream.result.token_ids


@pytest.mark.parametrize("which", ["chunked", "cached"])
def test_a_long_prompt_joining_a_running_batch_is_prefilled_in_chunks_and_exact(pair, which):
    engine, alone = pair[which], pair["alone"]
    running_q = "Keep talking about the sea"
    joining_q = "Summarise this: " + "the quick brown fox jumps over the lazy dog, " * 6
    history = [("Hello", "Hi! How can I help?")]
    sampled = dict(do_sample=True, seed=13, top_k=5, temperature=0.9)
    want_joining = _tokens(alone, joining_q, history, max_new_tokens=16, **sampled)
    chunks = engine.batcher.stats()["prefill_chunks"]
    reused = engine.batcher.stats()["prefix_cache"]["tokens_reused"]
    # The running reply cannot end by itself while the joining prompt is fed (no stop token,
    # more tokens than any machine decodes meanwhile): it is closed after, so the premise holds
    # on a fast machine too (120 greedy tokens once ended before the prompt below was fed).
    runner = engine.stream_chat(running_q, max_new_tokens=RUNNER_TOKENS, do_sample=False, ignore_eos=True)
    next(runner)  # decoding now: the next prompt joins a running batch ...
    time.sleep(BURST_WINDOW_S + 0.05)  # ... not sent together with it (that is a burst, below)
    got_joining = _tokens(engine, joining_q, history, max_new_tokens=16, **sampled)
    runner.close()
    ran = runner.result.token_ids
    assert len(ran) < RUNNER_TOKENS, "the running reply ended before the prompt joined"
    assert ran == _tokens(alone, running_q, max_new_tokens=len(ran), do_sample=False, ignore_eos=True)
    assert got_joining == want_joining
    stats = engine.batcher.stats()
    fed = len(engine.build_prompt(joining_q, history)) - (stats["prefix_cache"]["tokens_reused"] - reused)
    assert fed > 60 and stats["prefill_chunks"] - chunks >= fed // 6 - 1, "the prompt was not chunked"
    if which == "cached":  # the same prompt again: only its last token is fed, then the rest is decode
        assert _tokens(engine, joining_q, history, max_new_tokens=16, **sampled) == want_joining


def test_prompts_arriving_together_are_prefilled_whole_first_come_first_served(pair):
    """A burst (several users pressing Send at once, nothing answering yet) owes no decode
    steps to its own first replies: each prompt is prefilled whole, back to back, and every
    reply is still exact. Chunks are only for prompts joining streams already being read."""
    engine, alone = pair["chunked"], pair["alone"]
    queries = [f"Question {k}: " + "tell me about the northern lights and the sea, " * 4 for k in range(3)]
    want = [_tokens(alone, q, max_new_tokens=8, do_sample=False) for q in queries]
    chunks = engine.batcher.stats()["prefill_chunks"]
    with worker_held(engine.batcher):  # all three are queued before any of them is answered
        streams = [engine.stream_chat(q, max_new_tokens=8, do_sample=False) for q in queries]
    for stream, expected in zip(streams, want, strict=True):
        stream.text()
        assert stream.result.token_ids == expected
    assert len(engine.build_prompt(queries[0], [])) > 6 * 5  # long enough to be cut into chunks
    assert engine.batcher.stats()["prefill_chunks"] == chunks, "a burst's prompts were chunked"


def test_a_prompt_sent_with_one_already_answering_is_part_of_its_burst(pair):
    """Over HTTP a burst reaches the worker spread out: on a fast prefill the first reply is
    already answering when the next prompt arrives. Sent within BURST_WINDOW_S of it, that
    prompt is prefilled whole (no chunks, no decode steps owed), and both replies stay exact."""
    engine, alone = pair["chunked"], pair["alone"]
    first_q, second_q = "Hello there", "Question: " + "tell me about the northern lights and the sea, " * 4
    want = [_tokens(alone, q, max_new_tokens=30, do_sample=False) for q in (first_q, second_q)]
    chunks = engine.batcher.stats()["prefill_chunks"]
    started = time.perf_counter()
    first = engine.stream_chat(first_q, max_new_tokens=30, do_sample=False)
    next(first)  # answering
    if time.perf_counter() - started > BURST_WINDOW_S / 2:
        pytest.skip("this machine is too loaded to send two prompts inside one burst window")
    second = engine.stream_chat(second_q, max_new_tokens=30, do_sample=False)
    for stream, expected in zip((first, second), want, strict=True):
        stream.text()
        assert stream.result.token_ids == expected
    assert len(engine.build_prompt(second_q, [])) > 6 * 5  # long enough to be cut into chunks
    assert engine.batcher.stats()["prefill_chunks"] == chunks, "a prompt of the same burst was chunked"


def test_a_cancelled_prompt_leaves_the_prefill_queue(pair):
    engine = pair["chunked"]
    runner = engine.stream_chat("Go on", max_new_tokens=RUNNER_TOKENS, do_sample=False, ignore_eos=True)
    next(runner)
    time.sleep(BURST_WINDOW_S + 0.05)  # the victim joins a running stream: it is fed in chunks
    victim = engine.stream_chat("A long question " * 30, max_new_tokens=20, do_sample=False)
    victim.close()
    runner.close()
    assert runner.result.completion_tokens < RUNNER_TOKENS
    assert victim.result.finish_reason == "cancelled"
    assert victim.worker_ended.wait(30)
    stats = engine.batcher.stats()
    assert stats["prefilling"] == stats["pending"] == 0
    assert _tokens(engine, "Hi", max_new_tokens=5, do_sample=False)  # still serving


def test_chunks_are_paced_to_about_one_decode_step():
    from qwen_core.prefill import MIN_CHUNK, PrefillPacer

    pacer = PrefillPacer(max_tokens=512, share=1.0)
    assert pacer.budget() == 512  # nothing measured yet: the token cap
    pacer.record_step(0.050)
    pacer.record_prefill(100, 0.100)  # 1 ms a token: 50 tokens fit in one 50 ms step
    assert pacer.budget() == 50
    pacer.record_step(0.050)
    pacer.record_prefill(10, 0.100)  # slower now (10 ms a token, a long history to attend to)
    assert MIN_CHUNK <= pacer.budget() < 50
    assert PrefillPacer(max_tokens=6, share=1.0).budget() == 6  # a cap below MIN_CHUNK is kept
    assert PrefillPacer(max_tokens=0, share=1.0).budget() is None  # chunking off: whole prompts
    fast = PrefillPacer(max_tokens=512, share=1.0)
    fast.record_step(0.010)
    fast.record_prefill(1000, 0.001)  # a GPU-like prefill: the token cap applies
    assert fast.budget() == 512


def test_a_burst_of_prompts_gets_a_larger_share_up_to_the_cap():
    """More prompts waiting than rows decoding: the share follows the ratio (each waiting user
    about as much of the machine as each running one), at most MAX_SHARE steps; one prompt
    joining running streams keeps the base share."""
    from qwen_core.prefill import MAX_SHARE, PrefillPacer

    pacer = PrefillPacer(max_tokens=100_000, share=1.0)
    pacer.record_step(0.050)
    pacer.record_prefill(100, 0.100)  # 1 ms a token, 50 ms a step: one step's share is 50 tokens
    assert pacer.budget(waiting=1, running=3) == 50
    assert pacer.budget(waiting=2, running=4) == 50  # never below the base share
    assert pacer.budget(waiting=3, running=1) == 150
    assert pacer.budget(waiting=7, running=1) == pacer.budget(waiting=40, running=0) == int(MAX_SHARE * 50)
    assert PrefillPacer(max_tokens=100_000, share=6.0).budget() is not None
    big = PrefillPacer(max_tokens=100_000, share=6.0)  # an explicit share above the cap is kept
    big.record_step(0.050)
    big.record_prefill(100, 0.100)
    assert big.budget(waiting=9, running=1) == 300


def test_a_chunk_on_cached_kv_is_paced_by_its_own_cost():
    """The first chunk runs the causal kernel, later ones attend to cached K/V through an
    explicit mask (slower per token): each kind has its estimate, and a prompt's own last
    chunk is the best guess for its next one; sizing chunk 2 by chunk 1's speed overshoots."""
    from qwen_core.prefill import PrefillPacer

    pacer = PrefillPacer(max_tokens=100_000, share=1.0)
    pacer.record_step(0.050)
    assert pacer.record_prefill(100, 0.050) == 0.0005  # a fresh prompt: 0.5 ms a token
    assert pacer.budget() == 100
    assert pacer.budget(on_cache=True) == 100  # nothing measured on a cache yet: the fresh estimate
    pacer.record_prefill(50, 0.100, on_cache=True)  # 2 ms a token on top of a cache
    assert pacer.budget(on_cache=True) == 25
    assert pacer.budget() == 100  # fresh prompts are still paced by their own speed
    assert pacer.budget(on_cache=True, token_s=0.005) == 16  # this prompt's last chunk: 5 ms a token (MIN_CHUNK)
    assert pacer.budget(on_cache=True, token_s=0.001) == 50
