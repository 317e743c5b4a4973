"""The sampling plan: new OpenAI/vLLM parameters, logprobs, the constraint hook and prompt scoring.

Every parameter is checked on the batched path against the per-request ``generate`` reference
path (the same plan wrapped as a logits processor), on the seq_length-16 checkpoint, so every
prompt runs past the trained context (dynamic NTK and LogN on).
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from qwen1_checkpoint import Shape, write_checkpoint
from reference_qwen1 import ReferenceQwen1
from test_generation import _boost_token

from qwen_core import GenerationError, GenerationSettings, load_engine
from qwen_core.sampling import RowSampler, SamplingPlan, count_penalties, min_p_filter, sample_rows, top_p_filter

N_VALID = 151851  # real vocabulary; ids above are padding
STOPS = (151645, 151644, 151643)
GREEDY = dict(do_sample=False, max_new_tokens=24)


@pytest.fixture(scope="module")
def alone(long_ckpt_dir):
    """No batching: every reply runs its own ``generate`` (the reference path)."""
    return load_engine(str(long_ckpt_dir), device="cpu", max_batch=0)


@pytest.fixture(scope="module")
def batched(long_ckpt_dir):
    return load_engine(str(long_ckpt_dir), device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def stopper(tmp_path_factory):
    """An engine whose every greedy choice is <|im_end|> (the model's certain stop)."""
    folder = write_checkpoint(tmp_path_factory.mktemp("stopper"), Shape(), "float32")
    _boost_token(folder, 151645)
    return folder


def _reply(engine, query: str, **gen):
    stream = engine.stream_chat(query, **gen)
    stream.text()
    return stream


class OnlyText:
    """A hand-written constraint: exactly the token ids of ``text``, then ``end`` (or nothing more)."""

    def __init__(self, ids: list[int], end: int | None):
        self.ids, self.end, self.pos, self.seen = list(ids), end, 0, []
        self.masked = 0

    def _allowed(self) -> int | None:
        return self.ids[self.pos] if self.pos < len(self.ids) else self.end

    def mask_logits(self, scores: torch.Tensor) -> None:
        assert scores.dim() == 1 and scores.dtype == torch.float32 and scores.shape[0] == 151936
        allowed = self._allowed()
        keep = scores[allowed].clone() if allowed is not None else None
        scores.fill_(-math.inf)
        if allowed is not None:
            scores[allowed] = keep
        self.masked += 1

    def accept_token(self, token_id: int) -> None:
        self.seen.append(token_id)
        self.pos += 1

    def is_finished(self) -> bool:
        return self.pos >= len(self.ids) + (self.end is not None)


# --- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(presence_penalty=2.5), "presence_penalty must be between -2.0 and 2.0"),
        (dict(frequency_penalty=float("nan")), "frequency_penalty must be a finite number"),
        (dict(min_p=1.5), "min_p must be between 0.0 and 1.0"),
        (dict(logit_bias={"5": 101}), r"logit_bias\[5\] must be between -100 and 100"),
        (dict(logit_bias={"x": 1}), "logit_bias: 'x' is not a token id"),
        (dict(logit_bias={-3: 1}), "logit_bias: -3 is not a token id"),
        (dict(logit_bias=[1, 2]), "logit_bias must map token ids to biases"),
        (dict(min_tokens=600), r"min_tokens \(600\) must not exceed max_new_tokens \(512\)"),
        (dict(min_tokens=-1), "min_tokens must be between 0 and 32768"),
        (dict(ignore_eos="yes"), "ignore_eos must be true or false"),
        (dict(stop_token_ids="151645"), "stop_token_ids must be a list of token ids"),
        (dict(stop_token_ids=[1.5]), "stop_token_ids: 1.5 is not a token id"),
        (dict(logprobs=21), "logprobs must be an integer between 0 and 20"),
        (dict(logprobs=True), "logprobs must be an integer between 0 and 20"),
    ],
)
def test_bad_new_settings_are_refused_with_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings().merged(**bad)


