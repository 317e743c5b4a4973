"""Qwen-1 (``QWenLMHeadModel``) on transformers' own Qwen2 implementation.

Qwen-1 is Qwen2's architecture with different names: fused ``c_attn`` (q|k|v, with
bias), ``w2`` as the SiLU gate, ``w1`` as the up projection, an ``intermediate_size``
stored doubled. What Qwen2 lacks is Qwen-1's long-context inference:

* dynamic NTK: at prefill the rotary base is scaled by
  ``alpha = max(2**ceil(log2(L / seq_length) + 1) - 1, 1)`` from the prompt length
  ``L``; that alpha is kept for the decode steps of the same reply;
* LogN attention: queries at positions past ``seq_length`` are multiplied by
  ``log_{seq_length}(position + 1)``.

Both are added here without touching attention kernels: the alpha lives on the
request's KV cache and reaches the rotary module through a context variable, and
because the LogN factor is a per-position scalar it commutes with the rotation, so
scaling ``q_proj``'s output is the same as scaling the rotated query. Any attention
backend (SDPA, FlashAttention-2, paged) therefore works unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Chunk, ConversionOps, WeightConverter, WeightRenaming

from .errors import CheckpointError

QWEN1_DEFAULT_CONTEXT = 32768  # the original's LogN table covers positions < 32768


@dataclass(frozen=True)
class _ForwardState:
    alphas: tuple[float, ...]  # NTK alpha per batch row
    logn: torch.Tensor | None  # [batch, q_len, 1] query scale, None when all ones


_STATE: contextvars.ContextVar[_ForwardState | None] = contextvars.ContextVar("qwen1_forward", default=None)


class _Pin:
    """Forward state for a model whose forwards run one at a time (the compiled decode path).

    ``torch.compile`` cannot trace a ``ContextVar``, nor the data-dependent "is this the
    prefill?" test on a static cache. Pinned for a whole reply, the forward reads plain
    attributes instead, and the NTK alpha arrives as its inverse-frequency *tensor*, so a
    new alpha is new data for the same graph, not a recompile.
    """

    def __init__(self) -> None:
        self.active = False
        self.inv_freq: torch.Tensor | None = None  # [1, head_dim / 2] for the pinned alpha
        self.state: _ForwardState | None = None

    def current(self) -> _ForwardState | None:
        """The state of the forward running now."""
        return self.state if self.active else _STATE.get()


def ntk_alpha(length: int, seq_length: int) -> float:
    """Qwen-1's dynamic-NTK alpha for a prompt of ``length`` tokens (1 inside the trained context)."""
    context_value = math.log(length / seq_length, 2) + 1
    return float(max(2 ** math.ceil(context_value) - 1, 1))


