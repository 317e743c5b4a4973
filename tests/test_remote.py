"""The remote backend against a real OpenAI-compatible server: ``transformers serve`` on CPU, loopback only.

Two servers are started once for the module (concurrently), both serving the tiny test
checkpoint rewritten as a Qwen2 checkpoint with the same weights (see
``remote_fixtures``): ``main`` stays up; ``victim`` is frozen and then killed by the last
tests. ``transformers serve`` takes text prompts, not token ids, so what is exact here is
the ChatML text; that its tokenizer turns that text into the prompt builder's ids is
checked locally, and the server's prompt token count and the greedy replies (which on
random weights change with any changed id) agree with the local engine's.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from remote_fixtures import ServeProcess, build_hf_tokenizer, write_served_checkpoint
from server_process import free_port, free_ports

from qwen_core import GenerationError, InputTooLong, QwenCoreError
from qwen_core.backend import Backend
from qwen_core.engine import Engine
from qwen_core.generation import ReplyResult
from qwen_core.manager import ModelManager, ModelSpec
from qwen_core.remote import (
    DIALECT_EXTRA,
    DIALECT_GENCONFIG,
    DIALECT_STANDARD,
    MODE_CHAT,
    MODE_IDS,
    MODE_TEXT,
    EndpointsUnavailable,
    RemoteEngine,
    _Request,
    _StopScanner,
    build_body,
    chat_messages,
    load_remote_engine,
    normalize_endpoint,
    remote_loader,
)
from qwen_core.settings import GenerationSettings
from qwen_core.text import coalesced

GREEDY = {"do_sample": False, "max_new_tokens": 24}
LONG = {"do_sample": False, "max_new_tokens": 3000}  # far longer than any test waits for
HISTORY = [("hi", "hello there"), ("and you?", "fine, thanks")]
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def hf_tokenizer(ckpt_dir):
    return build_hf_tokenizer(ckpt_dir / "qwen.tiktoken")


@pytest.fixture(scope="module")
def servers(engine, hf_tokenizer, tmp_path_factory):
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve needs openai, fastapi and uvicorn: pip install -r requirements-dev.txt")
    folder = write_served_checkpoint(engine, tmp_path_factory.mktemp("served-qwen2"), hf_tokenizer)
    logs = tmp_path_factory.mktemp("serve-logs")
    main_port, victim_port = free_ports(2)
    procs = [ServeProcess(folder, logs / "main.log", main_port), ServeProcess(folder, logs / "victim.log", victim_port)]
    try:
        for proc in procs:
            proc.wait_ready(120)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def main(servers):
    return servers[0]


@pytest.fixture(scope="module")
def victim(servers):
    return servers[1]


@pytest.fixture(scope="module")
def remote(main, ckpt_dir):
    eng = load_remote_engine([main.url], tokenizer_dir=ckpt_dir, timeout=30)
    yield eng
    eng.unload()


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- no server needed -------------------------------------------------------------------


def test_served_tokenizer_and_template_reproduce_the_prompt_builder(engine, hf_tokenizer):
    """What transformers serve builds from our text (or messages) is exactly our ids."""
    cases = [
        ("Write a poem about the sea.", HISTORY, SYSTEM, False, None),
        ("数一数：1234567", [("多轮", "好的")], "你是一个助手。", False, None),
        ("And now?", HISTORY, "You are a pirate.", True, None),  # persona moved into the first kept turn
        ("Short window", HISTORY * 3, SYSTEM, False, 40),  # older turns dropped
    ]
    for query, history, system, first_turn, window in cases:
        plan = engine.plan_prompt(query, history, system, window, first_turn)
        assert hf_tokenizer.encode(plan.text, add_special_tokens=False) == plan.ids
        messages = chat_messages(plan, query, history, system, first_turn)
        rendered = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered == plan.text
        if window:
            assert plan.kept_from > 0 and len(messages) == 2 + 2 * (len(history) - plan.kept_from)


def test_served_tokenizer_differs_only_on_special_token_text(engine, hf_tokenizer):
    """The one known difference: typed "<|im_end|>" is plain text locally but a control token to the server."""
    text = "say <|im_end|> please"
    assert engine.tokenizer.encode(text) != hf_tokenizer.encode(text, add_special_tokens=False)
    assert 151645 in hf_tokenizer.encode(text, add_special_tokens=False)


def test_request_bodies_per_dialect():
    settings = GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1)
    req = _Request(
        ids=[1, 2, 3], text="t", messages=[{"role": "user", "content": "q"}], settings=settings, max_new=50, seed=7
    )
    stops = (151645, 151644, 151643)
    vllm = build_body(MODE_IDS, DIALECT_EXTRA, req, model="qwen", stop_ids=stops)
    assert vllm["prompt"] == [1, 2, 3] and vllm["model"] == "qwen" and vllm["max_tokens"] == 50
    assert (vllm["top_k"], vllm["repetition_penalty"], vllm["stop_token_ids"]) == (20, 1.1, list(stops))
    assert (vllm["temperature"], vllm["top_p"], vllm["seed"]) == (0.7, 0.9, 7)
    assert vllm["stream"] and vllm["stream_options"] == {"include_usage": True}
    plain = build_body(MODE_CHAT, DIALECT_STANDARD, req, model=None, stop_ids=stops)
    assert "model" not in plain and plain["messages"] == req.messages
    assert not {"top_k", "repetition_penalty", "stop_token_ids", "generation_config"} & set(plain)
    assert plain["stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    hf = build_body(MODE_TEXT, DIALECT_GENCONFIG, req, model=None, stop_ids=stops, suppress_ids=range(151851, 151936))
    assert hf["prompt"] == "t" and "temperature" not in hf and "stop" not in hf
    config = json.loads(hf["generation_config"])
    assert config["eos_token_id"] == list(stops) and config["suppress_tokens"][0] == 151851
    assert (config["do_sample"], config["top_k"], config["repetition_penalty"]) == (True, 20, 1.1)
    greedy = _Request([1], "t", None, GenerationSettings(do_sample=False), 5, None, stream=False)
    body = build_body(MODE_IDS, DIALECT_EXTRA, greedy, model=None, stop_ids=stops)
    assert body["temperature"] == 0.0 and "top_k" not in body and "seed" not in body and not body["stream"]
    assert (
        json.loads(build_body(MODE_TEXT, DIALECT_GENCONFIG, greedy, model=None, stop_ids=stops)["generation_config"])[
            "do_sample"
        ]
        is False
    )


def test_stop_text_is_cut_even_when_split_across_chunks():
    scanner = _StopScanner()
    out = [scanner.feed(p) for p in ["Hello <", "|im_", "end|> never shown"]]
    assert "".join(out) == "Hello " and scanner.stopped
    scanner = _StopScanner()
    assert scanner.feed("a <b") == "a <b" and scanner.feed("<|") == "" and scanner.flush() == "<|"


def test_endpoint_urls_are_normalised():
    assert normalize_endpoint("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalize_endpoint("http://h:8000/v1/") == "http://h:8000"
    with pytest.raises(QwenCoreError):
        normalize_endpoint(" ")


def test_tokenizer_dir_is_required(tmp_path):
    with pytest.raises(QwenCoreError, match="--tokenizer-dir"):
        load_remote_engine(["http://127.0.0.1:9"], tokenizer_dir=None)
    with pytest.raises(QwenCoreError, match="qwen.tiktoken"):
        load_remote_engine(["http://127.0.0.1:9"], tokenizer_dir=tmp_path)


def test_all_endpoints_down_at_start(ckpt_dir):
    urls = [_closed_url(), _closed_url()]
    started = time.monotonic()
    with pytest.raises(EndpointsUnavailable) as err:
        load_remote_engine(urls, tokenizer_dir=ckpt_dir, connect_timeout=2, health_timeout=2)
    message = str(err.value)
    assert all(u in message for u in urls) and "connection refused" in message
    assert "--endpoint" in message and "running" in message
    assert time.monotonic() - started < 10


# --- against the server -----------------------------------------------------------------


def test_engine_surface(remote, main, ckpt_dir):
    # The contract, not the local engine: no model attribute, no Engine base (tests/test_backend_contract.py).
    assert isinstance(remote, RemoteEngine) and isinstance(remote, Backend) and not isinstance(remote, Engine)
    assert not hasattr(remote, "model")
    info = remote.info
    assert info.precision == "remote" and info.device == main.url and info.context_length == 8192
    assert info.decode == "remote (the servers decode)"
    assert remote.defaults.top_p == 0.8 and remote.defaults.repetition_penalty == 1.1  # generation_config.json
    assert remote.settings(temperature=0.5).temperature == 0.5
    status = remote.endpoint_status()[0]
    assert (status["mode"], status["dialect"], status["up"]) == (MODE_TEXT, DIALECT_GENCONFIG, True)
    plan = remote.plan_prompt("Hello", HISTORY, SYSTEM)
    assert remote.build_prompt("Hello", HISTORY, SYSTEM) == plan.ids and remote.count_tokens("Hello") == 1


def test_greedy_stream_equals_the_local_engine(remote, engine):
    stream = remote.stream_chat("Write a poem about the sea.", HISTORY, SYSTEM, **GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1
    res = stream.result
    assert isinstance(res, ReplyResult) and res.finish_reason in ("length", "stop")
    local = engine.stream_chat("Write a poem about the sea.", HISTORY, SYSTEM, **GREEDY)
    assert "".join(pieces) == local.text() == res.text
    assert res.prompt_tokens == res.server_prompt_tokens == local.result.prompt_tokens
    assert res.completion_tokens == local.result.completion_tokens
    assert res.time_to_first_token_s is not None and res.elapsed_s >= res.time_to_first_token_s
    assert stream.tokens_so_far == len(pieces) and res.seed is None


def test_non_streaming_reply(remote, engine):
    text = remote.chat("数一数：1234567", [("多轮", "好的")], "你是一个助手。", **GREEDY)
    assert text == engine.chat("数一数：1234567", [("多轮", "好的")], "你是一个助手。", **GREEDY)
    res = remote.last_result
    assert res.finish_reason in ("length", "stop") and res.completion_tokens > 0 and res.endpoint


def test_chat_completions_path_equals_the_local_engine(main, ckpt_dir, engine):
    """The fallback: messages through the server's chat template; same ids, so the same greedy reply."""
    eng = load_remote_engine(main.url + "/v1", tokenizer_dir=ckpt_dir, api="chat", timeout=30)
    try:
        assert eng.endpoint_status()[0]["mode"] == MODE_CHAT
        kw = dict(GREEDY, max_window_size=40)  # drops the older turns: the messages must follow the plan
        history = HISTORY * 3
        stream = eng.stream_chat("And now?", history, "You are a pirate.", system_in_first_turn=True, **kw)
        text = stream.text()
        plan = engine.plan_prompt("And now?", history, "You are a pirate.", 40, True)
        assert plan.kept_from > 0
        assert stream.result.server_prompt_tokens == plan.n_tokens
        assert (
            text == engine.stream_chat("And now?", history, "You are a pirate.", system_in_first_turn=True, **kw).text()
        )
    finally:
        eng.unload()


