"""Attacks at the HTTP edge, sent as an attacker would (raw HTTP with httpx, gradio_client) to a real
``python app.py``: server files named through event inputs, cross-origin reads, the Gradio API
without credentials, a flood of wrong passwords, huge streamed bodies, what ``/readyz`` shows.

docs/SECURITY.md lists which promise each test guards.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from server_process import AppProcess

KEY, KEY2 = "sk-team-key-1", "sk-team-key-2"
USER, PASSWORD = "ann", "ann-pw-1"
GOOD_ORIGIN, EVIL_ORIGIN = "https://good.example", "https://evil.example"
MARKER = "TOPSECRET-" + uuid.uuid4().hex


def _start(ckpt_dir, tmp_path_factory, *args: str) -> AppProcess:
    data = tmp_path_factory.mktemp("sec-data")
    cache = tmp_path_factory.mktemp("sec-gradio-cache")
    proc = AppProcess(
        ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(data), *args],
        env={"OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(cache)},
    )
    proc.data_dir, proc.cache_dir = data, cache
    return proc


@pytest.fixture(scope="module")
def open_app(ckpt_dir, tmp_path_factory):
    """No --auth, no --api-key, no --cors-origins: the app as a team puts it behind a proxy."""
    proc = _start(ckpt_dir, tmp_path_factory)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def key_app(ckpt_dir, tmp_path_factory):
    """--api-key alone (two keys), one trusted origin."""
    proc = _start(ckpt_dir, tmp_path_factory, "--api-key", f"{KEY},{KEY2}", "--cors-origins", GOOD_ORIGIN)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def auth_app(ckpt_dir, tmp_path_factory):
    """--auth with a short failure window, so a throttled caller can be seen to get back in."""
    proc = _start(
        ckpt_dir, tmp_path_factory, "--auth", f"{USER}:{PASSWORD}", "--login-attempts", "5", "--login-window", "4"
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def secrets_on_server(open_app, tmp_path_factory) -> list[tuple[str, str]]:
    """(path, text that must never come back): a file outside Gradio's cache, and the app's own key."""
    outside = tmp_path_factory.mktemp("outside") / "secret.json"
    # A valid persona and chat, so that an import handler reading it would succeed.
    outside.write_text(json.dumps({"name": MARKER, "system_prompt": MARKER, "messages": []}))
    key_file = Path(open_app.data_dir) / ".browser-state-secret"
    assert key_file.is_file()
    key_text = key_file.read_bytes().decode("latin-1").strip()
    assert len(key_text) >= 16
    return [(str(outside), MARKER), (str(key_file), key_text)]


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.json"}


def queue_event(client: httpx.Client, fn_index: int, data: list, timeout: float = 60) -> tuple[str, dict | None]:
    """queue/join + the SSE stream, as the browser sends an event; (everything received, the final message)."""
    session = uuid.uuid4().hex[:12]
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    joined = client.post("/gradio_api/queue/join", json=body)
    seen = [joined.text]
    if joined.status_code != 200:
        return "".join(seen), None
    deadline = time.time() + timeout
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as r:
        for line in r.iter_lines():
            seen.append(line)
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return "\n".join(seen), msg
            if time.time() > deadline:
                break
    return "\n".join(seen), None


# --- 1. server files through event inputs ---------------------------------------------------------


def test_no_event_input_can_name_a_server_file(open_app, secrets_on_server):
    """Every event of the app, with a FileData naming a server file in every input, through the queue
    and through /run: the file is never copied into Gradio's cache, never sent back, and the event
    answers with a clear error."""
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        config = c.get("/config").json()
        events = [d for d in config["dependencies"] if d.get("backend_fn") and d["inputs"]]
        assert len(events) > 40  # the walk sees the whole app
        replies, completed = [], []
        for path, _ in secrets_on_server:
            for dep in events:
                data = [file_data(path) for _ in dep["inputs"]]
                text, final = queue_event(c, dep["id"], data)
                replies.append(text)
                completed.append((dep.get("api_name"), final))
                r = c.post("/gradio_api/run/predict", json={"data": data, "fn_index": dep["id"]})
                replies.append(r.text)
            # The named endpoint's own route (gradio_client's), too.
            r = c.post("/gradio_api/call/chat", json={"data": [file_data(path)] * 4})
            replies.append(r.text)
            event_id = r.json()["event_id"]
            with c.stream("GET", f"/gradio_api/call/chat/{event_id}") as answer:
                called = "\n".join(answer.iter_lines())
            replies.append(called)
            assert "event: error" in called and "upload" in called, called
        everything = "\n".join(replies)
        urls = set(re.findall(r"/gradio_api/file=[^\"'\s\\]+", everything))
        served = [c.get(u).text for u in urls]
    for _, secret in secrets_on_server:
        assert secret not in everything
        assert not any(secret in body for body in served)
        copies = [p for p in Path(open_app.cache_dir).rglob("*") if p.is_file() and secret in p.read_text("latin-1")]
        assert copies == [], f"server file copied into Gradio's cache: {copies}"
    assert not [p for p in Path(open_app.data_dir).rglob("*.json") if MARKER in p.read_text()]  # nothing imported
    refused = [(name, final) for name, final in completed if final is not None and not final.get("success")]
    wrong = [(name, final) for name, final in completed if final is None or final.get("success")]
    assert wrong == [], f"events that took a server file: {wrong[:3]}"
    for _, final in refused:
        assert "upload" in final["output"]["error"], final
        assert not any(p in final["output"]["error"] for p, _ in secrets_on_server)  # no path echoed


def test_an_uploaded_file_is_still_accepted(open_app):
    """The confinement lets this caller's own uploads through: a persona imported from an upload."""
    persona = json.dumps({"name": "Uploaded persona", "system_prompt": "hi"}).encode()
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        r = c.post("/gradio_api/upload", files=[("files", ("p.json", persona, "application/json"))])
        assert r.status_code == 200, r.text
        (stored,) = r.json()
        config = c.get("/config").json()
        dep = next(d for d in config["dependencies"] if d.get("api_name") == "import_personas")
        load = next(d for d in config["dependencies"] if d.get("api_name") == "load")
        _, loaded = queue_event(c, load["id"], [None for _ in load["inputs"]])  # a fresh page's store
        store = loaded["output"]["data"][0]
        kinds = {comp["id"]: comp["type"] for comp in config["components"]}
        data = [file_data(stored) if kinds[i] == "uploadbutton" else store for i in dep["inputs"]]
        text, final = queue_event(c, dep["id"], data)
    assert final is not None and final["success"], text[-500:]
    assert "Uploaded persona" in text


