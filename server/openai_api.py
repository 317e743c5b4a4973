"""The OpenAI-compatible API; it lives in :mod:`server.v1` (kept importable here for ``server.http``)."""

from __future__ import annotations

from .v1 import ApiError, openai_router
from .v1.replies import StopStrings

__all__ = ["ApiError", "StopStrings", "openai_router"]
