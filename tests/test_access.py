"""Access: with logins on, every route of the running app refuses a caller without credentials.

The routes are not listed by hand: they are read from the route table of the very app
being served (``app.build`` served by uvicorn in this process), the Gradio app mounted in
it included, so a route Gradio adds in a later release is checked too. Only health and
what the login page itself needs stay open. Also here: uploads cannot escape their
folder, and no code shipped in a checkpoint folder is ever run.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from server_process import ROOT, InProcessApp

from server.http import LOGIN_PAGE_PATHS, LOGIN_PAGE_PREFIXES, OPEN_PATHS

USER, PASSWORD, KEY = "ann", "s3cret-pw", "key-123"


@pytest.fixture(scope="module")
def served(ckpt_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("access-data")
    app = InProcessApp(
        ["--model", str(ckpt_dir), "--device", "cpu", "--data-dir", str(data),
         "--auth", f"{USER}:{PASSWORD}", "--api-key", KEY]
    )  # fmt: skip
    yield app
    app.stop()


@pytest.fixture(scope="module")
def logged_in(served):
    """A client holding the login cookie the login form hands out."""
    with httpx.Client(base_url=served.url, timeout=60) as client:
        r = client.post("/login", data={"username": USER, "password": PASSWORD})
        assert r.status_code == 200, r.text
        yield client


def iter_routes(routes, prefix=""):
    """(kind, path, methods) of every route, mounted apps and included routers flattened."""
    from starlette.routing import Mount, WebSocketRoute

    for route in routes:
        if isinstance(route, Mount):
            sub = getattr(route.app, "routes", None) or getattr(getattr(route.app, "router", None), "routes", [])
            yield from iter_routes(sub, prefix + route.path)
        elif hasattr(route, "effective_candidates"):  # FastAPI's included routers
            yield from iter_routes(route.effective_candidates(), prefix)
        elif hasattr(route, "original_route"):
            original = route.original_route
            path = route.path or getattr(route.starlette_route, "path", None) or original.path
            kind = (
                "websocket"
                if isinstance(original, WebSocketRoute) or "WebSocket" in type(original).__name__
                else "http"
            )
            yield kind, prefix + path, frozenset(getattr(original, "methods", None) or ())
        else:
            kind = "websocket" if isinstance(route, WebSocketRoute) else "http"
            yield kind, prefix + route.path, frozenset(getattr(route, "methods", None) or ())


def concrete(path: str) -> str:
    """A request path for a route template: every parameter becomes "1" (valid for int and str ones)."""
    return re.sub(r"\{[^}]+\}", "1", path)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path in LOGIN_PAGE_PATHS or path.startswith(LOGIN_PAGE_PREFIXES)


def status_of(client: httpx.Client, method: str, path: str, **kw) -> int:
    """The status line only (some routes stream forever, e.g. Gradio's heartbeat)."""
    with client.stream(method, path, **kw) as r:
        return r.status_code


def test_every_route_refuses_a_caller_without_credentials(served):
    routes = sorted(set(iter_routes(served.asgi.routes)))
    paths = {p for _, p, _ in routes}
    # The walk must see the whole app; if a framework upgrade hid routes from it, fail loudly.
    for needed in ("/v1/chat/completions", "/v1/models", "/openapi.json", "/config", "/gradio_api/upload",
                   "/gradio_api/queue/join", "/gradio_api/call/{api_name}", "/gradio_api/cancel",
                   "/gradio_api/heartbeat/{session_hash}", "/gradio_api/file={path_or_url:path}"):  # fmt: skip
        assert needed in paths, f"{needed} missing from the route walk: {sorted(paths)}"
    assert len(routes) > 60
    # The HTTP guard sees only HTTP requests: a WebSocket route would need a guard of its own.
    assert [p for kind, p, _ in routes if kind == "websocket"] == []

    refused, opened = [], []
    with httpx.Client(base_url=served.url, timeout=30, follow_redirects=False) as anonymous:
        for _, path, methods in routes:
            for method in sorted(methods - {"HEAD"} or {"GET"}):
                body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                status = status_of(anonymous, method, concrete(path), **body)
                (opened if is_open(concrete(path)) else refused).append((method, path, status))
    let_in = [(m, p, s) for m, p, s in refused if s not in (401, 403)]
    assert let_in == [], f"routes that answered a caller without credentials: {let_in}"
    # What stays open is only health and the login page (its shell, assets and form targets).
    assert {p for _, p, _ in opened} <= {
        "/healthz", "/readyz", "/health", "/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css",
        "/gradio_api/theme.css", "/manifest.json", "/robots.txt", "/assets/{path:path}",
        "/static/{path:path}", "/svelte/{path:path}",
    }  # fmt: skip
    assert len(refused) > 50


def test_the_login_page_shows_no_app_and_a_login_opens_it(served, logged_in):
    with httpx.Client(base_url=served.url, timeout=30) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200
        assert "Persona library" not in page.text and "auth_required" in page.text
        assert anonymous.post("/login", data={"username": USER, "password": "wrong"}).status_code == 400
        assert anonymous.get("/config").status_code == 401
    assert logged_in.get("/config").status_code == 200
    assert "Persona library" in logged_in.get("/").text
    assert logged_in.get("/gradio_api/info").status_code == 200


def test_api_and_its_schema_need_credentials(served):
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with httpx.Client(base_url=served.url, timeout=60) as c:
        for path in ("/v1/models", "/openapi.json"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"authorization": "Bearer nope"}).status_code == 401
            assert c.get(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
            assert c.get(path, headers={"authorization": f"Basic {basic}"}).status_code == 200
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = c.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def _basic(user: str, password: str) -> dict:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_unknown_and_known_users_cost_one_password_hash_each(served):
    """No user-name enumeration by timing: a wrong password for an unknown user is checked
    against a dummy hash, the same work as for a real user (login form and Basic auth alike);
    a correct password is then remembered briefly and not hashed again."""
    verifier = served.asgi.state.auth.verifier
    with httpx.Client(base_url=served.url, timeout=60) as c:
        for user in (USER, "nobody-by-this-name"):
            before = verifier.hashes
            assert c.post("/login", data={"username": user, "password": "wrong-1"}).status_code == 400
            assert verifier.hashes == before + 1
            before = verifier.hashes
            assert c.get("/v1/models", headers=_basic(user, "wrong-2")).status_code == 401
            assert verifier.hashes == before + 1
        assert c.get("/v1/models", headers=_basic(USER, PASSWORD)).status_code == 200
        before = verifier.hashes
        assert c.get("/v1/models", headers=_basic(USER, PASSWORD)).status_code == 200
        assert verifier.hashes == before  # cached: no second scrypt


def test_who_gradio_sees_as_the_caller(served, logged_in):
    """``request.username`` in Gradio handlers (the page config's ``username``, from the same
    dependency): the login, or the key's id for a Bearer caller, or the Basic user."""
    key_id = "key:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert logged_in.get("/config").json()["username"] == USER
    with httpx.Client(base_url=served.url, timeout=60) as c:
        assert c.get("/config", headers={"authorization": f"Bearer {KEY}"}).json()["username"] == key_id
        assert c.get("/config", headers=_basic(USER, PASSWORD)).json()["username"] == USER


def test_gradio_client_needs_the_login(served):
    from gradio_client import Client

    with pytest.raises(Exception):  # noqa: B017 - refused at connection: the client can't even read the API
        Client(served.url + "/", verbose=False)
    client = Client(served.url + "/", auth=(USER, PASSWORD), verbose=False)
    reply = client.predict("hi", [], None, {"temperature": 0, "max_new_tokens": 3}, api_name="/chat")
    assert isinstance(reply, str) and reply


def test_the_gradio_upload_refuses_without_login(served):
    files = [("files", ("chat.json", b"[]", "application/json"))]
    with httpx.Client(base_url=served.url, timeout=30) as anonymous:
        assert anonymous.post("/gradio_api/upload", files=files).status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "../../../escaped.json",
        "..\\..\\escaped.json",
        "/tmp/escaped.json",
        "a/../../../escaped.json",
        "....//escaped.json",
    ],
)
def test_uploaded_files_stay_in_the_upload_folder(served, logged_in, name):
    gradio_app = served.asgi.state.gradio_app
    upload_dir = Path(gradio_app.uploaded_file_dir).resolve()
    persona = json.dumps({"name": "../../../../tmp/escaped", "id": "../../escaped", "system_prompt": "x"})
    r = logged_in.post("/gradio_api/upload", files=[("files", (name, persona.encode(), "application/json"))])
    assert r.status_code == 200, r.text
    (stored,) = r.json()
    stored = Path(stored).resolve()
    assert upload_dir in stored.parents and stored.read_text() == persona
    for outside in (
        upload_dir.parent / "escaped.json",
        upload_dir.parent.parent / "escaped.json",
        Path("/tmp/escaped.json"),
    ):
        assert not outside.exists()

    # The persona import reads that upload (through the page's own event); what it writes stays
    # in DATA/personas.
    data_dir = Path(served.config.data_dir).resolve()
    before = set(data_dir.rglob("*"))
    text, final = run_event(
        logged_in, "import_personas", lambda kind: stored_file(str(stored)) if kind == "uploadbutton" else None
    )
    assert final is not None and final["success"], text[-500:]
    written = [p.resolve() for p in set(data_dir.rglob("*")) - before if p.is_file()]
    assert len(written) >= 1 and all(data_dir / "personas" in p.parents for p in written), written
    assert not (data_dir.parent / "escaped.json").exists()


