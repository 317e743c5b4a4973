"""Optional server-side copy of each logged-in user's conversations (one file per user).

The UI's saves merge with what is on file (:func:`ui.merge.merge_stores`): two tabs of one user
each saving their own chats or messages never drop what the other wrote.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from .merge import merge_stores
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
        with self._lock:
            return self._load(username)

    def _load(self, username: str) -> dict | None:
        path = self._path(username)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            path.replace(path.with_suffix(".damaged.json"))
            return None

    def save(self, username: str, store: dict) -> None:
        """Replace the user's saved store (as it is: no merge)."""
        with self._lock:
            atomic_write_json(self._path(username), store)

    def merge(self, username: str, store: dict) -> dict:
        """Merge ``store`` (one tab's) into the user's saved one and write the result; returns it.

        This is what the UI saves with: a tab never drops chats or messages another tab wrote.
        """
        with self._lock:
            merged = merge_stores(store, self._load(username))
            atomic_write_json(self._path(username), merged)
        return merged
