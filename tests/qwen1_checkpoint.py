"""Write Qwen-1 checkpoints in the original layout (random weights), for tests and benchmarks.

Names, shapes and config fields are those of the published ``QWenLMHeadModel``
repos; the vocabulary is the real ``qwen.tiktoken`` shipped by the ``dashscope``
package. Weights are written tensor by tensor into shards so a 7B-shaped
checkpoint never sits in memory whole.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


def qwen_vocab_file() -> Path:
    """The real Qwen-1 vocabulary (151,643 ranks) from the dashscope package."""
    import dashscope

    return Path(os.path.dirname(dashscope.__file__)) / "resources" / "qwen.tiktoken"


@dataclass(frozen=True)
class Shape:
    """Dimensions of a Qwen-1 model (``intermediate_size`` as Qwen stores it: doubled)."""

    hidden_size: int = 64
    num_attention_heads: int = 4
    num_hidden_layers: int = 2
    intermediate_size: int = 256
    vocab_size: int = 151936
    seq_length: int = 8192
    rotary_emb_base: float = 10000.0
    use_dynamic_ntk: bool = True
    use_logn_attn: bool = True


QWEN_1_8B = Shape(2048, 16, 24, 11008, 151936, 8192)
QWEN_7B = Shape(4096, 32, 32, 22016, 151936, 8192)


def config_json(shape: Shape, dtype: str) -> dict:
    """A ``config.json`` with the fields of the published Qwen-1 chat repos."""
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "attn_dropout_prob": 0.0,
        "bf16": False,
        "emb_dropout_prob": 0.0,
        "fp16": False,
        "fp32": False,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "initializer_range": 0.02,
        "kv_channels": shape.hidden_size // shape.num_attention_heads,
        "layer_norm_epsilon": 1e-06,
        "max_position_embeddings": shape.seq_length,
        "model_type": "qwen",
        "no_bias": True,
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "onnx_safe": None,
        "rotary_emb_base": shape.rotary_emb_base,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": shape.seq_length,
        "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer",
        "torch_dtype": dtype,
        "transformers_version": "4.32.0",
        "use_cache": True,
        "use_dynamic_ntk": shape.use_dynamic_ntk,
        "use_flash_attn": "auto",
        "use_logn_attn": shape.use_logn_attn,
        "vocab_size": shape.vocab_size,
    }


GENERATION_CONFIG = {
    "chat_format": "chatml",
    "eos_token_id": 151643,
    "pad_token_id": 151643,
    "max_window_size": 6144,
    "max_new_tokens": 512,
    "do_sample": True,
    "top_k": 0,
    "top_p": 0.8,
    "repetition_penalty": 1.1,
    "transformers_version": "4.31.0",
}


def tensor_specs(shape: Shape):
    """(name, shape) of every tensor, in the original's order."""
    h, i2, v = shape.hidden_size, shape.intermediate_size // 2, shape.vocab_size
    yield "transformer.wte.weight", (v, h)
    for n in range(shape.num_hidden_layers):
        p = f"transformer.h.{n}."
        yield p + "ln_1.weight", (h,)
        yield p + "attn.c_attn.weight", (3 * h, h)
        yield p + "attn.c_attn.bias", (3 * h,)
        yield p + "attn.c_proj.weight", (h, h)
        yield p + "ln_2.weight", (h,)
        yield p + "mlp.w1.weight", (i2, h)
        yield p + "mlp.w2.weight", (i2, h)
        yield p + "mlp.c_proj.weight", (h, i2)
    yield "transformer.ln_f.weight", (h,)
    yield "lm_head.weight", (v, h)


def random_tensor(name: str, size: tuple, generator: torch.Generator, std: float) -> torch.Tensor:
    """Fixed-seed weights: norms near 1, biases and matrices small, so activations stay sane."""
    if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
        return 1.0 + 0.1 * torch.randn(size, generator=generator)
    if name.endswith(".bias"):
        return 0.1 * torch.randn(size, generator=generator)
    return std * torch.randn(size, generator=generator)


