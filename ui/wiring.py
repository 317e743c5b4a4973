"""Events: which handler runs on what, chained with .then()/.success() and cancelled by Stop."""

from __future__ import annotations

from .handlers import Handlers
from .layout import MARK_DROPPED_JS, Page


def wire(page: Page, h: Handlers) -> None:
    """Connect every component of ``page`` to ``h``."""
    p = page
    view = [p.store, p.chatbot, p.chat_list, p.chat_name]
    chat = [p.store, p.chatbot]
    persona_fields = [p.persona_name, p.avatar, p.system_prompt, p.greeting, p.example_dialogue, p.in_first_turn]
    respond_io = dict(
        fn=h.respond,
        inputs=[p.store, p.system_prompt, p.in_first_turn, p.example_dialogue, *p.settings],
        outputs=[p.store, p.chatbot, p.reply_stats, p.stop],
        concurrency_id="generate",
        show_progress="hidden",
    )
    meter_io = dict(
        fn=h.meter,
        inputs=[p.store, p.system_prompt, p.message, p.in_first_turn, p.max_window_size, p.example_dialogue],
        outputs=[p.meter, p.raw_prompt],
        show_progress="hidden",
        queue=False,
    )

    # A closed tab or a client that died: Gradio's heartbeat ends and fires unload, which stops
    # the session's reply (giving its slot back) even when no event stream was open to notice.
    p.demo.unload(h.forget_session)
    p.demo.load(
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

    # Send: show the message at once, then stream; Stop cancels the stream.
    replies = []
    for trigger in (p.message.submit, p.send.click):
        ev = trigger(h.submit, [p.message, p.store], [p.message, *view], queue=False, show_progress="hidden")
        replies.append(ev.success(**respond_io))
    ev = p.regenerate.click(h.regenerate, [p.store], chat, queue=False)
    replies.append(ev.success(**respond_io))
    ev = p.chatbot.retry(h.regenerate, [p.store], chat, queue=False)
    replies.append(ev.success(**respond_io))
    ev = p.chatbot.edit(h.edit, [p.store], chat, queue=False)
    replies.append(ev.success(**respond_io))
    for reply in replies:
        reply.then(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.stop.click(h.stop, None, None, cancels=replies, queue=False).then(
        h.after_stop, None, [p.store, p.chatbot, p.stop], queue=False
    ).then(**meter_io)

    p.undo.click(h.undo, [p.store], [*chat, p.message], queue=False)
    p.chatbot.undo(h.undo, [p.store], [*chat, p.message], queue=False)
    p.clear.click(h.clear, [p.store], view, queue=False)
    p.chatbot.clear(h.clear, [p.store], view, queue=False)

    # Context meter: live while typing, and whenever what the prompt holds changes.
    # .change, not .release: a slider moved with the keyboard never fires release.
    triggers = (p.message.input, p.system_prompt.input, p.in_first_turn.change, p.max_window_size.change)
    for trigger in (*triggers, p.example_dialogue.input):
        trigger(**meter_io, trigger_mode="always_last").then(None, js=MARK_DROPPED_JS)
    for trigger in (p.undo.click, p.clear.click, p.chatbot.undo, p.chatbot.clear):
        trigger(**meter_io).then(None, js=MARK_DROPPED_JS)

    # Conversations
    p.new_chat.click(h.new_chat, [p.store, p.persona_pick], view, queue=False).then(**meter_io).then(
        None, js=MARK_DROPPED_JS
    )
    p.chat_list.input(
        h.select_chat, [p.store, p.chat_list], [*view, p.persona_pick, *persona_fields], queue=False
    ).then(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.search.input(h.chat_list, [p.store, p.search], [p.chat_list], queue=False, trigger_mode="always_last")
    p.rename.click(h.rename_chat, [p.store, p.chat_name], view, queue=False)
    p.chat_name.submit(h.rename_chat, [p.store, p.chat_name], view, queue=False)
    p.delete_chat.click(h.delete_chat, [p.store], view, queue=False).then(**meter_io).then(None, js=MARK_DROPPED_JS)
    p.import_chat.upload(h.import_chat, [p.store, p.import_chat], view).then(**meter_io).then(None, js=MARK_DROPPED_JS)
    # Export files are written only when asked: one click writes them and shows the download buttons.
    p.export_chat.click(h.prepare_exports, [p.store], [p.export_json, p.export_md], queue=False)
    p.store.change(h.persist, [p.store], None, queue=False, show_progress="hidden")

    # Personas
    # Every persona event gets the store: without logins it carries the browser's id (ui.owner).
    p.persona_pick.input(
        h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings], queue=False
    ).then(**meter_io)
    editor = [p.store, p.persona_pick, *persona_fields, *p.settings]
    p.save_persona.click(h.save_persona, editor, [p.persona_pick, p.persona_status], queue=False)
    p.save_shared.click(h.save_shared_persona, editor, [p.persona_pick, p.persona_status], queue=False)
    p.duplicate_persona.click(
        h.duplicate_persona, editor, [p.persona_pick, p.persona_status, p.persona_name], queue=False
    )
    p.delete_persona.click(
        h.delete_persona, [p.store, p.persona_pick], [p.persona_pick, p.persona_status], queue=False
    ).then(h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings], queue=False)
    p.export_persona.click(h.export_persona, [p.store, p.persona_pick], [p.download_persona], queue=False)
    p.import_persona.upload(h.import_personas, [p.import_persona, p.store], [p.persona_pick, p.persona_status]).then(
        h.pick_persona, [p.store, p.persona_pick], [*chat, *persona_fields, *p.settings], queue=False
    )

    # Generation settings and model
    p.reset_settings.click(h.default_settings, None, p.settings, queue=False)
    p.load_model.click(h.switch_model, [p.model_pick], [p.model_status, p.model_pick, *p.settings]).then(**meter_io)
