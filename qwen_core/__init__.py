"""qwen_core: first-generation Qwen chat checkpoints on current transformers, with no remote code.

Importing this package is cheap: torch and transformers load on first use.

>>> from qwen_core import load_engine
>>> engine = load_engine("Qwen/Qwen-1_8B-Chat", precision="auto", device="auto")
>>> engine.chat("Hello")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import lean_imports
from .errors import (
    CheckpointError,
    CheckpointNotFound,
    GenerationError,
    InputTooLong,
    QwenCoreError,
    UnsupportedCombination,
)

lean_imports.install()  # transformers must not import torchao (see qwen_core.lean_imports)

if TYPE_CHECKING:
    from .engine import Engine
    from .generation import ReplyResult, ReplyStream
    from .settings import GenerationSettings

__all__ = [
    "CheckpointError",
    "CheckpointNotFound",
    "Engine",
    "GenerationError",
    "GenerationSettings",
    "InputTooLong",
    "QwenCoreError",
    "ReplyResult",
    "ReplyStream",
    "UnsupportedCombination",
    "load_engine",
    "load_remote_engine",
]

_LAZY = {
    "load_engine": ("loader", "load_engine"),
    "load_remote_engine": ("remote", "load_remote_engine"),
    "Engine": ("engine", "Engine"),
    "ReplyResult": ("generation", "ReplyResult"),
    "ReplyStream": ("generation", "ReplyStream"),
    "GenerationSettings": ("settings", "GenerationSettings"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'qwen_core' has no attribute {name!r}")