def qwen2_config_from_qwen(raw: dict, dtype: torch.dtype | None = None) -> Qwen2Config:
    """Map a Qwen-1 ``config.json`` onto a :class:`Qwen2Config`, using the checkpoint's own values."""
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        layers = int(raw["num_hidden_layers"])
        intermediate = int(raw["intermediate_size"])
        vocab = int(raw.get("vocab_size") or raw["padded_vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json lacks a Qwen-1 field or has a bad value: {exc}") from exc
    head_dim = int(raw.get("kv_channels") or hidden // heads)
    if head_dim * heads != hidden:
        raise CheckpointError(f"config.json: kv_channels {head_dim} x heads {heads} != hidden_size {hidden}")
    if float(raw.get("rotary_pct", 1.0)) != 1.0:
        raise CheckpointError("config.json: rotary_pct other than 1.0 is not a Qwen-1 chat checkpoint")
    seq_length = int(raw.get("seq_length") or raw.get("max_position_embeddings") or 8192)
    use_ntk = bool(raw.get("use_dynamic_ntk", False))
    use_logn = bool(raw.get("use_logn_attn", False))
    context = max(seq_length, QWEN1_DEFAULT_CONTEXT) if use_ntk else seq_length
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate // 2,  # Qwen-1 stores twice the width of w1/w2
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=context,
        rms_norm_eps=float(raw.get("layer_norm_epsilon", 1e-6)),
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rotary_emb_base", 10000.0))},
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=151643,
        pad_token_id=None,
    )
    config.qwen_seq_length = seq_length
    config.qwen_use_dynamic_ntk = use_ntk
    config.qwen_use_logn_attn = use_logn
    if raw.get("quantization_config"):
        config.quantization_config = dict(raw["quantization_config"])
    if dtype is not None:
        config.dtype = dtype
    config.architectures = ["QwenV1ForCausalLM"]
    return config


class QwenRotaryEmbedding(nn.Module):
    """Rotate-half RoPE with Qwen-1's dynamic-NTK base, computed in fp32 like the original.

    Inverse frequencies are cached in a plain dict, not a buffer: transformers
    re-initialises non-persistent buffers of meta-device models at load time.
    """

    def __init__(self, config: Qwen2Config, pin: _Pin):
        super().__init__()
        self.pin = pin
        self.dim = config.head_dim
        self.base = float(config.rope_parameters["rope_theta"])
        self.attention_scaling = 1.0
        self._inv_freq: dict[tuple[float, torch.device], torch.Tensor] = {}

    def inv_freq_for(self, alpha: float, device: torch.device) -> torch.Tensor:
        """1 / base'^(2i/d) with base' = base * alpha^(d/(d-2)), as the original computes it."""
        key = (alpha, device)
        if key not in self._inv_freq:
            base = self.base * alpha ** (self.dim / (self.dim - 2))
            self._inv_freq[key] = 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))
        return self._inv_freq[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pin.active:
            return self._embed(x, position_ids, self.pin.inv_freq)
        state = _STATE.get()
        alphas = state.alphas if state is not None else (1.0,)
        if len(set(alphas)) == 1:
            inv_freq = self.inv_freq_for(alphas[0], x.device)[None, :]
        else:
            inv_freq = torch.stack([self.inv_freq_for(a, x.device) for a in alphas])
        return self._embed(x, position_ids, inv_freq)

    @staticmethod
    def _embed(x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor):
        freqs = position_ids[..., None].float() * inv_freq[:, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class _Replicate(ConversionOps):
    """One source tensor copied to every target (GPTQ ``g_idx`` of the fused ``c_attn``)."""

    @torch.no_grad
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target: tensor.clone() for target in target_patterns}

    @property
    def reverse_op(self) -> ConversionOps:
        raise NotImplementedError("saving GPTQ checkpoints back to Qwen-1 layout is not supported")


def _split_c_attn(suffix: str, operation: ConversionOps) -> WeightConverter:
    return WeightConverter(
        source_patterns=f"attn.c_attn.{suffix}",
        target_patterns=[f"self_attn.{p}_proj.{suffix}" for p in "qkv"],
        operations=[operation],
    )


def _conversion_mapping() -> list:
    renames = {
        r"^transformer\.wte\.": "model.embed_tokens.",
        r"^transformer\.ln_f\.": "model.norm.",
        r"^transformer\.h\.": "model.layers.",
        r"\.ln_1\.": ".input_layernorm.",
        r"\.ln_2\.": ".post_attention_layernorm.",
        r"\.attn\.c_proj\.": ".self_attn.o_proj.",
        r"\.mlp\.w1\.": ".mlp.up_proj.",  # Qwen-1 gates with w2: c_proj(w1(x) * silu(w2(x)))
        r"\.mlp\.w2\.": ".mlp.gate_proj.",
        r"\.mlp\.c_proj\.": ".mlp.down_proj.",
    }
    mapping: list = [WeightRenaming(src, dst) for src, dst in renames.items()]
    # fp weights are [out, in]: q|k|v stack along dim 0. GPTQ tensors are [in-packed, out]
    # (qweight, scales) or [groups, out-packed] (qzeros): the output dimension is 1.
    mapping += [_split_c_attn("weight", Chunk(dim=0)), _split_c_attn("bias", Chunk(dim=0))]
    mapping += [_split_c_attn(name, Chunk(dim=1)) for name in ("qweight", "qzeros", "scales")]
    mapping += [_split_c_attn("g_idx", _Replicate())]
    return mapping


class QwenV1ForCausalLM(Qwen2ForCausalLM):
    """Qwen2 causal LM that loads Qwen-1 checkpoints and reproduces their long-context inference."""

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self._pin = _Pin()
        self.model.rotary_emb = QwenRotaryEmbedding(config, self._pin)
        self._last_alphas: tuple[float, ...] = (1.0,)

    def _attach_logn_hooks(self) -> None:
        """Hook every current ``q_proj`` (quantizers replace the modules after ``__init__``)."""
        for layer in self.model.layers:
            q_proj = layer.self_attn.q_proj
            if not getattr(q_proj, "_qwen_logn_hooked", False):
                q_proj.register_forward_hook(_LognHook(self._pin))
                q_proj._qwen_logn_hooked = True

    def prefill_alphas(self, prompt_length: int) -> tuple[float, ...]:
        """The NTK alpha a one-row reply to a prompt of ``prompt_length`` tokens uses throughout."""
        cfg = self.config
        if not getattr(cfg, "qwen_use_dynamic_ntk", False) or prompt_length <= cfg.qwen_seq_length:
            return (1.0,)
        return (ntk_alpha(prompt_length, cfg.qwen_seq_length),)

    @contextlib.contextmanager
    def pinned(self, alphas: tuple[float, ...]):
        """Run forwards with ``alphas`` fixed and no ``ContextVar``: traceable by ``torch.compile``.

        Only for forwards that run one at a time (the caller serialises them): the state
        lives on the model, not in the calling thread's context.
        """
        if getattr(self.config, "qwen_use_logn_attn", False):
            self._attach_logn_hooks()  # before tracing: a hook added inside a graph is not seen
        if len(set(alphas)) != 1:
            raise ValueError("a pinned forward runs one reply: one alpha")
        device = self.get_input_embeddings().weight.device
        self._pin.inv_freq = self.model.rotary_emb.inv_freq_for(alphas[0], device)[None, :]
        self._pin.active = True
        try:
            yield self
        finally:
            self._pin.active = False
            self._pin.inv_freq = None
            self._pin.state = None

    def _ntk_alphas(self, input_ids, inputs_embeds, attention_mask, past_key_values) -> tuple[float, ...]:
        """Alpha per row: from the prompt length at prefill, then kept on the cache for decode."""
        cfg = self.config
        if not getattr(cfg, "qwen_use_dynamic_ntk", False) or self.training:
            return (1.0,)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past:
            return getattr(past_key_values, "qwen_ntk_alphas", self._last_alphas)
        # A prompt prefilled in pieces (chunked prefill) must use the WHOLE prompt's alpha
        # from its first piece on, as the original's one prefill would: the caller puts it
        # on the empty cache (see qwen_core.batching).
        fixed = getattr(past_key_values, "qwen_prompt_alphas", None)
        if fixed is not None:
            past_key_values.qwen_ntk_alphas = self._last_alphas = tuple(fixed)
            return tuple(fixed)
        source = input_ids if input_ids is not None else inputs_embeds
        batch, length = source.shape[0], source.shape[1]
        if length <= cfg.qwen_seq_length:
            alphas = (1.0,) * batch
        elif attention_mask is not None and attention_mask.dim() == 2:
            alphas = tuple(ntk_alpha(int(n), cfg.qwen_seq_length) for n in attention_mask.sum(-1).tolist())
        else:
            alphas = (ntk_alpha(length, cfg.qwen_seq_length),) * batch
        if past_key_values is not None:
            past_key_values.qwen_ntk_alphas = alphas
        self._last_alphas = alphas
        return alphas

    def _logn(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        if not getattr(cfg, "qwen_use_logn_attn", False) or self.training:
            return None
        seq_length = cfg.qwen_seq_length
        pos = position_ids.to(torch.float32) + 1.0
        scale = torch.where(pos > seq_length, torch.log(pos) / math.log(seq_length), torch.ones_like(pos))
        return scale[..., None]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """Qwen2's forward with Qwen-1's dynamic NTK and LogN attention in effect."""
        if position_ids is None:  # generate always passes them (a data-dependent fallback)
            source = input_ids if input_ids is not None else inputs_embeds
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(past, past + source.shape[1], device=source.device)[None, :]
        call = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if self._pin.active:  # one reply at a time, traced by torch.compile: no ContextVar
            self._pin.state = _ForwardState(alphas=(), logn=self._logn(position_ids))  # alpha: in pin.inv_freq
            return super().forward(**call)
        alphas = self._ntk_alphas(input_ids, inputs_embeds, attention_mask, past_key_values)
        logn = self._logn(position_ids)
        if logn is not None:
            self._attach_logn_hooks()
        token = _STATE.set(_ForwardState(alphas=alphas, logn=logn))
        try:
            return super().forward(**call)
        finally:
            _STATE.reset(token)


class _LognHook:
    """Forward hook on ``q_proj``: scales queries past the trained context by LogN."""

    def __init__(self, pin: _Pin):
        self.pin = pin

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        state = self.pin.current()
        if state is None or state.logn is None:
            return output
        return output * state.logn.to(device=output.device, dtype=output.dtype)


register_checkpoint_conversion_mapping("QwenV1ForCausalLM", _conversion_mapping(), overwrite=True)
