"""The Gradio chat app. It talks to the model only through ``qwen_core``'s public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .api import make_chat_endpoint
from .browser_storage import storage_head
from .conversations import MAX_IMPORT_BYTES
from .handlers import Handlers
from .layout import CSS, build_page, i18n
from .owner import Access
from .page_js import LANGUAGE_HEAD
from .personas import PersonaLibraries
from .presets import SettingsStore
from .server_text import localize
from .service import ChatService, Limits
from .sessions import SessionSweeper
from .storage import stable_secret
from .store_ref import RESYNC_MESSAGE, StoreMirror, store_ref_head
from .user_store import UserStore
from .wiring import wire

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class UIConfig:
    """What the UI needs from the app's configuration."""

    data_dir: Path
    server_history: bool = False  # keep a server-side copy per logged-in user
    concurrency: int = 4  # replies generated at once
    limits: Limits = field(default_factory=Limits)
    closed_session_ttl: float = 600.0  # seconds a closed page's Gradio session is kept
    store_cache_mb: int = 512  # the stores sent to pages, for events that name them (ui.store_ref)
    title: str = "Qwen Chat"
    access: Access = field(default_factory=Access)  # --auth / --api-key / --admins (see ui.owner)
    log_content: bool = False  # --log-content: message text in the log (off by default)


def build_app(manager, config: UIConfig, scheduler=None) -> tuple[gr.Blocks, dict]:
    """Build the Blocks app; returns it and the kwargs ``launch()`` / ``mount_gradio_app()`` need."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    libraries = PersonaLibraries(ASSETS / "personas", config.data_dir / "personas")
    libraries.migrate()  # the old single library (DATA/personas/*.json) becomes the shared one
    # The service's own view is read-only (built-ins + shared): handlers pass each caller's view.
    service = ChatService(manager, libraries.view(None), config.limits, scheduler)
    service.libraries = libraries
    users = UserStore(config.data_dir / "users") if config.server_history else None
    context = manager.engine.info.context_length if manager.engine else 8192
    names = tuple(spec.name for spec in manager.specs)
    mirror = StoreMirror(config.store_cache_mb * 2**20)  # for events that name a store by rev (ui.store_ref)
    page = build_page(stable_secret(config.data_dir), context, config.title, names, mirror)
    sweeper = SessionSweeper(page.demo, config.closed_session_ttl)
    handlers = Handlers(service, users, sweeper, libraries, config.access, config.log_content)
    with page.demo:
        # With logins, settings and presets follow the login (DATA/settings), not the browser.
        settings_store = SettingsStore(config.data_dir / "settings") if config.access.logins else None
        wire(page, handlers, settings_store)
        endpoint = make_chat_endpoint(service, config.access, config.log_content)
        gr.api(endpoint, api_name="chat", concurrency_id="generate")
    # Gradio's own queue only needs to pass requests on; the scheduler decides who runs.
    page.demo.queue(default_concurrency_limit=max(8, 2 * config.concurrency), max_size=max(64, 16 * config.concurrency))
    page.demo.service = service  # for tests and the HTTP API
    page.demo.sessions = handlers.sessions  # for tests
    page.demo.store_mirror = mirror  # for tests
    # Uploads are chat and persona imports: nothing larger than an import may be stored.
    # run_history=False: Gradio's run history (/gradio_api/runs) would keep every event's inputs,
    # the chats in plaintext, in the browser's storage. The head script catches failed store writes.
    return page.demo, {
        "i18n": i18n,
        "css": CSS,
        "max_file_size": MAX_IMPORT_BYTES,
        "run_history": False,
        "head": storage_head(config.server_history) + store_ref_head(localize(RESYNC_MESSAGE, "zh")) + LANGUAGE_HEAD,
    }
