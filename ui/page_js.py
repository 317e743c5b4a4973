"""Small browser-side scripts the page runs (keyboard shortcuts, layout tweaks); no app state lives here."""

from __future__ import annotations

# Esc stops the streaming reply: it clicks #stop, which is enabled only while a reply streams.
# Installed once per page (demo.load), on the document, so it works wherever the focus is.
ESC_STOPS_JS = """
() => {
  if (window.__qcEscStops) return;
  window.__qcEscStops = true;
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || e.isComposing) return;  // Esc inside an IME cancels the composition only
    const stop = document.querySelector('button#stop');
    if (stop && !stop.disabled) { e.preventDefault(); stop.click(); }
  });
}
"""

LANG_KEY = "qwen-lang"  # localStorage key and cookie name (the cookie tells handlers; ui.server_text)

# Gradio 6.31 titles a toast with its type ("Error", "Warning", "Info", "Success") whatever title
# the server gave: in 中文 the page rewrites those words as toasts appear (the text is localized
# server-side, ui.refusal). Installed once per page (demo.load).
TOAST_TITLES_JS = f"""
() => {{
  if (window.__qcToastTitles) return;
  window.__qcToastTitles = true;
  const stored = localStorage.getItem('{LANG_KEY}');
  const lang = stored === 'zh' || stored === 'en' ? stored
    : ((navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en');
  if (lang !== 'zh') return;
  const ZH = {{Error: '错误', Warning: '警告', Info: '提示', Success: '成功'}};
  const retitle = () => document.querySelectorAll('.toast-title').forEach((title) => {{
    const text = title.firstChild;
    if (text && text.nodeType === Node.TEXT_NODE && ZH[text.nodeValue.trim()]) text.nodeValue = ZH[text.nodeValue.trim()] + ' ';
  }});
  new MutationObserver(retitle).observe(document.body, {{childList: true, subtree: true, characterData: true}});
}}
"""

# In <head>: the cookie carries the language chosen with the page's control to the handlers'
# own text (meter, status lines, chat titles); without a choice they follow Accept-Language.
LANGUAGE_HEAD = f"""
<script>
(() => {{
  try {{
    const lang = localStorage.getItem('{LANG_KEY}');
    const keep = lang === 'zh' || lang === 'en';
    document.cookie = '{LANG_KEY}=' + (keep ? lang : '') + '; path=/; SameSite=Lax; max-age=' + (keep ? 31536000 : 0);
  }} catch (e) {{ /* storage blocked: the browser's language stays */ }}
}})();
</script>
"""

# On load: the stored choice is applied to Gradio's own translations (its locale store, through
# the changeLocale that Gradio's Settings panel uses, from the module the page already loaded),
# and becomes the control's value; without a choice, the browser's language.
LANGUAGE_VALUE_JS = f"""
async () => {{
  const draft = sessionStorage.getItem('qwen-draft');  // carried over a language switch
  const box = document.querySelector('#message textarea');
  if (draft !== null && box) {{
    sessionStorage.removeItem('qwen-draft');
    box.value = draft;
    box.dispatchEvent(new Event('input', {{bubbles: true}}));
  }}
  const stored = localStorage.getItem('{LANG_KEY}');
  if (stored === 'zh' || stored === 'en') {{
    const core = performance.getEntriesByType('resource').map((e) => e.name)
      .find((n) => /\\/assets\\/core-[\\w-]+\\.js$/.test(n));
    try {{
      if (core) (await import(core)).changeLocale(stored === 'zh' ? 'zh-CN' : 'en');
      // Tab buttons take a new label only when their tab is shown: show each, then the first again.
      await new Promise((done) => setTimeout(done, 50));
      document.querySelectorAll('[role=tablist]').forEach((list) => {{
        const tabs = [...list.querySelectorAll('[role=tab]')];
        const shown = tabs.findIndex((t) => t.getAttribute('aria-selected') === 'true');
        tabs.forEach((t) => t.click());
        if (shown >= 0) tabs[shown].click();
      }});
    }} catch (e) {{ console.warn('language', e); }}
    return stored;
  }}
  return (navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}}
"""

# A new choice is stored and the page reloads in it (the chats live in the browser's storage,
# and the draft is carried over in sessionStorage).
LANGUAGE_SWITCH_JS = f"""
(lang) => {{
  if (lang !== 'zh' && lang !== 'en') return;
  if (lang === (localStorage.getItem('{LANG_KEY}') || '')) return;
  localStorage.setItem('{LANG_KEY}', lang);
  const draft = document.querySelector('#message textarea');
  if (draft && draft.value) sessionStorage.setItem('qwen-draft', draft.value);
  location.reload();
}}
"""

# Gradio's .input misses some edits; every edit of the draft or the chat search (typing, paste,
# cut, deleting, input-method entry) fires the DOM's 'input' event, and IME entry ends with
# 'compositionend'. Delegated from the document (Gradio may re-render the textareas), each clicks a
# hidden button whose click event refreshes the meter or the chat list. No long debounce: those
# events are trigger_mode="always_last" (ui.wiring), so keys typed while one is in flight cost one
# more request after it, not one each; the 20 ms only folds the events of one edit (paste + input).
LIVE_INPUT_JS = """
() => {
  if (window.__qcLiveInput) return;
  window.__qcLiveInput = true;
  const targets = {'message': 'meter-refresh', 'search': 'search-refresh'};
  const timers = {};
  const fire = (e) => {
    if (e.isComposing) return;  // mid-composition: wait for compositionend
    const box = e.target.closest && e.target.closest('#message, #search');
    if (!box || !targets[box.id]) return;
    clearTimeout(timers[box.id]);
    timers[box.id] = setTimeout(() => {
      const button = document.getElementById(targets[box.id]);
      if (button) button.click();
    }, 20);
  };
  document.addEventListener('input', fire, true);
  document.addEventListener('compositionend', fire, true);
}
"""

# Phones: the sidebar (chat list) starts closed, so the chat is what one sees first.
NARROW_SIDEBAR_JS = """
() => {
  if (window.innerWidth >= 768) return;
  const sidebar = document.querySelector('.sidebar.open');
  const toggle = sidebar && sidebar.querySelector('.toggle-button');
  if (toggle) toggle.click();
}
"""

# Phones: the persona/settings drawer (CSS in ui.layout) opens and closes with an attribute of
# its own (Gradio manages the element's classes, never this; its CSS is scoped below <body>).
PANEL_TOGGLE_JS = """
() => { document.getElementById('side-panel').toggleAttribute('data-open'); }
"""