def stored_file(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


def run_event(client: httpx.Client, api_name: str, value_for, timeout: float = 60):
    """One event of the page, as the browser sends it (queue/join + the SSE stream), after the
    page's ``load`` (whose store the other inputs of kind browserstate get)."""
    import uuid

    config = client.get("/config").json()
    kinds = {c["id"]: c["type"] for c in config["components"]}

    def send(name, make):
        dep = next(d for d in config["dependencies"] if d.get("api_name") == name)
        session = uuid.uuid4().hex[:12]
        body = {"data": [make(kinds[i]) for i in dep["inputs"]], "fn_index": dep["id"], "session_hash": session}
        assert client.post("/gradio_api/queue/join", json=body).status_code == 200
        lines = []
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as r:
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                    return "\n".join(lines), json.loads(line[5:])
        return "\n".join(lines), None

    _, loaded = send("load", lambda kind: None)
    store = loaded["output"]["data"][0]
    return send(api_name, lambda kind: store if kind == "browserstate" else value_for(kind))


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "app.py", "README.md", "DATA/.browser-state-secret", "DATA/personas", "UPLOADS/../../etc/passwd",
     "MODEL/config.json", "../../../../etc/passwd"],
)  # fmt: skip
def test_logged_in_users_cannot_read_files_outside_what_the_app_serves(served, logged_in, ckpt_dir, target):
    """Gradio's file route serves uploads and outputs only: not the data folder (the browser-state key,
    others' saved chats), the model, the code, or the system."""
    uploads = served.asgi.state.gradio_app.uploaded_file_dir
    path = target.replace("DATA", str(served.config.data_dir)).replace("UPLOADS", str(uploads))
    path = path.replace("MODEL", str(ckpt_dir))
    r = logged_in.get(f"/gradio_api/file={path}")
    assert r.status_code in (403, 404), (r.status_code, r.text[:200])