@pytest.mark.parametrize("event", ["import_personas", "import_chat"])
def test_import_errors_name_no_server_path(open_app, event):
    """A broken upload is refused by name (what the user called it), not by its path on the server."""
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        r = c.post("/gradio_api/upload", files=[("files", ("broken.json", b"{not json", "application/json"))])
        (stored,) = r.json()
        config = c.get("/config").json()
        load = next(d for d in config["dependencies"] if d.get("api_name") == "load")
        _, loaded = queue_event(c, load["id"], [None for _ in load["inputs"]])
        store = loaded["output"]["data"][0]
        dep = next(d for d in config["dependencies"] if d.get("api_name") == event)
        kinds = {comp["id"]: comp["type"] for comp in config["components"]}
        data = [file_data(stored) if kinds[i] == "uploadbutton" else store for i in dep["inputs"]]
        text, final = queue_event(c, dep["id"], data)
    assert final is not None and not final["success"], text[-300:]
    error = final["output"]["error"]
    assert "JSON" in error and str(open_app.cache_dir) not in error and "/tmp" not in error, error


@pytest.mark.parametrize("target", ["SECRET", "KEYFILE", "/etc/passwd", "DATA/personas"])
def test_the_file_route_refuses_server_files(open_app, secrets_on_server, target):
    path = {"SECRET": secrets_on_server[0][0], "KEYFILE": secrets_on_server[1][0]}.get(target, target)
    path = path.replace("DATA", str(open_app.data_dir))
    with httpx.Client(base_url=open_app.url, timeout=30) as c:
        r = c.get(f"/gradio_api/file={path}")
    assert r.status_code in (403, 404), (r.status_code, r.text[:200])
    assert MARKER not in r.text


# --- 2. CORS ---------------------------------------------------------------------------------------

CROSS_SITE = {"Host": "example.com", "Origin": EVIL_ORIGIN}


def _no_cors(r: httpx.Response) -> list[str]:
    return [k for k in r.headers if k.lower().startswith("access-control-")]


