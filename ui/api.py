"""Named Gradio API endpoints for scripts (``gradio_client``): ``/chat`` streams a reply."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import gradio as gr

from qwen_core.errors import QwenCoreError
from qwen_core.prompt import DEFAULT_SYSTEM
from qwen_core.scheduler import Busy
from qwen_core.settings import GenerationSettings
from qwen_core.text import check_text, coalesced, is_blank

from .conversations import MAX_MESSAGES
from .owner import Access, owner_of
from .service import ChatService

NUMBER_SETTINGS = ("temperature", "top_p", "repetition_penalty")
# What ``settings`` may hold: the engine's sampling settings, nothing else (a key such as
# "cancel" would otherwise reach the engine call and fail with an internal error).
KNOWN_SETTINGS = tuple(f.name for f in dataclasses.fields(GenerationSettings))
log = logging.getLogger("qwen_chat.ui.api")


def make_chat_endpoint(service: ChatService, access: Access | None = None, log_content: bool = False):
    """``chat(message, history, system, settings)`` yielding the reply text as it grows."""
    access = access or Access()

    def chat(
        message: str,
        history: list | None = None,
        system: str | None = None,
        settings: dict | None = None,
        request: gr.Request = None,
    ) -> Iterator[str]:
        """Stream a reply.

        Args:
            message: the user's message.
            history: earlier turns, as [[user, assistant], ...] or [{"role", "content"}, ...].
            system: the system prompt (persona); default "You are a helpful assistant.".
            settings: temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, max_window_size.
        """
        # Bad input is answered with gr.Error: the caller sees the reason, the server logs no traceback.
        try:
            message, pairs, system, gen = _checked(service, message, history, system, settings)
            engine = service.manager.engine
            if engine is None:
                raise ValueError("the model is being switched; retry in a moment")
        except (ValueError, TypeError, QwenCoreError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        # Like the UI and /v1, a reply waits for one of the scheduler's slots (fair turns, the
        # queue bound, 429-style refusal), and gives it back however it ends: finished, failed,
        # or closed because the caller went away.
        session_hash = getattr(request, "session_hash", None)
        # Rate limits and fair turns count per login (or API key), else per client address:
        # never per session, which a client renews for free with every new Client().
        caller = owner_of(request, access).rate_key
        if log_content:
            log.info("gradio /chat message caller=%s text=%r", caller, message)
        cancel = threading.Event()
        # Cancelled too when the caller's session ends (Gradio's heartbeat closes: the unload event).
        session = service.session(session_hash) if session_hash else None
        if session is not None:
            session.api_cancels.add(cancel)
        try:
            service.scheduler.acquire(caller, cancel)
        except BaseException as exc:
            if session is not None:
                session.api_cancels.discard(cancel)
            if isinstance(exc, Busy):
                raise gr.Error(str(exc), print_exception=False) from None
            raise
        text = ""
        try:
            try:
                stream = engine.stream_chat(message, pairs, system, cancel=cancel, **gen)
            except (ValueError, TypeError, QwenCoreError) as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            try:
                for piece in coalesced(stream, service.limits.updates_per_second):
                    text += piece
                    yield text
            finally:
                stream.close()
        finally:
            service.scheduler.release()
            if session is not None:
                session.api_cancels.discard(cancel)
        yield text.strip()

    return chat


def _checked(service: ChatService, message, history, system, settings) -> tuple[str, list, str, dict]:
    """The endpoint's arguments, checked; :class:`ValueError` says what is wrong and how to send it."""
    if not isinstance(message, str) or is_blank(message):
        raise ValueError("message must be non-empty text")
    check_text(message, "message")
    if len(message) > service.limits.max_message_chars:
        raise ValueError(f"message longer than {service.limits.max_message_chars:,} characters")
    if system is not None and not isinstance(system, str):
        raise ValueError("system must be text (the persona's system prompt) or null")
    system = check_text(system, "system") if system else DEFAULT_SYSTEM
    if history is not None and not isinstance(history, list):
        raise ValueError('history must be a list of [user, assistant] pairs or {"role", "content"} messages')
    if len(history or []) > MAX_MESSAGES:
        raise ValueError(f"history has more than {MAX_MESSAGES:,} items; send the most recent ones")
    pairs = _pairs(history or [])
    if settings is not None and not isinstance(settings, dict):
        raise ValueError('settings must be an object, e.g. {"temperature": 0.7, "max_new_tokens": 256}')
    gen = dict(settings or {})
    unknown = sorted(str(k) for k in gen if k not in KNOWN_SETTINGS)
    if unknown:
        raise ValueError(
            f"unknown generation setting(s): {', '.join(k[:40] for k in unknown[:5])}; "
            f"known settings: {', '.join(KNOWN_SETTINGS)}"
        )
    for key in NUMBER_SETTINGS:
        value = gen.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"settings.{key} must be a number, got {value!r:.40}")
    if isinstance(gen.get("temperature"), (int, float)) and "do_sample" not in gen:
        gen["do_sample"] = gen["temperature"] > 0
    return message, pairs, system, gen


def _pairs(history: list) -> list[tuple[str, str]]:
    if history and isinstance(history[0], dict):
        from qwen_core.engine import split_messages

        for i, msg in enumerate(history):
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
                raise ValueError(f"history[{i}] must be a message with a role of 'user', 'assistant' or 'system'")
            if not isinstance(msg.get("content"), str):
                raise ValueError(f"history[{i}].content must be text")
            check_text(msg["content"], f"history[{i}].content")
        _, pairs, _ = split_messages([*history, {"role": "user", "content": ""}])
        return pairs
    pairs = []
    for i, turn in enumerate(history):
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise ValueError("history items must be [user, assistant] pairs or role/content messages")
        user, assistant = turn
        if not isinstance(user, str) or not (assistant is None or isinstance(assistant, str)):
            raise ValueError(f"history[{i}] must hold text: [user, assistant], the assistant part may be null")
        check_text(user, f"history[{i}][0]")
        check_text(assistant or "", f"history[{i}][1]")
        pairs.append((user, assistant or ""))
    return pairs