def test_messages_api_and_seeded_sampling(remote):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Roll the dice"}]
    sampled = dict(do_sample=True, temperature=0.9, top_k=40, seed=1234, max_new_tokens=12)
    first = remote.stream_messages(msgs, **sampled)
    text = first.text()
    assert first.result.seed == 1234 and text
    assert remote.stream_messages(msgs, **sampled).text() == text  # the server seeds its generator per request


def test_input_too_long_is_refused_before_sending(main, ckpt_dir):
    eng = load_remote_engine([main.url], tokenizer_dir=ckpt_dir, context_length=30)
    try:
        with pytest.raises(InputTooLong, match="at most 30"):
            eng.stream_chat("Write a poem about the sea.", HISTORY, SYSTEM)
    finally:
        eng.unload()


def test_cancel_from_another_thread_stops_the_stream_and_frees_the_server(remote):
    cancel = threading.Event()
    stream = remote.stream_chat("Tell me a very long story", cancel=cancel, **LONG)
    pieces, set_at = [], []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            threading.Timer(0.2, lambda: (set_at.append(time.monotonic()), cancel.set())).start()
    ended_at = time.monotonic()
    assert stream.result.finish_reason == "cancelled"
    assert ended_at - set_at[0] < 0.5  # within about one chunk (the consumer looks every 20 ms)
    assert 3 <= len(pieces) < 200 and stream.result.text == "".join(pieces)
    # transformers serve generates one request at a time: had the cancelled 3000-token
    # reply kept running, this short one would queue behind it for minutes.
    started = time.monotonic()
    assert remote.chat("hi", do_sample=False, max_new_tokens=4) is not None
    assert time.monotonic() - started < 20


