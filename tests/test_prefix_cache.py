"""KV reuse across turns: replies are token-for-token the same with and without the prefix cache.

Every test compares three engines on one checkpoint: the batch with the prefix cache,
the batch without it (``prefix_cache_mb=0``) and the per-request ``generate`` reference
(``max_batch=0``). On ``long_ckpt_dir`` (trained context 16 tokens) every prompt runs past
the trained context, so the dynamic-NTK alpha changes as a chat grows: a cached prefix
may only be reused under the alpha of the new prompt.
"""

from __future__ import annotations

import threading

import pytest
import torch

from qwen_core import load_engine
from qwen_core.prefix_cache import PrefixCache, describe

# Sampled turns draw from a few candidates (top-k): a random-weight model's distribution is
# nearly flat, and float noise of another batch shape (1e-7) must not change the draw.
TURN_SETTINGS = [
    dict(do_sample=False, repetition_penalty=1.1),
    dict(do_sample=True, seed=5, top_k=6, temperature=0.8),
    dict(do_sample=False, repetition_penalty=1.0),
    dict(do_sample=True, seed=9, top_k=4, temperature=1.2, repetition_penalty=1.15),
]
QUERIES = ["Hi, who are you?", "Tell me about foxes.", "And then?", "写一首诗", "Why?", "More, please.", "Thanks!"]
LONG_SYSTEM = "You are a careful assistant for a library. " * 12


def _engines(folder) -> dict:
    return {
        "cached": load_engine(str(folder), device="cpu", max_batch=4, prefix_cache_mb=64),
        "plain": load_engine(str(folder), device="cpu", max_batch=4, prefix_cache_mb=0),
        "alone": load_engine(str(folder), device="cpu", max_batch=0),
    }


@pytest.fixture(scope="module")
def short(ckpt_dir) -> dict:
    """Engines on the checkpoint with an 8192-token trained context (alpha 1 throughout)."""
    return _engines(ckpt_dir)


@pytest.fixture(scope="module")
def long(long_ckpt_dir) -> dict:
    """Engines on the checkpoint whose every prompt runs past its 16-token trained context."""
    return _engines(long_ckpt_dir)


def _reply(engine, query, history, system=None, **settings):
    with engine.stream_chat(query, history, system, **settings) as stream:
        stream.text()
        return stream.result


def _counters(engine) -> dict:
    return engine.batcher.stats()["prefix_cache"]


def _same_everywhere(engines: dict, query, history, system=None, **settings):
    """The reply of every engine; asserts they are token-for-token equal. Returns the cached one."""
    got = {name: _reply(e, query, history, system, **settings) for name, e in engines.items()}
    want = got["alone"]
    for name in ("cached", "plain"):
        assert got[name].token_ids == want.token_ids, f"{name} differs from the generate reference"
        assert got[name].text == want.text and got[name].finish_reason == want.finish_reason
    return got["cached"]


def _chat(engines: dict, turns: int, max_new: int):
    """A multi-turn chat; yields (turn, prompt ids, tokens reused by the cached engine for that turn)."""
    cached = engines["cached"]
    history: list[tuple[str, str]] = []
    for turn in range(turns):
        query, settings = QUERIES[turn % len(QUERIES)], TURN_SETTINGS[turn % len(TURN_SETTINGS)]
        ids = cached.build_prompt(query, history)
        before = _counters(cached)["tokens_reused"]
        result = _same_everywhere(engines, query, history, max_new_tokens=max_new, **settings)
        yield turn, ids, _counters(cached)["tokens_reused"] - before
        history.append((query, result.text))


def test_multi_turn_chat_inside_the_trained_context_reuses_each_previous_turn(short):
    previous: list[int] = []
    for turn, ids, reused in _chat(short, 4, 24):
        if turn:
            assert ids[: len(previous)] == previous  # the chat's prompt grows at its end only
            assert reused >= len(previous), f"turn {turn} reused {reused} of the {len(previous)} cached tokens"
        previous = ids
    stats = _counters(short["cached"])
    assert stats["hits"] >= 3 and 0 < stats["bytes"] <= stats["capacity_bytes"] and stats["entries"] > 0
    assert _counters(short["plain"])["tokens_reused"] == 0


