"""Issue #15 item 3: events name the chat store by the rev the server sent it with (ui.store_ref).

The attack cases first: a reference the server does not hold, or a malformed one, is refused and
never read as an empty store (a handler would then save that over the page's chats)."""

from __future__ import annotations

import gradio as gr
import pytest

from ui.refusal import Refusal
from ui.service import empty_store
from ui.store_ref import REF_KEY, RESYNC_MESSAGE, StoreMirror, chat_store


def _store(browser: str, text: str = "hello") -> dict:
    store = empty_store(browser)
    store["conversations"][0]["messages"].append({"id": "m1", "role": "user", "content": text})
    return store


@pytest.mark.parametrize("ref", ["not-a-rev", "", None, 7, ["x"], {"a": 1}, "x" * 10_000])
def test_an_unknown_or_malformed_reference_is_refused_not_emptied(ref):
    state = chat_store(StoreMirror(), storage_key="test-store", secret="s" * 16)
    with pytest.raises(Refusal) as err:
        state.preprocess({REF_KEY: ref})
    assert err.value.message == RESYNC_MESSAGE


def test_a_store_sent_to_the_page_comes_back_by_reference_as_a_copy():
    mirror = StoreMirror()
    state = chat_store(mirror, storage_key="test-store", secret="s" * 16)
    original = _store("b" * 20)
    sent = state.postprocess(original)
    assert isinstance(sent["rev"], str) and len(sent["rev"]) >= 24 and "rev" not in original
    got = state.preprocess({REF_KEY: sent["rev"]})
    assert got == sent
    got["conversations"][0]["messages"].clear()  # a handler changes its copy ...
    again = state.preprocess({REF_KEY: sent["rev"]})
    assert again["conversations"][0]["messages"][0]["content"] == "hello"  # ... not the kept one
    assert state.preprocess(original) == original  # a whole store still goes through
    assert mirror.stats()["hits"] == 2


def test_a_recreated_component_still_resolves_and_stamps():
    """Gradio re-creates a session's component from its class after a gr.skip() output."""
    chat_store(StoreMirror(), storage_key="test-store", secret="s" * 16)
    again = gr.BrowserState(None, storage_key="test-store", secret="s" * 16)
    sent = again.postprocess(_store("c" * 20))
    assert again.preprocess({REF_KEY: sent["rev"]})["browser_id"] == "c" * 20
    other = gr.BrowserState(None, storage_key="another-app")  # other BrowserStates are untouched
    assert "rev" not in other.postprocess({"conversations": []})
    assert other.preprocess({REF_KEY: sent["rev"]}) == {REF_KEY: sent["rev"]}


def test_two_tabs_of_one_browser_keep_their_own_latest_revisions():
    """Each page is a chain of revisions (a store made from the one before): a chain keeps its last two,
    so one tab's many changes never push another tab's store out."""
    mirror = StoreMirror(max_bytes=10**9)
    tabs = {name: mirror.stamp(_store("t" * 20, name)) for name in ("a", "b")}
    history = {"a": [tabs["a"]["rev"]], "b": [tabs["b"]["rev"]]}
    for step in range(30):
        name = "a" if step % 3 else "b"  # tab a changes twice as often
        store = mirror.resolve(history[name][-1])
        store["conversations"][0]["messages"][0]["content"] = f"{name}{step}"
        history[name].append(mirror.stamp(store)["rev"])
    for name, revs in history.items():
        assert mirror.resolve(revs[-1]) is not None and mirror.resolve(revs[-2]) is not None, name
        assert mirror.resolve(revs[-3]) is None, name  # older ones go
    assert mirror.stats()["revs"] == 4


def test_a_few_revisions_per_browser_and_the_byte_bound():
    mirror = StoreMirror(max_bytes=10**9, per_browser=2)
    revs = [mirror.stamp(_store("a" * 20, f"v{i}"))["rev"] for i in range(3)]
    assert mirror.resolve(revs[0]) is None  # the oldest of this browser went
    assert [mirror.resolve(r)["conversations"][0]["messages"][0]["content"] for r in revs[1:]] == ["v1", "v2"]

    small = StoreMirror(max_bytes=5_000)
    a = small.stamp(_store("a" * 20, "x" * 3_000))["rev"]
    b = small.stamp(_store("b" * 20, "y" * 3_000))["rev"]  # over the bound: the idlest browser goes
    assert small.resolve(a) is None and small.resolve(b) is not None
    assert small.stats()["browsers"] == 1
    zero = StoreMirror(max_bytes=0)  # the browser being served keeps its latest copy even so
    assert zero.resolve(zero.stamp(_store("z" * 20))["rev"]) is not None
