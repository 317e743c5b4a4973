"""Gradio's per-session data of ended sessions is dropped; open pages keep theirs.

Gradio keeps a copy of the page's config for every session until 10,000 exist (~135 KB
each here), so without the sweeper a server's memory grows with every page ever opened.
The app is the real one (UI + API) served in this process; clients are ``gradio_client``
sessions, which have a heartbeat like a browser tab.
"""

from __future__ import annotations

import datetime
import time

import pytest
from fault_fixtures import InProcessApp

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture
def app(engine, tmp_path):
    proc = InProcessApp(engine, tmp_path / "data", concurrency=1, max_queue=4, closed_session_ttl=1.0)
    proc.demo.sessions.every = 0.0  # sweep on every page event
    yield proc
    proc.stop()


def _client(app):
    return gradio_client.Client(app.url + "/", verbose=False)


def _until(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:.0f} s")
        time.sleep(0.1)


def test_closed_pages_are_forgotten_and_open_ones_kept(app):
    holder, sweeper = app.demo.state_holder, app.demo.sessions
    page, gone = _client(app), _client(app)
    try:
        for c in (page, gone):
            c.predict(None, api_name="/load")
        assert {page.session_hash, gone.session_hash} <= set(holder.session_data)

        gone.close()  # the tab closes: its heartbeat ends and the page's unload event runs
        _until(lambda: gone.session_hash in sweeper._closed, "the closed session was not noticed")
        time.sleep(1.2)  # past closed_ttl
        page.predict(None, api_name="/load")  # any page event sweeps

        assert gone.session_hash not in holder.session_data
        assert page.session_hash in holder.session_data, "an open page lost its session"
        assert sweeper.dropped >= 1
        # The open page goes on working with its own session.
        store = page.predict(None, api_name="/load")[0]
        assert store["conversations"]
    finally:
        page.close()


def test_api_only_sessions_are_forgotten_once_idle_and_still_work(app):
    holder, sweeper = app.demo.state_holder, app.demo.sessions
    api = _client(app)
    try:
        args = ("Hi", [], "You are terse.", {"temperature": 0, "max_new_tokens": 3})
        first = api.predict(*args, api_name="/chat")
        assert api.session_hash in holder.session_data
        sweeper.idle_ttl = datetime.timedelta(seconds=0.5)
        time.sleep(0.7)
        sweeper.sweep()
        assert api.session_hash not in holder.session_data
        assert api.predict(*args, api_name="/chat") == first  # greedy: the same reply again
    finally:
        api.close()


def test_a_page_used_again_after_its_heartbeat_dropped_is_kept(app):
    """A connection that came back (the session was used after its close) keeps its data."""
    holder, sweeper = app.demo.state_holder, app.demo.sessions
    page = _client(app)
    try:
        page.predict(None, api_name="/load")
        sweeper.closed(page.session_hash)
        sweeper._closed[page.session_hash] -= datetime.timedelta(seconds=30)  # closed long ago
        page.predict("Hi", [], "S", {"temperature": 0, "max_new_tokens": 2}, api_name="/chat")  # used again
        sweeper.sweep()
        assert page.session_hash in holder.session_data
    finally:
        page.close()
