"""Errors the core raises for things a user can fix; each message says what to do."""

from __future__ import annotations


class QwenCoreError(Exception):
    """Base class: the message is written for the person running the app."""


class CheckpointError(QwenCoreError):
    """The checkpoint folder is missing, incomplete, or not a Qwen-1 checkpoint."""


class CheckpointNotFound(CheckpointError):
    """The weights are neither on disk nor reachable on the hub."""


class UnsupportedCombination(QwenCoreError):
    """A precision/device combination that cannot work; the message names the nearest one that does."""


class InputTooLong(QwenCoreError):
    """A message (or the prompt built from it) does not fit the model's context."""


class GenerationError(QwenCoreError):
    """Generation failed in the worker (e.g. out of memory); the engine stays usable."""


class BackendUnavailable(QwenCoreError):
    """No server can take the request now (every remote endpoint down); retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 30.0):
        super().__init__(message)
        self.retry_after = float(retry_after)
