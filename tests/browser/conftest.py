"""Real-browser fixtures: one app server (tiny random checkpoint) per session, a fresh browser context per test.

The server is ``python app.py`` started as a subprocess on a free loopback port with its
own ``--data-dir``; Chromium is the system one (``/usr/bin/chromium``, never a downloaded
build). Every directory item is skipped when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 950}
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DOCS = ROOT / "docs"
START_TIMEOUT_S = 180

try:
    import playwright.sync_api  # noqa: F401

    _PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the environment
    _PLAYWRIGHT = False


def _why_skip() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: the browser tests need Debian's Chromium"
    if not _PLAYWRIGHT:
        return "the playwright package is not installed"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser test (Chromium + app.py subprocess)")


def pytest_collection_modifyitems(config, items):
    """Skip everything in this folder when there is no browser to drive."""
    why = _why_skip()
    if not why:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell a failed test at teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# --- the app server ---------------------------------------------------------------------


class AppServer:
    """``app.py`` as a subprocess; :meth:`restart` keeps the port and the data dir (same browser origin)."""

    def __init__(self, model: Path, data_dir: Path, log_dir: Path, extra_args: tuple[str, ...] = ()):
        self.extra_args = list(extra_args)
        self.model = model
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"app-{self.starts}.log"
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            # Two cores are shared with Chromium: one torch thread generates faster than two fighting.
            OMP_NUM_THREADS=os.environ.get("QWEN_TEST_THREADS", "1"),
        )
        cmd = [
            sys.executable,
            str(ROOT / "app.py"),
            "--model",
            str(self.model),
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _log_tail(self, n: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:  # serving the page is the only sign relied on (log lines change)
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"app.py did not serve {self.url} within {START_TIMEOUT_S} s:\n{self._log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data dir."""
        self.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port must be free again before app.py binds it
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    time.sleep(0.2)
        self.start()

    def errors_in_log(self) -> list[str]:
        """Tracebacks the server printed (every test checks there are none)."""
        text = self.log_path.read_text(errors="replace") if self.log_path else ""
        return re.findall(r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)", text, flags=re.S)


def started_server(tmp_path_factory, name: str, *extra_args: str) -> AppServer:
    """A started ``app.py`` of its own: a fresh tiny checkpoint and data dir under a temporary
    folder called ``name``, and ``extra_args``; the caller stops it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from qwen1_checkpoint import Shape, write_checkpoint

    base = tmp_path_factory.mktemp(name)
    model = write_checkpoint(base / "tiny-qwen", Shape(), "float32")
    server = AppServer(model, base / "data", base, extra_args=extra_args)
    server.start()
    return server


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The one app server all browser tests share (each test uses its own browser context)."""
    server = started_server(tmp_path_factory, "browser-app")
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for log in server.log_dir.glob("app-*.log"):  # keep the server logs next to the screenshots
        shutil.copy(log, ARTIFACTS / log.name)


@pytest.fixture(scope="session")
def base_url(app_server) -> str:
    return app_server.url


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _test_name(node) -> str:
    return re.sub(r"[^\w.-]+", "_", node.name)


@pytest.fixture
def new_context(browser, request):
    """Factory for fresh, isolated browser contexts (closed after the test)."""
    contexts = []

    def make(**kwargs):
        options = {"viewport": VIEWPORT, "locale": "en-US", **kwargs}
        ctx = browser.new_context(**options)
        ctx.set_default_timeout(20_000)
        contexts.append(ctx)
        return ctx

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for i, ctx in enumerate(contexts):
        if failed:  # what the page looked like when the test failed
            for j, page in enumerate(ctx.pages):
                _save(page, ARTIFACTS / f"{_test_name(request.node)}-failed-{i}{j}.png")
        ctx.close()


@pytest.fixture
def context(new_context):
    return new_context()


@pytest.fixture
def page(context):
    return context.new_page()


def _save(page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(path))
    except Exception as exc:  # noqa: BLE001 - a screenshot must never hide the test's own result
        print(f"screenshot {path} failed: {exc}")
    return path


@pytest.fixture
def shot(request):
    """``shot(page, "step")`` saves ``test-artifacts/browser/<test>[-step].png``; ``docs=NAME`` also writes ``docs/NAME``.

    Docs screenshots are only (re)written when ``QWEN_DOCS_SCREENSHOTS=1``, so an ordinary
    test run leaves the committed images alone.
    """

    def save(page, step: str = "", docs: str | None = None) -> Path:
        name = _test_name(request.node) + (f"-{step}" if step else "")
        path = _save(page, ARTIFACTS / f"{name}.png")
        if docs and os.environ.get("QWEN_DOCS_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS / docs)
        return path

    return save


@pytest.fixture(autouse=True)
def _server_stays_clean(request):
    """No test may kill the server or make it print a traceback."""
    if "app_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("app_server")
    starts, before = server.starts, len(server.errors_in_log())
    yield
    assert server.proc is not None and server.proc.poll() is None, "the app server died"
    errors = server.errors_in_log()[before if server.starts == starts else 0 :]
    assert not errors, "the app server printed tracebacks:\n" + "\n\n".join(errors)
