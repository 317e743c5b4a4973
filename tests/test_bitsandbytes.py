"""``--precision int8`` / ``int4`` on a BF16 checkpoint through bitsandbytes (LLM.int8() / NF4), the CUDA path.

bitsandbytes (>= 0.48) also runs on the CPU, so the real loading code — the quantisation config handed
to transformers, the quantised linears replacing Qwen-1's ``c_attn``/``c_proj``/``w1``/``w2``, our
dynamic-NTK and LogN state around them — is tested here on tiny checkpoints against the independent
fp32 forward, together with streaming, Stop and seeds. Only the planner's device choice is replaced:
it sends these widths to llama.cpp on a CPU (the faster path there), and to bitsandbytes on CUDA.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest
import torch
from qwen1_checkpoint import Shape, write_checkpoint
from reference_qwen1 import ReferenceQwen1

import qwen_core.loader as loader
from qwen_core import load_engine
from qwen_core.placement import Placement

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed (requirements-dev.txt)"
)
# hidden 128: whole bitsandbytes blocks (NF4 blocks of 64); seq_length 16, so the longer prompts run past
# the trained context and the dynamic-NTK alpha and LogN scaling must act around the quantised linears.
SHAPE = Shape(hidden_size=128, num_attention_heads=4, intermediate_size=512, seq_length=16)
PROMPTS = [[(i * 7919 + k * 104729) % 150000 for i in range(n)] for k, n in enumerate((5, 12, 40, 90))]
# max |Δ logit| / max |logit| against the fp32 reference (docs/PERFORMANCE.md). LLM.int8() also rounds the
# activations to 8 bits: 3-7 % measured here; NF4 31-44 %. Without the dynamic NTK past the trained context
# the fp32 reference itself moves by 66-114 %.
TOLERANCE = {"int8": 0.1, "int4": 0.5}
# Qwen-1's c_attn (split into q|k|v), c_proj, w1, w2 and mlp.c_proj under transformers' Qwen2 names
QUANTISED = tuple(f"self_attn.{p}_proj" for p in "qkvo") + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("bnb-bf16"), SHAPE, "bfloat16", seed=4)
    return folder, ReferenceQwen1(folder)


@pytest.fixture(scope="module")
def engines(bf16):
    """int8 and int4 engines on the CPU, loaded as the planner loads them on CUDA."""
    real = loader.plan_placement

    def on_cpu(ckpt, precision, device, **kw):
        real(ckpt, "fp32", "cpu", **kw)  # the planner's own checks still run
        return Placement(precision, torch.bfloat16, "cpu", {"": "cpu"}, "sdpa")

    mp = pytest.MonkeyPatch()
    mp.setattr(loader, "plan_placement", on_cpu)
    try:
        loaded = {p: load_engine(str(bf16[0]), precision=p, device="cpu", cpu_engine="torch") for p in TOLERANCE}
    finally:
        mp.undo()
    yield loaded
    for engine in loaded.values():
        engine.unload()


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_at_load_and_close_to_the_fp32_reference(engines, bf16, precision):
    engine, ref = engines[precision], bf16[1]
    assert engine.info.precision == precision
    kind = "Linear8bitLt" if precision == "int8" else "Linear4bit"
    layers = {name: type(m).__name__ for name, m in engine.model.named_modules() if name.endswith(QUANTISED)}
    assert len(layers) == 7 * SHAPE.num_hidden_layers and set(layers.values()) == {kind}, layers
    if precision == "int4":
        weight = next(m for n, m in engine.model.named_modules() if n.endswith("mlp.down_proj")).weight
        assert weight.quant_state.quant_type == "nf4"
    errors, without_ntk = [], []
    with torch.no_grad():
        for ids in PROMPTS:  # the last two run past the 16-token trained context (NTK alpha > 1, LogN)
            got = engine.model(torch.tensor([ids])).logits[0, -1]
            errors.append(_rel_err(got, ref.logits(ids)[-1]))
            if len(ids) > SHAPE.seq_length:  # the same forward had it lost the NTK alpha (1 throughout)
                without_ntk.append(_rel_err(got, ref.logits(ids, prompt_len=SHAPE.seq_length)[-1]))
    assert max(errors) < TOLERANCE[precision], errors
    assert all(e < w for e, w in zip(errors[-2:], without_ntk, strict=True)), (errors, without_ntk)


def test_int8_greedy_reply_follows_the_reference(engines, bf16):
    engine, ref = engines["int8"], bf16[1]
    ids = PROMPTS[1]
    with engine.stream_prompt(ids, engine.settings(do_sample=False, repetition_penalty=1.0, max_new_tokens=6)) as s:
        s.text()
    want = ref.greedy(ids, 6)
    # int8 rounding may flip a near-tie late in a random model's reply; the first tokens must agree
    assert s.result.token_ids[:2] == want[:2], (s.result.token_ids, want)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_streaming_stop_and_seeds(engines, precision):
    engine = engines[precision]
    stop = threading.Event()
    stream = engine.stream_chat("Long", cancel=stop, ignore_eos=True, max_new_tokens=300, do_sample=False)
    pieces = []
    for n, piece in enumerate(stream):
        pieces.append(piece)
        if n == 2:
            stop.set()
    assert stream.result.finish_reason == "cancelled" and stream.result.completion_tokens < 300
    assert "".join(pieces) == stream.result.text

    def sample(seed):
        s = engine.stream_chat("Pick", seed=seed, temperature=1.2, top_k=5, max_new_tokens=6, min_tokens=6)
        s.text()
        return s.result.token_ids

    assert sample(7) == sample(7)
    after = engine.stream_chat("Short", do_sample=False, max_new_tokens=3, ignore_eos=True)
    after.text()
    assert after.result.finish_reason == "length" and after.result.completion_tokens == 3


def test_the_quantisation_config_is_what_the_model_cards_show():
    cfg = loader.bitsandbytes_config(Placement("int4", torch.bfloat16, "cuda:0", {"": "cuda:0"}, "sdpa"))
    assert cfg.load_in_4bit and not cfg.load_in_8bit
    assert cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_compute_dtype == torch.bfloat16
    cfg = loader.bitsandbytes_config(Placement("int8", torch.float16, "cuda:0", {"": "cuda:0"}, "sdpa"))
    assert cfg.load_in_8bit and not cfg.load_in_4bit
