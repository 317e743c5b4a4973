"""Faults: generation failing mid-reply, clients vanishing, the process killed mid-write, remote servers failing.

Every fault is real: out-of-memory is raised inside the tiny model's forward pass (a hook
on a decoder layer, the place a real OOM comes from), clients disconnect by closing their
sockets or being SIGKILLed, writers are SIGKILLed, and the remote servers are loopback
servers that stall, drop the connection or ping forever. The app under test is the real
ASGI app (UI + ``/v1``) served by uvicorn in this process (see ``fault_fixtures``), with
one generation slot and one queue place, so a slot that is not given back shows at once.
Waits are hang guards (a bound after which the test fails), never timing assertions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from fault_fixtures import DROP_PIECES, FaultyServer, InProcessApp, oom_on_forward

from qwen_core import GenerationError
from qwen_core.remote import EndpointsUnavailable, load_remote_engine
from ui.personas import Persona, PersonaStore
from ui.user_store import UserStore

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a helpful assistant."
GREEDY = {"do_sample": False, "max_new_tokens": 24}
OOM_CALL = 6  # the reply streams 5 tokens, then the 6th forward pass runs out of memory
LONG_TOKENS = 8000  # far longer than any test waits for


def bounded(fn, seconds: float, what: str):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it is not done in ``seconds``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} did not end within {seconds:.0f} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    proc = InProcessApp(engine, tmp_path_factory.mktemp("fault-data"), concurrency=1, max_queue=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def idle(app):
    """Each test starts and must end with the slot free and nobody queued."""
    assert app.wait_stats(active=0, waiting=0) == {"active": 0, "waiting": 0, "max_concurrent": 1}
    yield app
    stats = app.wait_stats(active=0, waiting=0)
    assert (stats["active"], stats["waiting"]) == (0, 0), f"the test left the scheduler at {stats}"


# --- out of memory mid-reply ---------------------------------------------------------------


def test_oom_mid_stream_in_the_engine_keeps_the_text_and_the_engine(engine):
    want = engine.chat("Tell me about the sea", **GREEDY)
    stream = engine.stream_chat("Tell me about the sea", **GREEDY)
    pieces = []
    with oom_on_forward(engine, OOM_CALL) as fired:
        with pytest.raises(GenerationError, match="ran out of memory.*max_new_tokens.*quantized"):
            for piece in stream:
                pieces.append(piece)
    assert fired == [OOM_CALL]
    res = stream.result
    assert res.finish_reason == "error" and res.text == "".join(pieces)
    assert pieces and want.startswith(res.text.strip())  # what was shown before the fault is kept
    assert engine.chat("Tell me about the sea", **GREEDY) == want  # and the engine works on


def test_oom_mid_stream_over_v1_streaming(idle, client, engine):
    app = idle
    msgs = [{"role": "user", "content": "Stream me a story"}]
    want = engine.chat("Stream me a story", **GREEDY)
    received = []
    with oom_on_forward(engine, OOM_CALL) as fired:
        stream = client.chat.completions.create(
            model=app.model, messages=msgs, stream=True, temperature=0, max_tokens=24
        )
        with pytest.raises(openai.APIError, match="ran out of memory") as err:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert fired == [OOM_CALL]
    assert "max_new_tokens" in str(err.value)  # actionable: what to lower or load instead
    text = "".join(received)
    assert text.strip() and want.startswith(text.strip())
    again = client.chat.completions.create(model=app.model, messages=msgs, temperature=0, max_tokens=24)
    assert again.choices[0].message.content == want


def test_oom_over_v1_non_streaming(idle, client, engine):
    app = idle
    msgs = [{"role": "user", "content": "Answer in one go"}]
    with oom_on_forward(engine, OOM_CALL) as fired:
        with pytest.raises(openai.InternalServerError, match="ran out of memory") as err:
            client.chat.completions.create(model=app.model, messages=msgs, temperature=0, max_tokens=24)
    assert fired == [OOM_CALL] and err.value.status_code == 500
    assert err.value.body["type"] == "server_error"
    again = client.chat.completions.create(model=app.model, messages=msgs, temperature=0, max_tokens=24)
    assert again.choices[0].message.content == engine.chat("Answer in one go", **GREEDY)


def test_oom_mid_reply_in_the_ui_keeps_the_partial_reply_and_shows_the_error(idle, engine):
    from gradio_client import Client

    app = idle
    ui = Client(app.url + "/", verbose=False)
    settings = (False, "[]", 0, 0.8, 0, 1.1, 24, -1, 6144)  # first-turn flag, examples, greedy sliders
    store = ui.predict(None, api_name="/load")[0]
    store = ui.predict("Tell me about the sea", store, api_name="/submit")[1]
    with oom_on_forward(engine, OOM_CALL) as fired:
        store = ui.predict(store, SYSTEM, *settings, api_name="/respond")[0]
    assert fired == [OOM_CALL]
    msgs = next(c for c in store["conversations"] if c["id"] == store["active"])["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "event"]
    partial = msgs[1]["content"]
    assert partial and engine.chat("Tell me about the sea", **GREEDY).startswith(partial)
    assert msgs[2]["content"].startswith("⚠️ The model ran out of memory") and "max_new_tokens" in msgs[2]["content"]
    # The chat goes on from there: the next reply sees the partial one as history.
    store = ui.predict("Go on", store, api_name="/submit")[1]
    store = ui.predict(store, SYSTEM, *settings, api_name="/respond")[0]
    msgs = next(c for c in store["conversations"] if c["id"] == store["active"])["messages"]
    history = [("Tell me about the sea", partial)]
    assert msgs[-1]["content"] == engine.chat("Go on", history, SYSTEM, **GREEDY)


def test_oom_mid_reply_over_the_gradio_chat_api(idle, engine):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    app = idle
    api = Client(app.url + "/", verbose=False)
    settings = {"temperature": 0, "max_new_tokens": 24}
    with oom_on_forward(engine, OOM_CALL) as fired:
        job = api.submit("Tell me about the sea", [], SYSTEM, settings, api_name="/chat")
        with pytest.raises(AppError, match="ran out of memory"):
            job.result(timeout=120)
    assert fired == [OOM_CALL]
    shown = [o for o in job.outputs() if o]
    want = engine.chat("Tell me about the sea", **GREEDY)
    assert shown and want.startswith(shown[-1].strip())
    assert api.predict("Tell me about the sea", [], SYSTEM, settings, api_name="/chat") == want


# --- clients that disconnect ----------------------------------------------------------------


def _raw_post(app, body: dict) -> socket.socket:
    """Send a /v1 request on a raw socket (the test decides when the client goes away)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read until ``marker`` arrives (the headers and the first event come in separate packets)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _long_body(stream: bool) -> dict:
    return {
        "messages": [{"role": "user", "content": "Go on forever"}],
        "stream": stream,
        "temperature": 0,
        "max_tokens": LONG_TOKENS,
    }


