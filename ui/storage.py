"""Crash-safe files: write to a temp file in the same folder, fsync, then atomically rename."""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, fallback: str = "item") -> str:
    """A file-name-safe slug: no separators, no dots first, so nothing escapes its folder."""
    slug = _SAFE.sub("-", name.strip()).strip(".-")[:80]
    return slug or fallback


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a crash leaves either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    """JSON version of :func:`atomic_write_text` (UTF-8, human-readable)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def stable_secret(data_dir: Path) -> str:
    """A secret kept in the data folder, so browser-stored history stays readable after a restart.

    Gradio encrypts ``BrowserState`` with a random key per launch unless given one.
    """
    path = data_dir / ".browser-state-secret"
    if path.is_file():
        value = path.read_text().strip()
        if len(value) >= 16:
            return value
    value = secrets.token_urlsafe(32)
    atomic_write_text(path, value)
    path.chmod(0o600)
    return value
