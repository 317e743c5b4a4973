"""Events: which handler runs on what, chained with .then()/.success() and cancelled by Stop."""

from __future__ import annotations

from .chat_menu import wire_chat_menu
from .handlers import Handlers
from .layout import MARK_DROPPED_JS, Page
from .page_js import (
    ESC_STOPS_JS,
    LANGUAGE_SWITCH_JS,
    LANGUAGE_VALUE_JS,
    LIVE_INPUT_JS,
    NARROW_SIDEBAR_JS,
    PANEL_TOGGLE_JS,
    TOAST_TITLES_JS,
)
from .presets import SettingsStore, wire_presets
from .reply_controls import wire_replies
from .tools_panel import wire as wire_tools_panel


def wire(page: Page, h: Handlers, settings_store: SettingsStore | None = None) -> None:
    """Connect every component of ``page`` to ``h`` (``settings_store``: presets per login)."""
    p = page
    view = [p.store, p.chatbot, p.chat_list, p.chat_name]
    chat = [p.store, p.chatbot]
    persona_fields = [p.persona_name, p.avatar, p.system_prompt, p.greeting, p.example_dialogue, p.in_first_turn]
    respond_io = dict(
        fn=h.respond,
        # the Tools tab's values come last (after the request in Handlers.respond's signature)
        inputs=[
            *(p.store, p.system_prompt, p.in_first_turn, p.example_dialogue, *p.settings, *p.tools.inputs),
            p.replies.reply_start,  # "Start reply with…" (ui.reply_controls)
        ],
        outputs=[p.store, p.chatbot, p.reply_stats, p.stop, p.send, p.meter],  # meter: live while streaming
        concurrency_id="generate",
        show_progress="hidden",
    )
    meter_io = dict(
        fn=h.meter_view,  # the meter, and Regenerate/Undo/Clear enabled only when they can act
        inputs=[p.store, p.system_prompt, p.message, p.in_first_turn, p.max_window_size, p.example_dialogue],
        outputs=[p.meter, p.raw_prompt, p.regenerate, p.undo, p.clear],
        show_progress="hidden",
        queue=False,
    )

    # A closed tab or a client that died: Gradio's heartbeat ends and fires unload, which stops
    # the session's reply (giving its slot back) even when no event stream was open to notice.
    p.demo.unload(h.forget_session)
    # The language first: an update that arrives before Gradio's locale is set keeps the old
    # language's labels (ui.page_js.LANGUAGE_VALUE_JS).
    loaded = p.demo.load(None, None, [p.language], js=LANGUAGE_VALUE_JS).then(
        h.load,
        inputs=[p.store],
        outputs=[
            *view,
            p.persona_pick,
            *persona_fields,
            *p.settings,
            p.persona_status,
            p.model_status,
            p.model_pick,
            p.save_shared,
            p.load_model,
        ],
    )  # fmt: skip.then(**meter_io).then(None, js=MARK_DROPPED_JS)

    # Handlers that may refuse (raise gr.Error) go through the queue: only there does Gradio show
    # the error's own text (a toast); a queue=False event shows a bare "Error" badge instead.
    # Send: show the message at once, then stream; Stop cancels the stream.
    replies = []
    for trigger in (p.message.submit, p.send.click):
        ev = trigger(h.submit, [p.message, p.store], [p.message, *view], show_progress="hidden")
        replies.append(ev.success(**respond_io))
    ev = p.regenerate.click(h.regenerate, [p.store], chat)
    replies.append(ev.success(**respond_io))
    ev = p.chatbot.retry(h.regenerate, [p.store], chat)
    replies.append(ev.success(**respond_io))
    ev = p.chatbot.edit(h.edit, [p.store], chat)
    replies.append(ev.success(**respond_io))
    replies += wire_replies(p, h, respond_io, meter_io, MARK_DROPPED_JS)  # ‹ 2/3 ›, Continue, Restore
    wire_chat_menu(p, h, meter_io, MARK_DROPPED_JS)  # ⋯ on every chat: Rename, Export, Delete
    wire_presets(
        p, h, loaded, settings_store
    )  # sampler presets; the settings this browser last used come back after load
    for reply in replies:
        reply.then(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.stop.click(h.stop, None, None, cancels=replies, queue=False).then(
        h.after_stop, None, [p.store, p.chatbot, p.stop, p.send], queue=False
    ).then(**meter_io)
    p.demo.load(None, js=ESC_STOPS_JS)
    p.demo.load(None, js=TOAST_TITLES_JS)
    p.language.input(None, [p.language], None, js=LANGUAGE_SWITCH_JS)

    # The meter follows these from the changed store (it read the old one if fired alongside).
    for trigger in (p.undo.click, p.chatbot.undo):
        trigger(h.undo, [p.store], [*chat, p.message]).success(**meter_io).then(None, js=MARK_DROPPED_JS)
    for trigger in (p.clear.click, p.chatbot.clear):
        trigger(h.clear, [p.store], view).success(**meter_io).then(None, js=MARK_DROPPED_JS)

    # Context meter: live while typing, and whenever what the prompt holds changes.
    # .change, not .release: a slider moved with the keyboard never fires release.
    # The draft: ui.page_js.LIVE_INPUT_JS clicks the hidden meter_refresh on every edit (paste, cut, IME too).
    p.demo.load(None, js=LIVE_INPUT_JS)
    p.demo.load(None, js=NARROW_SIDEBAR_JS)
    p.panel_open.click(None, js=PANEL_TOGGLE_JS)
    p.panel_close.click(None, js=PANEL_TOGGLE_JS)
    # These send the draft and the prompt fields only, not the store (all chats): the server counts
    # the rest from the store this page showed last (Handlers.meter_draft), so a key press in a long
    # chat uploads a few bytes instead of every chat.
    draft_io = dict(meter_io, fn=h.meter_draft, inputs=[*meter_io["inputs"][1:], p.raw_open])
    p.raw_panel.expand(lambda: True, None, p.raw_open, queue=False).then(**meter_io)
    p.raw_panel.collapse(lambda: False, None, p.raw_open, queue=False)
    triggers = (p.meter_refresh.click, p.system_prompt.input, p.in_first_turn.change, p.max_window_size.change)
    for trigger in (*triggers, p.example_dialogue.input):
        trigger(**draft_io, trigger_mode="always_last").then(None, js=MARK_DROPPED_JS)

    # Conversations
    p.new_chat.click(h.new_chat, [p.store, p.persona_pick], view).success(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.chat_list.input(h.select_chat, [p.store, p.chat_list], [*view, p.persona_pick, *persona_fields]).success(
        **meter_io
    ).then(None, js=MARK_DROPPED_JS)
    p.search_refresh.click(h.chat_list, [p.store, p.search], [p.chat_list], queue=False, trigger_mode="always_last")
    p.rename.click(h.rename_chat, [p.store, p.chat_name], view)
    p.chat_name.submit(h.rename_chat, [p.store, p.chat_name], view)
    p.delete_chat.click(h.delete_chat, [p.store], view).success(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.import_chat.upload(h.import_chat, [p.store, p.import_chat], view).then(**meter_io).then(None, js=MARK_DROPPED_JS)
    # Export files are written only when asked: one click writes them and shows the download buttons.
    downloads = [p.export_json, p.export_md, p.export_all]
    p.export_chat.click(h.prepare_exports, [p.store], downloads, queue=False)
    # A download written before the chats changed would hand out an old copy: Export writes a fresh one.
    p.store.change(h.persist, [p.store], None, queue=False, show_progress="hidden").then(
        h.hide_downloads, None, downloads, queue=False, show_progress="hidden"
    )

    # Personas
    # Every persona event gets the store: without logins it carries the browser's id (ui.owner).
    p.persona_pick.input(h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings]).then(
        **meter_io
    )
    editor = [p.store, p.persona_pick, *persona_fields, *p.settings]
    p.save_persona.click(h.save_persona, editor, [p.persona_pick, p.persona_status])
    p.save_shared.click(h.save_shared_persona, editor, [p.persona_pick, p.persona_status])
    p.duplicate_persona.click(h.duplicate_persona, editor, [p.persona_pick, p.persona_status, p.persona_name])
    p.delete_persona.click(h.delete_persona, [p.store, p.persona_pick], [p.persona_pick, p.persona_status]).success(
        h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings]
    )
    p.export_persona.click(h.export_persona, [p.store, p.persona_pick], [p.download_persona])
    p.import_persona.upload(h.import_personas, [p.import_persona, p.store], [p.persona_pick, p.persona_status]).then(
        h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings], queue=False
    )

    # Generation settings and model
    p.reset_settings.click(h.default_settings, None, p.settings, queue=False)
    p.load_model.click(h.switch_model, [p.model_pick], [p.model_status, p.model_pick, *p.settings]).then(**meter_io)

    # Tools tab: the status line and tool choices follow what is enabled and pasted (ui.tools_panel).
    wire_tools_panel(p.tools, p.demo)