def _assert_freed(app, client, what: str) -> None:
    stats = app.wait_stats(active=0, waiting=0)
    assert (stats["active"], stats["waiting"]) == (0, 0), f"{what}: the slot was not given back ({stats})"
    # With one slot and one queue place, a leaked slot would make this wait or answer 429.
    out = bounded(
        lambda: client.chat.completions.create(
            model=app.model, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=2
        ),
        60,
        "a request after the disconnect",
    )
    assert out.choices[0].message.content is not None


def test_disconnect_mid_stream_frees_the_slot(idle, client):
    app = idle
    sock = _raw_post(app, _long_body(stream=True))
    try:
        assert b"data: " in _read_until(sock, b"data: ")  # streaming has begun
        assert app.stats()["active"] == 1
    finally:
        sock.close()
    _assert_freed(app, client, "streamed request")


def test_disconnect_during_a_non_streamed_reply_frees_the_slot(idle, client):
    app = idle
    sock = _raw_post(app, _long_body(stream=False))
    try:
        assert app.wait_stats(active=1)["active"] == 1  # generating
    finally:
        sock.close()
    _assert_freed(app, client, "non-streamed request")


@pytest.mark.parametrize("stream", [True, False])
def test_client_gone_before_the_reply_starts_frees_the_slot(idle, client, stream):
    """Send and hang up at once, 20 times: the server meets the disconnect before its first byte."""
    app = idle
    for _ in range(20):
        sock = _raw_post(app, _long_body(stream=stream))
        sock.close()
        stats = app.wait_stats(active=0, waiting=0)
        assert (stats["active"], stats["waiting"]) == (0, 0), f"a slot was kept for a client that left: {stats}"
    _assert_freed(app, client, "requests abandoned at once")


def test_disconnect_while_queued_leaves_the_queue(idle, client):
    app = idle
    running = _raw_post(app, _long_body(stream=True))
    try:
        assert b"data: " in _read_until(running, b"data: ")
        queued = _raw_post(app, _long_body(stream=False))
        try:
            assert app.wait_stats(waiting=1)["waiting"] == 1
        finally:
            queued.close()
        stats = app.wait_stats(waiting=0)
        assert stats["waiting"] == 0, f"a client that left is still queued: {stats}"
    finally:
        running.close()
    _assert_freed(app, client, "queued request")


