"""Issue #15 item 2: no plaintext copy of a chat anywhere in the browser, and no silent loss
when the browser's storage is full. Headless Chromium against the real app."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")

from chat_ui import ChatUI
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

STORE_KEY = "qwen-chat-store-v1"

# Every key and value the page's origin keeps: localStorage, sessionStorage, every IndexedDB
# database's object stores and the Cache Storage, as text.
_ALL_STORAGE_JS = """
async () => {
  const out = [];
  for (const [name, s] of [["local", localStorage], ["session", sessionStorage]]) {
    for (let i = 0; i < s.length; i++) {
      const k = s.key(i);
      out.push(`${name}:${k}=${Storage.prototype.getItem.call(s, k)}`);
    }
  }
  const req = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  for (const {name} of await indexedDB.databases()) {
    const db = await req(indexedDB.open(name));
    for (const st of db.objectStoreNames) {
      const store = db.transaction(st, "readonly").objectStore(st);
      const [keys, values] = [await req(store.getAllKeys()), await req(store.getAll())];
      out.push(`idb:${name}/${st}=${JSON.stringify(keys)} ${JSON.stringify(values)}`);
    }
    db.close();
  }
  if (self.caches) {
    for (const name of await caches.keys()) {
      const cache = await caches.open(name);
      for (const r of await cache.keys()) out.push(`cache:${name}:${r.url}=${await (await cache.match(r)).text()}`);
    }
  }
  return out;
}
"""

# Fills localStorage (junk keys) until not even 1 KB more fits; returns the characters written.
_FILL_JS = """
() => {
  let size = 1 << 20, n = 0, total = 0;
  while (size >= 1) {
    try { localStorage.setItem(`junk-${n++}`, "x".repeat(size)); total += size; }
    catch (e) { size = size >> 1; }
  }
  return total;
}
"""

_IDB_KEYS_JS = """
async () => {
  const req = (r) => new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const db = await req(indexedDB.open("qwen-chat", 1));
  const keys = db.objectStoreNames.contains("kv") ? await req(db.transaction("kv").objectStore("kv").getAllKeys()) : [];
  db.close();
  return keys;
}
"""


def _plaintext_hits(page, secrets: list[str]) -> list[str]:
    return [entry[:200] for entry in page.evaluate(_ALL_STORAGE_JS) if any(s in entry for s in secrets)]


def test_no_plaintext_chat_anywhere_in_browser_storage(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    ui.chat("zebra lantern 4711 is my secret", turns=1)
    ui.chat("second secret okapi 0815", turns=2)
    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.locator("#chat .message-row")).to_have_count(0)
    ui.chat("third chat quokka 2323", turns=1)
    # The chat whose text is in the draft box and the deleted one must not be stored either.
    page.get_by_role("button", name="Delete chat", exact=True).click()
    ui.message.fill("draft walrus 9999")
    page.wait_for_timeout(1500)  # let every store write and meter event land

    entries = page.evaluate(_ALL_STORAGE_JS)
    assert any(e.startswith(f"local:{STORE_KEY}=") for e in entries), entries  # the encrypted store is there
    assert _plaintext_hits(page, ["zebra lantern", "okapi 0815", "quokka 2323", "walrus 9999"]) == []
    # Gradio's run history is off: no page, no footer link.
    assert page.request.get(base_url + "gradio_api/runs").status == 404
    assert page.get_by_role("link", name="Runs").count() == 0
    ui.reload()
    assert ui.transcript()["user"] == ["zebra lantern 4711 is my secret", "second secret okapi 0815"]


def test_full_local_storage_falls_back_to_indexeddb_and_says_so(page, base_url):
    ui = ChatUI.open(page, base_url)
    ui.max_new_tokens(6)
    assert page.evaluate(_FILL_JS) > 1_000_000  # another app of this origin filled the quota
    reply = ui.chat("kept despite a full storage: capybara 31", turns=1)

    alert = page.locator("#qc-storage-alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("storage for this site is full")
    expect(alert).to_contain_text("IndexedDB")
    assert page.evaluate(_IDB_KEYS_JS) == [STORE_KEY]
    assert _plaintext_hits(page, ["capybara 31"]) == []  # the fallback copy is the ciphertext too

    ui.reload()  # the newest chat is still there, read back from IndexedDB
    t = ui.transcript()
    assert t["user"] == ["kept despite a full storage: capybara 31"] and t["bot"] == [reply]
    expect(page.get_by_role("radio", name="kept despite a full storage: capybara 31", exact=True)).to_be_checked()

    # Still full, so the page says so again; the banner can be dismissed.
    expect(alert).to_be_visible()
    alert.get_by_role("button", name="Dismiss").click()
    expect(alert).to_have_count(0)
    # Space freed: the next save goes back to localStorage and the IndexedDB copy is dropped.
    page.evaluate(
        "() => Object.keys(localStorage).filter((k) => k.startsWith('junk-')).forEach((k) => localStorage.removeItem(k))"
    )
    ui.max_new_tokens(6)
    ui.chat("room again", turns=2)
    page.wait_for_function(f"() => localStorage.getItem({STORE_KEY!r}) !== null")
    page.wait_for_function(f"async () => JSON.stringify(await ({_IDB_KEYS_JS})()) === '[]'")
    ui.reload()
    assert ui.transcript()["user"] == ["kept despite a full storage: capybara 31", "room again"]


# Holds the guard's first IndexedDB open of a page back by sessionStorage "test-slow-idb" ms (once):
# a cold browser in CI was that slow by itself. Past the guard's 5 s cap Gradio mounts and reads the
# store before IndexedDB answers ("read early").
_SLOW_IDB_JS = """
(() => {
  const delay = Number(sessionStorage.getItem("test-slow-idb"));
  if (!delay) return;
  sessionStorage.removeItem("test-slow-idb");
  const open = IDBFactory.prototype.open;
  let first = true;
  IDBFactory.prototype.open = function (...args) {
    if (!first) return open.apply(this, args);
    first = false;
    const held = {};
    setTimeout(() => {
      const req = open.apply(this, args);
      for (const ev of ["upgradeneeded", "success", "error"]) {
        req["on" + ev] = (e) => {
          held.result = req.result;
          held.error = req.error;
          if (held["on" + ev]) held["on" + ev](e);
        };
      }
    }, delay);
    return held;
  };
})();
"""


def test_a_page_that_read_the_store_before_indexeddb_answered_still_saves_every_reply(page, base_url):
    """Seen in CI: Gradio read the store before IndexedDB answered; IndexedDB then had no copy, but
    the page kept treating itself as "started without the saved chats" and dropped every later save
    that had to go to IndexedDB: after a reload the reply was gone."""
    page.add_init_script(_SLOW_IDB_JS)
    ui = ChatUI.open(page, base_url)
    # A first visit: no copy anywhere, and this load reads early.
    page.evaluate(
        f"() => {{ sessionStorage.setItem('test-slow-idb', '6500'); localStorage.removeItem({STORE_KEY!r}); }}"
    )
    ui.reload()  # waits until IndexedDB has answered (ChatUI.wait_ready)
    ui.max_new_tokens(6)
    assert page.evaluate(_FILL_JS) > 1_000_000
    reply = ui.chat("saved although read early: okapi 7", turns=1)
    expect(page.locator("#qc-storage-alert")).to_contain_text("IndexedDB")

    ui.reload()
    t = ui.transcript()
    assert t["user"] == ["saved although read early: okapi 7"] and t["bot"] == [reply]

    # Read early again, now with a copy in IndexedDB: the page reloads to read it, and the early
    # page's own (empty) store never overwrites the saved chats.
    page.evaluate("() => { sessionStorage.setItem('test-slow-idb', '6500'); }")
    ui.reload()  # waits for the guard's own reload too (ChatUI.wait_ready)
    t = ui.transcript()
    assert t["user"] == ["saved although read early: okapi 7"] and t["bot"] == [reply]

    # A slow IndexedDB within the cap: Gradio waits for it and reads the copy at once, no reload.
    page.evaluate(
        "() => { sessionStorage.removeItem('qc-store-reread'); sessionStorage.setItem('test-slow-idb', '2500'); }"
    )
    ui.reload()
    t = ui.transcript()
    assert t["user"] == ["saved although read early: okapi 7"] and t["bot"] == [reply]
    assert page.evaluate("() => sessionStorage.getItem('qc-store-reread')") is None  # the guard did not reload


def test_a_3_mb_chat_imports_survives_a_reload_and_exports_back(page, base_url, tmp_path):
    """Past 2 MB every event used to get 413 and a reload showed "Error" in every panel."""
    errors: list[int] = []
    page.on("response", lambda r: errors.append(r.status) if r.status >= 400 else None)
    ui = ChatUI.open(page, base_url)
    filler = "lorem ipsum dolor sit amet " * 20_000  # ~540 KB per message
    conversation = {
        "title": "three megabytes",
        "messages": [
            {"role": role, "content": f"{role} {i} {filler}"} for i in range(3) for role in ("user", "assistant")
        ],
    }
    path = tmp_path / "big.json"
    path.write_text(json.dumps(conversation), encoding="utf-8")
    assert path.stat().st_size > 3_000_000
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(path))
    big = page.get_by_role("radio", name="three megabytes", exact=True)
    expect(big).to_be_checked(timeout=60_000)
    expect(page.locator("#chat [data-testid=user]")).to_have_count(3, timeout=60_000)
    page.wait_for_timeout(2000)  # the store's save and the meter

    ui.reload()
    expect(big).to_be_checked(timeout=60_000)
    expect(page.locator("#chat [data-testid=user]")).to_have_count(3, timeout=60_000)
    assert page.get_by_text("Error", exact=True).count() == 0
    # ...and it still chats
    ui.max_new_tokens(4)
    ui.chat("still here?", turns=4)

    page.get_by_role("button", name="Export chat", exact=True).click()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON", exact=True).click()
    exported = tmp_path / "exported.json"
    download.value.save_as(str(exported))
    assert exported.stat().st_size > 3_000_000
    page.get_by_role("button", name="Delete chat", exact=True).click()
    expect(big).to_have_count(0)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import chat (JSON)", exact=True).click()
    chooser.value.set_files(str(exported))
    expect(page.locator("#chat [data-testid=user]")).to_have_count(4, timeout=60_000)
    assert [s for s in errors if s == 413] == []