# --- no checkpoint code is ever run -------------------------------------------------------------

SOURCES = [p for d in ("qwen_core", "ui", "server", "bench", "scripts") for p in (ROOT / d).rglob("*.py")] + [
    ROOT / "app.py"
]


def test_trust_remote_code_is_never_set():
    """No call passes trust_remote_code other than False, and no dict or string carries it."""
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    offenders.append(f"{path}:{node.value.lineno}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "trust_remote_code" in node.value:
                offenders.append(f"{path}:{node.lineno}")
    assert len(SOURCES) > 20 and offenders == []


MALICIOUS = """
from pathlib import Path
Path({marker!r}).write_text("checkpoint code ran: " + __name__)
"""


def test_a_checkpoint_with_remote_code_loads_without_running_it(ckpt_dir, tmp_path):
    """A folder whose config points the Auto classes at its own .py files (as the published repos do),
    each of which would leave a marker file if imported: it loads and chats, and no marker appears."""
    from qwen_core import load_engine

    folder = shutil.copytree(ckpt_dir, tmp_path / "Qwen-evil-Chat")
    marker = tmp_path / "MARKER"
    modules = ("modeling_qwen", "configuration_qwen", "tokenization_qwen", "qwen_generation_utils", "cpp_kernels")
    for name in modules:
        (folder / f"{name}.py").write_text(MALICIOUS.format(marker=str(marker)))
    auto_map = {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        "AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None],
    }
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": auto_map["AutoTokenizer"]}})
    )

    engine = load_engine(str(folder), device="cpu")
    assert engine.chat("hi", do_sample=False, max_new_tokens=3) is not None
    assert not marker.exists(), marker.read_text()
    assert not [m for m in sys.modules if m.startswith("transformers_modules") or m.split(".")[-1] in modules]


def test_two_sessions_exporting_chats_of_the_same_title_never_share_a_file(served):
    """The download buttons' files: one session's export must never be handed to another."""
    import gradio as gr

    from ui.handlers import Handlers
    from ui.service import empty_store

    service = served.asgi.state.gradio_app.get_blocks().service
    handlers = Handlers(service)
    alice = service.add_user_message(empty_store(), "Hello")
    service.add_user_message(alice, "alice's secret plan")
    bob = service.add_user_message(empty_store(), "Hello")  # the same title, "Hello"
    alice_json, alice_md = handlers.exports(alice, gr.Request(session_hash="alice-session"))
    bob_json, bob_md = handlers.exports(bob, gr.Request(session_hash="bob-session"))
    assert {alice_json, alice_md}.isdisjoint({bob_json, bob_md})
    assert "alice's secret plan" in Path(alice_json).read_text() and "alice's secret plan" in Path(alice_md).read_text()
    assert "alice's secret plan" not in Path(bob_json).read_text() + Path(bob_md).read_text()
    assert Path(alice_json).name == Path(bob_json).name == "Hello.json"  # the file name users see is kept


def test_a_huge_upload_is_refused_before_it_is_stored(served, logged_in):
    gradio_app = served.asgi.state.gradio_app
    before = {p for p in Path(gradio_app.uploaded_file_dir).rglob("*") if p.is_file()}
    huge = b"[" + b" " * (25 * 2**20) + b"]"  # larger than any import may be
    r = logged_in.post("/gradio_api/upload", files=[("files", ("huge.json", huge, "application/json"))])
    assert r.status_code == 413 and "larger than" in r.text
    assert {p for p in Path(gradio_app.uploaded_file_dir).rglob("*") if p.is_file()} == before
    assert logged_in.get("/config").status_code == 200  # and it keeps serving