def write_checkpoint(
    folder: str | Path,
    shape: Shape = Shape(),
    dtype: str = "float32",
    shards: int = 1,
    seed: int = 0,
    std: float | None = None,
) -> Path:
    """Write a complete Qwen-1 checkpoint folder; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(seed)
    std = std if std is not None else 1.0 / shape.hidden_size**0.5
    specs = list(tensor_specs(shape))
    per_shard = -(-len(specs) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        chunk = specs[s * per_shard : (s + 1) * per_shard]
        name = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: random_tensor(n, size, gen, std).to(torch_dtype) for n, size in chunk}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({n: name for n in tensors})
        del tensors
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config_json(shape, dtype), indent=2))
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 8192, "tokenizer_class": "QWenTokenizer"})
    )
    shutil.copyfile(qwen_vocab_file(), folder / "qwen.tiktoken")
    # The published repos ship remote code; a file that would fail loudly if ever executed.
    (folder / "modeling_qwen.py").write_text("raise RuntimeError('checkpoint code must never be executed')\n")
    return folder


# --- GPTQ (Qwen's published Int4/Int8 format: auto-gptq v1, sym, desc_act false) -------------

GPTQ_GROUP = 128
QUANTIZED = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, cols] codes → int32 [rows * bits / 32, cols]; code j of a pack at bit bits*j."""
    per = 32 // bits
    rows, cols = codes.shape
    c = codes.to(torch.int64).reshape(rows // per, per, cols)
    packed = torch.zeros(rows // per, cols, dtype=torch.int64)
    for j in range(per):
        packed |= c[:, j, :] << (bits * j)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def gptq_quantize(weight: torch.Tensor, bits: int) -> tuple[dict, torch.Tensor]:
    """Quantize an fp ``[out, in]`` weight; returns the v1 tensors and the dequantized weight."""
    out_f, in_f = weight.shape
    groups = in_f // GPTQ_GROUP
    real_zero = 2 ** (bits - 1)
    wg = weight.t().float().reshape(groups, GPTQ_GROUP, out_f)
    scales = (wg.abs().amax(dim=1) / (2 ** (bits - 1) - 0.5)).clamp(min=1e-6).to(torch.float16)
    s = scales.float()[:, None, :]
    codes = torch.clamp(torch.round(wg / s) + real_zero, 0, 2**bits - 1)
    dequant = (s * (codes - real_zero)).reshape(in_f, out_f).t().contiguous()
    stored_zero = torch.full((groups, out_f), real_zero - 1, dtype=torch.int64)  # v1: real zero - 1
    tensors = {
        "qweight": _pack(codes.reshape(in_f, out_f), bits),
        "qzeros": _pack(stored_zero.t().contiguous(), bits).t().contiguous(),
        "scales": scales,
        "g_idx": (torch.arange(in_f) // GPTQ_GROUP).to(torch.int32),
    }
    return tensors, dequant


def write_gptq_checkpoint(folder: str | Path, reference: str | Path, shape: Shape, bits: int, seed: int = 0) -> Path:
    """A Qwen-1 GPTQ checkpoint (``folder``) and the fp32 checkpoint of its dequantized weights (``reference``)."""
    folder, reference = Path(folder), Path(reference)
    write_checkpoint(reference, shape, "float32", seed=seed)
    from safetensors.torch import load_file

    fp = load_file(str(reference / "model.safetensors"))
    quant: dict[str, torch.Tensor] = {}
    for name, tensor in fp.items():
        module = name.rsplit(".", 1)[0]
        if module.split(".", 3)[-1] in QUANTIZED:
            if name.endswith(".bias"):
                continue
            tensors, dequant = gptq_quantize(tensor, bits)
            quant.update({f"{module}.{k}": v for k, v in tensors.items()})
            bias = fp.get(f"{module}.bias")
            # Qwen's GPTQ repos give every quantized linear a bias, all zeros where the fp layer had none.
            quant[f"{module}.bias"] = (bias if bias is not None else torch.zeros(tensor.shape[0])).to(torch.float16)
            fp[name] = dequant.to(torch.float16).float()  # the weights as the kernel sees them
            if bias is not None:
                fp[f"{module}.bias"] = bias.to(torch.float16).float()
        else:
            quant[name] = tensor.to(torch.float16)
            fp[name] = quant[name].float()
    save_file(fp, str(reference / "model.safetensors"), metadata={"format": "pt"})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(quant, str(folder / "model.safetensors"), metadata={"format": "pt"})
    qcfg = {
        "bits": bits,
        "group_size": GPTQ_GROUP,
        "damp_percent": 0.01,
        "desc_act": False,
        "static_groups": False,
        "sym": True,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
    }
    config = config_json(shape, "float16")
    config["quantization_config"] = {**qcfg, "quant_method": "gptq"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    shutil.copyfile(qwen_vocab_file(), folder / "qwen.tiktoken")
    return folder
