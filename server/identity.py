"""Who a caller is: the one place that decides what a request owns.

The rule (``resolve``), the same for the UI, the Gradio API, ``/chat`` and ``/v1``:

(a) a Gradio login cookie: the login's user name (``--auth``), or, with ``--api-key`` alone
    (where the login form takes a key as its password), the key's id ``key:<sha256 prefix>``
    whatever name was typed;
(b) ``Authorization: Bearer <API key>``: ``key:<first 12 hex of sha256(key)>``;
(c) ``Authorization: Basic``: the ``--auth`` user;
(d) nobody (anonymous): ``Caller.id`` is None; rate limits then key on the client address
    (``Caller.rate_key``) and data on the browser session (Gradio's ``session_hash``).

``/v1`` and the other API paths take header credentials only (b, c): a cookie is sent by the
browser on its own, so it must not authorise an API call a page on another site makes.

The middleware (:mod:`server.middleware`) resolves each request once and stores the result in
the ASGI scope; Gradio reads it through a dependency override of its ``get_current_user``, so
``gr.Request.username`` in every handler is ``Caller.id``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from .auth import Auth, Verdict

SCOPE_KEY = "qwen.caller"


@dataclass(frozen=True)
class Caller:
    """A resolved caller; ``id`` None means anonymous."""

    id: str | None
    address: str
    via: str = "none"  # "cookie", "bearer", "basic" or "none"

    @property
    def rate_key(self) -> str:
        """What rate limits and fairness count against: the login or key, else the client address."""
        return self.id or f"addr:{self.address}"


@dataclass(frozen=True)
class Refusal:
    """Credentials were sent but are refused; ``retry_after`` when the caller is throttled."""

    verdict: Verdict


def client_address(scope) -> str:
    """The peer address uvicorn reports (behind a proxy, run uvicorn with --proxy-headers)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _cookie_user(scope, gradio_app) -> str | None:
    if gradio_app is None:
        return None
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(_header(scope, b"cookie"))
    except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
        return None
    for name in (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}"):
        if name in jar and (user := gradio_app.tokens.get(jar[name].value)):
            return user
    return None


async def resolve(scope, auth: Auth, gradio_app=None, cookies: bool = True) -> Caller | Refusal:
    """The caller of a request (see the module docstring for the rule)."""
    address = client_address(scope)
    if cookies and (user := _cookie_user(scope, gradio_app)):
        return Caller(user, address, "cookie")
    scheme, _, value = _header(scope, b"authorization").partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value and auth.api_keys:
        wait = auth.verifier.failures.retry_after(f"addr:{address}")
        if wait is not None:
            return Refusal(Verdict(False, wait))
        owner = auth.match_key(value)
        if owner is None:
            auth.verifier.failures.add(f"addr:{address}")
            return Refusal(Verdict(False))
        return Caller(owner, address, "bearer")
    if scheme == "basic" and value and auth.users:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return Refusal(Verdict(False))
        verdict = await auth.verifier.verify(user, password, address)
        return Caller(user, address, "basic") if verdict.ok else Refusal(verdict)
    if scheme in ("bearer", "basic") and value:
        return Refusal(Verdict(False))  # a scheme this instance does not use
    return Caller(None, address)


def caller_of(scope_or_request) -> Caller:
    """The caller the middleware resolved for this request (anonymous if none was)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    caller = scope.get(SCOPE_KEY)
    return caller if isinstance(caller, Caller) else Caller(None, client_address(scope))
