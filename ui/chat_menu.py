"""The chat list's per-chat menu (⋯ on every row): Rename, Export and Delete any chat, not only
the one on screen — as ChatGPT's and Open WebUI's sidebars do.

The page draws the menus (``CHAT_MENU_JS``); each action is one event with the chat's *id*
(``{"action", "id", "title"}``), run on the server against the store as a whole, so a menu on
another row can never act on the chat that happens to be open (a select-then-click in the page
could, while the select was still in flight). Delete keeps the chat for ↩ Restore like Delete
chat does, and the chat on screen stays on screen.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import gradio as gr

from .refusal import Refusal

_ACTIONS = ("rename", "export", "delete")
MAX_COMMAND_CHARS = 4096  # an id and a title: anything longer is not from this page

# Draws a ⋯ button at the end of each chat-list row (again whenever Gradio redraws the list)
# and its menu; an action is handed to the hidden #chat-menu-run button's event through
# window.__qcChatMenu (that event's js= reads it). Keyboard: the ⋯ buttons are tabbable, the
# menu opens with its first item focused, Esc closes it, Enter saves a new name.
CHAT_MENU_JS = """
() => {
  if (window.__qcChatMenuDrawn) return;
  window.__qcChatMenuDrawn = true;
  const zh = () => localStorage.getItem('qwen-lang') === 'zh';
  const T = (key) => ({
    menu: ['Chat menu', '对话菜单'], rename: ['Rename', '重命名'], export: ['Export', '导出'],
    delete: ['Delete', '删除'], save: ['Save', '保存'], name: ['New name', '新名称'],
  })[key][zh() ? 1 : 0];
  const close = () => { const m = document.getElementById('qc-chat-menu'); if (m) m.remove(); };
  const run = (cmd) => {
    close();
    window.__qcChatMenu = JSON.stringify(cmd);
    const button = document.getElementById('chat-menu-run');
    if (button) button.click();
  };
  const item = (text, fn) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.setAttribute('role', 'menuitem');
    b.textContent = text;
    b.style.cssText = 'display:block;width:100%;text-align:left;padding:6px 12px;background:none;border:0;cursor:pointer;color:inherit';
    b.onclick = (e) => { e.preventDefault(); e.stopPropagation(); fn(); };
    return b;
  };
  const open = (anchor, id, title) => {
    close();
    const menu = document.createElement('div');
    menu.id = 'qc-chat-menu';
    menu.setAttribute('role', 'menu');
    menu.setAttribute('aria-label', `${T('menu')}: ${title}`);
    const r = anchor.getBoundingClientRect();
    menu.style.cssText = `position:fixed;z-index:10001;top:${Math.min(r.bottom + 2, innerHeight - 140)}px;` +
      `left:${Math.max(4, Math.min(r.left, innerWidth - 200))}px;min-width:160px;` +
      'background:var(--background-fill-primary,#fff);color:var(--body-text-color,#111);' +
      'border:1px solid var(--border-color-primary,#ccc);border-radius:6px;box-shadow:0 4px 16px #0003;padding:4px 0';
    const renameRow = () => {
      menu.replaceChildren();
      const input = document.createElement('input');
      input.value = title;
      input.maxLength = 200;
      input.setAttribute('aria-label', T('name'));
      input.style.cssText = 'margin:4px 8px;width:calc(100% - 16px);padding:4px';
      const save = () => run({action: 'rename', id, title: input.value});
      input.onkeydown = (e) => { if (e.key === 'Enter') { e.preventDefault(); save(); } };
      menu.append(input, item(T('save'), save));
      input.focus();
      input.select();
    };
    menu.append(
      item(T('rename'), renameRow),
      item(T('export'), () => run({action: 'export', id})),
      item('🗑 ' + T('delete'), () => run({action: 'delete', id})),
    );
    menu.onkeydown = (e) => { if (e.key === 'Escape') { e.stopPropagation(); close(); anchor.focus(); } };
    document.body.append(menu);
    menu.querySelector('button').focus();
  };
  // The ⋯ sits inside the row's label (Gradio redraws the two together); a button inside a label
  // does not select its radio, and the radio keeps the chat's title as its accessible name.
  const draw = () => {
    document.querySelectorAll('#chat-list input[type=radio]').forEach((input) => {
      const label = input.closest('label');
      if (!label) return;
      const span = label.querySelector('span');
      const title = (span ? span.textContent : '').trim();
      if (input.getAttribute('aria-label') !== title) input.setAttribute('aria-label', title);
      let b = label.querySelector('.qc-chat-menu-button');
      if (!b) {
        b = document.createElement('button');
        b.type = 'button';
        b.className = 'qc-chat-menu-button';
        b.textContent = '⋯';
        b.setAttribute('aria-haspopup', 'menu');
        b.style.cssText = 'margin-left:auto;padding:0 6px;background:none;border:0;cursor:pointer;font-size:1.1em;color:inherit';
        b.onclick = (e) => { e.preventDefault(); e.stopPropagation(); open(b, input.value, b.dataset.title); };
        label.appendChild(b);
      }
      const name = `${T('menu')}: ${title}`;
      if (b.getAttribute('aria-label') !== name) b.setAttribute('aria-label', name);
      b.dataset.title = title;
    });
  };
  document.addEventListener('click', (e) => {
    if (!e.target.closest('#qc-chat-menu') && !e.target.closest('.qc-chat-menu-button')) close();
  }, true);
  let queued = false;  // at most one pass per frame (a streaming reply mutates the page per token)
  const later = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; draw(); }); } };
  new MutationObserver(later).observe(document.body, {subtree: true, childList: true, characterData: true});
  draw();
}
"""

# The hidden button's event reads the action the menu left for it.
RUN_JS = "(store, command) => [store, window.__qcChatMenu || '']"


@dataclass
class ChatMenuParts:
    """The hidden pair the page's menus drive."""

    command: gr.Textbox
    run: gr.Button


