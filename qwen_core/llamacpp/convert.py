"""Checkpoint → GGUF with llama.cpp's own converter, run in a child process (``python -m``).

The converter (``convert_hf_to_gguf.py``'s ``conversion`` package, vendored in the llama-cpp-python
sdist and unpacked by ``scripts/install_llamacpp.sh``) knows Qwen-1 (``QWenLMHeadModel``: fused
``c_attn``, ``w1``/``w2``, the tiktoken vocabulary) and dequantises GPTQ weights itself. One thing
it must not do here: it reads Qwen's vocabulary through ``AutoTokenizer`` with remote code allowed,
which would execute the checkpoint's ``tokenization_qwen.py``. This child gives it our own
tiktoken tokenizer instead (same ranks and special ids), so no checkpoint code ever runs.

A child process because the converter configures logging, edits ``sys.path`` and holds the
checkpoint's tensors while it writes; none of that should live in the serving process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class _VocabForConverter:
    """The four things ``_set_vocab_qwen`` reads from Qwen's remote-code tokenizer."""

    def __init__(self, vocab_file: Path):
        from ..tokenizer import QwenTokenizer, load_ranks

        self._tok = QwenTokenizer(vocab_file)
        self.mergeable_ranks = load_ranks(vocab_file)
        self.special_tokens = dict(self._tok.special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return {**{str(i): i for i in self.mergeable_ranks.values()}, **self.special_tokens}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)


def _cache_merges(qwen_model_class, cache: Path | None):
    """Memoise the converter's BPE merge search (pure Python, ~a minute for 151,643 ranks) in ``cache``.

    The merges depend on ``qwen.tiktoken`` alone, so the file is named by its checksum (see cache.py).
    Returns a function that saves new entries.
    """
    if cache is None:
        return lambda: None
    search = qwen_model_class.bpe
    try:
        table = {bytes.fromhex(k): v for k, v in json.loads(cache.read_text()).items()}
    except (OSError, ValueError):
        table = {}
    known = len(table)

    def bpe(ranks, token: bytes, max_rank=None):
        split = table.get(token)
        if split is None and max_rank is not None:
            # Both halves of the last merge are tokens ranked below this one; where only one split
            # point qualifies it is the answer, without replaying the merges (most tokens).
            cuts = [
                i
                for i in range(1, len(token))
                if ranks.get(token[:i], max_rank) < max_rank and ranks.get(token[i:], max_rank) < max_rank
            ]
            split = cuts[0] if len(cuts) == 1 else None
        if split is None:
            parts = search(ranks, token, max_rank=max_rank)
            if len(parts) != 2:
                return parts
            split = len(parts[0])
        table[token] = split
        return [token[:split], token[split:]]

    qwen_model_class.bpe = staticmethod(bpe)

    def save() -> None:
        if len(table) > known:
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({k.hex(): v for k, v in table.items()}))
            tmp.replace(cache)

    return save


def convert(
    source: Path, out: Path, converter_dir: Path, outtype: str = "f16", merges_cache: Path | None = None
) -> None:
    """Write ``source`` (a Qwen-1 checkpoint folder) as one GGUF file ``out`` (f16, bf16, f32 or q8_0)."""
    # The converter's own gguf-py: the PyPI gguf of the same version number lacks newer architectures
    # the converter's modules reference at import.
    sys.path[:0] = [str(converter_dir), str(converter_dir / "gguf-py")]
    import gguf
    import torch
    import transformers
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    from conversion.qwen import QwenModel

    save_merges = _cache_merges(QwenModel, merges_cache)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_encoder = bytes_to_unicode()  # the converter rebuilds this table for each of ~450,000 calls

    QwenModel.token_bytes_to_string = staticmethod(lambda b: "".join(byte_encoder[c] for c in b))
    generic = QwenModel.set_gguf_parameters

    def set_gguf_parameters(self) -> None:
        # This converter writes Qwen-1's epsilon as layer_norm_epsilon, but llama.cpp's QWEN architecture
        # reads the RMSNorm key (and refuses the file without it): Qwen-1's ln_1/ln_2/ln_f are RMSNorms.
        generic(self)
        self.gguf_writer.add_layer_norm_rms_eps(self.hparams["layer_norm_epsilon"])

    QwenModel.set_gguf_parameters = set_gguf_parameters
    from conversion.base import LazyTorchTensor

    generic_modify = QwenModel.modify_tensors

    def modify_tensors(self, data_torch, name: str, bid):
        # Qwen's GPTQ repos give every quantized linear a bias, all zeros except c_attn's; llama.cpp's
        # QWEN architecture has only c_attn's and refuses a file with more tensors: drop the zero ones.
        if name.endswith(".bias") and "c_attn" not in name:
            if torch.count_nonzero(LazyTorchTensor.to_eager(data_torch)).item():
                raise ValueError(f"{name} is not all zeros, and llama.cpp's Qwen-1 has no bias there")
            return
        yield from generic_modify(self, data_torch, name, bid)

    QwenModel.modify_tensors = modify_tensors
    vocab = _VocabForConverter(source / "qwen.tiktoken")

    class _NoRemoteCode:  # the converter's only AutoTokenizer call for Qwen-1
        @staticmethod
        def from_pretrained(*_a, **_k):
            return vocab

    transformers.AutoTokenizer = _NoRemoteCode
    hparams = ModelBase.load_hparams(source, False)
    qfile = source / "quantize_config.json"
    if qfile.is_file() and not isinstance(hparams.get("quantization_config"), dict):
        # Some GPTQ repos keep the settings only in quantize_config.json.
        hparams["quantization_config"] = {**json.loads(qfile.read_text()), "quant_method": "gptq"}
    ftypes = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    arch = get_model_architecture(hparams, ModelType.TEXT)
    model_class = get_model_class(arch, mmproj=False)
    with torch.inference_mode():
        model = model_class(source, ftypes[outtype], out, hparams=hparams, model_name=source.name)
        model.write()
    save_merges()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--converter-dir", type=Path, required=True)
    ap.add_argument("--outtype", default="f16", choices=("f16", "bf16", "f32", "q8_0"))
    ap.add_argument("--merges-cache", type=Path, default=None)
    a = ap.parse_args(argv)
    convert(a.source, a.out, a.converter_dir, a.outtype, a.merges_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
