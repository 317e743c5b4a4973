"""Stop is there as soon as a reply is accepted, not only once its tokens stream: a reply that waits
for a free slot (or whose long prompt prefills for seconds on a CPU) can be stopped, and a reply
stopped before its first token leaves the user's message and no empty reply."""

from __future__ import annotations

import threading

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from conftest import started_server
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    """An app that generates one reply at a time (--concurrency 1)."""
    server = started_server(tmp_path_factory, "one-slot-app", "--concurrency", "1")
    yield server
    server.stop()


def _hold_the_slot(url: str, started: threading.Event, release: threading.Event) -> None:
    """A /v1 client streaming a long reply until ``release`` (then it hangs up, freeing the slot)."""
    model = httpx.get(f"{url}v1/models", timeout=30).json()["data"][0]["id"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": 20_000,
        "temperature": 1.0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}v1/chat/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        for _ in r.iter_lines():
            started.set()
            if release.is_set():
                return


def test_stop_while_queued_for_a_slot(page, one_slot_server, shot):
    ui = ChatUI.open(page, one_slot_server.url)
    ui.max_new_tokens(4)
    started, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_the_slot, args=(one_slot_server.url, started, release), daemon=True)
    holder.start()
    try:
        assert started.wait(60), "the /v1 reply holding the slot never started"
        ui.send("Will I get a turn?")
        # Queued behind the /v1 reply: no token can come, and Stop is offered all the same.
        expect(ui.stop).to_be_enabled(timeout=15_000)
        expect(ui.button("send")).to_be_hidden()
        assert ui.transcript()["bot"] == []
        shot(page, "queued-stop")
        ui.stop.click()
        expect(ui.stop).to_be_disabled(timeout=10_000)
        expect(ui.button("send")).to_be_visible()
        page.wait_for_timeout(500)
        t = ui.transcript()
        assert t["user"] == ["Will I get a turn?"] and t["bot"] == []  # the message stays, no empty reply
    finally:
        release.set()
        holder.join(60)
    # The slot is free again: pressing Regenerate answers the waiting message.
    ui.arm()
    ui.button("regenerate").click()
    ui.wait_reply_done(turns=1)
    t = ui.transcript()
    assert t["user"] == ["Will I get a turn?"] and len(t["bot"]) == 1 and t["bot"][0]
    assert one_slot_server.errors_in_log() == []
