"""The llama.cpp CPU engine (qwen_core.llamacpp) on tiny checkpoints: conversion with llama.cpp's own
converter (BF16 and both GPTQ formats), the GGUF cache, fidelity against an independent fp32 forward,
streaming / Stop / seeds / stop strings / KV reuse, and /v1 and the UI service on it."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from qwen1_checkpoint import Shape, write_checkpoint, write_gptq_checkpoint
from reference_qwen1 import ReferenceQwen1

from qwen_core import load_engine
from qwen_core.backend import Backend, ReplyStreamProtocol
from qwen_core.errors import UnsupportedCombination
from qwen_core.llamacpp import GgufCache, LlamaCppEngine, llamacpp_available

pytestmark = pytest.mark.skipif(
    not llamacpp_available(), reason="llama-cpp-python / its converter not installed (scripts/install_llamacpp.sh)"
)
# hidden 128 (head size 32) and w1/w2 of 256: whole GPTQ groups of 128 and whole Q8_0 blocks of 32;
# seq_length 512 keeps every test prompt inside the trained context (llama.cpp has no dynamic NTK).
SHAPE = Shape(hidden_size=128, num_attention_heads=4, intermediate_size=512, seq_length=512)
# Documented tolerances (docs/PERFORMANCE.md): max |Δ logit| over the logit scale (max |logit|).
TOLERANCE = {"f16": 0.01, "int8": 0.06, "int4": 0.3}
PROMPTS = [[(i * 7919 + k * 104729) % 150000 for i in range(n)] for k, n in enumerate((3, 17, 64, 150))]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcpp-bf16")
    folder = write_checkpoint(root / "ckpt", SHAPE, "bfloat16", seed=3)
    return folder, root / "data", ReferenceQwen1(folder)


@pytest.fixture(scope="module")
def int8_engine(bf16):
    folder, data, _ = bf16
    engine = load_engine(str(folder), precision="int8", device="cpu", data_dir=data)
    yield engine
    engine.unload()


def test_int8_on_cpu_is_llamacpp_and_satisfies_the_contract(int8_engine):
    engine = int8_engine
    assert isinstance(engine, LlamaCppEngine) and isinstance(engine, Backend)
    assert engine.info.precision == "int8" and engine.info.dtype == "Q8_0" and engine.info.device == "cpu"
    assert engine.info.decode.startswith("llama.cpp (Q8_0") and "--precision int8 on the CPU" in engine.info.decode
    assert engine.info.context_length == SHAPE.seq_length
    with engine.stream_chat("Hi", do_sample=False, max_new_tokens=4) as stream:
        assert isinstance(stream, ReplyStreamProtocol)
        text = stream.text()
    res = stream.result
    assert res.finish_reason in ("stop", "length") and res.text == text
    assert res.prompt_tokens == len(engine.build_prompt("Hi")) and res.completion_tokens == len(res.token_ids) > 0


@pytest.mark.parametrize("precision", ["f16", "int8", "int4"])
def test_logits_within_the_documented_tolerance_of_fp32(bf16, precision):
    folder, data, ref = bf16
    from qwen_core.llamacpp import load_llamacpp_engine

    engine = load_llamacpp_engine(str(folder), precision, data_dir=data)
    try:
        errors = [_rel_err(engine.next_token_logits(ids), ref.logits(ids)[-1]) for ids in PROMPTS]
    finally:
        engine.unload()
    assert max(errors) < TOLERANCE[precision], errors


def test_greedy_reply_matches_the_fp32_engine_at_f16(bf16):
    folder, data, ref = bf16
    from qwen_core.llamacpp import load_llamacpp_engine

    engine = load_llamacpp_engine(str(folder), "f16", data_dir=data)
    try:
        prompt = engine.build_prompt("Tell me something", history=[("a", "b")])
        with engine.stream_prompt(prompt, engine.settings(do_sample=False, max_new_tokens=12)) as stream:
            stream.text()
        assert stream.result.token_ids == ref.greedy(prompt, 12, repetition_penalty=1.1)
    finally:
        engine.unload()


def test_seeds_repeat_and_differ(int8_engine):
    def sample(seed):
        return int8_engine.stream_chat("Pick", seed=seed, temperature=1.5, top_p=1.0, max_new_tokens=8, min_tokens=8)

    first, again, other = (sample(s) for s in (5, 5, 6))
    texts = [s.text() for s in (first, again, other)]
    assert first.result.token_ids == again.result.token_ids and texts[0] == texts[1]
    assert first.result.seed == 5 and other.result.token_ids != first.result.token_ids


def test_cancel_ends_the_reply_and_the_next_one_runs(int8_engine):
    stop = threading.Event()
    stream = int8_engine.stream_chat("Long", cancel=stop, ignore_eos=True, max_new_tokens=400, do_sample=False)
    for n, _ in enumerate(stream):
        if n == 2:
            stop.set()
    assert stream.result.finish_reason == "cancelled" and stream.result.completion_tokens < 400
    after = int8_engine.stream_chat("Short", do_sample=False, max_new_tokens=3, ignore_eos=True)
    after.text()
    assert after.result.finish_reason == "length" and after.result.completion_tokens == 3


def test_stop_token_ids_end_the_reply(int8_engine):
    first = int8_engine.stream_chat("x", do_sample=False, max_new_tokens=6, ignore_eos=True)
    first.text()
    token = first.result.token_ids[2]
    again = int8_engine.stream_chat("x", do_sample=False, max_new_tokens=6, ignore_eos=True, stop_token_ids=[token])
    again.text()
    assert again.result.finish_reason == "stop"
    assert again.result.token_ids == first.result.token_ids[: first.result.token_ids.index(token) + 1]


def test_a_follow_up_turn_reuses_the_previous_kv_and_matches_a_fresh_context(bf16, int8_engine):
    engine = int8_engine
    greedy = {"do_sample": False, "max_new_tokens": 8}
    reply = engine.chat("First question", **greedy)
    before = engine.worker.reused_tokens
    prompt = engine.build_prompt("Second", history=[("First question", reply)])
    with engine.stream_prompt(prompt, engine.settings(**greedy)) as warm:
        warm.text()
    reused = engine.worker.reused_tokens - before
    assert reused >= len(engine.build_prompt("First question")) - 1
    engine.worker.run_exclusive(lambda: setattr(engine.llama, "n_tokens", 0))  # forget the cache
    with engine.stream_prompt(prompt, engine.settings(**greedy)) as cold:
        cold.text()
    assert warm.result.token_ids == cold.result.token_ids


def test_the_cache_is_reused_rebuilt_when_the_source_changes_and_replaced_when_corrupt(bf16, tmp_path):
    folder, _, _ = bf16
    cache = GgufCache(tmp_path / "data", folder)
    q8 = cache.path("q8_0")
    made = json.loads(cache.manifest_path.read_text())["files"][q8.name]["made"]
    assert cache.path("q8_0") == q8 and not cache.warnings
    assert json.loads(cache.manifest_path.read_text())["files"][q8.name]["made"] == made  # reused
    # corrupt: truncated -> replaced, with a message that says so
    q8.write_bytes(q8.read_bytes()[: q8.stat().st_size // 2])
    assert cache.path("q8_0") == q8 and any("unusable" in w and "converting again" in w for w in cache.warnings)
    with open(q8, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    # the source changes -> converted again
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": "edited"}, indent=2))
    try:
        cache.warnings.clear()
        cache.path("q8_0")
        assert any("changed since it was converted" in w for w in cache.warnings)
    finally:
        (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_checkpoints_convert_and_match_their_dequantized_weights(tmp_path, bits):
    folder = write_gptq_checkpoint(tmp_path / "q", tmp_path / "ref", SHAPE, bits, seed=bits)
    ref = ReferenceQwen1(tmp_path / "ref")
    engine = load_engine(str(folder), precision=f"int{bits}", device="cpu", data_dir=tmp_path, cpu_engine="llamacpp")
    try:
        assert isinstance(engine, LlamaCppEngine) and engine.info.precision == f"int{bits}"
        assert f"GPTQ Int{bits}" in engine.info.decode
        errors = [_rel_err(engine.next_token_logits(ids), ref.logits(ids)[-1]) for ids in PROMPTS]
        assert max(errors) < TOLERANCE[f"int{bits}"], errors
    finally:
        engine.unload()


def test_refusals_are_clear(bf16):
    folder, data, _ = bf16
    with pytest.raises(UnsupportedCombination, match="llama.cpp runs int8 or int4"):
        load_engine(str(folder), precision="fp32", device="cpu", data_dir=data, cpu_engine="llamacpp")
    with pytest.raises(UnsupportedCombination, match="runs through llama.cpp"):
        load_engine(str(folder), precision="int8", device="cpu", cpu_engine="torch")


def test_tiny_models_keep_the_torch_engine_by_default(bf16):
    folder, data, _ = bf16
    engine = load_engine(str(folder), device="cpu", data_dir=data)
    assert not isinstance(engine, LlamaCppEngine) and engine.info.precision in ("fp32", "bf16")


def test_v1_chat_completions_on_llamacpp(int8_engine, bf16):
    import httpx
    from api_harness import RouterApp

    app = RouterApp(int8_engine, bf16[0], concurrency=2, max_queue=4)
    try:
        body = {"model": app.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
        body.update(temperature=0, stop=["zzz-never"])
        resp = httpx.post(app.url + "/v1/chat/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        want = int8_engine.chat("Hi", do_sample=False, max_new_tokens=5)
        assert out["choices"][0]["message"]["content"].strip() == want
        assert out["usage"]["prompt_tokens"] == len(int8_engine.build_prompt("Hi"))
    finally:
        app.stop()


def test_the_ui_service_streams_from_llamacpp(int8_engine, bf16, tmp_path):
    from qwen_core.manager import ModelManager, ModelSpec
    from ui import ASSETS
    from ui.personas import PersonaStore
    from ui.service import ChatService, Limits, empty_store

    manager = ModelManager(lambda *a, **k: int8_engine, [])
    manager.start(ModelSpec(str(bf16[0]), device="cpu"))
    service = ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "p"), Limits(max_message_chars=1000))
    greedy = {"do_sample": False, "max_new_tokens": 6}
    store = service.add_user_message(empty_store(), "Hello there")
    system = "You are a helpful assistant."
    grown = [service.active(s)["messages"][-1]["content"] for s, _ in service.stream_reply(store, system, greedy, "s1")]
    assert len(grown) >= 2 and grown[-1] == int8_engine.chat("Hello there", **greedy)
