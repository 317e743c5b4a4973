"""Named Gradio API endpoints for scripts (``gradio_client``): ``/chat`` streams a reply."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from qwen_core.prompt import DEFAULT_SYSTEM

from .service import ChatService


def make_chat_endpoint(service: ChatService):
    """``chat(message, history, system, settings)`` yielding the reply text as it grows."""

    def chat(
        message: str, history: list | None = None, system: str | None = None, settings: dict | None = None
    ) -> Iterator[str]:
        """Stream a reply.

        Args:
            message: the user's message.
            history: earlier turns, as [[user, assistant], ...] or [{"role", "content"}, ...].
            system: the system prompt (persona); default "You are a helpful assistant.".
            settings: temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, max_window_size.
        """
        if not isinstance(message, str) or not message.strip():
            raise ValueError("message must be non-empty text")
        if len(message) > service.limits.max_message_chars:
            raise ValueError(f"message longer than {service.limits.max_message_chars:,} characters")
        engine = service.manager.engine
        if engine is None:
            raise ValueError("the model is being switched; retry in a moment")
        pairs = _pairs(history or [])
        gen = dict(settings or {})
        if "temperature" in gen and "do_sample" not in gen:
            gen["do_sample"] = float(gen["temperature"]) > 0
        stream = engine.stream_chat(message, pairs, system or DEFAULT_SYSTEM, cancel=threading.Event(), **gen)
        text = ""
        try:
            for piece in stream:
                text += piece
                yield text
        finally:
            stream.close()
        yield text.strip()

    return chat


def _pairs(history: list) -> list[tuple[str, str]]:
    if history and isinstance(history[0], dict):
        from qwen_core.engine import split_messages

        msgs = [m for m in history if m.get("role") in ("user", "assistant", "system")]
        _, pairs, _ = split_messages([*msgs, {"role": "user", "content": ""}])
        return pairs
    pairs = []
    for turn in history:
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise ValueError("history items must be [user, assistant] pairs or role/content messages")
        pairs.append((str(turn[0]), "" if turn[1] is None else str(turn[1])))
    return pairs
