"""Bad input gets a clear error, and the server keeps serving.

Every case sends something hostile or broken to the running app (``/v1/chat/completions``,
the Gradio ``/chat`` endpoint), to the UI's service and import functions, or to the
loader, then checks the message says what is wrong, and that a normal request works
right after it.
"""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest

from qwen_core import CheckpointError, QwenCoreError, load_engine
from qwen_core.manager import ModelManager, ModelSpec
from ui import ASSETS
from ui.conversations import MAX_MESSAGES, ConversationError, parse_import
from ui.personas import PersonaError, PersonaStore
from ui.service import ChatInputError, ChatService, Limits, empty_store

OK_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
OK_SETTINGS = {"temperature": 0, "max_new_tokens": 2}


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=120) as client:
        yield client


def _v1(http, raw: bytes) -> tuple[int, dict]:
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    return r.status_code, r.json()


def _serves_v1(http) -> None:
    status, body = _v1(http, json.dumps(OK_BODY).encode())
    assert status == 200 and body["usage"]["completion_tokens"] == 2, body


def _user(content) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 2}).encode()


def _with(**fields) -> bytes:
    return json.dumps({**OK_BODY, **fields}).encode()


BIG = "x" * 1_000_000


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (_user(""), "messages.0.content", "empty"),
        (_user("  \n\t "), "messages.0.content", "empty"),
        (_user("\u200b\ufeff\u2060"), "messages.0.content", "empty"),  # zero-width only
        (_user(BIG), None, "tokens but"),  # 1 MB: longer than the model's context
        (b'{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', "messages.0.content", "unpaired surrogate"),
        (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}', None, "surrogate"),
        (b'{"messages": [{"role": "user", "content": "hi", "name": "\\ud83d"}]}', "messages.0.name", "surrogate"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop", "surrogate"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "UTF-8"),
        (b"\xc3\x28", None, "UTF-8"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature", "finite"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature", "finite"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}', "top_p", "finite"),
        (_with(temperature=-0.5), "temperature", "greater than or equal to 0"),
        (_with(temperature=1e308), "temperature", "less than or equal to 2"),
        (_with(top_p=0), "top_p", "greater than 0"),
        (_with(top_k=-2), "top_k", "greater than or equal to -1"),  # -1 is vLLM's "off" (#13)
        (_with(repetition_penalty=0), "repetition_penalty", "greater than or equal"),
        (_with(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (_with(max_tokens=10**30), "max_tokens", "less than or equal"),
        (_with(max_tokens=-5), "max_tokens", "greater than or equal to 1"),
        (_with(seed=-2), "seed", "greater than or equal to -1"),  # -1 is llama.cpp's "random" (#13)
        (_with(seed=2**64), "seed", "less than"),
        (_with(temperature="hot"), "temperature", "number"),
        # Found by the schemathesis run: the schema says integer/boolean, so lax coercions are refused too.
        (_with(max_tokens="5"), "max_tokens", "valid integer"),
        (_with(max_completion_tokens=5.0), "max_completion_tokens", "valid integer"),
        (_with(stream=1), "stream", "valid boolean"),
        (_with(top_k=True), "top_k", "valid integer"),
        # Unknown fields are accepted and ignored since #13 (as vLLM does); values we can't honour are not:
        (_with(n=9), "n", "less than or equal to 8"),
        (json.dumps({"messages": [{"role": "tool", "content": None}]}).encode(), "messages.0", "needs content"),
        (b"[1, 2]", None, "JSON object"),
        (b"null", None, "JSON object"),
        (b'"hello"', None, "JSON object"),
        (b"", None, "not valid UTF-8 JSON"),
        (b'{"messages": "hi"}', "messages", "valid list"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(), None, "text part"),
        (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), "messages.0.content", "must be text"),
        (json.dumps({"messages": [{"role": "user", "content": "u"}] * 10_001}).encode(), "messages", "at most 10000"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}]}).encode(), None, "last message"),
    ],
    ids=lambda v: (v[:40].decode("utf-8", "replace") if isinstance(v, bytes) else str(v))[:40],
)
def test_v1_refuses_bad_bodies_clearly_and_keeps_serving(http, raw, param, says):
    status, body = _v1(http, raw)
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"], error
    if param:
        assert error["param"] == param and error["message"].startswith(param + ": "), error
    assert "Value error" not in error["message"] and "Traceback" not in error["message"]
    _serves_v1(http)


