"""The page's components (no event wiring here; see :mod:`ui.wiring`)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .browser_storage import STORE_KEY
from .chat_menu import ChatMenuParts, build_chat_menu
from .i18n import EN, ZH
from .presets import PresetControls, build_presets, settings_state
from .reply_controls import ReplyControls, build_reply_controls
from .settings_form import SLIDER_RANGES, window_range
from .store_ref import StoreMirror, chat_store
from .tools_panel import ToolsPanel, tools_state
from .tools_panel import build as build_tools_panel

# No single "$" here: it would read "Price is $5 and $10" as math. Unambiguous $x$ is turned
# into \(x\) for display by ui.render.inline_math (pandoc's rule), never in the stored text.
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]

CSS = """
#meter { font-size: 0.85em; }
#meter .dropped-note { color: var(--error-text-color, #b91c1c); margin-top: 2px; }
#meter .bar { height: 6px; background: var(--neutral-200); border-radius: 3px; overflow: hidden; }
#meter .bar > div { height: 100%; background: var(--color-accent); }
/* A refused action's message is its toast; Gradio would also cover the outputs (the chat, the
   chat list, the persona library) with a bare "Error" badge until × is pressed: never show it. */
[data-testid="status-tracker"]:has(.error) { display: none !important; }
#chat .qc-dropped { opacity: 0.45; }
#chat .qc-dropped::before { content: "⛔ not sent: outside max_window_size"; font-size: 0.75em; display: block; }
#chat .qc-dropped:lang(zh)::before { content: "⛔ 未发送：超出最大窗口"; }
#header { justify-content: flex-end; }
#panel-open, #panel-close { display: none; }
/* Phones: a compact action row with the composer (icons, with empty alt text: the buttons keep
   their names for screen readers), and the persona/settings panel as a drawer opened from that row. */