def test_close_mid_stream(remote):
    stream = remote.stream_chat("Another long story", **LONG)
    with stream:
        next(stream)
        next(stream)
    assert stream.result.finish_reason == "cancelled"
    stream.close()  # twice is fine
    started = time.monotonic()
    remote.chat("hi", do_sample=False, max_new_tokens=4)
    assert time.monotonic() - started < 20


def test_closing_a_reply_that_already_arrived_keeps_its_end_and_text(remote):
    """Stop pressed after the whole reply came (its tail not yet read) cuts nothing, as on the local engine."""
    whole = remote.stream_chat("Tell me a story", **GREEDY)
    text = whole.text()
    stream = remote.stream_chat("Tell me a story", **GREEDY)
    next(stream)
    assert stream.worker_ended.wait(timeout=60)
    stream.close()
    assert (stream.result.finish_reason, stream.result.text) == (whole.result.finish_reason, text)
    assert stream.result.completion_tokens == whole.result.completion_tokens


def test_a_closed_port_is_skipped_during_its_cool_down_and_checked_again_after(main, ckpt_dir, engine):
    closed = _closed_url()
    eng = load_remote_engine([closed, main.url], tokenizer_dir=ckpt_dir, cooldown=1.5, timeout=30)
    try:
        dead = eng.endpoints[0]
        checked = dead.checked_at
        assert dead.is_down and "connection refused" in dead.last_error
        stream = eng.stream_chat("Hello", **GREEDY)
        assert stream.text() == engine.stream_chat("Hello", **GREEDY).text()
        assert stream.result.endpoint == main.url
        eng.chat("hi", do_sample=False, max_new_tokens=2)
        assert dead.checked_at == checked  # not retried while cooling down
        time.sleep(max(0.0, dead.down_until - time.monotonic()) + 0.05)
        eng.chat("hi", do_sample=False, max_new_tokens=2)
        eng.chat("hi", do_sample=False, max_new_tokens=2)  # round-robin: one of the two starts at the dead one
        assert dead.checked_at > checked and dead.is_down  # checked again, still refused
        assert eng.last_result.endpoint == main.url
        status = {s["url"]: s for s in eng.endpoint_status()}
        assert not status[closed]["up"] and status[main.url]["up"]
    finally:
        eng.unload()


