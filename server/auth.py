"""Logins and API keys. Passwords are kept only as salted scrypt hashes.

A password check is deliberately expensive (scrypt, ~0.1 s of CPU and 16 MB), so it never runs
on the event loop: :class:`PasswordVerifier` hashes in a worker thread, at most
``hash_concurrency`` at a time (on 2 cores, one at a time kept ``/healthz`` at 10-20 ms under a
flood of wrong passwords; unbounded threads left it 8x slower), remembers a success for
``cache_ttl`` seconds (keyed on an HMAC of user and password under a per-process random key,
never the password itself), and throttles failures per user name and per client address. An
unknown user costs one hash like a known one (a dummy hash), so timing does not tell which
names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import anyio


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$<salt>$<hash>`` (n=2**14, r=8, p=1)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a stored hash (blocking: ~0.1 s of CPU)."""
    try:
        _, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=2**14, r=8, p=1, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def key_id(key: str) -> str:
    """The stable, non-secret name of an API key's owner: ``key:<first 12 hex of its sha256>``."""
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Verdict:
    """A credential check's outcome: ``ok``, or refused; ``retry_after`` (s) when throttled."""

    ok: bool
    retry_after: int | None = None

    @property
    def throttled(self) -> bool:
        """Refused without checking: too many failures in the window."""
        return self.retry_after is not None


class FailureWindow:
    """Failures per key in a sliding window; thread-safe."""

    MAX_KEYS = 10_000  # names an attacker makes up must not grow memory without bound

    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until one of ``keys`` may try again, or None when none is over the limit."""
        now = self._clock()
        with self._lock:
            waits = [
                events[0] + self.window_s - now
                for events in (self._recent(k, now) for k in keys)
                if len(events) >= self.limit
            ]
        return max(1, int(max(waits)) + 1) if waits else None

    def add(self, *keys: str) -> None:
        """Count a failure against each of ``keys``."""
        now = self._clock()
        with self._lock:
            if len(self._events) > self.MAX_KEYS:
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window_s}
            for k in keys:
                self._recent(k, now).append(now)


class PasswordVerifier:
    """Async, bounded, cached and throttled password checks (Basic auth and the login form)."""

    def __init__(
        self,
        users: dict[str, str],
        hash_concurrency: int = 1,
        cache_ttl: float = 60.0,
        attempts: int = 10,
        window_s: float = 60.0,
    ):
        self.users = users
        self.cache_ttl = cache_ttl
        self.failures = FailureWindow(attempts, window_s)
        self.hashes = 0  # scrypt computations so far (tests check unknown users cost one too)
        self._limiter = anyio.CapacityLimiter(hash_concurrency)
        self._cache_key = secrets.token_bytes(32)  # per process: cache entries mean nothing elsewhere
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        # What an unknown user's password is checked against: the same work as a real check.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    def _fingerprint(self, user: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{user}\0{password}".encode("utf-8", "surrogatepass"), "sha256").digest()

    def _check(self, user: str, password: str) -> bool:
        self.hashes += 1
        stored = self.users.get(user)
        matched = check_password(password, stored if stored is not None else self._dummy)
        return matched and stored is not None

    async def verify(self, user: str, password: str, client: str) -> Verdict:
        """Check ``user``/``password`` for a caller at address ``client``, off the event loop."""
        fingerprint = self._fingerprint(user, password)
        if self._cached(fingerprint):
            return Verdict(True)
        keys = (f"user:{user}", f"addr:{client}")
        if (wait := self.failures.retry_after(*keys)) is not None:
            return Verdict(False, wait)  # throttled callers do not even queue
        async with self._limiter:
            # Decided again once it is this check's turn: of 48 wrong passwords sent at once, those
            # queued behind the first failures are refused here, unhashed; and of many correct
            # logins at once, those behind the first find it cached.
            if (wait := self.failures.retry_after(*keys)) is not None:
                return Verdict(False, wait)
            if self._cached(fingerprint):
                return Verdict(True)
            ok = await anyio.to_thread.run_sync(self._check, user, password)
            if not ok:
                self.failures.add(*keys)  # before the next queued check takes its turn
                return Verdict(False)
        self._cache[fingerprint] = time.monotonic() + self.cache_ttl
        while len(self._cache) > 1024:
            self._cache.popitem(last=False)
        return Verdict(True)

    def _cached(self, fingerprint: bytes) -> bool:
        expires = self._cache.get(fingerprint)
        return expires is not None and expires > time.monotonic()


@dataclass
class Auth:
    """Who may use the app: login users (UI and API) and API keys (API; the UI's login with no users)."""

    users: dict[str, str] = field(default_factory=dict)  # name -> scrypt hash
    api_keys: frozenset[str] = frozenset()
    hash_concurrency: int = 1
    attempts: int = 10
    window_s: float = 60.0
    verifier: PasswordVerifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.verifier = PasswordVerifier(
            self.users, self.hash_concurrency, attempts=self.attempts, window_s=self.window_s
        )

    @classmethod
    def from_pairs(cls, pairs, api_keys=(), **limits) -> Auth:
        """From ``(user, password)`` pairs; a password already written as ``scrypt$…`` is kept as is."""
        users = {u: p if p.startswith("scrypt$") else hash_password(p) for u, p in pairs}
        return cls(users, frozenset(api_keys), **limits)

    @property
    def enabled(self) -> bool:
        """Whether anything is protected."""
        return bool(self.users or self.api_keys)

    def match_key(self, value: str) -> str | None:
        """The key's owner id when ``value`` is one of the API keys (constant time per key)."""
        found = None
        for k in self.api_keys:
            if hmac.compare_digest(value.encode("utf-8", "surrogatepass"), k.encode()):
                found = k
        return key_id(found) if found is not None else None

    async def login_form(self, username: str, password: str, client: str) -> tuple[str | None, Verdict]:
        """The login form's check: (the caller id to log in as, verdict).

        With users, a user's password. With ``--api-key`` alone, any name and an API key as the
        password: the identity is then the key's (``key:<hash>``), never the typed name.
        """
        if self.users:
            verdict = await self.verifier.verify(username, password, client)
            return (username if verdict.ok else None), verdict
        wait = self.verifier.failures.retry_after(f"addr:{client}")
        if wait is not None:
            return None, Verdict(False, wait)
        owner = self.match_key(password)
        if owner is None:
            self.verifier.failures.add(f"addr:{client}")
        return owner, Verdict(owner is not None)