def test_cors_is_closed_for_an_unlisted_origin_whatever_the_host(open_app):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        requests = [
            c.get("/", headers=CROSS_SITE),
            c.get("/config", headers=CROSS_SITE),
            c.get("/healthz", headers=CROSS_SITE),
            c.get("/openapi.json", headers=CROSS_SITE),
            c.post("/gradio_api/queue/join", headers=CROSS_SITE, json={"data": [], "fn_index": 0, "session_hash": "x"}),
            c.post("/v1/chat/completions", headers=CROSS_SITE, json=chat),
        ]
        for r in requests:
            assert _no_cors(r) == [], (r.request.url, dict(r.headers))
        for path in ("/", "/gradio_api/queue/join", "/v1/chat/completions", "/gradio_api/upload"):
            pre = c.options(
                path,
                headers={**CROSS_SITE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x"},
            )
            assert _no_cors(pre) == [] and pre.status_code >= 400, (path, pre.status_code, dict(pre.headers))


def test_cors_opens_for_a_listed_origin_only(key_app):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=key_app.url, timeout=60) as c:
        r = c.get("/v1/models", headers={"Host": "example.com", "Origin": GOOD_ORIGIN, **auth})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == GOOD_ORIGIN
        pre = c.options(
            "/v1/chat/completions",
            headers={"Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )  # fmt: skip
        assert pre.status_code in (200, 204) and pre.headers["access-control-allow-origin"] == GOOD_ORIGIN
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        # CORS sits in front of auth: a refused caller from the listed origin can read why.
        r = c.get("/config", headers={"Origin": GOOD_ORIGIN})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == GOOD_ORIGIN
        r = c.get("/v1/models", headers={"Host": "example.com", "Origin": EVIL_ORIGIN, **auth})
        assert r.status_code == 200 and _no_cors(r) == []


# --- 3. with --api-key, the Gradio API needs credentials too ------------------------------------


def key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def test_the_gradio_api_needs_the_key(key_app):
    from gradio_client import Client

    with httpx.Client(base_url=key_app.url, timeout=60) as c:
        for path in ("/config", "/gradio_api/info", "/gradio_api/upload", "/gradio_api/queue/join", "/metrics"):
            r = c.request("GET" if path in ("/config", "/gradio_api/info", "/metrics") else "POST", path, json={})
            assert r.status_code == 401, (path, r.status_code, r.text[:200])
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        # Gradio sees the caller as the key's stable id (what request.username holds in handlers).
        r = c.get("/config", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["username"] == key_id(KEY)
        wrong = c.get("/config", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - refused at connection: the client can't even read the API
        Client(key_app.url + "/", verbose=False)
    client = Client(key_app.url + "/", headers={"Authorization": f"Bearer {KEY}"}, verbose=False)
    reply = client.predict("hi", [], None, {"temperature": 0, "max_new_tokens": 3}, api_name="/chat")
    assert isinstance(reply, str) and reply


def test_with_a_key_alone_the_login_form_takes_the_key(key_app):
    """Any user name, the key as password; the page then works on the login cookie, and the
    identity is the key's, never the typed name."""
    with httpx.Client(base_url=key_app.url, timeout=60) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and "auth_required" in page.text
        assert anonymous.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
    ids = {}
    for name, key in (("ann", KEY), ("ann", KEY2), ("bob", KEY)):
        with httpx.Client(base_url=key_app.url, timeout=60) as c:
            assert c.post("/login", data={"username": name, "password": key}).status_code == 200
            assert c.get("/config").status_code == 200
            assert "auth_required" not in c.get("/").text
            ids[(name, key)] = c.get("/config").json()["username"]
    assert ids[("ann", KEY)] == ids[("bob", KEY)] == key_id(KEY)  # one key, one owner
    assert ids[("ann", KEY2)] == key_id(KEY2) != ids[("ann", KEY)]  # one name, two keys: two owners


# --- 4. password checks off the event loop, throttled ---------------------------------------------


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _flood_and_probe(url: str, n: int = 48) -> tuple[list[int], list[tuple[int, float]]]:
    probes: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as flood, httpx.AsyncClient(base_url=url, timeout=60) as p:
        done = asyncio.Event()

        async def probe():
            while not done.is_set():
                started = time.perf_counter()
                r = await p.get("/healthz")
                probes.append((r.status_code, time.perf_counter() - started))
                await asyncio.sleep(0.05)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.2)
        wrong = [flood.get("/v1/models", headers=_basic(USER, f"wrong-{i}")) for i in range(n)]
        statuses = [r.status_code for r in await asyncio.gather(*wrong)]
        await asyncio.sleep(0.3)
        done.set()
        await prober
    return statuses, probes


def test_a_flood_of_wrong_passwords_leaves_the_server_answering(auth_app):
    statuses, probes = _run_async(_flood_and_probe(auth_app.url))
    assert set(statuses) <= {401, 429} and statuses.count(401) <= 5 and 429 in statuses
    assert len(probes) >= 3 and all(s == 200 for s, _ in probes)
    assert max(t for _, t in probes) < 2.0, probes  # correctness bound; figures: bench/auth_flood.py
    with httpx.Client(base_url=auth_app.url, timeout=60) as c:
        throttled = c.get("/v1/models", headers=_basic(USER, PASSWORD))
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        form = c.post("/login", data={"username": USER, "password": PASSWORD})
        assert form.status_code == 429
        time.sleep(4.5)  # the --login-window
        assert c.get("/v1/models", headers=_basic(USER, PASSWORD)).status_code == 200
        assert c.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
    # Many right logins at once (a team arriving, from one proxy address) queue for the hash; none is throttled.
    assert _run_async(_logins_at_once(auth_app.url, 12)) == [200] * 12


async def _logins_at_once(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        replies = await asyncio.gather(
            *(c.post("/login", data={"username": USER, "password": PASSWORD}) for _ in range(n))
        )
    return [r.status_code for r in replies]


# --- 5. request size limits on streamed bodies ---------------------------------------------------


def _chunks(total: int, sent: list[int], chunk: int = 1 << 20, head: bytes = b""):
    yield head
    while sent[0] < total:
        sent[0] += chunk
        yield b" " * chunk


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/gradio_api/queue/join", "/gradio_api/upload"])
def test_a_chunked_huge_body_is_cut_off_at_the_limit(open_app, path):
    total = 300 * 2**20
    proc = psutil.Process(open_app.proc.pid)
    before = proc.memory_info().rss
    sent = [0]
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        try:
            kind, head = "application/json", b""
            if path.endswith("upload"):  # a well-formed start of a file upload, then 300 MB of it
                kind = "multipart/form-data; boundary=xyz"
                head = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.json"\r\n\r\n'
            r = c.post(path, content=_chunks(total, sent, head=head), headers={"content-type": kind})
            status, text = r.status_code, r.text
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            status, text = None, ""  # the server stopped reading and closed: cut off, as wanted
        assert status in (413, None), (status, text[:300])
        if status == 413 and path.startswith("/v1"):
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert sent[0] < total, "the whole body was read"
        grown = proc.memory_info().rss - before
        assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"
        assert c.get("/healthz").status_code == 200


def test_validation_errors_do_not_echo_the_body(open_app):
    with httpx.Client(base_url=open_app.url, timeout=30) as c:
        r = c.post("/gradio_api/queue/join", json=[MARKER, {"fn_index": MARKER}])
        assert r.status_code == 422 and MARKER not in r.text, r.text[:300]
        r = c.post("/gradio_api/queue/join", json={"data": [], "fn_index": MARKER, "session_hash": MARKER})
        assert r.status_code == 422 and MARKER not in r.text and "fn_index" in r.text, r.text[:300]


def test_an_unknown_event_is_a_clear_404_not_a_500(open_app):
    """Gradio looks the event up with ``fns[fn_index]``: an unknown one was a KeyError, a 500 and
    a traceback in the log per request."""
    before = open_app.output().count("Traceback")
    with httpx.Client(base_url=open_app.url, timeout=30) as c:
        for index in (9999, -1):
            body = {"data": [], "fn_index": index, "session_hash": "s" + uuid.uuid4().hex[:10]}
            for path in ("/gradio_api/queue/join", "/gradio_api/run/predict"):
                r = c.post(path, json=body)
                assert r.status_code == 404 and "Traceback" not in r.text, (path, r.status_code, r.text[:300])
                assert "event" in r.json()["detail"].lower()
        r = c.post("/gradio_api/api/no_such_endpoint", json={"data": []})
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        assert c.get("/healthz").status_code == 200
    time.sleep(0.5)  # (the log is written by the server process)
    assert open_app.output().count("Traceback") == before


def test_deeply_nested_json_is_a_clear_400(open_app):
    deep = b"[" * 100_000 + b"]" * 100_000
    with httpx.Client(base_url=open_app.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text[:300]
        assert "Traceback" not in r.text
        r = c.post("/gradio_api/queue/join", content=deep, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text
        assert c.get("/healthz").status_code == 200


# --- 6. /readyz shows the model id, no paths ---------------------------------------------------------


def test_readyz_shows_no_server_paths(open_app, ckpt_dir):
    with httpx.Client(base_url=open_app.url, timeout=30) as c:
        status = c.get("/readyz").json()
    text = json.dumps(status)
    assert status["loaded"] and status["model"] == Path(ckpt_dir).name
    for secret in (str(ckpt_dir), str(open_app.data_dir), str(Path(ckpt_dir).parent)):
        assert secret not in text


def _run_async(coro):
    """asyncio.run in a thread of its own: the browser tests' Playwright may leave a loop running in this one."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