def test_api_key_is_sent_as_a_bearer_token(remote):
    eng = RemoteEngine(["http://127.0.0.1:9"], remote.tokenizer, remote.defaults, remote.info, api_key="s3cret")
    try:
        assert eng._client.headers["Authorization"] == "Bearer s3cret"
    finally:
        eng.unload()


def test_ui_service_runs_on_the_remote_engine(main, ckpt_dir, engine, tmp_path):
    from ui import ASSETS
    from ui.personas import PersonaStore
    from ui.service import ChatService, empty_store

    manager = ModelManager(remote_loader([main.url], tokenizer_dir=str(ckpt_dir), timeout=30), [])
    manager.start(ModelSpec("", label="remote"))
    try:
        service = ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"))
        store = service.add_user_message(empty_store(), "Hello there")
        store, stats = list(service.stream_reply(store, SYSTEM, GREEDY, "s1"))[-1]
        assert service.active(store)["messages"][-1]["content"] == engine.chat("Hello there", system=SYSTEM, **GREEDY)
        assert stats.finish_reason in ("length", "stop") and stats.tokens > 0
        report = service.context(store, SYSTEM, "next", None)
        assert report.context_length == 8192 and report.raw_prompt.endswith("<|im_start|>assistant\n")
        assert manager.status()["precision"] == "remote"
    finally:
        manager.engine.unload()