def test_v1_streams_refuse_before_the_stream_starts(http):
    r = http.post(
        "/v1/chat/completions", json={**OK_BODY, "stream": True, "messages": [{"role": "user", "content": " "}]}
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    _serves_v1(http)


@pytest.mark.parametrize("temperature", [1.563842612921592e-186, 1e-38, 1e-6])
def test_v1_a_vanishing_temperature_is_greedy_not_a_server_error(http, engine, temperature):
    """Found by the API fuzzer: logits divided by 1.6e-186 were infinite and the draw NaN (HTTP 500)."""
    body = {"messages": [{"role": "user", "content": "Hello"}], "temperature": temperature, "max_tokens": 8}
    status, reply = _v1(http, json.dumps(body).encode())
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == engine.chat("Hello", do_sample=False, max_new_tokens=8)
    _serves_v1(http)


def test_v1_answers_a_ten_thousand_turn_history(http, engine):
    """10,000 messages is the most a request may hold: it is answered, keeping the newest turns that fit."""
    turns = [(f"question {i}", f"answer {i}") for i in range(4_999)]
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": "and now?"})
    assert len(messages) == 9_999
    status, body = _v1(http, json.dumps({"messages": messages, "max_tokens": 2, "temperature": 0}).encode())
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(engine.build_prompt("and now?", turns))
    _serves_v1(http)


# --- the Gradio /chat endpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gradio(app):
    from gradio_client import Client

    return Client(app.url + "/", verbose=False)


def _serves_gradio(gradio) -> None:
    assert isinstance(gradio.predict("hi", [], None, OK_SETTINGS, api_name="/chat"), str)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("", [], None, OK_SETTINGS), "non-empty"),
        (("\u200b \u2060", [], None, OK_SETTINGS), "non-empty"),
        ((BIG, [], None, OK_SETTINGS), "longer than 64,000 characters"),
        (("hi", [], None, {"temperature": "hot"}), "settings.temperature must be a number"),
        (("hi", [], None, {"temperature": None, "top_p": [1]}), "settings.top_p must be a number"),
        (("hi", [], None, {"temperature": -1}), "temperature must be between 0.0 and 100.0"),
        (("hi", [], None, {"max_new_tokens": 10**12}), "max_new_tokens must be between 1 and 32768"),
        (("hi", [], None, {"max_new_tokens": 2.5}), "max_new_tokens must be an integer"),
        (("hi", [], None, {"seed": 2**70}), "seed must be an integer in [0, 2**63)"),
        (("hi", [], None, {"top_k": -3}), "top_k must be between 0 and 200000"),
        (("hi", [], None, {"wizardry": 1}), "unknown generation setting(s): wizardry"),
        (("hi", [], None, "fast please"), "settings must be an object"),
        (("hi", "not a list", None, OK_SETTINGS), "history must be a list"),
        (("hi", [1, 2], None, OK_SETTINGS), "history items must be [user, assistant] pairs"),
        (("hi", [[1, 2]], None, OK_SETTINGS), "history[0] must hold text"),
        (("hi", [{"role": "wizard", "content": "x"}], None, OK_SETTINGS), "history[0] must be a message with a role"),
        (("hi", [{"role": "user"}], None, OK_SETTINGS), "history[0].content must be text"),
        (("hi", [["u", "a"]] * (MAX_MESSAGES + 1), None, OK_SETTINGS), "history has more than 10,000 items"),
        (("hi", [], 42, OK_SETTINGS), "system must be text"),
        (("hi", [], ["a"], OK_SETTINGS), "system must be text"),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_gradio_chat_refuses_bad_arguments_clearly_and_keeps_serving(app, gradio, args, says):
    before = app.output().count("Traceback")
    with pytest.raises(Exception) as err:  # gradio_client raises AppError with the server's text
        gradio.predict(*args, api_name="/chat")
    assert says in str(err.value), str(err.value)
    assert app.output().count("Traceback") == before  # a user's mistake is not logged as a crash
    _serves_gradio(gradio)


