"""An independent fp32 forward of Qwen-1, written from its published architecture.

It reads the checkpoint's original tensors by their original names and shares no
code with ``qwen_core``: rotate-half RoPE over the full head dim, RMSNorm in fp32,
fused q|k|v with bias, SwiGLU with ``w2`` as the gate, dynamic NTK from the prompt
length and LogN query scaling past ``seq_length``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open


class ReferenceQwen1:
    """Plain-torch Qwen-1 in fp32 (or ``dtype``), for exactness tests."""

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32):
        folder = Path(folder)
        self.cfg = json.loads((folder / "config.json").read_text())
        self.dtype = dtype
        self.w: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as fh:
                for name in fh.keys():
                    self.w[name] = fh.get_tensor(name).to(dtype)
        self.heads = self.cfg["num_attention_heads"]
        self.head_dim = self.cfg["hidden_size"] // self.heads
        self.seq_length = self.cfg["seq_length"]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg["layer_norm_epsilon"])
        return normed.to(x.dtype) * weight

    def alpha_for(self, prompt_len: int) -> float:
        """Dynamic-NTK alpha the original picks at prefill."""
        if not self.cfg.get("use_dynamic_ntk"):
            return 1.0
        value = math.log(prompt_len / self.seq_length, 2) + 1
        return max(2 ** math.ceil(value) - 1, 1)

    def logits(self, ids: list[int], prompt_len: int | None = None) -> torch.Tensor:
        """Logits [len(ids), vocab] of a whole sequence; NTK alpha fixed from ``prompt_len`` (default: all)."""
        n = len(ids)
        alpha = self.alpha_for(prompt_len or n)
        d = self.head_dim
        base = self.cfg["rotary_emb_base"] * alpha ** (d / (d - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
        freqs = torch.outer(torch.arange(n).float(), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # [n, 1, d]

        def rope(t):  # t: [n, heads, d], rotated in fp32 as the original does
            tf = t.float()
            half = torch.cat([-tf[..., d // 2 :], tf[..., : d // 2]], dim=-1)
            return (tf * cos + half * sin).to(t.dtype)

        positions = torch.arange(n, dtype=torch.float64) + 1
        logn = torch.where(
            positions > self.seq_length, torch.log(positions) / math.log(self.seq_length), torch.ones_like(positions)
        ).to(self.dtype)[:, None, None]
        mask = torch.full((n, n), float("-inf")).triu(1)
        h = self.w["transformer.wte.weight"][torch.tensor(ids)]
        for layer in range(self.cfg["num_hidden_layers"]):
            p = f"transformer.h.{layer}."
            x = self._rms(h, self.w[p + "ln_1.weight"])
            qkv = x @ self.w[p + "attn.c_attn.weight"].T + self.w[p + "attn.c_attn.bias"]
            q, k, v = (t.reshape(n, self.heads, d) for t in qkv.split(self.cfg["hidden_size"], dim=-1))
            q, k = rope(q), rope(k)
            if self.cfg.get("use_logn_attn") and n > self.seq_length:
                q = q * logn
            scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / math.sqrt(d) + mask
            attn = torch.softmax(scores, dim=-1).to(self.dtype)
            out = torch.einsum("hqk,khd->qhd", attn, v).reshape(n, -1)
            h = h + out @ self.w[p + "attn.c_proj.weight"].T
            x = self._rms(h, self.w[p + "ln_2.weight"])
            up = x @ self.w[p + "mlp.w1.weight"].T
            gate = x @ self.w[p + "mlp.w2.weight"].T
            h = h + (up * torch.nn.functional.silu(gate)) @ self.w[p + "mlp.c_proj.weight"].T
        h = self._rms(h, self.w["transformer.ln_f.weight"])
        return (h @ self.w["lm_head.weight"].T).float()

    def greedy(self, prompt: list[int], max_new: int, repetition_penalty: float = 1.0, stops=(151643, 151644, 151645)):
        """Greedy decoding as the original ``chat(do_sample=False)``: HF repetition penalty, stops end it."""
        ids = list(prompt)
        out: list[int] = []
        for _ in range(max_new):
            scores = self.logits(ids, prompt_len=len(prompt))[-1].clone()
            if repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(ids)))
                vals = scores[seen]
                scores[seen] = torch.where(vals < 0, vals * repetition_penalty, vals / repetition_penalty)
            scores[151851:] = float("-inf")  # padded vocabulary: never a real token
            nxt = int(scores.argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt in stops:
                break
        return out
