"""Optional server-side copy of each logged-in user's conversations (one file per user)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from .storage import atomic_write_json


class UserStore:
    """``DATA/users/<hash>.json``: the user's whole store, written atomically after each change."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()

    def _path(self, username: str) -> Path:
        # Hashed, so a user name can never name a path outside the folder.
        digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def load(self, username: str) -> dict | None:
        """The user's saved store, or None (a damaged file is kept aside, not lost)."""
        path = self._path(username)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            path.replace(path.with_suffix(".damaged.json"))
            return None

    def save(self, username: str, store: dict) -> None:
        """Replace the user's saved store."""
        with self._lock:
            atomic_write_json(self._path(username), store)
