"""Issue #13: prompt scoring (``/v1/completions`` with ``echo``, ``logprobs`` and ``max_tokens: 0``, what
lm-eval's multiple-choice tasks send) works on ``--backend openai`` too, relayed from a server that takes
vLLM's fields. The peer server here is this app itself on the tiny checkpoint (it honours vLLM's
``return_tokens_as_token_ids``); tests/integration/test_vllm.py runs the same against a real vLLM."""

from __future__ import annotations

import httpx
import pytest
from server_process import AppProcess

from qwen_core.remote import load_remote_engine

PROMPT = "Question: which is heavier, a kilo of feathers or a kilo of iron?\nAnswer: the same"


@pytest.fixture(scope="module")
def remote(app, ckpt_dir):
    eng = load_remote_engine([app.url], tokenizer_dir=ckpt_dir, timeout=60)
    yield eng
    eng.unload()


def test_tokens_are_named_by_id_when_asked(app, engine):
    ids = engine.tokenizer.encode("你好, wörld")
    body = {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2, "return_tokens_as_token_ids": True}
    lp = httpx.post(f"{app.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"token_id:{i}" for i in ids]
    assert all(k.startswith("token_id:") for top in lp["top_logprobs"][1:] for k in top)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logprobs": True, "top_logprobs": 1}
    entries = httpx.post(
        f"{app.url}/v1/chat/completions", json={**chat, "return_tokens_as_token_ids": True}, timeout=60
    )
    assert all(e["token"].startswith("token_id:") for e in entries.json()["choices"][0]["logprobs"]["content"])


def test_remote_prompt_logprobs_equal_the_servers_own(remote, engine):
    ids = engine.tokenizer.encode(PROMPT)
    got = remote.prompt_logprobs(ids, 3)
    want = engine.prompt_logprobs(ids, 3)  # the same checkpoint, loaded here
    assert got[0] is None and len(got) == len(want) == len(ids)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert (g.token_id, g.logprob) == (w.token_id, pytest.approx(w.logprob, abs=1e-6))
        assert [t for t, _ in g.top] == [t for t, _ in w.top]


def test_v1_scoring_through_the_remote_backend(app, ckpt_dir, tmp_path):
    """lm-eval's loglikelihood request, to an app on --backend openai in front of the first one."""
    front = AppProcess(
        ["--backend", "openai", "--endpoint", app.url, "--tokenizer-dir", str(ckpt_dir), "--data-dir", str(tmp_path)]
    )
    try:
        body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
        relayed = httpx.post(f"{front.url}/v1/completions", json=body, timeout=120)
        direct = httpx.post(f"{app.url}/v1/completions", json=body, timeout=120)
        assert relayed.status_code == 200, relayed.text
        a, b = relayed.json()["choices"][0], direct.json()["choices"][0]
        assert a["text"] == b["text"] == PROMPT
        assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
        assert a["logprobs"]["token_logprobs"][0] is None
        assert a["logprobs"]["token_logprobs"][1:] == pytest.approx(b["logprobs"]["token_logprobs"][1:], abs=1e-6)
    finally:
        front.stop()
