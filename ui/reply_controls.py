"""Reply versions (‹ 2/3 ›), Continue, "Start reply with…" and Restore after Delete chat / Clear.

The components (:func:`build_reply_controls`), their handlers (:class:`ReplyActions`, plain
functions of component values over :class:`ui.service.ChatService`) and their events
(:func:`wire_replies`). The data they act on is described in :mod:`ui.versions`.
"""

from __future__ import annotations

import copy
import html
import json
from dataclasses import dataclass

import gradio as gr

from . import versions
from .conversations import ensure_ids, message_id, to_chatbot
from .refusal import Refusal, notify_info
from .versions import CONTINUE_KEY


@dataclass
class ReplyControls:
    """The components under the message box."""

    previous: gr.Button
    position: gr.HTML
    next: gr.Button
    continue_reply: gr.Button
    reply_start: gr.Textbox
    restore: gr.Button
    info: gr.HTML  # the last reply's figures; every reply's as a tooltip (INFO_TITLES_JS)


def build_reply_controls(i18n) -> ReplyControls:
    """Create the controls where they are called (inside the chat column of :func:`ui.layout.build_page`)."""
    with gr.Row(elem_id="reply-controls", equal_height=True):
        # The switcher shows only once the last reply has two versions or more.
        previous = gr.Button("‹", elem_id="version-prev", size="sm", scale=0, min_width=40, visible=False)
        position = gr.HTML("", elem_id="version-position", visible=False, padding=False)
        next_ = gr.Button("›", elem_id="version-next", size="sm", scale=0, min_width=40, visible=False)
        continue_reply = gr.Button(i18n("continue"), elem_id="continue", size="sm", scale=0, interactive=False)
        restore = gr.Button(i18n("restore_chat"), elem_id="restore-chat", size="sm", scale=0, visible=False)
        info = gr.HTML("", elem_id="reply-info", padding=False)
    reply_start = gr.Textbox(
        label=i18n("reply_start"),
        placeholder=i18n("reply_start_placeholder"),
        max_lines=1,
        elem_id="reply-start",
    )
    return ReplyControls(previous, position, next_, continue_reply, reply_start, restore, info)


# Every reply's figures as the tooltip of its bubble (one [data-testid=user|bot] per message, in order),
# and each chat's last change next to its name in the chat list, in the browser's own time zone and
# language (aria-hidden: the chat's accessible name stays its title).
INFO_TITLES_JS = """
() => {
  const holder = document.querySelector('#reply-info [data-infos]');
  const infos = holder ? JSON.parse(holder.dataset.infos) : [];
  document.querySelectorAll('#chat [data-testid=user], #chat [data-testid=bot]').forEach((msg, i) => {
    if (infos[i]) msg.setAttribute('title', 'ⓘ ' + infos[i]); else msg.removeAttribute('title');
  });
  const dates = holder ? JSON.parse(holder.dataset.dates || '{}') : {};
  // In the page's language (the header's control, ui.page_js), else the browser's.
  const pick = localStorage.getItem('qwen-lang');
  const locale = pick === 'zh' ? 'zh-CN' : (pick === 'en' ? 'en' : undefined);
  const fmt = new Intl.DateTimeFormat(locale, {month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'});
  document.querySelectorAll('#chat-list input[type=radio]').forEach((input) => {
    const label = input.closest('label');
    if (!label) return;
    let tag = label.querySelector('.qc-date');
    if (!dates[input.value]) { if (tag) tag.remove(); return; }
    if (!tag) {
      tag = document.createElement('small');
      tag.className = 'qc-date';
      tag.setAttribute('aria-hidden', 'true');
      tag.style.cssText = 'opacity:.6;margin-left:.5em;font-size:.8em;white-space:nowrap';
      label.appendChild(tag);
    }
    tag.textContent = fmt.format(new Date(dates[input.value] * 1000));
  });
}
"""


def info_html(messages: list[dict], dates: dict[str, float] | None = None) -> str:
    """The last reply's figures as a line, with every message's (aligned by index) in ``data-infos``
    and each chat's last change (epoch seconds, by chat id) in ``data-dates``."""
    infos = [versions.info_line(m.get("info")) if m.get("role") == "assistant" else "" for m in messages]
    found = versions.last_reply(messages)
    last = infos[found[0]] if found else ""
    data = html.escape(json.dumps(infos, ensure_ascii=False), quote=True)
    when = html.escape(json.dumps(dates or {}), quote=True)
    line = f"ⓘ {html.escape(last)}" if last else ""
    return f"<div class='reply-info' data-infos=\"{data}\" data-dates=\"{when}\" role='status'>{line}</div>"