def test_new_settings_are_normalised_and_neutral_by_default():
    d = GenerationSettings()
    assert (d.presence_penalty, d.frequency_penalty, d.min_p, d.logit_bias, d.min_tokens) == (0.0, 0.0, 0.0, (), 0)
    assert (d.ignore_eos, d.stop_token_ids, d.logprobs) == (False, (), None)
    s = d.merged(logit_bias={"30": -1, 7: 2.5}, stop_token_ids=[9, 9, 4], logprobs=0)
    assert s.logit_bias == ((7, 2.5), (30, -1.0)) and s.stop_token_ids == (9, 4) and s.logprobs == 0
    assert s.merged(logprobs=None).logprobs is None
    hash(s)  # still a frozen, hashable value


def test_token_ids_beyond_the_vocabulary_are_refused(batched):
    with pytest.raises(ValueError, match=r"logit_bias: token id 151900 is not in the vocabulary \(ids 0..151850\)"):
        batched.stream_chat("Hi", logit_bias={151900: 5})
    with pytest.raises(ValueError, match=r"stop_token_ids: token id 160000 is not in the vocabulary"):
        batched.stream_chat("Hi", stop_token_ids=[13, 160000])


# --- the operations, on known logits --------------------------------------------------------------
def test_penalties_follow_openai_and_hf_semantics():
    torch.manual_seed(0)
    logits = torch.randn(1, 151936) * 3
    prompt = [5, 6, 7, 7]
    settings = GenerationSettings(
        do_sample=False, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={9: 3.0}
    )
    settings = settings.merged(logprobs=2)
    sampler = RowSampler(SamplingPlan(settings, 0, N_VALID, STOPS), torch.device("cpu"))
    logits[0, 7] = logits[0, 9] = logits.max() + 1.0  # a prompt token and a biased one lead
    reply: list[int] = []
    for _ in range(8):
        ids = torch.tensor([prompt + reply])
        want = logits.clone()
        seen = torch.tensor(sorted(set(prompt + reply)))
        vals = want[0, seen]
        want[0, seen] = torch.where(vals < 0, vals * 1.3, vals / 1.3)  # HF: prompt and reply
        want[0, N_VALID:] = -math.inf
        for t in set(reply):  # OpenAI: the reply's tokens only
            want[0, t] -= reply.count(t) * 0.25 + 0.5
        want[0, 9] += 3.0
        token = sample_rows([sampler], logits.clone(), lambda m, ids=ids: ids)[0]
        assert token == int(want.argmax())
        expected = torch.log_softmax(want[0], -1)  # logprobs see the processed logits exactly
        assert sampler.logprobs[-1].logprob == pytest.approx(float(expected[token]), abs=1e-5)
        assert [t for t, _ in sampler.logprobs[-1].top] == expected.topk(2).indices.tolist()
        reply.append(token)
    assert reply[0] == 9 and reply.count(9) > 1  # the bias wins until the reply's own count penalises it
    assert sampler.generated == 8 and len(set(reply)) > 2


