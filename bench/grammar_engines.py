"""Measures the two maintained grammar engines on Qwen-1's vocabulary (151,936 logits): tokenizer setup,
compiling a typical LangChain schema, and the per-token mask. Run: ``python bench/grammar_engines.py``
(CPU, one thread). The figures chose qwen_core/grammar.py's engine; see its module docstring. xgrammar is
not a dependency: ``pip install torch==2.13.0 xgrammar==0.2.8`` first to measure it too (it pulls triton)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

VOCAB = 151_936
SCHEMA = {  # what LangChain's with_structured_output sends for a small pydantic model
    "title": "Person",
    "description": "A person found in the text.",
    "type": "object",
    "properties": {
        "name": {"description": "Full name", "type": "string"},
        "age": {"description": "Age in years", "type": "integer", "minimum": 0},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.[a-z]{2,3}$"},
        "role": {"enum": ["admin", "user", "guest"], "type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
        "score": {"type": "number"},
    },
    "required": ["name", "age", "email", "role", "tags", "address", "score"],
}
SAMPLE = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@math.org",
    "role": "admin",
    "tags": ["math", "poetry"],
    "address": {"city": "London", "zip": "W1"},
    "score": 9.5,
}


def tokenizer():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dashscope

    from qwen_core.tokenizer import QwenTokenizer

    return QwenTokenizer(Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken")


def run_llguidance(tok, ids):
    import llguidance
    import llguidance.tiktoken

    t0 = time.perf_counter()
    lltok = llguidance.tiktoken.lltokenizer_from_encoding(tok._enc, n_vocab=VOCAB, eos_token=tok.im_end_id)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    m = llguidance.LLMatcher(lltok, grammar)
    assert not m.is_error(), m.get_error()
    compile_s = time.perf_counter() - t0
    times = []
    mask = np.zeros((VOCAB + 31) // 32, dtype=np.int32)
    for t in ids:
        t0 = time.perf_counter()
        m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        times.append(time.perf_counter() - t0)
        assert (mask[t // 32] >> (t % 32)) & 1, t
        assert m.consume_token(t), m.get_error()
    return setup, compile_s, times


def run_xgrammar(tok, ids):
    import xgrammar as xgr

    t0 = time.perf_counter()
    vocab = [b"" if tok.is_special(i) else tok.token_bytes(i) for i in range(len(tok))] + [b""] * (VOCAB - len(tok))
    info = xgr.TokenizerInfo(vocab, vocab_size=VOCAB, stop_token_ids=[tok.im_end_id])
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":"))
    compile_s = time.perf_counter() - t0
    m = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)
    times = []
    for t in ids:
        t0 = time.perf_counter()
        m.fill_next_token_bitmask(bitmask)
        times.append(time.perf_counter() - t0)
        assert m.accept_token(t), t
    return setup, compile_s, times


def main() -> None:
    torch.set_num_threads(1)
    tok = tokenizer()
    ids = tok.encode(json.dumps(SAMPLE, separators=(",", ":"))) + [tok.im_end_id]
    for name, fn in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar)):
        try:
            setup, compile_s, times = fn(tok, ids)
        except ImportError:
            print(f"{name:10s} not installed")
            continue
        print(
            f"{name:10s} tokenizer setup {setup * 1e3:8.1f} ms  compile {compile_s * 1e3:8.1f} ms  "
            f"mask median {statistics.median(times) * 1e6:8.1f} us  max {max(times) * 1e6:8.1f} us  "
            f"first {times[0] * 1e6:8.1f} us  ({len(ids)} tokens)"
        )


if __name__ == "__main__":
    main()