def test_past_the_trained_context_a_prefix_is_reused_only_under_the_same_alpha(long):
    model = long["cached"].model
    seen: set[float] = set()
    previous_alpha = None
    crossed = kept = 0
    for turn, ids, reused in _chat(long, 7, 10):
        alpha = model.prefill_alphas(len(ids))[0]
        assert alpha > 1.0  # every prompt here is beyond the trained context
        if alpha not in seen:
            assert reused == 0, f"turn {turn} (new alpha {alpha}) reused K/V computed under another alpha"
            crossed += turn > 0
        elif alpha == previous_alpha:
            assert reused > 0, f"turn {turn} kept alpha {alpha} but reused nothing"
            kept += 1
        seen.add(alpha)
        previous_alpha = alpha
    assert crossed >= 1 and kept >= 1, "the chat should both cross into a new alpha and stay within one"


@pytest.mark.parametrize("which", ["short", "long"])
def test_regenerate_refeeds_only_the_last_prompt_token(which, request):
    engines = request.getfixturevalue(which)
    history = [("Who are you?", "A helpful assistant."), ("Where?", "Here.")]
    ids = engines["cached"].build_prompt("Regenerate me", history)
    first = _same_everywhere(engines, "Regenerate me", history, max_new_tokens=12, do_sample=True, seed=3, top_k=5)
    before = _counters(engines["cached"])
    again = _same_everywhere(engines, "Regenerate me", history, max_new_tokens=12, do_sample=True, seed=3, top_k=5)
    after = _counters(engines["cached"])
    assert again.token_ids == first.token_ids
    assert after["tokens_reused"] - before["tokens_reused"] == len(ids) - 1
    assert after["tokens_prefilled"] - before["tokens_prefilled"] == 1
    # A new seed on the same prompt (the UI's Regenerate) still shares the prefill.
    _same_everywhere(engines, "Regenerate me", history, max_new_tokens=12, do_sample=True, seed=4, top_k=5)
    assert _counters(engines["cached"])["tokens_prefilled"] - after["tokens_prefilled"] == 1


def test_n_rows_of_one_prompt_share_one_prefill(short):
    cached, alone = short["cached"], short["alone"]
    ids = cached.build_prompt("Three answers, please", [], LONG_SYSTEM)
    settings = [dict(do_sample=True, seed=20 + i, top_k=5, max_new_tokens=10) for i in range(3)]
    want = [_reply(alone, "Three answers, please", [], LONG_SYSTEM, **s).token_ids for s in settings]
    before = _counters(cached)
    got: list = [None] * 3
    start = threading.Barrier(3)

    def run(i: int) -> None:
        start.wait()
        got[i] = _reply(cached, "Three answers, please", [], LONG_SYSTEM, **settings[i]).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == want
    after = _counters(cached)
    # One prefill (of what no earlier prompt shared), then one token for each of the other two.
    assert after["tokens_reused"] - before["tokens_reused"] >= 2 * (len(ids) - 1)
    assert after["tokens_prefilled"] - before["tokens_prefilled"] <= len(ids) + 2


@pytest.mark.parametrize("which", ["short", "long"])
def test_editing_the_last_message_reuses_the_history_before_it(which, request):
    engines = request.getfixturevalue(which)
    history = [("What is a fox?", "An animal."), ("Where do they live?", "In forests.")]
    original = engines["cached"].build_prompt("How fast do they run?", history)
    edited = engines["cached"].build_prompt("How big are they?", history)
    common = next(i for i, (a, b) in enumerate(zip(original, edited, strict=False)) if a != b)
    _same_everywhere(engines, "How fast do they run?", history, max_new_tokens=10, do_sample=False)
    before = _counters(engines["cached"])["tokens_reused"]
    _same_everywhere(engines, "How big are they?", history, max_new_tokens=10, do_sample=False)
    reused = _counters(engines["cached"])["tokens_reused"] - before
    alphas = engines["cached"].model.prefill_alphas
    assert alphas(len(original)) == alphas(len(edited))  # (these prompts were chosen so: else nothing is reused)
    assert reused == common