@media (max-width: 767px) {
  #actions { flex-wrap: nowrap !important; gap: 4px; }
  #actions > button { min-width: 0 !important; flex: 1 1 0 !important; padding: 6px 2px; font-size: 0.85em; }
  #actions #regenerate, #actions #undo, #actions #clear, #actions #panel-open { font-size: 0; flex-grow: 0.6 !important; }
  #actions #regenerate::before { content: "↻" / ""; font-size: 18px; }
  #actions #undo::before { content: "↶" / ""; font-size: 18px; }
  #actions #clear::before { content: "🗑" / ""; font-size: 16px; }
  #actions #panel-open { display: block; }
  #actions #panel-open::before { content: "⚙" / ""; font-size: 18px; }
  #side-panel { position: fixed !important; top: 0; right: 0; bottom: 0; width: 92vw !important; z-index: 1000;
    overflow-y: auto; background: var(--background-fill-primary); padding: 8px; box-shadow: -4px 0 16px #0003;
    transform: translateX(105%); transition: transform 0.2s; flex-direction: column !important;
    flex-wrap: nowrap !important; }
  #side-panel > * { width: 100%; flex: none; }
  #side-panel[data-open] { transform: none; }
  #panel-close { display: block; }
  #chat { height: 52vh !important; }
}
"""

# Marks the chat rows the next prompt will drop (message indices come from the meter).
MARK_DROPPED_JS = """
() => {
  const meter = document.querySelector('#meter [data-dropped]');
  const dropped = new Set(meter ? JSON.parse(meter.dataset.dropped) : []);
  // Exactly one [data-testid=user|bot] per message, notes included, in order (rows may
  // group several consecutive messages, and .message elements nest).
  document.querySelectorAll('#chat [data-testid=user], #chat [data-testid=bot]').forEach((msg, i) => {
    msg.classList.toggle('qc-dropped', dropped.has(i));
  });
}
"""

i18n = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})


@dataclass
class Page:
    """Every component the wiring needs."""

    demo: gr.Blocks
    store: gr.BrowserState
    language: gr.Radio
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    undo: gr.Button
    clear: gr.Button
    meter: gr.HTML
    panel_open: gr.Button  # phones: persona & settings in a drawer (ui.page_js.PANEL_TOGGLE_JS)
    panel_close: gr.Button
    meter_refresh: gr.Button  # hidden; clicked by ui.page_js.LIVE_INPUT_JS when the draft changes
    search_refresh: gr.Button  # hidden; the same for the chat search
    raw_prompt: gr.Code
    raw_panel: gr.Accordion
    raw_open: gr.State
    # conversations
    new_chat: gr.Button
    search: gr.Textbox
    chat_list: gr.Radio
    chat_name: gr.Textbox
    rename: gr.Button
    delete_chat: gr.Button
    export_chat: gr.Button
    export_json: gr.DownloadButton
    export_md: gr.DownloadButton
    export_all: gr.DownloadButton  # every chat in one file (ui.archive); Import chat takes it back
    import_chat: gr.UploadButton
    # persona
    persona_pick: gr.Dropdown
    persona_name: gr.Textbox
    avatar: gr.Textbox
    system_prompt: gr.Textbox
    greeting: gr.Textbox
    example_dialogue: gr.Code
    in_first_turn: gr.Checkbox
    save_persona: gr.Button
    save_shared: gr.Button
    duplicate_persona: gr.Button
    delete_persona: gr.Button
    export_persona: gr.Button
    download_persona: gr.DownloadButton
    import_persona: gr.UploadButton
    persona_status: gr.Markdown
    # generation
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    repetition_penalty: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number
    max_window_size: gr.Slider
    reset_settings: gr.Button
    # model
    model_status: gr.Markdown
    reply_stats: gr.Markdown
    model_pick: gr.Dropdown
    load_model: gr.Button
    # tools (ui.tools_panel)
    tools: ToolsPanel | None = None
    # reply versions, Continue, Start reply with…, Restore chat (ui.reply_controls)
    replies: ReplyControls | None = None
    chat_menu: ChatMenuParts | None = None  # the chat list's ⋯ menus (ui.chat_menu)
    # sampler presets, settings remembered per browser (ui.presets)
    presets: PresetControls | None = None

    @property
    def settings(self) -> list:
        """Generation setting components, in :data:`ui.handlers.SETTING_ORDER`."""
        return [
            self.temperature,
            self.top_p,
            self.top_k,
            self.repetition_penalty,
            self.max_new_tokens,
            self.seed,
            self.max_window_size,
        ]


def build_page(
    secret: str,
    context_length: int,
    title: str = "Qwen Chat",
    model_names: tuple[str, ...] = (),
    mirror: StoreMirror | None = None,
) -> Page:
    """Create the components inside a new Blocks (``model_names``: the variants one may switch to;
    ``mirror``: where the stores sent to pages are kept for events that name them, :mod:`ui.store_ref`)."""
    # Gradio copies every file a handler returns (exports) or a user uploads into its cache;
    # without this the cache only grows (36 MB per 20 store changes when exports were written
    # on every change). Files older than an hour go, checked every 10 minutes.
    with gr.Blocks(title=title, fill_height=True, delete_cache=(600, 3600)) as demo:
        store = chat_store(mirror or StoreMirror(), storage_key=STORE_KEY, secret=secret)
        saved_settings = settings_state(secret)  # ui.presets
        saved_tools = tools_state(secret)  # ui.tools_panel
        with gr.Sidebar(label=i18n("conversations"), open=True):
            new_chat = gr.Button(i18n("new_chat"), variant="primary")
            search = gr.Textbox(label=i18n("search"), placeholder="🔍", max_lines=1, elem_id="search")
            search_refresh = gr.Button("search", elem_id="search-refresh", visible="hidden")
            chat_list = gr.Radio(label=i18n("chat_list"), choices=[], interactive=True, elem_id="chat-list")
            chat_name = gr.Textbox(label=i18n("chat_name"), max_lines=1)
            with gr.Row():
                rename = gr.Button(i18n("rename"), size="sm")
                delete_chat = gr.Button(i18n("delete_chat"), size="sm", variant="stop")
            # Exports are written when asked (Export chat), then offered by the download buttons.
            export_chat = gr.Button(i18n("export_chat"), size="sm")
            with gr.Row():
                export_json = gr.DownloadButton(i18n("export_json"), size="sm", visible=False)
                export_md = gr.DownloadButton(i18n("export_md"), size="sm", visible=False)
                export_all = gr.DownloadButton(i18n("export_all"), size="sm", visible=False, elem_id="export-all")
            import_chat = gr.UploadButton(i18n("import_chat"), file_types=[".json"], size="sm")
            chat_menu = build_chat_menu()
        with gr.Row(elem_id="header"):
            # The page's language, remembered in this browser (ui.page_js: LANGUAGE_*).
            language = gr.Radio(
                [("English", "en"), ("中文", "zh")], label=i18n("language"), elem_id="language", scale=0, min_width=220
            )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label=i18n("chat"),
                    elem_id="chat",
                    height="62vh",
                    latex_delimiters=LATEX,
                    buttons=["copy", "copy_all"],
                    editable="user",
                    render_markdown=True,
                    sanitize_html=True,
                    autoscroll=True,
                    # each message its own row: a persona switch is a row of its own, never inside
                    # the reply before it
                    group_consecutive_messages=False,
                )
                message = gr.Textbox(
                    label=i18n("message"),
                    placeholder=i18n("message_placeholder"),
                    lines=1,  # Gradio: lines=1 + max_lines>1 → Enter sends, Shift+Enter adds a line
                    max_lines=12,
                    autofocus=True,
                    elem_id="message",
                )
                with gr.Row(elem_id="actions"):
                    # Send and Stop share one slot: while a reply streams Send is hidden and Stop shown
                    # (visible="hidden" keeps both in the page, so Esc can always find #stop).
                    send = gr.Button(i18n("send"), variant="primary", elem_id="send")
                    stop = gr.Button(i18n("stop"), variant="stop", elem_id="stop", interactive=False, visible="hidden")
                    # Enabled by the meter once the chat holds a message (ui.handlers.Handlers.action_state).
                    regenerate = gr.Button(i18n("regenerate"), elem_id="regenerate", interactive=False)
                    undo = gr.Button(i18n("undo"), elem_id="undo", interactive=False)
                    clear = gr.Button(i18n("clear"), elem_id="clear", interactive=False)
                    # Phones only (CSS): opens the persona/settings panel as a drawer.
                    panel_open = gr.Button(i18n("open_panel"), elem_id="panel-open")
                replies = build_reply_controls(i18n)
                meter = gr.HTML(elem_id="meter", label=i18n("context"))
                meter_refresh = gr.Button("meter", elem_id="meter-refresh", visible="hidden")
                # Sent to the page only while open (raw_open): in a long chat it is the whole history.
                raw_open = gr.State(False)
                with gr.Accordion(i18n("raw_prompt"), open=False) as raw_panel:
                    raw_prompt = gr.Code(label=i18n("raw_prompt"), language=None, interactive=False, lines=8)
            with gr.Column(scale=2, elem_id="side-panel"):
                panel_close = gr.Button(i18n("close_panel"), elem_id="panel-close", size="sm")  # phones only
                with gr.Tab(i18n("persona")):
                    persona_pick = gr.Dropdown(label=i18n("persona_library"), choices=[], interactive=True)
                    with gr.Row():
                        persona_name = gr.Textbox(label=i18n("persona_name"), max_lines=1, scale=3)
                        avatar = gr.Textbox(label=i18n("avatar"), max_lines=1, scale=1)
                    system_prompt = gr.Textbox(
                        label=i18n("system_prompt"), lines=5, max_lines=20, elem_id="system-prompt"
                    )
                    in_first_turn = gr.Checkbox(label=i18n("persona_in_first_turn"))
                    greeting = gr.Textbox(label=i18n("greeting"), lines=2)
                    example_dialogue = gr.Code(label=i18n("example_dialogue"), language="json", lines=4)
                    with gr.Row():
                        save_persona = gr.Button(i18n("save_persona"), variant="primary", size="sm")
                        duplicate_persona = gr.Button(i18n("duplicate_persona"), size="sm")
                        delete_persona = gr.Button(i18n("delete_persona"), size="sm", variant="stop")
                    save_shared = gr.Button(i18n("save_shared"), size="sm", interactive=False)
                    with gr.Row():
                        export_persona = gr.Button(i18n("export_persona"), size="sm")
                        download_persona = gr.DownloadButton(i18n("download_persona"), size="sm", visible=False)
                        import_persona = gr.UploadButton(i18n("import_persona"), file_types=[".json"], size="sm")
                    persona_status = gr.Markdown()
                with gr.Tab(i18n("generation")):
                    r = SLIDER_RANGES
                    temperature = gr.Slider(*r["temperature"], step=0.05, label=i18n("temperature"))
                    top_p = gr.Slider(*r["top_p"], step=0.01, label=i18n("top_p"))
                    top_k = gr.Slider(*r["top_k"], step=1, label=i18n("top_k"))
                    repetition_penalty = gr.Slider(
                        *r["repetition_penalty"], step=0.01, label=i18n("repetition_penalty")
                    )
                    max_new_tokens = gr.Slider(*r["max_new_tokens"], step=1, label=i18n("max_new_tokens"))
                    seed = gr.Number(value=-1, precision=0, label=i18n("seed"))
                    low, high, step = window_range(context_length)
                    max_window_size = gr.Slider(low, high, step=step, label=i18n("max_window_size"))
                    reset_settings = gr.Button(i18n("reset_settings"), size="sm")
                    presets = build_presets(i18n, saved_settings)
                with gr.Tab(i18n("model")):
                    model_status = gr.Markdown(label=i18n("model_status"))
                    reply_stats = gr.Markdown()
                    # Enabled on page load for those who may switch (admins; see ui.owner).
                    model_pick = gr.Dropdown(label=i18n("switch_model"), choices=list(model_names), interactive=False)
                    load_model = gr.Button(i18n("load_model"), interactive=False)
                with gr.Tab(i18n("tools"), elem_id="tools-tab"):
                    tools = build_tools_panel(i18n, saved_tools)
    return Page(**{k: v for k, v in locals().items() if k in Page.__dataclass_fields__})
