"""Prompt scoring: every prompt token's log-probability given the ones before it (lm-eval's log-likelihood).

One forward of the whole prompt, with no KV cache: the dynamic-NTK alpha is then the one a
prefill of this prompt picks (from its length, see :mod:`qwen_core.modeling`) and LogN applies
by position, so the scores are the original model's. The logits of every position would be
``n x 151,936`` floats (1.2 GB for 2,048 tokens), so the forward keeps only the last one and
the final hidden states are captured instead; the LM head then runs over them in chunks.
"""

from __future__ import annotations

import threading

import torch

from .sampling import NEG_INF, TokenLogprob

CHUNK = 256  # positions per LM-head chunk: 256 x 151,936 fp32 logits = 155 MB


@torch.inference_mode()
def score_prompt(model, ids: list[int], top: int, n_valid: int) -> list[TokenLogprob | None]:
    """``[None, lp(ids[1] | ids[:1]), ...]`` with ``top`` alternatives each; ids >= ``n_valid`` excluded."""
    if len(ids) < 2:
        return [None] * len(ids)
    hidden = _final_hidden(model, ids)  # [n, hidden]
    head = model.get_output_embeddings()
    device = head.weight.device
    targets = torch.tensor(ids[1:], dtype=torch.long, device=device)
    out: list[TokenLogprob | None] = [None]
    for start in range(0, len(ids) - 1, CHUNK):
        end = min(start + CHUNK, len(ids) - 1)
        logits = head(hidden[start:end].to(device)).float()
        logits[:, n_valid:] = NEG_INF
        logprobs = torch.log_softmax(logits, dim=-1)
        own = logprobs.gather(1, targets[start:end, None]).squeeze(1).tolist()
        if top:
            values, indices = logprobs.topk(top, dim=-1)
            alts = [tuple(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
        else:
            alts = [()] * (end - start)
        out.extend(TokenLogprob(ids[start + 1 + k], own[k], alts[k]) for k in range(end - start))
    return out


def _final_hidden(model, ids: list[int]) -> torch.Tensor:
    """The final (normed) hidden states of one forward over ``ids``, [len(ids), hidden]."""
    me = threading.get_ident()
    captured: list[torch.Tensor] = []

    def grab(module, args, output) -> None:
        if threading.get_ident() == me:  # another thread's forward (max_batch=0) is not ours
            captured.append(output)

    device = model.get_input_embeddings().weight.device
    handle = model.model.norm.register_forward_hook(grab)
    try:
        model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1][0]