def test_two_users_share_a_long_system_prompt(short):
    cached = short["cached"]
    alice = cached.build_prompt("I am Alice. Recommend a book.", [], LONG_SYSTEM)
    _same_everywhere(short, "I am Alice. Recommend a book.", [], LONG_SYSTEM, max_new_tokens=8, do_sample=False)
    before = _counters(cached)["tokens_reused"]
    bob = cached.build_prompt("Bob here: where is the exit?", [], LONG_SYSTEM)
    _same_everywhere(short, "Bob here: where is the exit?", [], LONG_SYSTEM, max_new_tokens=8, do_sample=False)
    shared = next(i for i, (a, b) in enumerate(zip(alice, bob, strict=False)) if a != b)
    assert shared > 100  # the persona and the ChatML around it
    assert _counters(cached)["tokens_reused"] - before >= shared


@pytest.mark.parametrize("which", ["short", "long"])
def test_cache_hits_mixed_into_a_running_batch_change_no_reply(which, request):
    engines = request.getfixturevalue(which)
    cached, alone = engines["cached"], engines["alone"]
    long_q = "Tell me a long story about a fox who learns to code in Rust " * 2
    want_long = _reply(alone, long_q, [], max_new_tokens=80, do_sample=False).token_ids
    history = [("Hello", "Hi there.")]
    turns = [("How are you?", dict(do_sample=False)), ("And you?", dict(do_sample=True, seed=2, top_k=4))]
    want = [_reply(alone, q, history, max_new_tokens=10, **s).token_ids for q, s in turns]
    for q, s in turns:  # warm the cache with these prompts
        _reply(cached, q, history, max_new_tokens=10, **s)
    hits = _counters(cached)["hits"]
    runner = cached.stream_chat(long_q, [], max_new_tokens=80, do_sample=False)
    next(runner)  # the long reply is decoding ...
    got = [_reply(cached, q, history, max_new_tokens=10, **s).token_ids for q, s in turns]  # ... as these join
    runner.text()
    assert runner.result.token_ids == want_long
    assert got == want
    assert cached.batcher.max_rows_seen >= 2 and _counters(cached)["hits"] >= hits + 2


def test_the_batch_never_writes_into_cached_tensors(short):
    cached = short["cached"]
    _reply(cached, "Copy on use", [], max_new_tokens=6, do_sample=False)
    tree = cached.batcher.prefix
    snapshot = [(node, node.tokens, node.kv.clone()) for node in tree._nodes() if node.kv is not None]
    for _ in range(2):  # hits, merged into a batch, grown by decode steps, cut when rows leave
        streams = [cached.stream_chat("Copy on use", [], max_new_tokens=6, do_sample=False) for _ in range(2)]
        for stream in streams:
            stream.text()
    kept = [(node, kv) for node, tokens, kv in snapshot if node.tokens == tokens]  # (a split re-cuts a node)
    assert kept and all(torch.equal(node.kv, kv) for node, kv in kept)


