"""Events carry the chat store by reference, not whole (issue #15 item 3).

The chat store (every chat, in the browser's ``gr.BrowserState``) is an input of most events; sent
whole, a Send in a 40-turn chat uploaded 1.7 MB (the store ~8 times over) and with 14 such chats
29 MB, 6.4 s per Send (``bench/send_latency.py``). Now:

* every store the server sends to a page is stamped with a fresh ``rev`` (a random token) and kept
  here (:class:`StoreMirror`), a few revisions per browser, bounded in bytes;
* the page (:func:`store_ref_head`, a ``fetch`` wrapper) sends ``{"__qc_store_ref__": rev}`` instead
  of a store whose ``rev`` it received from the server while open; the store it read from its
  storage at load (unknown to a restarted server) goes whole, once;
* :func:`chat_store` (the BrowserState) turns the reference back into a copy of that store before
  any handler runs, so handlers are unchanged and only ever see whole stores.

The ``rev`` is a 144-bit random token that only the page holding the store ever receives: holding
it is holding the store, as the store itself is. A reference the server no longer holds (it
restarted, or evicted an idle browser's copies) is refused with :data:`RESYNC_MESSAGE` and never
read as an empty store; the page then sends its store whole again.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
from collections import OrderedDict
from typing import Any

import gradio as gr

from .owner import BROWSER_ID_KEY
from .refusal import Refusal

REF_KEY = "__qc_store_ref__"
REVS_PER_BROWSER = 16  # two per open page (see StoreMirror.stamp): up to 8 tabs of one browser
MAX_BYTES = 512 * 2**20  # all browsers' copies together (estimated as text size); idle browsers go first
RESYNC_MESSAGE = (
    "The server no longer had this page's copy of your chats (it restarted, or the page was idle "
    "for long). Nothing is lost: do that again."
)


def _size(store: dict) -> int:
    """A store's size, estimated from its text (exact enough for a memory bound, and fast)."""
    total = 256
    for conv in store.get("conversations") or ():
        total += 256 + len(str(conv.get("title") or ""))
        for msg in conv.get("messages") or ():
            total += 128 + len(msg.get("content") or "") if isinstance(msg, dict) else 128
    return total


