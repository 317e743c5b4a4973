"""Prompt log-probabilities from the servers (``/v1/completions`` with ``echo`` and ``max_tokens: 0``).

What lm-evaluation-harness scores multiple-choice tasks with. vLLM and SGLang answer it with the prompt
tokens' log-probabilities; asked for ``return_tokens_as_token_ids``, each entry names its Qwen id exactly.
"""

from __future__ import annotations

import httpx

from ..errors import GenerationError
from ..info import TokenLogprob
from .pool import EndpointPool
from .protocol import DIALECT_EXTRA, MODE_CHAT, _describe, _error_detail, _token_id


def score_remote(pool: EndpointPool, prompt_ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the ones before (None for the first), with the ``top``
    best alternatives, from the first endpoint that takes vLLM's extra fields and token-id prompts."""
    body = {
        "prompt": list(prompt_ids),
        "max_tokens": 0,
        "echo": True,
        "logprobs": top,
        "temperature": 0.0,
        "return_tokens_as_token_ids": True,
    }
    if pool.served_model:
        body["model"] = pool.served_model
    attempts: list[tuple[str, str]] = []
    usable = unknown = False
    for ep in pool.candidates():
        if not pool.ready(ep):  # down: what it accepts is not known
            unknown = True
            attempts.append((ep.url, ep.last_error or "not ready"))
            continue
        if ep.dialect != DIALECT_EXTRA or ep.mode == MODE_CHAT:
            attempts.append((ep.url, "it takes no token-id prompts with vLLM's extra fields"))
            continue
        usable = True
        try:
            resp = pool.client.post(ep.url + "/v1/completions", json=body, timeout=pool.response_timeout)
        except httpx.HTTPError as exc:
            pool.mark_down(ep, _describe(exc, pool.response_timeout))
            attempts.append((ep.url, _describe(exc, pool.response_timeout)))
            continue
        if resp.status_code >= 500:
            pool.mark_down(ep, f"HTTP {resp.status_code}")
            attempts.append((ep.url, f"HTTP {resp.status_code}: {_error_detail(resp)}"))
            continue
        if resp.status_code != 200:  # the request itself was refused: another server would refuse it too
            raise ValueError(f"the server refused prompt scoring: HTTP {resp.status_code}: {_error_detail(resp)}")
        return _entries(resp.json(), len(prompt_ids), pool.tokenizer, top)
    if not usable and not unknown:
        raise NotImplementedError(
            "prompt log-probabilities (echo with logprobs and max_tokens 0) need an --endpoint server that "
            "takes token-id prompts and returns token ids in logprobs (vLLM, SGLang); none does: "
            + "; ".join(f"{u} ({why})" for u, why in attempts)
        )
    raise pool.unavailable(attempts)


def _entries(answer: dict, n: int, tokenizer, top: int) -> list[TokenLogprob | None]:
    """The first ``n`` entries of the answer's legacy logprobs, as the local engine gives them."""
    try:
        data = answer["choices"][0]["logprobs"]
        tokens, values = data["tokens"], data["token_logprobs"]
        tops = data.get("top_logprobs") or [None] * len(tokens)
    except (KeyError, IndexError, TypeError):
        raise GenerationError("The server's answer to prompt scoring holds no legacy logprobs.") from None
    if len(tokens) < n or len(values) < n:
        raise GenerationError(f"The server scored {len(tokens)} prompt tokens, not {n}.")
    out: list[TokenLogprob | None] = []
    for k in range(n):
        token = _token_id(tokens[k], tokenizer)
        if values[k] is None:
            out.append(None)  # the first token: nothing before it
            continue
        alts = tops[k] if isinstance(tops[k], dict) else {}
        ranked = sorted(((_token_id(t, tokenizer), float(v)) for t, v in alts.items()), key=lambda a: -a[1])
        out.append(TokenLogprob(token, float(values[k]), tuple(ranked[:top])))
    return out