class ReplyActions:
    """Handlers of the reply controls, bound to the page's :class:`ui.handlers.Handlers`."""

    def __init__(self, handlers):
        self.h = handlers
        self.service = handlers.service

    def _session(self, request: gr.Request | None):
        return self.service.session(getattr(request, "session_hash", None) or "anonymous")

    # --- the switcher and Continue ----------------------------------------------------------
    def state(self, store) -> tuple:
        """‹, "2/3", › and Continue as the last reply of the chat on screen allows."""
        try:
            store = self.service.ensure_store(store)
            msgs = self.service.active(store)["messages"]
        except (StopIteration, KeyError, TypeError):
            store, msgs = {"conversations": []}, []
        dates = {
            c["id"]: float(c["updated"])
            for c in store["conversations"]
            if isinstance(c.get("id"), str) and isinstance(c.get("updated"), (int, float)) and c.get("messages")
        }
        where = versions.position(msgs)
        found = versions.last_reply(msgs)
        can_continue = bool(found and found[1]["content"].strip() and versions.user_before(msgs, found[0]))
        cont = gr.update(interactive=can_continue)
        info = info_html(msgs, dates)
        if where is None:
            hidden = gr.update(visible=False)
            return hidden, hidden, hidden, cont, info
        shown, count = where
        label = f"<span aria-label='version {shown} of {count}'>{shown}/{count}</span>"
        return (
            gr.update(visible=True, interactive=shown > 1),
            gr.update(value=label, visible=True),
            gr.update(visible=True, interactive=shown < count),
            cont,
            info,
        )

    def switch(self, store, step: int, request: gr.Request | None = None):
        """Show another version of the last reply (the one shown is the one the model sees next)."""
        self.h._guard(request)
        store = self.service.ensure_store(store)
        conv = self.service.active(store)
        versions.switch(conv, step)
        return store, to_chatbot(conv["messages"])

    def previous(self, store, request: gr.Request = None):
        """‹: the previous version."""
        return self.switch(store, -1, request)

    def next(self, store, request: gr.Request = None):
        """›: the next version."""
        return self.switch(store, +1, request)

    def mark_continue(self, store, request: gr.Request = None):
        """Continue: mark the last reply so the reply chain extends it instead of answering anew."""
        self.h._guard(request)
        store = self.service.ensure_store(store)
        conv = self.service.active(store)
        found = versions.last_reply(conv["messages"])
        if found is None or not found[1]["content"].strip():
            raise Refusal("There is no reply to continue yet: send a message first.", duration=8)
        conv[CONTINUE_KEY] = found[1]["id"]
        return store, to_chatbot(conv["messages"])

    # --- Restore after Delete chat / Clear ----------------------------------------------------
    def remember(self, store, request: gr.Request = None):
        """Runs alongside Delete chat and Clear with the store as it was: keeps the chat for Restore."""
        if request is not None and self.service.is_busy(request.session_hash or "anonymous"):
            return gr.skip()  # the action itself is refused while a reply streams
        try:
            conv = self.service.active(self.service.ensure_store(store))
        except (StopIteration, KeyError):
            return gr.skip()
        if not conv.get("messages"):
            return gr.update(visible=False)
        self._session(request).trash = copy.deepcopy(conv)
        notify_info(f"“{conv.get('title') or 'Chat'}” was removed. Press ↩ Restore chat to bring it back.", duration=8)
        return gr.update(visible=True)

    def restore(self, store, request: gr.Request = None):
        """Bring the last deleted or cleared chat back (as a chat of its own if its place is taken)."""
        self.h._guard(request)
        session = self._session(request)
        saved, session.trash = getattr(session, "trash", None), None
        store = self.service.ensure_store(store)
        if saved is None:
            raise Refusal("There is nothing to restore.", duration=6)
        restore_chat(store, saved)
        return (*self.h._view(store), gr.update(visible=False))


def restore_chat(store: dict, saved: dict) -> dict:
    """Put ``saved`` (a conversation as it was before Delete chat or Clear) back into ``store`` and show it.

    Its messages get new ids (the old ones are recorded as deleted, so a merge would drop them
    again); a cleared chat that is still empty takes them back, otherwise the chat comes back as a
    new one at the top of the list.
    """
    conv = copy.deepcopy(saved)
    for msg in conv.get("messages") or []:
        msg["id"] = message_id()
    ensure_ids(conv)
    conv.pop(CONTINUE_KEY, None)
    place = next((c for c in store["conversations"] if c.get("id") == conv.get("id")), None)
    if place is not None and not place.get("messages"):
        place.update({k: v for k, v in conv.items() if k not in ("id", "deleted")})
        store["active"] = place["id"]
        return store
    conv["id"] = message_id()
    conv.pop("deleted", None)
    store["conversations"].insert(0, conv)
    store["active"] = conv["id"]
    return store


def wire_replies(page, h, respond_io: dict, meter_io: dict, mark_js: str) -> list:
    """Connect the reply controls; returns the reply chains they start (Stop cancels them)."""
    p, r = page, page.replies
    actions = ReplyActions(h)
    chat = [p.store, p.chatbot]
    controls = [r.previous, r.position, r.next, r.continue_reply, r.info]
    # Every change of the store (a reply, a switch, another chat shown) updates the switcher.
    p.store.change(actions.state, [p.store], controls, queue=False, show_progress="hidden").then(
        None, js=INFO_TITLES_JS
    )
    p.search.input(None, js=INFO_TITLES_JS)  # a filtered list is drawn anew: date it again
    for button, fn in ((r.previous, actions.previous), (r.next, actions.next)):
        button.click(fn, [p.store], chat, show_progress="hidden").success(**meter_io).then(None, js=mark_js)
    started = r.continue_reply.click(actions.mark_continue, [p.store], chat, show_progress="hidden")
    reply = started.success(**respond_io)
    for trigger in (p.delete_chat.click, p.clear.click, p.chatbot.clear):
        trigger(actions.remember, [p.store], [r.restore], show_progress="hidden")  # queued: its toast shows
    view = [p.store, p.chatbot, p.chat_list, p.chat_name]
    r.restore.click(actions.restore, [p.store], [*view, r.restore]).success(**meter_io).then(None, js=mark_js)
    return [reply]