def _gradio_raw(http, raw: bytes) -> str:
    """POST to /gradio_api/call/chat with a hand-written JSON body (what gradio_client cannot send); the SSE answer."""
    r = http.post("/gradio_api/call/chat", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return http.get(f"/gradio_api/call/chat/{r.json()['event_id']}").text


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"data": ["a \\ud800 b", [], null, {"max_new_tokens": 2}]}', "unpaired surrogate"),
        (b'{"data": ["hi", [["\\udfff", "x"]], null, {"max_new_tokens": 2}]}', "history[0][0] contains an unpaired"),
        (b'{"data": ["hi", [], "\\ud800", {"max_new_tokens": 2}]}', "system contains an unpaired"),
        (b'{"data": ["hi", [], null, {"temperature": NaN}]}', "temperature must be a finite number"),
        (b'{"data": ["hi", [], null, {"top_p": Infinity}]}', "top_p must be a finite number"),
    ],
)
def test_gradio_chat_refuses_surrogates_and_nan(http, gradio, raw, says):
    answer = _gradio_raw(http, raw)
    assert "event: error" in answer and says in answer, answer
    _serves_gradio(gradio)


def test_gradio_chat_answers_a_ten_thousand_turn_history(gradio):
    reply = gradio.predict("and now?", [["u", "a"]] * MAX_MESSAGES, None, OK_SETTINGS, api_name="/chat")
    assert isinstance(reply, str)


# --- the UI's service: messages, edits, settings ------------------------------------------------


@pytest.fixture
def service(manager, tmp_path):
    return ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"), Limits())


def _reply(service, store, settings=OK_SETTINGS, session="s"):
    for _ in service.stream_reply(store, "You are a helpful assistant.", dict(settings), session):
        pass
    return service.active(store)["messages"][-1]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        (" \n\t\u3000", "empty"),
        ("\u200b\u200d\ufeff", "empty"),
        ("x" * 64_001, "the limit is 64,000"),
        (BIG, "the limit is 64,000"),
        ("hello \ud800", "unpaired surrogate"),
        (None, "empty"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_ui_refuses_bad_messages_and_keeps_the_chat(service, text, says):
    store = service.add_user_message(empty_store(), "first")
    _reply(service, store)
    before = json.dumps(store)
    with pytest.raises(ChatInputError, match=re.escape(says)):
        service.add_user_message(store, text)
    with pytest.raises(ChatInputError):
        service.edit(store, 0, text if text is not BIG else "\ud800")
    assert json.dumps(store) == before  # nothing half-applied
    service.add_user_message(store, "second")
    assert _reply(service, store)["role"] == "assistant"


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
        ({"temperature": -1.0}, "temperature must be between"),
        ({"top_p": float("inf")}, "top_p must be a finite number"),
        ({"max_new_tokens": -1}, "max_new_tokens must be between 1 and 32768"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be between 1 and 32768"),
        ({"repetition_penalty": 1e9}, "repetition_penalty must be between"),
        ({"seed": -7}, "seed must be an integer"),
        ({"max_window_size": 0}, "max_window_size must be between"),
        ({"beam_width": 4}, "unknown generation setting(s): beam_width"),
    ],
)
def test_ui_refuses_bad_sampling_values_and_is_not_left_busy(service, settings, says):
    store = service.add_user_message(empty_store(), "hi")
    with pytest.raises(ValueError, match=re.escape(says)):
        _reply(service, store, settings)
    assert not service.is_busy("s") and service.scheduler.stats()["active"] == 0
    assert _reply(service, store)["role"] == "assistant"


