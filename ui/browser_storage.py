"""The page's guard around the browser copy of the chats (``gr.BrowserState``).

Gradio's ``BrowserState`` writes its (encrypted) value with ``localStorage.setItem`` and, when
that fails (``QuotaExceededError``: the origin's ~5 MB are full), only logs to the console: the
newest chats were silently lost on the next reload. The script below, put in the page's
``<head>`` before Gradio's module script (:mod:`server.page_head`), wraps ``setItem``/``getItem`` for the store's key only:

* a write that fails goes to IndexedDB instead (its quota is far larger), the stale
  localStorage copy is removed, and a banner tells the user what happened and what to do;
* a read finds the IndexedDB copy when localStorage has none;
* once a localStorage write succeeds again the IndexedDB copy is deleted (one copy only).

The value stays Gradio's ciphertext in both places: no plaintext copy is ever written.
"""

from __future__ import annotations

import json

STORE_KEY = "qwen-chat-store-v1"  # ui.layout's BrowserState storage_key
ALERT_ID = "qc-storage-alert"

MESSAGES = {
    "fallback": (
        "This browser's storage for this site is full, so your chats are now saved in its IndexedDB "
        "instead. To free space, delete old chats or export them (Export chat) and clear this site's data."
    ),
    "server": " While you are signed in, your chats are also kept on the server.",
    "lost": (
        "Your chats could not be saved in this browser (its storage is full or disabled): they will be "
        "lost when this page closes. Export the chats you need now (Export chat)."
    ),
}

_SCRIPT = """
<script>
(() => {
  const KEY = %(key)s, ALERT = %(alert)s, SERVER = %(server)s, MSG = %(messages)s;
  const proto = Storage.prototype;
  const setItem = proto.setItem, getItem = proto.getItem, removeItem = proto.removeItem;
  let cache = null, loaded = false, readEarly = false, shown = "";

  const idb = (mode, fn) => new Promise((ok, fail) => {
    const req = indexedDB.open("qwen-chat", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("kv");
    req.onerror = () => fail(req.error);
    req.onsuccess = () => {
      const db = req.result, tx = db.transaction("kv", mode), op = fn(tx.objectStore("kv"));
      tx.oncomplete = () => { db.close(); ok(op.result); };
      tx.onerror = tx.onabort = () => { db.close(); fail(tx.error); };
    };
  });

  const warn = (kind) => {
    if (shown === kind) return;  // once per page and kind, not on every save
    shown = kind;
    const show = () => {
      let box = document.getElementById(ALERT);
      if (!box) {
        box = document.createElement("div");
        box.id = ALERT;
        box.setAttribute("role", "alert");
        box.style.cssText = "position:fixed;top:8px;left:50%%;transform:translateX(-50%%);z-index:10000;" +
          "max-width:640px;padding:10px 36px 10px 14px;border-radius:6px;background:#fef3c7;" +
          "color:#78350f;border:1px solid #f59e0b;font:14px/1.4 system-ui,sans-serif";
        const close = document.createElement("button");
        close.textContent = "×";
        close.setAttribute("aria-label", "Dismiss");
        close.style.cssText = "position:absolute;top:4px;right:8px;background:none;border:0;font-size:18px;cursor:pointer";
        close.onclick = () => box.remove();
        box.append(document.createElement("span"), close);
        document.body.append(box);
      }
      box.firstChild.textContent = MSG[kind] + (kind === "fallback" && SERVER ? MSG.server : "");
    };
    document.body ? show() : addEventListener("DOMContentLoaded", show);
  };

  // A page whose Gradio read the store before IndexedDB answered ("read early") does not know yet
  // whether it started without the saved chats: its writes wait for the answer (`pending`), and if
  // a copy was there (`missed`) the page reloads to read it instead of overwriting it.
  let wrote = false, missed = false, pending = null;

  const write = (store, value) => {
    wrote = true;
    try {
      setItem.call(store, KEY, value);
      if (cache !== null) {  // localStorage has room again: one copy only
        cache = null;
        idb("readwrite", (s) => s.delete(KEY)).catch(() => {});
      }
      return;
    } catch (err) {
      console.warn("qwen-chat: localStorage write failed, using IndexedDB", err);
    }
    try { removeItem.call(store, KEY); } catch (err) { /* nothing stored */ }
    cache = value;
    idb("readwrite", (s) => s.put(value, KEY)).then(() => warn("fallback"), () => warn("lost"));
  };

  // The IndexedDB copy (if any) is read at once, before Gradio's BrowserState mounts and reads.
  const ready = idb("readonly", (s) => s.get(KEY)).then((v) => { if (!wrote) cache = v ?? null; }, () => {});
  ready.finally(() => {
    loaded = true;
    missed = readEarly && cache !== null;
    // This load read in time: a later early read may reload again (the flag only stops a loop).
    if (!readEarly) sessionStorage.removeItem("qc-store-reread");
    // Gradio read the store before IndexedDB answered (seen in CI, a cold browser): read it again.
    if (missed && !sessionStorage.getItem("qc-store-reread")) {
      sessionStorage.setItem("qc-store-reread", "1");
      location.reload();
      return;
    }
    if (!missed && pending !== null) write(localStorage, pending);  // nothing was missed: save it now
    pending = null;
    document.documentElement.dataset.qcStore = "ready";  // for tests: no reload of this page is coming
  });

  // Gradio mounts (and BrowserState reads the store) only once IndexedDB has answered, so its one
  // read already sees an IndexedDB copy. Capped at 5 s in case IndexedDB hangs; a read that still
  // comes early is handled above (reload, never overwrite). server.page_head puts this script into
  // the page's HTML before Gradio's module script (Gradio's own head= would come too late).
  const define = customElements.define;
  const gate = Promise.race([ready, new Promise((ok) => setTimeout(ok, 5000))]);
  customElements.define = function (name, cls, options) {
    if (name !== "gradio-app" || loaded) return define.call(this, name, cls, options);
    gate.then(() => { if (!customElements.get(name)) define.call(customElements, name, cls, options); });
  };

  proto.getItem = function (key) {
    const value = getItem.call(this, key);
    if (this !== localStorage || key !== KEY || value !== null) return value;
    if (!loaded) readEarly = true;
    return cache;
  };

  proto.setItem = function (key, value) {
    if (this !== localStorage || key !== KEY) return setItem.call(this, key, value);
    if (readEarly && !loaded) { pending = value; return; }  // held until IndexedDB answers
    if (missed) return;  // this page started without the saved chats: never overwrite them
    write(this, value);
  };
})();
</script>
"""


def storage_head(server_history: bool = False) -> str:
    """The ``<head>`` HTML with the guard script (``server_history``: mention the server's copy)."""
    return _SCRIPT % {
        "key": json.dumps(STORE_KEY),
        "alert": json.dumps(ALERT_ID),
        "server": "true" if server_history else "false",
        "messages": json.dumps(MESSAGES, ensure_ascii=False),
    }
