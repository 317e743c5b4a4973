"""Who is calling, what they own and whether they may change what every user shares.

The one place that decides it, for every handler and the ``/chat`` endpoint:

* ``--auth``: the login (``request.username``, set by Gradio's login form) owns the data;
  admins are the logins named by ``--admins``.
* ``--api-key`` without ``--auth``: the UI's login takes an API key as the password and
  ``request.username`` is a stable id derived from that key (``key:…``, see ``server/auth.py``);
  every key holder is an admin (a key is the instance's credential).
* neither: the *browser* owns the data. Its id is a random token kept in the store the
  browser holds in its encrypted ``BrowserState`` (``store["browser_id"]``), never Gradio's
  session hash (that changes on every reload). Nobody may change shared state.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

BROWSER_ID_KEY = "browser_id"


@dataclass(frozen=True)
class Access:
    """The access-related flags the app was started with."""

    logins: bool = False  # --auth
    api_keys: bool = False  # --api-key
    admins: frozenset[str] = field(default_factory=frozenset)  # --admins (logins)

    def admin_rule(self) -> str:
        """Who may change what all users share, as a sentence for refusals and the Model tab."""
        if self.logins:
            if self.admins:
                return "Only an admin (--admins) can do this."
            return "Only an admin can do this: restart the app with --admins USER[,USER…] naming --auth users."
        if self.api_keys:
            return "This needs an API key login."
        return (
            "Without logins nobody can change what all users share: start the app with "
            "--auth USER:PASSWORD --admins USER to allow it."
        )


@dataclass(frozen=True)
class Owner:
    """The caller: the id their data is filed under, what kind of id it is, and their rights."""

    id: str | None  # "user:ann", "key:ab12…", "browser:<token hash>"; None: an anonymous API call
    kind: str  # "user", "key" or "browser"
    is_admin: bool = False
    rate_key: str = "anonymous"  # what rate limits and fair turns count by

    @property
    def history_key(self) -> str | None:
        """Whose ``--server-history`` file this is: the login for users (the layout it always had), else the id."""
        if self.kind == "user" and self.id:
            return self.id.removeprefix("user:")
        return self.id

    @property
    def folder_name(self) -> str:
        """A file-name-safe, fixed-length name for this owner's folder (no user text in paths)."""
        return hashlib.sha256((self.id or "anonymous").encode("utf-8")).hexdigest()[:32]


def new_browser_id() -> str:
    """A fresh random browser id (128 bits: unguessable, so it can serve as the browser's key)."""
    return secrets.token_urlsafe(16)


def _client_address(request) -> str:
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    return host or "unknown-address"


def owner_of(request, access: Access, store: dict | None = None) -> Owner:
    """The owner of a Gradio request (see the module docstring); ``store`` gives the browser id."""
    username = getattr(request, "username", None) if request is not None else None
    if username and access.logins:
        return Owner(f"user:{username}", "user", username in access.admins, f"user:{username}")
    if username and access.api_keys:
        name = username if username.startswith("key:") else f"key:{username}"
        return Owner(name, "key", True, name)
    # No login: the client's address is all rate limits can count by (a session hash is free).
    rate_key = f"addr:{_client_address(request)}"
    browser = store.get(BROWSER_ID_KEY) if isinstance(store, dict) else None
    if isinstance(browser, str) and 16 <= len(browser) <= 64:
        digest = hashlib.sha256(browser.encode("utf-8")).hexdigest()[:32]
        return Owner(f"browser:{digest}", "browser", False, rate_key)
    return Owner(None, "browser", False, rate_key)