def test_the_byte_bound_holds_and_the_least_recently_used_goes_first():
    per_token = 2 * 2 * 4 * 16 * 4  # layers x (k, v) x heads x head_dim x fp32
    cache = PrefixCache(capacity_bytes=per_token * 100)

    def kv(seed: int):
        return lambda a, b: torch.randn(2, 2, 4, b - a, 16, generator=torch.Generator().manual_seed(seed + a))

    seqs = {name: [i * 1000 + j for j in range(40)] for i, name in enumerate("abcd")}
    cache.insert(seqs["a"], 1.0, kv(0))
    cache.insert(seqs["b"], 1.0, kv(1))
    assert cache.match(seqs["a"] + [7], 1.0, limit=41)[0] == 40  # "a" is now the most recently used
    cache.insert(seqs["c"], 1.0, kv(2))  # 120 tokens > 100: the least recently used ("b") goes
    assert cache.bytes <= cache.capacity_bytes
    assert cache.match(seqs["b"], 1.0, limit=40)[0] == 0
    assert cache.match(seqs["a"], 1.0, limit=40)[0] == 40 and cache.match(seqs["c"], 1.0, limit=40)[0] == 40
    cache.insert(list(range(500)), 1.0, kv(3))  # larger than the whole cache: not stored, nothing evicted
    assert cache.match(seqs["c"], 1.0, limit=40)[0] == 40
    # A prefix computed under one NTK alpha is never handed to a prompt under another.
    assert cache.match(seqs["c"], 3.0, limit=40) == (0, [])
    # Shared prefixes are stored once: "c" plus a branch off its first 30 tokens adds 10 tokens.
    used = cache.bytes
    cache.insert(seqs["c"][:30] + [5] * 10, 1.0, kv(4))
    assert cache.bytes - used == 10 * per_token and cache.entries == 4  # a, c's two halves, the branch


def _held_bytes(cache: PrefixCache) -> int:
    """The bytes the tree's tensors really keep alive (views of one buffer count it once)."""
    storages = {}
    for node in cache._nodes():
        if node.kv is not None:
            storage = node.kv.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_splits_share_their_buffer_and_eviction_frees_what_it_counts():
    """A split copies nothing (a reply waits on it); the halves view one buffer. When eviction
    drops a half, the survivor gets its own copy, so the counted bytes are the held bytes."""
    per_token = 2 * 2 * 4 * 16 * 4
    cache = PrefixCache(capacity_bytes=per_token * 100)

    def kv(seed: int):
        return lambda a, b: torch.randn(2, 2, 4, b - a, 16, generator=torch.Generator().manual_seed(seed + a))

    a = list(range(60))
    cache.insert(a, 1.0, kv(0))
    whole = next(n for n in cache._nodes() if n.kv is not None).kv.clone()
    cache.insert(a[:30] + [9000 + i for i in range(20)], 1.0, kv(1))  # parts from "a" after 30 tokens
    assert cache.entries == 3 and cache.bytes == 80 * per_token == _held_bytes(cache)  # a's halves: one buffer
    length, pieces = cache.match(a + [1], 1.0, limit=60)
    assert length == 60 and torch.equal(torch.cat(pieces, dim=3), whole)  # the same K/V, read through views
    cache.insert([7000 + i for i in range(50)], 1.0, kv(2))  # 130 tokens > 100: least recently used leaves go
    assert cache.bytes <= cache.capacity_bytes and cache.bytes == _held_bytes(cache)
    length, pieces = cache.match(a + [1], 1.0, limit=60)
    if length:  # whatever survived of "a" is still its K/V
        assert torch.equal(torch.cat(pieces, dim=3), whole[:, :, :, :length])


def test_a_prompt_already_held_inside_a_run_stores_nothing_and_splits_nothing():
    """Regenerate: the prompt ends inside the run that holds prompt + reply; nothing to store."""
    per_token = 2 * 2 * 4 * 16 * 4
    cache = PrefixCache(capacity_bytes=per_token * 100)
    calls = []

    def kv(a, b):
        calls.append((a, b))
        return torch.zeros(2, 2, 4, b - a, 16)

    cache.insert(list(range(50)), 1.0, kv)
    calls.clear()
    cache.insert(list(range(30)), 1.0, kv)
    assert calls == [] and cache.entries == 1 and cache.bytes == 50 * per_token


def test_match_hands_out_views_and_the_batch_never_writes_into_them(short):
    """No copy at lookup: the pieces are the tree's own tensors (the reply's first forward copies
    them once, concatenating them with its new keys)."""
    cached = short["cached"]
    _reply(cached, "Views, not copies", [], max_new_tokens=6, do_sample=False)
    tree = cached.batcher.prefix
    ids = cached.build_prompt("Views, not copies", [])
    length, pieces = tree.match(ids, 1.0, limit=len(ids) - 1)
    assert length == len(ids) - 1
    owned = {n.kv.untyped_storage().data_ptr() for n in tree._nodes() if n.kv is not None}
    assert all(p.untyped_storage().data_ptr() in owned for p in pieces)