def test_ui_tools_run_on_the_remote_engine_as_on_the_local_one(main, ckpt_dir, engine, manager, tmp_path):
    """#13 item 6 on --backend openai: the Tools tab's loop (tools in Qwen's ReAct prompt, the reply read
    back as steps) gives the same steps as on the local engine with the same weights. ``auto``: a forced
    call is grammar-constrained on the local engine only, so the two would differ by design."""
    from ui import ASSETS
    from ui.personas import PersonaStore
    from ui.service import ChatService, empty_store
    from ui.tool_loop import ToolSet

    def steps(mgr) -> list[dict]:
        service = ChatService(mgr, PersonaStore(ASSETS / "personas", tmp_path / "personas"))
        store = service.add_user_message(empty_store(), "What is 6 times 7?")
        tools = ToolSet(builtin=("calculator", "current_time"), choice="auto")
        *_, (store, stats) = service.stream_reply(store, SYSTEM, GREEDY, "tools", tools=tools)
        assert stats.finish_reason in ("stop", "length")
        return [{k: m.get(k) for k in ("role", "content", "name")} for m in service.active(store)["messages"]]

    remote = ModelManager(remote_loader([main.url], tokenizer_dir=str(ckpt_dir), timeout=30), [])
    remote.start(ModelSpec("", label="remote"))
    try:
        got = steps(remote)
    finally:
        remote.engine.unload()
    assert [m["role"] for m in got][:2] == ["user", "assistant"]
    assert got == steps(manager)


def test_round_robin_over_healthy_endpoints(main, victim, ckpt_dir):
    eng = load_remote_engine([main.url, victim.url], tokenizer_dir=ckpt_dir, timeout=30)
    try:
        served = []
        for _ in range(4):
            stream = eng.stream_chat("hi", do_sample=False, max_new_tokens=2)
            stream.text()
            served.append(stream.result.endpoint)
        assert set(served) == {main.url, victim.url} and served[0] != served[1]
    finally:
        eng.unload()


# --- the victim server: frozen, then killed (keep these last, in this order) ----------


def test_hung_server_read_timeout_and_cancel_before_the_first_chunk(victim, ckpt_dir):
    eng = load_remote_engine([victim.url], tokenizer_dir=ckpt_dir, timeout=2.0, cooldown=0.0)
    try:
        stream = eng.stream_chat("A long story", **LONG)
        next(stream)
        victim.pause()
        started = time.monotonic()
        with pytest.raises(GenerationError, match="broke off.*read timeout"):
            for _ in stream:
                pass
        assert time.monotonic() - started < 6
        assert stream.result.finish_reason == "error"
        # cancel while the server never answers: no first chunk ever comes
        cancel, set_at = threading.Event(), []
        waiting = eng.stream_prompt(eng.build_prompt("hi"), eng.settings(**LONG), cancel)
        threading.Timer(0.3, lambda: (set_at.append(time.monotonic()), cancel.set())).start()
        assert waiting.text() == ""
        assert waiting.result.finish_reason == "cancelled" and time.monotonic() - set_at[0] < 0.5
    finally:
        victim.resume()
        eng.unload()


def test_server_killed_mid_stream(victim, main, ckpt_dir, engine):
    victim.wait_ready(30)
    lone = load_remote_engine([victim.url], tokenizer_dir=ckpt_dir, timeout=10)
    pair = load_remote_engine([victim.url, main.url], tokenizer_dir=ckpt_dir, timeout=10)
    try:
        stream = lone.stream_chat("A long story", **LONG)
        assert next(stream) and next(stream)
        victim.kill()
        started = time.monotonic()
        with pytest.raises(GenerationError, match=f"reply from {victim.url} broke off") as err:
            stream.text()
        assert time.monotonic() - started < 5
        assert stream.result.finish_reason == "error" and "send the message again" in str(err.value)
        # the dead server now refuses connections: with it alone, a clear error naming it ...
        with pytest.raises(EndpointsUnavailable, match=f"{victim.url} \\(connection refused\\)"):
            lone.stream_chat("hi", **GREEDY).text()
        # ... and next to a live one, every reply still comes back (failover before the first chunk)
        for _ in range(2):
            reply = pair.stream_chat("Hello", **GREEDY)
            assert reply.text() == engine.stream_chat("Hello", **GREEDY).text()
            assert reply.result.endpoint == main.url
    finally:
        lone.unload()
        pair.unload()