class StoreMirror:
    """The stores recently sent to pages, by ``rev``: a few per browser, all of them within ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_BYTES, per_browser: int = REVS_PER_BROWSER):
        self.max_bytes = max_bytes
        self.per_browser = per_browser
        self._lock = threading.Lock()
        self._revs: dict[str, tuple[str, dict, int]] = {}  # rev -> (browser, store, size)
        self._parents: dict[str, str | None] = {}  # rev -> the rev of the store it was made from
        self._browsers: OrderedDict[str, list[str]] = OrderedDict()  # least recently used first
        self._bytes = 0
        self.hits = self.misses = 0

    def stamp(self, store: dict) -> dict:
        """Give ``store`` a new ``rev`` and keep it (the caller sends it to the page as it is now).

        The store it was made from (its old ``rev``) is kept too, for events the page sent before this
        one arrives; the one before that goes. So each open page (a chain of revisions) holds two,
        and another tab of the same browser does not push this one's out."""
        parent = store.get("rev")
        rev = secrets.token_urlsafe(18)
        store["rev"] = rev
        browser = str(store.get(BROWSER_ID_KEY) or "")
        size = _size(store)
        with self._lock:
            self._revs[rev] = (browser, store, size)
            self._parents[rev] = parent if isinstance(parent, str) else None
            self._bytes += size
            revs = self._browsers.pop(browser, [])
            grandparent = self._parents.get(parent) if isinstance(parent, str) else None
            if grandparent in self._revs:
                self._drop(grandparent)
            revs = [r for r in revs if r in self._revs]
            revs.append(rev)
            while len(revs) > self.per_browser:
                self._drop(revs.pop(0))
            self._browsers[browser] = revs
            while self._bytes > self.max_bytes and len(self._browsers) > 1:
                _, oldest = self._browsers.popitem(last=False)
                for old in oldest:
                    self._drop(old)
        return store

    def _drop(self, rev: str) -> None:
        self._parents.pop(rev, None)
        entry = self._revs.pop(rev, None)
        if entry is not None:
            self._bytes -= entry[2]

    def resolve(self, rev: Any) -> dict | None:
        """A copy of the store sent as ``rev`` (the handler may change it), or None if not held."""
        with self._lock:
            entry = self._revs.get(rev) if isinstance(rev, str) else None
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._browsers.move_to_end(entry[0])
            store = entry[1]
        return copy.deepcopy(store)

    def stats(self) -> dict:
        """Counts for the health panel and tests."""
        with self._lock:
            return {
                "revs": len(self._revs),
                "browsers": len(self._browsers),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


_MIRRORS: dict[str, StoreMirror] = {}  # storage key -> the mirror of that BrowserState (see chat_store)
_ORIGINAL = (gr.BrowserState.preprocess, gr.BrowserState.postprocess)


def _preprocess(self, payload: Any) -> Any:
    """A reference becomes (a copy of) the store it names; a reference not held is refused."""
    mirror = _MIRRORS.get(self.storage_key)
    if mirror is not None and isinstance(payload, dict) and REF_KEY in payload:
        store = mirror.resolve(payload.get(REF_KEY))
        if store is None:
            # Never an empty store instead: a handler would save it over the page's chats.
            raise Refusal(RESYNC_MESSAGE, duration=8)
        return store
    return _ORIGINAL[0](self, payload)


def _postprocess(self, value: Any) -> Any:
    """A store going to the page gets its new ``rev`` and is kept for the page's references."""
    mirror = _MIRRORS.get(self.storage_key)
    if mirror is not None and isinstance(value, dict) and isinstance(value.get("conversations"), list):
        value = mirror.stamp(dict(value))
    return _ORIGINAL[1](self, value)


def chat_store(mirror: StoreMirror, storage_key: str, secret: str) -> gr.BrowserState:
    """The chat store's BrowserState: references resolved on the way in, revisions stamped on the way out.

    Done in BrowserState's own ``preprocess``/``postprocess``, for the BrowserState of this storage key
    only: Gradio re-creates a session's component from its class after a ``gr.skip()`` output (so an
    instance's own methods would be lost), and a subclass would make Gradio write a ``.pyi`` stub next
    to this file at import."""
    _MIRRORS[storage_key] = mirror
    gr.BrowserState.preprocess, gr.BrowserState.postprocess = _preprocess, _postprocess
    return gr.BrowserState(None, storage_key=storage_key, secret=secret)


# The page's side: outgoing Gradio events name the store by its rev once the store is one the server
# sent while this page is open. A store's rev changes only when the server sends a new store, so any
# rev other than the one the page read from its storage at load (``unsent``: the first event's) was
# sent by the server. A refusal with RESYNC_MESSAGE makes the current rev ``unsent`` again: the next
# event sends the store whole.
_HEAD = """
<script>
(() => {
  const REF = %(ref)s, RESYNC = %(resync)s, ZH = %(resync_zh)s;
  let unsent = undefined, current = null;
  const isStore = (v) => v && typeof v === "object" && Array.isArray(v.conversations);
  const events = /\\/gradio_api\\/(queue\\/join|run\\/predict)/;
  const fetch0 = window.fetch;
  window.fetch = function (input, init) {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : (input && input.url) || "";
    if (init && typeof init.body === "string" && events.test(url) && init.body.includes('"conversations"')) {
      try {
        const body = JSON.parse(init.body);
        if (Array.isArray(body.data) && body.data.some(isStore)) {
          body.data = body.data.map((v) => {
            if (!isStore(v)) return v;
            const rev = typeof v.rev === "string" ? v.rev : null;
            if (unsent === undefined) unsent = rev;  // the first event: the store as read at load
            current = rev;
            return rev && rev !== unsent ? {[REF]: rev} : v;
          });
          init = {...init, body: JSON.stringify(body)};
        }
      } catch (e) { /* not JSON: sent as it is */ }
    }
    return fetch0.call(this, input, init);
  };
  // The server no longer holds this page's copies: send the store whole until it sends a new one.
  new MutationObserver(() => {
    document.querySelectorAll("[data-testid=toast-text]").forEach((el) => {
      const text = el.textContent || "";
      if (el.dataset.qcResync || !(text.includes(RESYNC) || text.includes(ZH))) return;
      el.dataset.qcResync = "1";
      unsent = current;
      if (!text.includes(ZH) && (localStorage.getItem("qwen-lang") === "zh" ||
          (!localStorage.getItem("qwen-lang") && (navigator.language || "").toLowerCase().startsWith("zh")))) {
        el.textContent = ZH;
      }
    });
  }).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""


def store_ref_head(resync_zh: str) -> str:
    """The ``<head>`` script of the page's side (``resync_zh``: :data:`RESYNC_MESSAGE` in 中文)."""
    return _HEAD % {
        "ref": json.dumps(REF_KEY),
        "resync": json.dumps(RESYNC_MESSAGE),
        "resync_zh": json.dumps(resync_zh, ensure_ascii=False),
    }