def test_ui_handles_a_ten_thousand_message_conversation(service):
    store = empty_store()
    msgs = service.active(store)["messages"]
    for i in range(MAX_MESSAGES // 2 - 1):
        msgs += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    service.add_user_message(store, "the last one that fits")
    report = service.context(store, "S", "", 6144)
    assert report.n_turns == MAX_MESSAGES // 2 - 1 and report.dropped_turns  # the oldest ones left out
    assert _reply(service, store)["role"] == "assistant"
    assert len(msgs) == MAX_MESSAGES
    with pytest.raises(ChatInputError, match="too long to continue; start a new chat"):
        service.add_user_message(store, "one more")


# --- imports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "invalid JSON at line 1"),
        ("\u00ff not json", "invalid JSON"),
        ("42", "expected an object with a 'messages' list"),
        ('{"messages": {"role": "user"}}', "expected an object with a 'messages' list"),
        ('{"messages": [1]}', "messages[0] needs a role"),
        ('{"messages": [{"role": "root", "content": "x"}]}', "messages[0] needs a role"),
        ('{"messages": [{"role": "user", "content": ["x"]}]}', "messages[0].content must be text"),
        ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "unpaired surrogate"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)}), "more than 10000 messages"),
        ("[" + " " * (21 * 2**20) + "]", "larger than 20 MB"),
    ],
    ids=lambda v: v[:30],
)
def test_malformed_conversation_imports_are_refused_clearly(text, says):
    with pytest.raises(ConversationError, match=re.escape(says)) as err:
        parse_import(text, "chat.json")
    assert str(err.value).startswith("chat.json: ")
    assert parse_import('[{"role": "user", "content": "ok"}]')["messages"][0]["content"] == "ok"


def test_imported_conversation_with_hostile_fields_is_kept_harmless(service):
    conv = parse_import(
        json.dumps(
            {"persona_id": "../../../etc/passwd", "title": {"$gt": ""}, "messages": [{"role": "user", "content": "hi"}]}
        )
    )
    assert conv["title"] == "hi"  # a title that isn't text is replaced by the first message
    store = service.add_imported(empty_store(), conv)
    assert service.personas.get(conv["persona_id"]) is None  # only ever a lookup key, never a path
    assert _reply(service, store)["role"] == "assistant"
    huge_id = parse_import(json.dumps({"persona_id": "p" * 10_000, "messages": []}))
    assert huge_id["persona_id"] == "default-assistant"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{oops", "invalid JSON at line 1"),
        ("[1, 2]", "a persona must be a JSON object"),
        ('{"system_prompt": "x"}', "'name' must be non-empty text"),
        ('{"name": "n", "system_prompt": ["x"]}', "'system_prompt' must be text"),
        (
            '{"name": "n", "system_prompt": "x", "settings": {"temperature": NaN}}',
            "temperature must be a finite number",
        ),
        (
            '{"name": "n", "system_prompt": "x", "settings": {"temperature": "hot"}}',
            "temperature must be a finite number",
        ),
        ('{"name": "n", "system_prompt": "x", "settings": {"max_new_tokens": -1}}', "max_new_tokens must be between"),
        ('{"name": "n", "system_prompt": "x", "settings": {"rm -rf": 1}}', "'settings' may only hold"),
        ('{"name": "n", "system_prompt": "x", "example_dialogue": [["only one"]]}', "'example_dialogue' must be"),
        ('{"name": "n", "system_prompt": "x", "avatar": 7}', "'avatar' must be text"),
        ('{"name": "n\\ud800", "system_prompt": "x"}', "'name' holds an unpaired surrogate"),
        ('{"name": "n", "system_prompt": "x", "greeting": "\\udfff"}', "'greeting' holds an unpaired surrogate"),
        (json.dumps({"name": "n", "system_prompt": "x" * 40_000}), "too long"),
        (json.dumps({"name": "n", "system_prompt": "x", "greeting": "g" * 40_000}), "'greeting' is longer"),
        ("[" + " " * (5 * 2**20) + "]", "file too large"),
    ],
    ids=lambda v: v[:40],
)
def test_malformed_persona_imports_are_refused_clearly(tmp_path, text, says):
    store = PersonaStore(ASSETS / "personas", tmp_path / "personas")
    with pytest.raises(PersonaError, match=re.escape(says)) as err:
        store.import_json(text, "persona.json")
    assert str(err.value).startswith("persona.json")
    assert not (tmp_path / "personas").exists() or list((tmp_path / "personas").iterdir()) == []  # nothing half-written
    (ok,) = store.import_json('{"name": "Fine", "system_prompt": "Be fine."}', "persona.json")
    assert store.get(ok.id).system_prompt == "Be fine."


