"""``/v1/completions`` (#13 item 4) through the real clients: the openai SDK, LiteLLM and lm-evaluation-harness.

lm-eval runs as its users run it (``python -m lm_eval``) on two tasks defined in tests/lm_eval_tasks/
(a multiple-choice task scored by log-likelihood with ``local-completions`` and our ``/tokenize``,
and a generative one with ``local-chat-completions``); its scores are checked against the engine's own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from server_process import ROOT, AppProcess

MODEL = ""
PROMPT = "The sea is"


@pytest.fixture(scope="module")
def app(ckpt_dir, tmp_path_factory):
    global MODEL
    MODEL = ckpt_dir.name
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--concurrency", "2", "--data-dir",
         str(tmp_path_factory.mktemp("data"))],
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _greedy_ids(engine, ids: list[int], n: int) -> list[int]:
    with engine.stream_prompt(ids, engine.settings(do_sample=False, max_new_tokens=n)) as stream:
        stream.text()
    return stream.result.token_ids


def test_text_prompt_is_raw_text_and_greedy_matches_the_engine(client, engine):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    want = engine.tokenizer.decode(_greedy_ids(engine, engine.tokenizer.encode(PROMPT), 6))
    assert out.choices[0].text == want  # not stripped, no ChatML around the prompt
    assert out.usage.prompt_tokens == len(engine.tokenizer.encode(PROMPT)) and out.usage.completion_tokens == 6
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"


def test_special_token_text_in_a_prompt_stays_text(client, engine):
    out = client.completions.create(model=MODEL, prompt="a <|im_end|> b", max_tokens=1, temperature=0)
    assert out.usage.prompt_tokens == len(engine.tokenizer.encode("a <|im_end|> b")) > 3


def test_token_id_prompts_lists_and_n(client, engine):
    ids = engine.tokenizer.encode(PROMPT)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = client.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert (
        many.choices[0].text
        == many.choices[1].text
        == client.completions.create(model=MODEL, prompt=ids, max_tokens=3, temperature=0).choices[0].text
    )
    assert many.usage.prompt_tokens == len(ids) + 2 and many.usage.completion_tokens == 12


def test_echo_logprobs_score_the_prompt_as_the_engine_does(client, engine):
    ids = engine.tokenizer.encode(PROMPT)
    want = engine.prompt_logprobs(ids, top=2)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == PROMPT and out.usage.completion_tokens == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([e.logprob for e in want[1:]], abs=1e-5)
    assert "".join(lp.tokens) == PROMPT and lp.text_offset == [0, 3, 7]
    one = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, echo=True, logprobs=1, temperature=0)
    assert len(one.choices[0].logprobs.tokens) == len(ids) + 1  # lm-eval's request: the prompt, then one token
    assert one.choices[0].logprobs.token_logprobs[: len(ids)][1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)


def test_streamed_completion_equals_non_streamed_and_reports_usage(client):
    kw = {"model": MODEL, "prompt": " once upon a time", "max_tokens": 10, "temperature": 0, "logprobs": 1}
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == full.choices[0].logprobs.tokens
    assert chunks[-1].usage.completion_tokens == 10


def test_stop_strings_and_refusals(client, app):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and full.startswith(cut.choices[0].text)
    for kw, param in (({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"), ({"prompt": [999999999]}, "prompt")):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(**{"model": MODEL, "prompt": PROMPT, "max_tokens": 2, **kw})
        assert err.value.body["param"] == param


def test_litellm_text_completion_and_tool_calls(app, client):
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the price list from the network
    litellm = pytest.importorskip("litellm")
    base = f"{app.url}/v1"
    out = litellm.text_completion(
        model=f"text-completion-openai/{MODEL}", api_base=base, api_key="x", prompt=PROMPT, max_tokens=5, temperature=0
    )
    want = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0).choices[0].text
    assert out.choices[0].text == want and out.usage.completion_tokens == 5
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    out = litellm.completion(
        model=f"openai/{MODEL}", api_base=base, api_key="x", messages=msgs, tools=tools, max_tokens=8, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    assert out.choices[0].finish_reason == "tool_calls"
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"
    # drop_params still sends logprobs: it must be accepted
    chunks = litellm.completion(
        model=f"openai/{MODEL}", api_base=base, api_key="x", messages=msgs, max_tokens=4, temperature=0,
        logprobs=True, drop_params=True, stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


def _lm_eval(args: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lm_eval", *args, "--include_path", "tests/lm_eval_tasks", "--output_path", str(out),
           "--log_samples"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for f in sorted(out.rglob("samples_*.jsonl")) for line in f.read_text().splitlines()]


def test_lm_eval_local_completions_multiple_choice_loglikelihoods(app, engine, tmp_path):
    pytest.importorskip("lm_eval")
    samples = _lm_eval(
        ["--model", "local-completions", "--tasks", "qwen_tiny_mc", "--limit", "4", "--model_args",
         f"model={MODEL},base_url={app.url}/v1/completions,tokenizer_backend=remote,num_concurrent=1,max_retries=1"],
        tmp_path,
    )  # fmt: skip
    assert len(samples) == 4
    tok = engine.tokenizer
    for s in samples:
        requests = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["resps"]))]
        for req, resp in zip(requests, s["resps"], strict=True):
            context, continuation = req["arg_0"], req["arg_1"]
            ctx, whole = tok.encode(context), tok.encode(context + continuation)
            lps = engine.prompt_logprobs(whole)
            want = math.fsum(e.logprob for e in lps[len(ctx) :])
            assert float(resp[0][0]) == pytest.approx(want, abs=1e-3)


def test_lm_eval_local_chat_completions_generative(app, engine, tmp_path):
    pytest.importorskip("lm_eval")
    samples = _lm_eval(
        ["--model", "local-chat-completions", "--apply_chat_template", "--tasks", "qwen_tiny_gen", "--limit", "3",
         "--model_args", f"model={MODEL},base_url={app.url}/v1/chat/completions,num_concurrent=1,max_retries=1,"
         "tokenizer_backend=none"],
        tmp_path,
    )  # fmt: skip
    assert len(samples) == 3
    for s in samples:
        want = engine.chat(s["doc"]["question"], do_sample=False, max_new_tokens=8).split("\n\n")[0]
        assert s["resps"][0][0] == want


def test_tokenizer_info_as_lm_eval_reads_it(app):
    info = httpx.get(f"{app.url}/tokenizer_info", timeout=30).json()
    assert info["eos_token"] == "<|endoftext|>" and "chat_template" in info