# A gradio_client user in its own process, SIGKILLed mid-reply (a closed browser tab).
_GRADIO_USER = """
import sys
from gradio_client import Client
c = Client(sys.argv[1], verbose=False)
if sys.argv[2] == "/respond":
    store = c.predict(None, api_name="/load")[0]
    store = c.predict("Go on forever", store, api_name="/submit")[1]
    job = c.submit(store, "S", False, "[]", 0, 0.8, 0, 1.1, 4000, -1, 6144, api_name="/respond")
else:
    job = c.submit("Go on forever", [], "S", {"temperature": 0, "max_new_tokens": 4000}, api_name="/chat")
print("submitted", flush=True)
job.result()
"""


@pytest.mark.parametrize("endpoint", ["/respond", "/chat"])
def test_gradio_client_killed_mid_reply_frees_the_slot(idle, client, endpoint):
    app = idle
    proc = subprocess.Popen(
        [sys.executable, "-c", _GRADIO_USER, app.url + "/", endpoint],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stats = app.wait_stats(timeout=60, active=1)
        assert stats["active"] == 1, f"{endpoint} never took the generation slot: {stats}"
    finally:
        proc.kill()
        proc.wait(10)
    _assert_freed(app, client, f"gradio {endpoint}")


# --- killed mid-write -------------------------------------------------------------------------

KILLS = 40  # at least this many kills...
MID_WRITE = 5  # ...and more until this many landed inside a write (how often depends on the disk)
MAX_KILLS = 400
BIG = 6000  # characters per message: stores of ~1 MB, so a kill often lands inside a write


def _persona(version: int) -> Persona:
    filler = f"[{version}]" + "x" * 24_000
    return Persona(id="crash-test", name=f"Crash test {version}", system_prompt=f"v{version}:{filler}:v{version}")


def _user_store(version: int) -> dict:
    conv = {
        "id": f"c{version}",
        "title": f"chat {version}",
        "messages": [{"role": "user", "content": f"{version}:" + "y" * BIG} for _ in range(160)],
    }
    return {"version": 1, "active": conv["id"], "conversations": [conv], "n": version}


def _writer(data: Path, start: int) -> None:
    """Child body: save new versions through the product's stores as fast as possible, forever."""
    personas, users = PersonaStore(data / "builtin", data / "personas"), UserStore(data / "users")
    version = start
    while True:
        version += 1
        personas.save(_persona(version))
        users.save("ann", _user_store(version))


def test_sigkill_mid_write_never_corrupts_the_persona_or_conversation_stores(tmp_path):
    personas, users = PersonaStore(tmp_path / "builtin", tmp_path / "personas"), UserStore(tmp_path / "users")
    personas.save(_persona(0))
    users.save("ann", _user_store(0))
    rng = random.Random(1234)
    last, mid_write, kills = 0, 0, 0
    while kills < KILLS or (mid_write < MID_WRITE and kills < MAX_KILLS):
        kills += 1
        pid = os.fork()
        if pid == 0:  # the child writes until it is killed; it never returns into pytest
            try:
                _writer(tmp_path, last)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = [p for p in tmp_path.rglob(".*.tmp")]
        mid_write += bool(leftovers)
        for p in leftovers:
            p.unlink()
        # After every kill both stores load, whole: the last version written, or the one before.
        found = {p.id: p for p in personas.all()}
        assert personas.errors == [], personas.errors
        prompt = found["crash-test"].system_prompt
        version = int(prompt.split(":", 1)[0][1:])
        assert prompt == _persona(version).system_prompt and version >= last
        saved = users.load("ann")
        assert saved is not None, "the conversation store was unreadable after a kill"
        assert saved == _user_store(saved["n"]) and saved["n"] >= last
        assert not list((tmp_path / "users").glob("*.damaged.json"))
        last = min(version, saved["n"])
    assert mid_write >= MID_WRITE, f"only {mid_write} of {kills} kills landed inside a write: the test proves little"


# --- remote servers that fail ------------------------------------------------------------------


@pytest.fixture
def faulty(request):
    servers: list[FaultyServer] = []

    def make(mode: str) -> FaultyServer:
        server = FaultyServer(mode)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _remote(urls, ckpt_dir, **kw):
    """A remote engine over ``urls`` with short timeouts (``model``: the id the healthy app serves)."""
    kw = {"timeout": 2.0, "connect_timeout": 2.0, "health_timeout": 1.0, "cooldown": 60.0, **kw}
    return bounded(lambda: load_remote_engine(urls, tokenizer_dir=ckpt_dir, **kw), 30, "connecting to the endpoints")


def _reply(remote, query: str = "Hello") -> tuple[str, object]:
    stream = remote.stream_chat(query, system=SYSTEM, **GREEDY)
    text = bounded(stream.text, 60, "a remote reply")
    return text.strip(), stream.result


@pytest.mark.parametrize("mode", ["stall", "stall-after-headers", "ping"])
def test_remote_that_never_sends_a_token_fails_over(idle, faulty, ckpt_dir, engine, mode):
    """Accepts and never answers / answers headers only / pings forever: the next endpoint answers."""
    app, bad = idle, faulty(mode)
    remote = _remote([bad.url, app.url], ckpt_dir, model=app.model)
    try:
        want = engine.chat("Hello", system=SYSTEM, **GREEDY)
        for _ in range(2):  # round-robin: one of the two starts at the faulty server
            text, res = _reply(remote)
            assert (text, res.endpoint, res.finish_reason) == (want, app.url, "length")
        assert bad.streams == 1  # tried once, then left alone while it cools down
        status = {s["url"]: s for s in remote.endpoint_status()}
        assert not status[bad.url]["up"] and "no data for 2 s" in status[bad.url]["last_error"]
    finally:
        remote.unload()


@pytest.mark.parametrize("mode", ["stall", "ping"])
def test_remote_that_never_sends_a_token_alone_reports(faulty, ckpt_dir, mode):
    bad = faulty(mode)
    remote = _remote([bad.url], ckpt_dir)
    try:
        with pytest.raises(EndpointsUnavailable, match=f"{bad.url} \\(no data for 2 s"):
            _reply(remote)
    finally:
        remote.unload()


@pytest.mark.parametrize("mode", ["drop", "ping-after-text"])
def test_remote_that_dies_or_stalls_mid_stream_reports_and_keeps_the_text(idle, faulty, ckpt_dir, engine, mode):
    app, bad = idle, faulty(mode)
    remote = _remote([bad.url, app.url], ckpt_dir, model=app.model)
    try:
        stream = remote.stream_chat("Hello", system=SYSTEM, **GREEDY)
        with pytest.raises(GenerationError, match=f"reply from {bad.url} broke off after 3 tokens.*again"):
            bounded(stream.text, 60, "a reply that breaks off")
        assert stream.result.finish_reason == "error" and stream.result.text == "".join(DROP_PIECES)
        # The broken endpoint is set aside: the next reply comes from the healthy one.
        text, res = _reply(remote)
        assert (text, res.endpoint) == (engine.chat("Hello", system=SYSTEM, **GREEDY), app.url)
    finally:
        remote.unload()


def test_remote_dying_mid_stream_in_the_ui_keeps_the_partial_reply(faulty, ckpt_dir, tmp_path):
    from qwen_core.manager import ModelManager, ModelSpec
    from qwen_core.remote import remote_loader
    from ui import ASSETS
    from ui.personas import PersonaStore
    from ui.service import ChatService, empty_store

    bad = faulty("drop")
    loader = remote_loader([bad.url], tokenizer_dir=str(ckpt_dir), timeout=2.0, health_timeout=1.0)
    manager = ModelManager(loader, [])
    bounded(lambda: manager.start(ModelSpec("", label="remote")), 30, "connecting")
    try:
        service = ChatService(manager, PersonaStore(ASSETS / "personas", tmp_path / "personas"))
        store = service.add_user_message(empty_store(), "Hello there")
        with pytest.raises(GenerationError, match="broke off"):
            bounded(lambda: list(service.stream_reply(store, SYSTEM, GREEDY, "s1")), 60, "the UI reply")
        msgs = service.active(store)["messages"]
        # every message carries an id (ui/merge.py); replies carry their stats (ui/versions.py)
        last = {k: v for k, v in msgs[-1].items() if k not in ("id", "info")}
        assert last == {"role": "assistant", "content": "".join(DROP_PIECES).strip()}
        assert msgs[-1]["info"]["finish"] == "error"  # the partial reply says it broke off
        assert not service.is_busy("s1") and service.scheduler.stats()["active"] == 0
    finally:
        manager.engine.unload()


def test_remote_blackhole_and_refusing_servers(idle, faulty, ckpt_dir, engine):
    """A server that accepts but never answers (not even its health check) and one that is gone."""
    app, hole, gone = idle, faulty("blackhole"), faulty("drop")
    gone.close()  # its port now refuses connections
    remote = _remote([hole.url, gone.url, app.url], ckpt_dir, model=app.model)
    try:
        status = {s["url"]: s for s in remote.endpoint_status()}
        assert "timed out" in status[hole.url]["last_error"] or "timeout" in status[hole.url]["last_error"]
        assert status[gone.url]["last_error"] == "connection refused"
        want = engine.chat("Hello", system=SYSTEM, **GREEDY)
        for _ in range(3):
            assert _reply(remote)[0] == want
    finally:
        remote.unload()
    with pytest.raises(EndpointsUnavailable, match="connection refused"):
        _remote([hole.url, gone.url], ckpt_dir)
