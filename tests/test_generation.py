"""Streaming generation: joins to chat(), stops, cancels within a token, surfaces worker errors."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch
from qwen1_checkpoint import Shape, write_checkpoint
from safetensors.torch import load_file, save_file

from qwen_core import GenerationError, InputTooLong, load_engine
from qwen_core.generation import QwenStreamer


def _boost_token(folder, token_id: int):
    """Make ``token_id`` the model's certain choice.

    Every embedding gets a large constant feature in dimension 0, which dominates the
    residual stream through the small random layers; the boosted lm_head row reads it.
    """
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["transformer.wte.weight"][:, 0] = 100.0
    tensors["transformer.ln_f.weight"][:] = 1.0
    tensors["lm_head.weight"][token_id] = 0.0
    tensors["lm_head.weight"][token_id, 0] = 50.0
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_stream_joins_to_chat(engine):
    kw = dict(do_sample=False, max_new_tokens=40)
    stream = engine.stream_chat("Write a poem about the sea.", history=[("hi", "hello")], **kw)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == engine.chat("Write a poem about the sea.", history=[("hi", "hello")], **kw)
    res = stream.result
    assert res.finish_reason in ("length", "stop")
    assert res.prompt_tokens == len(engine.build_prompt("Write a poem about the sea.", history=[("hi", "hello")]))
    assert res.completion_tokens == len(res.token_ids) > 0
    assert res.time_to_first_token_s is not None and res.elapsed_s >= res.time_to_first_token_s


def test_streamed_text_equals_full_decode(engine):
    stream = engine.stream_chat("Chinese poetry please", do_sample=False, max_new_tokens=120)
    text = "".join(stream)
    ids = [i for i in stream.result.token_ids if i not in engine.tokenizer.stop_ids]
    assert text == engine.tokenizer.decode(ids)


def test_streamer_never_splits_a_character(tokenizer):
    streamer = QwenStreamer(tokenizer, tokenizer.stop_ids)
    streamer.put(torch.tensor([0]))  # the prompt, skipped
    for token in tokenizer.encode("我爱🎉emoji👩‍👩‍👧"):
        streamer.put(torch.tensor([token]))
    streamer.end()
    pieces = list(streamer)
    assert "".join(pieces) == "我爱🎉emoji👩‍👩‍👧"
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("stop", [151645, 151644, 151643])
def test_stop_tokens_end_the_reply_and_never_show(tmp_path, stop):
    folder = write_checkpoint(tmp_path / "stopper", Shape(), "float32")
    _boost_token(folder, stop)
    eng = load_engine(str(folder), device="cpu")
    stream = eng.stream_chat("Hi", do_sample=False, max_new_tokens=50)
    text = "".join(stream)
    assert stream.result.finish_reason == "stop"
    assert stream.result.token_ids == [stop]
    assert text == "" and "<|" not in text


def test_padded_vocabulary_is_never_sampled(tmp_path):
    folder = write_checkpoint(tmp_path / "padded", Shape(), "float32")
    _boost_token(folder, 151900)  # a padded id no tokenizer can decode
    eng = load_engine(str(folder), device="cpu")
    for kw in (dict(do_sample=False), dict(do_sample=True, seed=3, top_p=1.0, temperature=1.0)):
        stream = eng.stream_chat("Hi", max_new_tokens=20, **kw)
        "".join(stream)
        assert max(stream.result.token_ids) < 151851


def test_cancel_stops_within_a_token(engine):
    stream = engine.stream_chat("Tell me everything.", do_sample=False, max_new_tokens=5000)
    got = [next(stream) for _ in range(3)]
    assert len(got) == 3
    stream.cancel()
    at = stream.tokens_so_far
    stream.close()
    res = stream.result
    assert res.finish_reason == "cancelled"
    assert res.completion_tokens <= at + 2  # stopped within a token or two, long before 5000
    assert stream.worker_ended.is_set()
    assert engine.batcher.stats()["rows"] == 0  # the row left the batch


@pytest.mark.parametrize("batched", [True, False])
def test_closing_a_reply_that_already_ran_out_reports_length(engine, ckpt_dir, batched):
    """Stop pressed after the budget ran out (the end not yet read) is not a cancel: the reply is whole."""
    source = engine if batched else load_engine(str(ckpt_dir), device="cpu", max_batch=0)
    stream = source.stream_chat("Tell me everything.", do_sample=False, ignore_eos=True, max_new_tokens=6)
    next(stream)
    assert stream.worker_ended.wait(timeout=60)
    stream.close()
    res = stream.result
    assert (res.finish_reason, res.completion_tokens) == ("length", 6)


def test_external_cancel_event(engine):
    cancel = threading.Event()
    stream = engine.stream_chat("Go on and on.", do_sample=False, max_new_tokens=5000, cancel=cancel)
    next(stream)
    threading.Timer(0.05, cancel.set).start()
    rest = list(stream)
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens < 5000
    assert isinstance(rest, list)


def test_abandoned_stream_stops_its_worker(engine):
    stream = engine.stream_chat("Talk.", do_sample=False, max_new_tokens=5000)
    next(stream)
    ended = stream.worker_ended
    del stream  # the consumer went away without closing
    assert ended.wait(timeout=30)


def test_worker_exception_reaches_consumer_and_engine_survives(engine):
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected failure in layer 0")
        return output

    handle = engine.model.model.layers[0].mlp.register_forward_hook(explode)
    try:
        stream = engine.stream_chat("Hi", do_sample=False, max_new_tokens=50)
        with pytest.raises(RuntimeError, match="injected failure"):
            list(stream)
        assert stream.result.finish_reason == "error"
        assert stream.worker_ended.is_set()
    finally:
        handle.remove()
    assert engine.chat("Hi", do_sample=False, max_new_tokens=5)  # still usable


def test_out_of_memory_becomes_a_clear_error(engine):
    def oom(module, args, output):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = engine.model.model.layers[1].register_forward_hook(oom)
    try:
        with pytest.raises(GenerationError, match="ran out of memory.*smaller or quantized"):
            engine.chat("Hi", max_new_tokens=5)
    finally:
        handle.remove()
    assert engine.chat("Hi", do_sample=False, max_new_tokens=3) is not None


def test_seeded_sampling_is_reproducible(engine):
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=30)
    a = engine.stream_chat("Surprise me", seed=1234, **kw)
    text_a = "".join(a)
    assert a.result.seed == 1234
    assert engine.chat("Surprise me", seed=1234, **kw) == text_a.strip()
    others = {engine.chat("Surprise me", seed=s, **kw) for s in range(5, 9)}
    assert len(others) > 1


def test_concurrent_seeded_replies_do_not_interfere(engine):
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=25)
    solo = {s: engine.chat("Story", seed=s, **kw) for s in (11, 12, 13)}
    out: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda s=s: out.__setitem__(s, engine.chat("Story", seed=s, **kw))) for s in solo
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == solo


@pytest.mark.parametrize("temperature", [0.0, 1e-186, 1e-38, 9.9e-6])
def test_temperature_zero_or_vanishing_is_greedy(engine, temperature):
    stream = engine.stream_chat("Hello", temperature=temperature, max_new_tokens=15)
    assert stream.text().strip() == engine.chat("Hello", do_sample=False, max_new_tokens=15)
    assert stream.result.seed is None  # greedy: no seed to report


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=float("nan")),
        dict(temperature=-1),
        dict(top_p=1.5),
        dict(top_p=0),
        dict(top_k=-3),
        dict(max_new_tokens=0),
        dict(repetition_penalty=float("inf")),
        dict(seed=-1),
        dict(max_window_size=0),
        dict(nonsense=1),
    ],
)
def test_bad_settings_are_refused(engine, bad):
    with pytest.raises(ValueError):
        engine.stream_chat("Hi", **bad)


def test_defaults_come_from_generation_config(engine):
    d = engine.defaults
    assert (d.top_p, d.top_k, d.repetition_penalty, d.max_new_tokens, d.max_window_size) == (0.8, 0, 1.1, 512, 6144)
    assert d.do_sample is True


def test_too_long_input_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "short", Shape(seq_length=64, use_dynamic_ntk=False, use_logn_attn=False))
    eng = load_engine(str(folder), device="cpu")
    assert eng.info.context_length == 64
    with pytest.raises(InputTooLong, match="handles at most 64"):
        eng.chat("word " * 100)
    stream = eng.stream_chat("hi", do_sample=False, max_new_tokens=500)
    "".join(stream)
    assert stream.result.prompt_tokens + stream.result.completion_tokens <= 64
    assert stream.result.finish_reason in ("length", "stop")


def test_messages_form(engine):
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    stream = engine.stream_messages(msgs, do_sample=False, max_new_tokens=10)
    text = "".join(stream)
    assert text.strip() == engine.chat(
        "bye", history=[("hi", "hello")], system="Be terse.", do_sample=False, max_new_tokens=10
    )
    with pytest.raises(ValueError, match="last message"):
        engine.stream_messages([{"role": "assistant", "content": "x"}])


def test_first_token_is_fast_relative_to_reply(engine):
    started = time.perf_counter()
    stream = engine.stream_chat("Hi", do_sample=False, max_new_tokens=60)
    next(stream)
    first = time.perf_counter() - started
    stream.close()
    assert stream.result.time_to_first_token_s <= first + 0.5


@pytest.mark.parametrize("batched", [True, False])
def test_a_slow_consumer_gets_the_same_text_in_fewer_items(engine, ckpt_dir, batched):
    from qwen_core.text import coalesced

    source = engine if batched else load_engine(str(ckpt_dir), device="cpu", max_batch=0)
    kw = dict(do_sample=False, max_new_tokens=40)
    stream = source.stream_chat("Write a poem about the sea.", **kw)
    first = next(stream)
    while not stream.worker_ended.is_set():  # a consumer busy elsewhere while the model runs on
        time.sleep(0.05)
    items = [first, *coalesced(stream)]
    assert len(items) == 2  # everything generated meanwhile comes as one item
    assert "".join(items) == stream.result.text == engine.stream_chat("Write a poem about the sea.", **kw).text()
    assert stream.result.finish_reason == "length" and stream.result.completion_tokens == 40


def test_coalescing_keeps_pace_with_a_fast_consumer_and_stops(engine):
    from qwen_core.text import coalesced

    stream = engine.stream_chat("Count to a thousand.", do_sample=False, max_new_tokens=400)
    items = []
    for item in coalesced(stream):
        items.append(item)
        if len(items) == 3:
            stream.cancel()
            at = stream.tokens_so_far
    assert stream.result.finish_reason == "cancelled" and "".join(items) == stream.result.text
    assert stream.result.completion_tokens <= at + 2  # within a token or two of the cancel, not 400


@pytest.mark.parametrize("batched", [True, False])
def test_the_end_of_a_paced_reply_is_not_held_back(engine, ckpt_dir, batched):
    """A reply that ends while its next paced item waits is shown at once, not an interval later."""
    from qwen_core.text import coalesced

    source = engine if batched else load_engine(str(ckpt_dir), device="cpu", max_batch=0)
    kw = dict(do_sample=False, max_new_tokens=30)
    stream = source.stream_chat("Write a poem about the sea.", **kw)
    started = time.monotonic()
    items = list(coalesced(stream, max_per_second=0.2))  # one item per 5 s
    assert time.monotonic() - started < 4.0  # the 30 tokens took far less than the 5 s interval
    assert len(items) == 2 and "".join(items) == stream.result.text  # the first token, then the rest


def test_paced_items_come_at_most_at_the_rate_asked_and_lose_nothing(engine):
    from qwen_core.text import coalesced

    # Runs until cancelled after the fourth item (120 tokens once ended within the first 1/4 s on
    # a fast machine, leaving no gap to measure); compared with the reference of the same length.
    kw = dict(do_sample=False, ignore_eos=True)
    stream = engine.stream_chat("Write a poem about the sea.", max_new_tokens=6000, **kw)
    stamps, items = [], []
    for item in coalesced(stream, max_per_second=4):
        stamps.append(time.monotonic())
        items.append(item)
        if len(items) == 4:
            stream.cancel()
    gaps = [b - a for a, b in itertools.pairwise(stamps)][:-1]  # (the last comes once the reply ended)
    assert len(gaps) >= 2 and min(gaps) >= 0.249  # never two updates within 1/4 s
    n = stream.result.completion_tokens
    assert len(items) < n < 6000  # several tokens per update
    want = engine.stream_chat("Write a poem about the sea.", max_new_tokens=n, **kw).text()
    assert "".join(items) == stream.result.text == want