def build_chat_menu() -> ChatMenuParts:
    """Create the hidden components (inside the sidebar of the page's Blocks)."""
    command = gr.Textbox(visible="hidden", elem_id="chat-menu-command")
    run = gr.Button("chat menu", elem_id="chat-menu-run", visible="hidden")
    return ChatMenuParts(command, run)


def parse_command(text: str) -> dict:
    """``{"action", "id", "title"?}`` from the page; anything else is refused (a hostile caller's
    command names no file and no other store: it only ever picks a chat of the caller's own store)."""
    if not isinstance(text, str) or not text or len(text) > MAX_COMMAND_CHARS:
        raise Refusal("That chat menu action was not understood: open the menu (⋯) again.", duration=6)
    try:
        cmd = json.loads(text)
    except ValueError:
        cmd = None
    if not isinstance(cmd, dict) or cmd.get("action") not in _ACTIONS or not isinstance(cmd.get("id"), str):
        raise Refusal("That chat menu action was not understood: open the menu (⋯) again.", duration=6)
    if cmd["action"] == "rename" and not isinstance(cmd.get("title"), str):
        raise Refusal("Give the chat a name.", duration=6)
    return cmd


class ChatMenu:
    """The menu's actions, bound to the page's :class:`ui.handlers.Handlers` and
    :class:`ui.reply_controls.ReplyActions` (Restore keeps what Delete removed)."""

    def __init__(self, handlers, replies):
        self.h = handlers
        self.replies = replies
        self.service = handlers.service

    def run(self, store, command, request: gr.Request = None):
        """Rename, export or delete the chat the menu was opened on.

        Returns the view (store, chatbot, list, name), the two download buttons and Restore."""
        cmd = parse_command(command)
        store = self.service.ensure_store(store)
        if not any(c.get("id") == cmd["id"] for c in store["conversations"]):
            raise Refusal("That chat is no longer in the list (deleted in another tab?).", duration=6)
        skip3 = (gr.skip(), gr.skip(), gr.skip())
        if cmd["action"] == "export":
            shown = store["active"]
            store["active"] = cmd["id"]
            json_path, md_path = self.h.exports(store, request)
            store["active"] = shown
            exports = gr.update(value=json_path, visible=True), gr.update(value=md_path, visible=True)
            return (gr.skip(),) * 4 + (*exports, gr.skip())
        self.h._guard(request)  # a streaming reply's chat must not change under it
        if cmd["action"] == "rename":
            return (*self._on(store, cmd["id"], lambda s: self.h.rename_chat(s, cmd["title"])), *skip3)
        restore = self._remember(store, cmd["id"], request)
        view = self._on(store, cmd["id"], self.h.delete_chat, request)
        return (*view, gr.skip(), gr.skip(), restore)

    def _on(self, store: dict, conv_id: str, action, *args) -> tuple:
        """Run a Delete chat / Rename handler with ``conv_id`` as the active chat, then show the
        chat that was on screen again (if it is still there)."""
        shown = store["active"]
        store["active"] = conv_id
        view = action(store, *args)
        store = view[0]
        if shown != conv_id and any(c.get("id") == shown for c in store["conversations"]):
            store["active"] = shown
            return self.h._view(store)
        return view

    def _remember(self, store: dict, conv_id: str, request):
        """Keep the chat about to be deleted for ↩ Restore (and say so)."""
        target = copy.deepcopy(store)
        target["active"] = conv_id
        return self.replies.remember(target, request)


def wire_chat_menu(page, handlers, meter_io: dict, mark_js: str) -> None:
    """Connect the hidden run button; the menus are drawn by ``CHAT_MENU_JS`` on load."""
    from .reply_controls import ReplyActions

    p, parts = page, page.chat_menu
    menu = ChatMenu(handlers, ReplyActions(handlers))
    view = [p.store, p.chatbot, p.chat_list, p.chat_name]
    outputs = [*view, p.export_json, p.export_md, p.replies.restore]
    parts.run.click(menu.run, [p.store, parts.command], outputs, js=RUN_JS, show_progress="hidden").success(
        **meter_io
    ).then(None, js=mark_js)
    p.demo.load(None, js=CHAT_MENU_JS)
