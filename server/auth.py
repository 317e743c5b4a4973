"""Logins and API keys. Passwords are kept only as salted scrypt hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field

from fastapi import Request


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$<salt>$<hash>`` (n=2**14, r=8, p=1)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a stored hash."""
    try:
        _, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=2**14, r=8, p=1, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass
class Auth:
    """Who may use the app: login users (UI and API) and API keys (API)."""

    users: dict[str, str] = field(default_factory=dict)  # name -> scrypt hash
    api_keys: frozenset[str] = frozenset()

    @classmethod
    def from_pairs(cls, pairs, api_keys=()) -> Auth:
        """From ``(user, password)`` pairs; a password already written as ``scrypt$…`` is kept as is."""
        users = {u: p if p.startswith("scrypt$") else hash_password(p) for u, p in pairs}
        return cls(users, frozenset(api_keys))

    @property
    def enabled(self) -> bool:
        """Whether anything is protected."""
        return bool(self.users or self.api_keys)

    def login(self, username: str, password: str) -> bool:
        """Gradio's login check."""
        stored = self.users.get(username)
        return stored is not None and check_password(password, stored)

    def api_caller(self, request: Request) -> str | None:
        """The API caller's name, or None when the request carries no valid credentials."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            if any(hmac.compare_digest(value.encode(), k.encode()) for k in self.api_keys):
                return "key:" + hashlib.sha256(value.encode()).hexdigest()[:12]
            return None
        if scheme.lower() == "basic" and value:
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if self.login(user, password) else None
        return None
