"""The mapping onto Qwen2 is exact: logits and greedy replies equal an independent Qwen-1 forward."""

from __future__ import annotations

import pytest
import torch
from reference_qwen1 import ReferenceQwen1

from qwen_core import load_engine
from qwen_core.modeling import ntk_alpha

TOL = 1e-3


def _logits(engine, ids):
    with torch.no_grad():
        return engine.model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 40, 100])
def test_logits_match_reference_inside_and_beyond_trained_context(long_engine, long_ckpt_dir, n):
    ref = ReferenceQwen1(long_ckpt_dir)
    ids = [(i * 7919) % 150000 for i in range(n)]
    diff = (_logits(long_engine, ids) - ref.logits(ids)).abs().max().item()
    assert diff < TOL, f"max |logit diff| {diff} at length {n} (trained 16)"


def test_logits_match_reference_rope_base_1e4(engine, ckpt_dir):
    ref = ReferenceQwen1(ckpt_dir)
    ids = list(range(3000, 3064))
    assert (_logits(engine, ids) - ref.logits(ids)).abs().max().item() < TOL


def test_decode_keeps_prefill_alpha(long_engine, long_ckpt_dir):
    """Decoding past the prompt uses the alpha of the prompt length, as the original caches it."""
    ref = ReferenceQwen1(long_ckpt_dir)
    prompt = list(range(500, 520))  # 20 tokens: alpha 3
    extra = list(range(700, 720))  # decode to 40 tokens: a fresh prefill would pick alpha 7
    with torch.no_grad():
        out = long_engine.model(torch.tensor([prompt]), use_cache=True)
        cache = out.past_key_values
        for tok in extra:
            out = long_engine.model(torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
    want_cached = ref.logits(prompt + extra, prompt_len=len(prompt))[-1]
    want_fresh = ref.logits(prompt + extra)[-1]
    got = out.logits[0, -1]
    assert (got - want_cached).abs().max().item() < TOL
    assert (got - want_fresh).abs().max().item() > 10 * TOL  # the two really differ


def test_ntk_alpha_formula():
    assert ntk_alpha(100, 2048) == 1.0
    assert ntk_alpha(2048, 2048) == 1.0
    assert ntk_alpha(2049, 2048) == 3.0
    assert ntk_alpha(4096, 2048) == 3.0
    assert ntk_alpha(4097, 2048) == 7.0
    assert ntk_alpha(6144, 2048) == 7.0
    assert ntk_alpha(8193, 2048) == 15.0


@pytest.mark.parametrize("fixture", ["engine", "long_engine"])
def test_greedy_reply_matches_reference(request, fixture):
    eng = request.getfixturevalue(fixture)
    ref = ReferenceQwen1(eng.info.path)
    prompt = eng.build_prompt("Tell me a story about a cat.", history=[("Hi", "Hello! How can I help?")])
    stream = eng.stream_prompt(prompt, eng.settings(do_sample=False, max_new_tokens=24))
    "".join(stream)
    want = ref.greedy(prompt, 24, repetition_penalty=eng.defaults.repetition_penalty)
    assert stream.result.token_ids == want


def test_bf16_within_bf16_noise(bf16_ckpt_dir):
    eng = load_engine(str(bf16_ckpt_dir), precision="bf16", device="cpu")
    assert eng.model.dtype == torch.bfloat16
    ids = list(range(100, 140))  # past the trained 16
    exact = ReferenceQwen1(bf16_ckpt_dir, torch.float32).logits(ids)
    noise = (ReferenceQwen1(bf16_ckpt_dir, torch.bfloat16).logits(ids) - exact).abs().max().item()
    diff = (_logits(eng, ids) - exact).abs().max().item()
    assert diff <= 2 * noise + 1e-3, f"bf16 engine off by {diff}, bf16's own noise is {noise}"


def test_fp32_load_of_bf16_checkpoint_is_exact(bf16_ckpt_dir):
    eng = load_engine(str(bf16_ckpt_dir), precision="fp32", device="cpu")
    ids = list(range(100, 130))
    want = ReferenceQwen1(bf16_ckpt_dir, torch.float32).logits(ids)
    assert (_logits(eng, ids) - want).abs().max().item() < TOL


def test_weights_are_native_qwen2_modules(engine):
    from transformers import Qwen2ForCausalLM

    assert isinstance(engine.model, Qwen2ForCausalLM)
    attn = engine.model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert engine.model.config.intermediate_size == 128  # stored doubled (256) in Qwen-1's config
    assert engine.info.attn_implementation == "sdpa"