def test_persona_names_and_ids_with_path_tricks_stay_in_the_persona_folder(tmp_path):
    store = PersonaStore(ASSETS / "personas", tmp_path / "data" / "personas")
    tricks = [
        "../../evil",
        "/etc/passwd",
        "..",
        "a/../../b",
        "C:\\Windows\\win.ini",
        "\x00null",
        ".hidden",
        "名字/../x",
    ]
    items = [{"name": t, "id": t, "system_prompt": "s"} for t in tricks]
    added = store.import_json(json.dumps(items), "p.json")
    files = sorted(p for p in (tmp_path).rglob("*") if p.is_file())
    assert len(added) == len(tricks) and len(files) == len(tricks)
    assert all(f.parent == tmp_path / "data" / "personas" and not f.name.startswith(".") for f in files)


# --- checkpoints ----------------------------------------------------------------------------------


def _missing_shard(src, dst):
    shutil.copytree(src, dst)
    (dst / "model-00002-of-00003.safetensors").unlink()


def _wrong_vocab(src, dst):
    shutil.copytree(src, dst)
    (dst / "qwen.tiktoken").write_text("aGVsbG8= 0\nd29ybGQ= 1\n")


def _other_architecture(src, dst):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (dst / "config.json").write_text(json.dumps(cfg))


BROKEN = [
    (_missing_shard, "incomplete.*model-00002-of-00003.safetensors.*Download them again"),
    (_wrong_vocab, "qwen.tiktoken has 2 tokens.*wrong file"),
    (_other_architecture, "'llama' model.*not a first-generation Qwen"),
]


@pytest.mark.parametrize(("breaks", "says"), BROKEN, ids=lambda v: getattr(v, "__name__", "")[:30])
def test_a_broken_checkpoint_stops_the_start_with_its_reason(long_ckpt_dir, tmp_path, capsys, breaks, says):
    import sys

    from server_process import ROOT

    sys.path.insert(0, str(ROOT))
    from concurrent.futures import ThreadPoolExecutor

    from server_process import free_port

    import app as app_module

    breaks(long_ckpt_dir, tmp_path / "ckpt")
    argv = ["--model", str(tmp_path / "ckpt"), "--device", "cpu", "--data-dir", str(tmp_path / "d")]
    argv += ["--host", "127.0.0.1", "--port", str(free_port())]
    # main() runs uvicorn's own event loop: on a thread of its own, as in a process of its own (a
    # browser test's Playwright may keep a loop running on this one).
    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(app_module.main, argv).result(timeout=300)
    err = capsys.readouterr().err
    assert code == 2 and "Cannot start:" in err and "Traceback" not in err
    assert re.search(says, err, re.S), err


@pytest.mark.parametrize(("breaks", "says"), BROKEN, ids=lambda v: getattr(v, "__name__", "")[:30])
def test_switching_to_a_broken_checkpoint_keeps_serving_the_loaded_one(ckpt_dir, long_ckpt_dir, tmp_path, breaks, says):
    breaks(long_ckpt_dir, tmp_path / "broken")
    manager = ModelManager(load_engine, [], offline=True)
    manager.start(ModelSpec(str(ckpt_dir), device="cpu"))
    with pytest.raises(QwenCoreError, match=says) as err:
        manager.switch(ModelSpec(str(tmp_path / "broken"), device="cpu"))
    assert isinstance(err.value.__cause__, CheckpointError) and "is loaded again" in str(err.value)
    assert manager.engine.chat("hi", do_sample=False, max_new_tokens=2) is not None