def test_a_slow_consumer_gets_the_same_text_in_fewer_items(remote, engine):
    stream = remote.stream_chat("Write a poem about the sea.", HISTORY, SYSTEM, **GREEDY)
    first = next(stream)
    time.sleep(3)  # the rest arrives meanwhile
    items = [first, *coalesced(stream)]
    want = engine.stream_chat("Write a poem about the sea.", HISTORY, SYSTEM, **GREEDY).text()
    assert "".join(items) == want == stream.result.text
    assert len(items) <= 3 and stream.result.finish_reason == "length"


def test_new_sampling_fields_and_response_format_per_dialect():
    """#13: presence/frequency penalties and logit_bias as OpenAI fields, vLLM's extras as extra fields,
    transformers serve's in generation_config; response_format passed through as it is."""
    settings = GenerationSettings(
        temperature=0.7, presence_penalty=0.5, frequency_penalty=-0.5, min_p=0.1, logit_bias={5: 2.0},
        min_tokens=3, ignore_eos=True, stop_token_ids=(42,),
    )  # fmt: skip
    fmt = {"type": "json_object"}
    req = _Request([1, 2], "t", None, settings, 20, 1, response_format=fmt)
    stops = (151645, 151644, 151643)
    vllm = build_body(MODE_IDS, DIALECT_EXTRA, req, model=None, stop_ids=stops)
    assert (vllm["presence_penalty"], vllm["frequency_penalty"], vllm["logit_bias"]) == (0.5, -0.5, {"5": 2.0})
    assert (vllm["min_p"], vllm["min_tokens"], vllm["ignore_eos"]) == (0.1, 3, True)
    assert vllm["stop_token_ids"] == [*stops, 42] and vllm["response_format"] == fmt
    plain = build_body(MODE_CHAT, DIALECT_STANDARD, req, model=None, stop_ids=stops)
    assert plain["presence_penalty"] == 0.5 and not {"min_p", "min_tokens", "ignore_eos"} & set(plain)
    hf = json.loads(build_body(MODE_TEXT, DIALECT_GENCONFIG, req, model=None, stop_ids=stops)["generation_config"])
    assert (hf["min_p"], hf["min_new_tokens"], hf["eos_token_id"]) == (0.1, 3, [*stops, 42])
    neutral = build_body(MODE_IDS, DIALECT_EXTRA, _Request([1], "t", None, GenerationSettings(), 5, 1), model=None,
                         stop_ids=stops)  # fmt: skip
    assert not {"presence_penalty", "frequency_penalty", "logit_bias", "min_p", "response_format"} & set(neutral)


def test_logprobs_fields_per_mode_and_dialect():
    """#13: logprobs travel as OpenAI's fields; vLLM is asked to name tokens by id (return_tokens_as_token_ids)."""
    stops = (151645, 151644, 151643)
    req = _Request([1, 2], "t", [{"role": "user", "content": "x"}], GenerationSettings(logprobs=3), 5, None)
    ids = build_body(MODE_IDS, DIALECT_EXTRA, req, model=None, stop_ids=stops)
    assert (ids["logprobs"], ids["return_tokens_as_token_ids"]) == (3, True)
    chat = build_body(MODE_CHAT, DIALECT_STANDARD, req, model=None, stop_ids=stops)
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 3) and "return_tokens_as_token_ids" not in chat
    plain = _Request([1], "t", None, GenerationSettings(), 5, None)
    assert "logprobs" not in build_body(MODE_IDS, DIALECT_EXTRA, plain, model=None, stop_ids=stops)


