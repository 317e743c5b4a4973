"""GPTQ Int4/Int8 checkpoints in Qwen's published format, through transformers' GPTQ backend on CPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from qwen1_checkpoint import Shape, write_gptq_checkpoint
from reference_qwen1 import ReferenceQwen1

from qwen_core import UnsupportedCombination, load_engine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None, reason="GPTQ backend not installed (requirements-gptq.txt)"
)
# hidden 128 and w1/w2 of 256: every quantized input dimension holds whole groups of 128.
SHAPE = Shape(hidden_size=128, num_attention_heads=4, intermediate_size=512, seq_length=16)


@pytest.fixture(scope="module", params=[4, 8])
def gptq(request, tmp_path_factory):
    bits = request.param
    root = tmp_path_factory.mktemp(f"int{bits}")
    folder = write_gptq_checkpoint(root / "q", root / "ref", SHAPE, bits, seed=bits)
    return bits, folder, ReferenceQwen1(root / "ref"), load_engine(str(folder), precision=f"int{bits}", device="cpu")


@pytest.mark.parametrize("n", [5, 16, 40, 100])  # inside and beyond the trained 16 tokens
def test_logits_match_dequantized_weights(gptq, n):
    _, _, ref, engine = gptq
    ids = [(i * 104729) % 150000 for i in range(n)]
    with torch.no_grad():
        got = engine.model(torch.tensor([ids])).logits[0].float()
    want = ref.logits(ids)
    # fp16 noise: the stored scales and biases are fp16, activations run in fp32.
    assert (got - want).abs().max().item() < 1e-3 * max(1.0, want.abs().max().item())


def test_greedy_reply_matches_dequantized_reference(gptq):
    _, _, ref, engine = gptq
    prompt = engine.build_prompt("Quantized hello", history=[("a", "b")])
    stream = engine.stream_prompt(prompt, engine.settings(do_sample=False, max_new_tokens=16))
    "".join(stream)
    assert stream.result.token_ids == ref.greedy(prompt, 16, repetition_penalty=1.1)


def test_engine_reports_gptq(gptq):
    bits, _, _, engine = gptq
    assert engine.info.precision == f"int{bits}"
    q_proj = engine.model.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "qweight") and q_proj.bits == bits
    assert not isinstance(q_proj, torch.nn.Linear) or hasattr(q_proj, "qweight")


def test_fp_precision_on_a_gptq_checkpoint_is_refused(gptq):
    bits, folder, _, _ = gptq
    with pytest.raises(UnsupportedCombination, match=f"GPTQ Int{bits}"):
        load_engine(str(folder), precision="bf16", device="cpu")
    other = 8 if bits == 4 else 4
    with pytest.raises(UnsupportedCombination):
        load_engine(str(folder), precision=f"int{other}", device="cpu")


def test_compile_on_gptq_falls_back_to_the_batch_and_says_why(gptq):
    bits, folder, _, engine = gptq
    compiled = load_engine(str(folder), precision=f"int{bits}", device="cpu", compile=True)
    try:
        assert compiled.info.decode == "batched (not available for GPTQ weights)"
        assert compiled.compile is None and type(compiled.batcher).__name__ == "Batcher"
        kw = dict(do_sample=False, max_new_tokens=12)
        assert compiled.chat("Quantized hello", **kw) == engine.chat("Quantized hello", **kw)
    finally:
        compiled.unload()