def test_count_penalties_and_truncation_rules():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    assert count_penalties(scores, counts, 0.5, 0.25).tolist() == [[1.0, 1.25, 1.75, 4.0]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = min_p_filter(probs.log(), 0.2) > -math.inf  # 0.2 x 0.5 = 0.1: the 0.05 token goes
    assert kept.tolist() == [[True, True, True, False]]
    # top-p per row: a wide nucleus in one row (exact sort) leaves the other row's fast result alone
    narrow = torch.full((151936,), -30.0)
    narrow[:3] = torch.tensor([5.0, 4.0, 3.0])
    wide = torch.zeros(151936)
    together = top_p_filter(torch.stack([narrow, wide]), 0.9)
    assert torch.equal(together[0], top_p_filter(narrow[None], 0.9)[0])
    assert torch.equal(together[1], top_p_filter(wide[None], 0.9)[0])


# --- cross-path: batched vs the reference generate path -------------------------------------------
NEW_PARAMS = [
    dict(do_sample=False, presence_penalty=1.5),
    dict(do_sample=False, frequency_penalty=2.0, repetition_penalty=1.0),
    dict(do_sample=False, presence_penalty=-1.0, frequency_penalty=0.5),
    dict(do_sample=False, logit_bias={"220": 4.0, 11: -100}),
    dict(do_sample=True, seed=5, top_k=6, min_p=0.3, temperature=0.8),
    dict(do_sample=True, seed=9, top_k=8, presence_penalty=1.0, frequency_penalty=0.5),
    dict(do_sample=True, seed=3, top_k=4, logit_bias={"220": 2.0}),
    dict(do_sample=False, min_tokens=10, stop_token_ids=[13]),
    dict(do_sample=False, ignore_eos=True),
]


@pytest.mark.parametrize("params", NEW_PARAMS, ids=lambda p: ",".join(sorted(p)))
def test_each_new_parameter_is_the_same_batched_and_alone(alone, batched, params):
    want = _reply(alone, "Tell me about the sea and the sky", max_new_tokens=30, **params)
    other = batched.stream_chat("Something else entirely", do_sample=False, max_new_tokens=60)  # a neighbour row
    next(other)
    got = _reply(batched, "Tell me about the sea and the sky", max_new_tokens=30, **params)
    other.close()
    assert got.result.token_ids == want.result.token_ids
    assert got.result.text == want.result.text and got.result.finish_reason == want.result.finish_reason


def test_logit_bias_forces_and_bans_tokens(batched):
    plain = _reply(batched, "Hi", **GREEDY).result.token_ids
    banned = _reply(batched, "Hi", logit_bias={plain[0]: -100}, **GREEDY).result.token_ids
    assert banned[0] != plain[0]
    forced = _reply(batched, "Hi", logit_bias={1000: 100}, repetition_penalty=1.0, **GREEDY).result.token_ids
    assert forced == [1000] * 24


@pytest.mark.parametrize("max_batch", [0, 4])
def test_ignore_eos_and_min_tokens_hold_off_the_stop_token(stopper, max_batch):
    eng = load_engine(str(stopper), device="cpu", max_batch=max_batch)
    assert _reply(eng, "Hi", **GREEDY).result.token_ids == [151645]
    long = _reply(eng, "Hi", ignore_eos=True, **GREEDY)
    assert long.result.finish_reason == "length" and long.result.completion_tokens == 24
    assert not set(long.result.token_ids) & set(STOPS)
    held = _reply(eng, "Hi", min_tokens=5, **GREEDY)
    assert held.result.finish_reason == "stop" and held.result.completion_tokens == 6
    assert held.result.token_ids[-1] == 151645 and not set(held.result.token_ids[:5]) & set(STOPS)
    eng.unload_worker()


@pytest.mark.parametrize("engine_name", ["alone", "batched"])
def test_stop_token_ids_end_the_reply_unshown(request, engine_name):
    eng = request.getfixturevalue(engine_name)
    plain = _reply(eng, "Count with me", **GREEDY).result
    stop = plain.token_ids[4]
    first = plain.token_ids.index(stop)
    got = _reply(eng, "Count with me", stop_token_ids=[stop], **GREEDY).result
    assert got.finish_reason == "stop" and got.token_ids == plain.token_ids[: first + 1]
    assert got.text == eng.tokenizer.decode(plain.token_ids[:first])


# --- logprobs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", ["alone", "batched"])
def test_logprobs_are_the_models_log_softmax(request, long_ckpt_dir, engine_name):
    eng = request.getfixturevalue(engine_name)
    prompt = eng.build_prompt("Write a haiku")
    stream = eng.stream_prompt(prompt, eng.settings(logprobs=3, repetition_penalty=1.0, **GREEDY))
    next(stream)
    assert len(stream.logprobs) >= 1  # readable while streaming
    stream.text()
    res = stream.result
    assert res.logprobs is stream.logprobs and len(res.logprobs) == res.completion_tokens
    assert [lp.token_id for lp in res.logprobs] == res.token_ids
    ref = ReferenceQwen1(long_ckpt_dir)
    logits = ref.logits(prompt + res.token_ids, prompt_len=len(prompt))
    for i, lp in enumerate(res.logprobs):
        row = logits[len(prompt) - 1 + i].clone()
        row[N_VALID:] = -math.inf
        want = torch.log_softmax(row, -1)
        assert lp.logprob == pytest.approx(float(want[lp.token_id]), abs=1e-3)
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id  # greedy: the chosen one is the best
        assert [t for t, _ in lp.top] == want.topk(3).indices.tolist()


def test_logprobs_off_costs_nothing_and_zero_gives_no_alternatives(batched):
    assert _reply(batched, "Hi", **GREEDY).result.logprobs is None
    res = _reply(batched, "Hi", logprobs=0, do_sample=True, seed=1, top_k=5, max_new_tokens=8).result
    assert len(res.logprobs) == 8 and all(lp.top == () and lp.logprob <= 0 for lp in res.logprobs)


def test_logprobs_batched_equal_alone_and_rows_do_not_mix(alone, batched):
    kw = dict(logprobs=2, do_sample=True, seed=4, top_k=5, temperature=0.9, max_new_tokens=16)
    want = _reply(alone, "Tell me a story", **kw).result
    noise = batched.stream_chat("Unrelated", do_sample=False, max_new_tokens=60, logprobs=5)
    next(noise)
    got = _reply(batched, "Tell me a story", **kw).result
    noise.close()
    assert got.token_ids == want.token_ids
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


# --- the constraint hook --------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", ["alone", "batched"])
@pytest.mark.parametrize("sample", [False, True])
def test_a_constraint_decides_the_text(request, engine_name, sample):
    eng = request.getfixturevalue(engine_name)
    ids = eng.tokenizer.encode("ab, then cd")
    constraint = OnlyText(ids, eng.tokenizer.im_end_id)
    kw = dict(do_sample=sample, seed=2, top_k=4, top_p=0.9, temperature=1.2, max_new_tokens=40)
    stream = eng.stream_chat("Say anything", constraint=constraint, **kw)
    assert stream.text() == "ab, then cd"
    assert stream.result.finish_reason == "stop" and stream.result.token_ids == [*ids, eng.tokenizer.im_end_id]
    assert constraint.seen == stream.result.token_ids and constraint.masked == len(ids) + 1


def test_a_constraint_that_finishes_ends_the_reply_and_rows_share_a_group(batched):
    ids = batched.tokenizer.encode("ab")
    plain = batched.stream_chat("Say anything", **GREEDY)
    next(plain)  # an unconstrained row with the same settings (one filter group) runs alongside
    constraints = [OnlyText(ids, None), OnlyText(batched.tokenizer.encode("xyz"), None)]
    streams = [batched.stream_chat("Say anything", constraint=c, **GREEDY) for c in constraints]
    assert [s.text() for s in streams] == ["ab", "xyz"]
    assert all(s.result.finish_reason == "stop" for s in streams)
    assert plain.text() and plain.result.finish_reason == "length"
    assert streams[0].result.token_ids == ids


@pytest.mark.parametrize("engine_name", ["alone", "batched"])
def test_a_constraint_that_allows_nothing_is_a_clear_error(request, engine_name):
    eng = request.getfixturevalue(engine_name)
    stream = eng.stream_chat("Hi", constraint=OnlyText([], eng.tokenizer.im_end_id), ignore_eos=True, **GREEDY)
    with pytest.raises(GenerationError, match="No token is allowed.*Loosen one of them"):
        stream.text()
    assert stream.result.finish_reason == "error"
    assert eng.chat("Hi", max_new_tokens=3, do_sample=False) is not None  # still serving


def test_constraint_keyword_on_every_entry_point(batched):
    ids = batched.tokenizer.encode("ok")
    msgs = [{"role": "user", "content": "Hi"}]
    assert batched.stream_messages(msgs, constraint=OnlyText(ids, None), **GREEDY).text() == "ok"
    prompt = batched.build_prompt("Hi")
    assert batched.stream_prompt(prompt, batched.settings(**GREEDY), constraint=OnlyText(ids, None)).text() == "ok"


# --- prompt scoring -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 16, 17, 40])
def test_prompt_logprobs_equal_the_reference_forward_past_the_trained_context(batched, long_ckpt_dir, n):
    ids = [(i * 7919) % 150000 for i in range(n)]
    got = batched.prompt_logprobs(ids, top=4)
    assert got[0] is None and len(got) == n
    logits = ReferenceQwen1(long_ckpt_dir).logits(ids)  # alpha from the whole length, as a prefill
    logits[:, N_VALID:] = -math.inf
    want = torch.log_softmax(logits, -1)
    for i in range(1, n):
        assert got[i].token_id == ids[i]
        assert got[i].logprob == pytest.approx(float(want[i - 1, ids[i]]), abs=1e-3)
        assert [t for t, _ in got[i].top] == want[i - 1].topk(4).indices.tolist()


def test_prompt_logprobs_run_safely_beside_replies_and_match_greedy_logprobs(engine, alone, batched):
    # Inside the trained context (engine: seq_length 8192) the NTK alpha of prompt + reply is the
    # prompt's, so scoring a greedy reply gives back its own logprobs. (Past it, scoring uses the
    # whole sequence's alpha, as a prefill of it would, and the two legitimately differ.)
    prompt = engine.build_prompt("Write a haiku")
    kw = dict(logprobs=0, repetition_penalty=1.0, do_sample=False, max_new_tokens=12)
    reply = engine.stream_prompt(prompt, engine.settings(**kw))
    reply.text()
    running = [engine.stream_chat(f"Talk {i}", do_sample=False, max_new_tokens=200) for i in range(2)]
    for s in running:
        next(s)
    scores: list = []
    scorer = threading.Thread(target=lambda: scores.append(engine.prompt_logprobs(prompt + reply.result.token_ids)))
    scorer.start()
    scorer.join(60)
    for s in running:
        s.close()
    (scored,) = scores
    for lp, got in zip(reply.result.logprobs, scored[len(prompt) :], strict=True):
        assert got.token_id == lp.token_id and got.logprob == pytest.approx(lp.logprob, abs=1e-4)
    prompt = batched.build_prompt("Write a haiku")
    unbatched = alone.prompt_logprobs(prompt)  # max_batch=0: scored in the calling thread
    assert unbatched[0] is None and [lp.token_id for lp in unbatched[1:]] == prompt[1:]
    for a, b in zip(unbatched[1:], batched.prompt_logprobs(prompt)[1:], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    with pytest.raises(ValueError, match="top must be an integer between 0 and 20"):
        batched.prompt_logprobs(prompt, top=50)


def test_the_compiled_path_uses_the_same_plan(long_ckpt_dir, alone):
    from qwen_core.compiled import CompileSettings

    eng = load_engine(str(long_ckpt_dir), device="cpu", compile=CompileSettings(backend="eager", min_cache=64))
    try:
        assert eng.info.decode.startswith("compiled")
        for params in [*NEW_PARAMS[:2], *NEW_PARAMS[4:], dict(do_sample=False, logprobs=2)]:
            want = _reply(alone, "Tell me about the sea and the sky", max_new_tokens=30, **params).result
            got = _reply(eng, "Tell me about the sea and the sky", max_new_tokens=30, **params).result
            assert got.token_ids == want.token_ids, params
            assert got.finish_reason == want.finish_reason and got.text == want.text
            for a, b in zip(got.logprobs or [], want.logprobs or [], strict=True):
                assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        ids = eng.tokenizer.encode("ab, then cd")
        stream = eng.stream_chat("Say anything", constraint=OnlyText(ids, None), **GREEDY)
        assert stream.text() == "ab, then cd" and stream.result.finish_reason == "stop"
        prompt = eng.build_prompt("Score me")
        for a, b in zip(eng.prompt_logprobs(prompt, top=2)[1:], alone.prompt_logprobs(prompt, top=2)[1:], strict=True):
            assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-5) and a.top == b.top
    finally:
        eng.unload()