def test_relayed_logprobs_are_read_back_as_qwen_ids(engine):
    from qwen_core.remote.protocol import parse_logprobs

    tok = engine.tokenizer
    legacy = {"logprobs": {"tokens": ["token_id:31632", "token_id:9"], "token_logprobs": [-1.5, -0.25],
                           "top_logprobs": [{"token_id:31632": -1.5, "token_id:7": -1.0, "token_id:8": -2.0},
                                            {"token_id:9": -0.25}]}}  # fmt: skip
    entries = parse_logprobs(legacy, False, tok, 2)
    assert [(e.token_id, e.logprob) for e in entries] == [(31632, -1.5), (9, -0.25)]
    assert entries[0].top == ((7, -1.0), (31632, -1.5)) and entries[1].top == ((9, -0.25),)
    hello = tok.encode("Hello")
    assert len(hello) == 1  # text that is exactly one token maps back too (servers without token ids)
    chat = {"logprobs": {"content": [{"token": "Hello", "logprob": -0.5, "top_logprobs": [
        {"token": "token_id:5", "logprob": -0.1}]}]}}  # fmt: skip
    (entry,) = parse_logprobs(chat, True, tok, 1)
    assert (entry.token_id, entry.logprob, entry.top) == (hello[0], -0.5, ((5, -0.1),))
    with pytest.raises(GenerationError, match="not one Qwen token"):
        parse_logprobs({"logprobs": {"tokens": ["Hello world"], "token_logprobs": [-1.0]}}, False, tok, 0)
    assert parse_logprobs({"text": "x"}, False, tok, 0) == []


def test_remote_concurrency_defaults_from_the_endpoints():
    import app

    remote = ["--backend", "openai", "--tokenizer-dir", "t"]
    assert app.parse_config([*remote, "--endpoint", "a", "--endpoint", "b"]).concurrency == 128
    assert app.parse_config([*remote, "--endpoint", "a", "--concurrency", "8"]).concurrency == 8
    assert app.parse_config([*remote, *[f"--endpoint=h{i}" for i in range(9)]]).concurrency == 256  # the flag's cap
    assert app.parse_config([]).concurrency == 4 and app.AppConfig().concurrency == 4


def test_every_endpoint_cooling_down_is_reported_for_an_immediate_503(ckpt_dir):
    from qwen_core.remote.pool import EndpointPool
    from qwen_core.tokenizer import QwenTokenizer

    pool = EndpointPool([_closed_url(), _closed_url()], QwenTokenizer(ckpt_dir / "qwen.tiktoken"),
                        GenerationSettings(), cooldown=30)  # fmt: skip
    try:
        assert pool.cooling_for() == 0.0
        pool.mark_down(pool.endpoints[0], "refused")
        assert pool.cooling_for() == 0.0  # the other one may still answer
        pool.mark_down(pool.endpoints[1], "refused")
        assert 25 < pool.cooling_for() <= 30
    finally:
        pool.close()


def test_v1_api_on_the_remote_backend_tools_completions_and_refusals(remote, ckpt_dir, engine):
    """The /v1 router on the remote engine: the same tool prompt and parsing, completions, clear 400s."""
    import openai
    from api_harness import RouterApp

    srv = RouterApp(remote, ckpt_dir, concurrency=2, max_queue=8)
    try:
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        choice = {"type": "function", "function": {"name": "get_weather"}}
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        out = c.chat.completions.create(model=srv.model, messages=msgs, tools=tools, tool_choice=choice,
                                        max_tokens=8, temperature=0)  # fmt: skip
        # cut by max_tokens inside the call's arguments: "length" (#13), the call still named
        cut = out.usage.completion_tokens == 8
        assert out.choices[0].finish_reason == ("length" if cut else "tool_calls")
        assert out.choices[0].message.tool_calls[0].function.name == "get_weather"
        plain = c.chat.completions.create(model=srv.model, messages=msgs, max_tokens=8, temperature=0)
        assert plain.choices[0].message.content == engine.chat(msgs[0]["content"], do_sample=False, max_new_tokens=8)
        text = c.completions.create(model=srv.model, prompt="The sea is", max_tokens=4, temperature=0)
        assert text.usage.completion_tokens == 4
        with pytest.raises(openai.BadRequestError) as err:  # transformers serve can't relay logprobs with ids
            c.chat.completions.create(model=srv.model, messages=msgs, max_tokens=2, logprobs=True)
        assert err.value.body["message"].startswith("logprobs:")
    finally:
        srv.stop()
