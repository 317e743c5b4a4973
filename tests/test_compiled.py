"""The compiled single-stream path: static KV cache + ``torch.compile`` through the real loader.

Most tests compile with dynamo's ``eager`` backend and ``fullgraph=True``: dynamo traces the
whole Qwen-1 forward (NTK, LogN, static cache) and any graph break fails the test, without
paying for inductor's C++ build each time. One test compiles with inductor for real.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from qwen1_checkpoint import Shape, write_checkpoint
from safetensors.torch import load_file, save_file

from qwen_core import GenerationError, load_engine
from qwen_core.compiled import CompileSettings, cache_bucket
from qwen_core.modeling import ntk_alpha

GREEDY = {"do_sample": False, "max_new_tokens": 24}
TRACE_ONLY = CompileSettings(backend="eager", min_cache=64)


@pytest.fixture(scope="module")
def compiled(long_ckpt_dir):
    """The tiny seq_length-16 model (every prompt runs past it: NTK and LogN on), compiled."""
    engine = load_engine(str(long_ckpt_dir), precision="fp32", device="cpu", compile=TRACE_ONLY)
    yield engine
    engine.unload()  # also forgets the compiled graphs (torch._dynamo.reset)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_engine_says_it_is_compiled_and_warmed_up(compiled):
    assert compiled.info.decode == "compiled (eager, reduce-overhead)"
    stats = compiled.batcher.stats()
    assert stats["mode"] == "compiled single-stream" and stats["buckets"] == [64] and stats["replies"] == 1


def test_greedy_replies_equal_the_batched_engine_across_buckets_and_ntk_alphas(compiled, long_engine):
    queries = ["hi", "Tell me a long story about the sea. " * 4, "x " * 40, "y " * 90, "z " * 150]
    alphas = set()
    for query in queries:
        want = long_engine.stream_chat(query, **GREEDY)
        want.text()
        got = compiled.stream_chat(query, **GREEDY)
        text = got.text()
        assert got.result.token_ids == want.result.token_ids, query
        assert text == want.result.text and got.result.finish_reason == want.result.finish_reason
        alphas.add(ntk_alpha(got.result.prompt_tokens, 16))
    assert len(alphas) >= 4  # four different dynamic-NTK bases, all exact
    assert len(compiled.batcher.stats()["buckets"]) >= 3  # and several cache sizes


def test_a_new_ntk_alpha_is_new_data_not_a_new_graph(compiled, long_engine):
    compiled.chat("a " * 30, **GREEDY)  # bucket 64 compiled (warm-up) and used
    before = _unique_graphs()
    for n in (20, 26, 33):  # prompts of 40..70 tokens: alpha 3, 7, 15 in the same 128 bucket
        query = "b " * n
        assert compiled.chat(query, max_new_tokens=4, do_sample=False) == long_engine.chat(
            query, max_new_tokens=4, do_sample=False
        )
    assert _unique_graphs() - before <= 1  # at most the 128 bucket's graph, not one per alpha


def test_history_and_system_prompt_match_the_batched_engine(compiled, long_engine):
    history = [("What is 2+2?", "4."), ("And 3+3?", "6.")]
    kw = dict(history=history, system="You are a pirate.", **GREEDY)
    assert compiled.chat("And 4+4?", **kw) == long_engine.chat("And 4+4?", **kw)


def test_seeded_sampling_is_reproducible_and_equal_to_the_batched_engine(compiled, long_engine):
    kw = dict(seed=1234, temperature=0.9, top_p=0.9, max_new_tokens=20)
    first = compiled.chat("Name three colours.", **kw)
    assert compiled.chat("Name three colours.", **kw) == first
    # A batch engine of its own, cache off: the shared fixture's prefix cache may hold this system
    # prompt from earlier tests, and a K/V reused from a prefill of another length differs in the
    # last float bits, which a draw on this random model's flat distribution can turn into another token.
    from qwen_core import load_engine

    plain = load_engine(long_engine.info.path, precision="fp32", device="cpu", prefix_cache_mb=0)
    assert plain.chat("Name three colours.", **kw) == first


def test_cancel_mid_stream_and_while_queued(compiled):
    stream = compiled.stream_chat("Count to one hundred.", do_sample=False, max_new_tokens=400)
    queued_cancel = threading.Event()
    queued = compiled.stream_chat("Hello", cancel=queued_cancel, **GREEDY)  # waits behind the first
    queued_cancel.set()
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            stream.cancel()
            at = stream.tokens_so_far
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens <= at + 2  # stopped within a token or two, not after 400
    assert queued.text() == "" and queued.result.finish_reason == "cancelled"  # never ran
    assert compiled.chat("Hello", **GREEDY)  # and the decoder serves on
    assert compiled.batcher.stats()["pending"] == 0


def test_closing_an_abandoned_stream_frees_the_decoder(compiled):
    stream = compiled.stream_chat("Tell me everything.", do_sample=False, max_new_tokens=400)
    next(stream)
    stream.close()
    assert stream.result.finish_reason == "cancelled"
    assert compiled.chat("Hi", **GREEDY)


def test_an_error_mid_reply_reaches_the_reader_and_the_decoder_serves_on(long_ckpt_dir):
    # The fault hook must be in the graph: dynamo does not guard on module hooks, so a graph
    # traced for another engine of the same shape (an earlier test's) would be reused without
    # it. Forget those graphs; the hook then runs outside the graph (a break is allowed here).
    torch._dynamo.reset()
    settings = CompileSettings(backend="eager", fullgraph=False, min_cache=64, warmup=False)
    engine = load_engine(str(long_ckpt_dir), device="cpu", compile=settings)
    armed = {"at": 0, "n": 0}

    @torch.compiler.disable
    def fault(module, args, output):
        armed["n"] += 1
        if armed["n"] == armed["at"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB [injected]")
        return output

    handle = engine.model.model.layers[0].register_forward_hook(fault)
    try:
        want = engine.chat("Tell me about the sea", **GREEDY)
        armed.update(at=5, n=0)  # prefill, then tokens 2..4 stream, then out of memory
        stream = engine.stream_chat("Tell me about the sea", **GREEDY)
        pieces = []
        with pytest.raises(GenerationError, match="ran out of memory"):
            for piece in stream:
                pieces.append(piece)
        assert armed["n"] == 5 and stream.result.finish_reason == "error"
        assert pieces and want.startswith("".join(pieces).strip())  # what was shown is kept
        armed["at"] = 0
        assert engine.chat("Tell me about the sea", **GREEDY) == want
    finally:
        handle.remove()
        engine.unload()


def test_stop_tokens_end_the_reply(tmp_path):
    folder = write_checkpoint(tmp_path / "stops", Shape(seq_length=16), "float32", shards=1, seed=3)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["transformer.wte.weight"][:, 0] = 100.0  # make <|im_end|> the model's certain choice
    tensors["transformer.ln_f.weight"][:] = 1.0
    tensors["lm_head.weight"][151645] = 0.0
    tensors["lm_head.weight"][151645, 0] = 50.0
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    engine = load_engine(str(folder), device="cpu", compile=TRACE_ONLY)
    try:
        stream = engine.stream_chat("Hello", **GREEDY)
        assert stream.text() == "" and stream.result.finish_reason == "stop"
        assert stream.result.token_ids == [151645]
    finally:
        engine.unload()


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor builds C++ on a CPU; without a compiler the engine falls back (tested below)",
)
def test_inductor_compiles_the_decode_step_for_real(ckpt_dir, engine):
    compiled = load_engine(str(ckpt_dir), device="cpu", compile=True)
    try:
        assert compiled.info.decode == "compiled (inductor, reduce-overhead)", compiled.info.decode
        for query in ["Write a haiku about autumn.", "What is the capital of France? " * 3]:
            want = engine.stream_chat(query, do_sample=False, max_new_tokens=16)
            want.text()
            got = compiled.stream_chat(query, do_sample=False, max_new_tokens=16)
            got.text()
            assert got.result.token_ids == want.result.token_ids
        assert compiled.batcher.stats()["buckets"] == [1024]
    finally:
        compiled.unload()


def test_a_failed_compile_falls_back_to_the_batch_and_says_why(ckpt_dir, engine):
    fallback = load_engine(str(ckpt_dir), device="cpu", compile=CompileSettings(backend="no_such_backend"))
    try:
        assert fallback.info.decode.startswith("batched (compile failed: "), fallback.info.decode
        assert "no_such_backend" in fallback.info.decode
        assert fallback.compile is None and type(fallback.batcher).__name__ == "Batcher"
        assert fallback.chat("Hi there", **GREEDY) == engine.chat("Hi there", **GREEDY)
    finally:
        fallback.unload()


def test_compile_settings_are_checked():
    with pytest.raises(ValueError, match="min_cache"):
        CompileSettings(min_cache=1000)
    with pytest.raises(ValueError, match="mode"):
        CompileSettings(mode="fast")
    assert cache_bucket(10, 1024, 8192) == 1024
    assert cache_bucket(1025, 1024, 8192) == 2048
    assert cache_bucket(9000, 1024, 8192) == 8192  # never past the model's context


def test_the_app_serves_compiled_one_reply_at_a_time(ckpt_dir, engine, tmp_path):
    import json
    import urllib.request

    from server_process import AppProcess

    app = AppProcess(
        [
            "--model",
            str(ckpt_dir),
            "--device",
            "cpu",
            "--data-dir",
            str(tmp_path),
            "--compile",
            "--compile-backend",
            "eager",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    try:
        with urllib.request.urlopen(f"{app.url}/readyz", timeout=10) as r:
            ready = json.load(r)
        assert ready["decode"] == "compiled (eager, reduce-overhead)"
        assert ready["batch"]["mode"] == "compiled single-stream" and ready["scheduler"]["max_concurrent"] == 1
        body = {
            "messages": [{"role": "user", "content": "Hi there"}],
            "temperature": 0,
            "max_tokens": 24,
        }
        req = urllib.request.Request(
            f"{app.url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.load(r)["choices"][0]["message"]["content"]
        assert reply == engine.chat("Hi there", do_sample=False, max_new_tokens=24)
    finally:
        app.stop()


def test_compile_flags_are_checked_at_start_up():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app

    cfg = app.parse_config(["--compile", "--model", "m"])
    assert cfg.compile and cfg.concurrency == 1 and cfg.compile_backend == "inductor"
    with pytest.raises(ValueError, match="--compile decodes one reply at a time"):
        app.parse_config(["--compile", "--concurrency", "4"])
    with pytest.raises(ValueError, match="local model only"):
        app.parse_config(["--compile", "--backend", "openai", "--endpoint", "http://x", "--tokenizer-dir", "t"])
    assert app.parse_config([]).concurrency == 4 and not app.parse_config([]).compile


def _turns(engine, reference, queries) -> list[tuple[str, str]]:
    history: list[tuple[str, str]] = []
    for query in queries:
        got = engine.stream_chat(query, history=history, **GREEDY)
        got.text()
        want = reference.stream_chat(query, history=history, **GREEDY)
        want.text()
        assert got.result.token_ids == want.result.token_ids, (query, history)
        history.append((query, got.result.text))
    return history


def test_compiled_steps_run_inside_the_one_batcher_and_reuse_the_prefix_cache(ckpt_dir, engine):
    # One decode loop: the compiled path is the batcher's step runner, not a loop of its own.
    compiled = load_engine(str(ckpt_dir), precision="fp32", device="cpu", compile=TRACE_ONLY)
    plain = load_engine(str(ckpt_dir), precision="fp32", device="cpu", prefix_cache_mb=0)
    try:
        assert type(compiled.batcher).__name__ == "Batcher" and compiled.batcher.max_batch == 1
        # A chat's next turn reuses the previous turn's K/V in the static cache and gives the
        # tokens a cache-less batch engine gives.
        _turns(compiled, plain, ["Hello there.", "Tell me more.", "And then?"])
        stats = compiled.batcher.stats()["prefix_cache"]
        assert stats["hits"] >= 2 and stats["tokens_reused"] > 0
    finally:
        compiled.unload()
        plain.unload()


def test_compiled_regenerate_beyond_the_trained_context_reuses_the_prompt(compiled, long_ckpt_dir):
    # seq_length 16: every prompt here runs past it (NTK alpha > 1, LogN on). A follow-up turn's
    # prompt is longer, so its alpha differs and nothing is reused (exactness); a regenerate has
    # the same prompt, the same alpha, and reuses all of it but the last token.
    plain = load_engine(str(long_ckpt_dir), precision="fp32", device="cpu", prefix_cache_mb=0)
    try:
        history = _turns(compiled, plain, ["Hello there.", "Tell me more."])
        reused = compiled.batcher.stats()["prefix_cache"]["tokens_reused"]
        reply = compiled.stream_chat("Tell me more.", history=history[:-1], **GREEDY)
        reply.text()
        assert reply.result.text == history[-1][1]
        gained = compiled.batcher.stats()["prefix_cache"]["tokens_reused"] - reused
        assert gained == reply.result.prompt_tokens - 1
    finally:
        plain.unload()


def test_prompt_lengths_in_one_cache_size_add_no_graph(compiled, long_engine):
    before = _unique_graphs()  # bucket 64 was compiled at load (a 1-token prompt)
    for n in (0, 2, 5, 9, 14):  # prompts of ~20..45 tokens: other lengths and NTK alphas, the same bucket
        query = "d " * n + "e"
        assert compiled.chat(query, max_new_tokens=4, do_sample=False) == long_engine.chat(
            query, max_new_tokens=4, do_sample=False
        )
    assert _unique_graphs() == before