def test_a_small_bound_holds_through_real_chats_and_replies_stay_exact(ckpt_dir, short):
    small = load_engine(str(ckpt_dir), device="cpu", max_batch=4, prefix_cache_mb=0.05)  # ~50 tokens' K/V
    history: list[tuple[str, str]] = []
    for turn in range(4):
        query = QUERIES[turn]
        want = _reply(short["alone"], query, history, max_new_tokens=12, do_sample=False)
        got = _reply(small, query, history, max_new_tokens=12, do_sample=False)
        assert got.token_ids == want.token_ids
        stats = _counters(small)
        assert stats["bytes"] <= stats["capacity_bytes"] == int(0.05 * 2**20)
        history.append((query, want.text))


def test_stats_are_visible_and_described(short):
    stats = short["cached"].batcher.stats()["prefix_cache"]
    assert set(stats) == {
        "hits",
        "misses",
        "hit_rate",
        "tokens_reused",
        "tokens_prefilled",
        "bytes",
        "capacity_bytes",
        "entries",
    }
    assert stats["capacity_bytes"] == 64 * 2**20 and 0 <= stats["hit_rate"] <= 1
    assert describe(stats).startswith("Prefix cache: ") and "tokens reused" in describe(stats)
    assert describe(short["plain"].batcher.stats()["prefix_cache"]) == "Prefix cache: off"
    with pytest.raises(ValueError, match="prefix_cache_mb"):
        load_engine(str(short["cached"].info.path), device="cpu", prefix_cache_mb=-1)


def test_the_app_flag_reaches_the_batch_and_readyz_shows_the_hits(ckpt_dir, tmp_path):
    import json
    import sys
    import urllib.request
    from pathlib import Path

    from server_process import AppProcess

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app import parse_config

    assert parse_config(["--prefix-cache-mb", "0"]).prefix_cache_mb == 0
    with pytest.raises(ValueError, match="--prefix-cache-mb must be between 0"):
        parse_config(["--prefix-cache-mb", "-5"])
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(tmp_path), "--prefix-cache-mb", "8"],
        env={"OMP_NUM_THREADS": "1"},
    )
    try:
        body = {"messages": [{"role": "user", "content": "Say something"}], "max_tokens": 8, "temperature": 0}
        replies = []
        for _ in range(2):  # the same request twice: the second reuses the first's prompt K/V
            request = urllib.request.Request(
                f"{proc.url}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as r:
                replies.append(json.loads(r.read())["choices"][0]["message"]["content"])
        with urllib.request.urlopen(f"{proc.url}/readyz", timeout=10) as r:
            stats = json.loads(r.read())["batch"]["prefix_cache"]
    finally:
        proc.stop()
    assert replies[0] == replies[1]
    assert stats["capacity_bytes"] == 8 * 2**20 and stats["hits"] >= 1 and stats["tokens_reused"] > 0


def test_out_of_memory_gives_the_cache_memory_back_and_the_engine_keeps_serving(ckpt_dir):
    engine = load_engine(str(ckpt_dir), device="cpu", max_batch=2, prefix_cache_mb=8)
    want = _reply(engine, "Fill the cache", [], max_new_tokens=6, do_sample=False).token_ids
    assert _counters(engine)["bytes"] > 0
    armed = threading.Event()

    def oom_when_armed(module, args, output):
        if armed.is_set():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return output

    handle = engine.model.model.layers[0].mlp.register_forward_hook(oom_when_armed)
    try:
        stream = engine.stream_chat("Something new", [], max_new_tokens=5000, do_sample=False, ignore_eos=True)
        next(stream)
        armed.set()
        with pytest.raises(Exception, match="ran out of memory"):
            stream.text()
    finally:
        handle.remove()
    assert _counters(engine)["bytes"] == 0 and _counters(engine)["entries"] == 0
    assert _reply(engine, "Fill the cache", [], max_new_tokens=6, do_sample=False).token_ids == want
