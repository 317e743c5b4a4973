"""The remote engine: a :class:`~qwen_core.backend.Backend` whose forward passes run on servers (torch-free)."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence

import httpx

from ..backend import PromptSide
from ..errors import InputTooLong
from ..info import EngineInfo
from ..prompt import PromptBuilder, PromptPlan
from ..settings import GenerationSettings
from ..tokenizer import QwenTokenizer
from .pool import EndpointPool
from .protocol import DIALECT_EXTRA, QWEN_PADDED_VOCAB, Endpoint, _Request, chat_messages
from .scoring import score_remote
from .stream import RemoteReplyStream

log = logging.getLogger(__name__)


class RemoteEngine(PromptSide):
    """A backend (:class:`~qwen_core.backend.Backend`) whose model runs on OpenAI-compatible servers.

    Build it with :func:`load_remote_engine`. It shares only the torch-free prompt side with the local
    engine; its endpoints are an :class:`~qwen_core.remote.pool.EndpointPool`.
    """

    supports_constraints = False  # JSON output is sent as response_format for the server to enforce
    supports_prompt_logprobs = True  # from servers that take vLLM's extra fields (qwen_core.remote.scoring)

    def __init__(
        self,
        endpoints: Sequence[str],
        tokenizer: QwenTokenizer,
        defaults: GenerationSettings,
        info: EngineInfo,
        *,
        vocab_size: int = QWEN_PADDED_VOCAB,
        **pool_options,
    ):
        """``pool_options``: :class:`~qwen_core.remote.pool.EndpointPool`'s keywords (model, api_key,
        timeouts, cooldown, api), declared there once."""
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.info = info
        self.prompts = PromptBuilder(tokenizer)
        self.last_result = None
        self.pool = EndpointPool(
            endpoints,
            tokenizer,
            defaults,
            suppress_ids=tuple(range(len(tokenizer), vocab_size)),
            **pool_options,
        )

    # --- the endpoint pool -------------------------------------------------------------------
    @property
    def endpoints(self) -> list[Endpoint]:
        """The pool's endpoints."""
        return self.pool.endpoints

    @property
    def served_model(self) -> str | None:
        """The model name sent to the servers (chosen at connect when they serve one)."""
        return self.pool.served_model

    @property
    def _client(self) -> httpx.Client:  # the pool's HTTP client (tests read its headers)
        return self.pool.client

    def connect(self, progress: Callable[[float, str], None] | None = None) -> None:
        """Check every endpoint, pick the served model, probe what each accepts; raise if none is usable."""
        self.pool.connect(progress)

    def check_endpoints(self) -> list[dict]:
        """Health-check every endpoint now; their states (for a health API)."""
        return self.pool.check_endpoints()

    def endpoint_status(self) -> list[dict]:
        """The endpoints' states as last seen (no requests)."""
        return self.pool.endpoint_status()

    def unavailable_for(self) -> float:
        """Seconds until an endpoint may be tried again while all are in their cool-down after failing; 0
        when some endpoint may take a request (front ends answer 503 + Retry-After at once meanwhile)."""
        return self.pool.cooling_for()

    def live_endpoints(self, max_age: float = 5.0) -> int:
        """How many endpoints answer their health check (re-checked when older than ``max_age`` s)."""
        return self.pool.refresh(max_age)

    # --- generation ------------------------------------------------------------------------
    def _start(
        self,
        plan: PromptPlan | None,
        ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None,
        *,
        messages: list[dict] | None = None,
        stream: bool = True,
        response_format: dict | None = None,
    ) -> RemoteReplyStream:
        """Check the length and start the worker (the lowest level every call goes through)."""
        limit = self.info.context_length
        if len(ids) >= limit:
            raise InputTooLong(
                f"The prompt is {len(ids)} tokens but {self.info.model_id} handles at most {limit}. "
                "Shorten the message, or lower max_window_size so fewer past turns are kept."
            )
        if settings.logprobs is not None and not any(ep.dialect == DIALECT_EXTRA for ep in self.endpoints):
            raise ValueError(
                "logprobs: the --endpoint servers can't relay log-probabilities with token ids (vLLM and SGLang "
                "can); leave logprobs out."
            )
        seed = None if settings.greedy else (settings.seed if settings.seed is not None else secrets.randbits(63))
        req = _Request(
            ids=list(ids),
            text=self.tokenizer.text_for_server(ids),
            messages=messages,
            settings=settings,
            max_new=min(settings.max_new_tokens, limit - len(ids)),
            seed=seed,
            stream=stream,
            response_format=response_format,
        )
        reply = RemoteReplyStream(self.pool, req, cancel)
        self.last_result = reply.result
        return reply

    def stream_prompt(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        *,
        response_format: dict | None = None,
    ) -> RemoteReplyStream:
        """Stream a reply to ready prompt ids (endpoints that take only chat messages are skipped).

        ``response_format`` (OpenAI's JSON output) is sent to the server, which must enforce it (vLLM and
        SGLang do, on /v1/completions too); there is no local constraint on this backend.
        """
        return self._start(None, prompt_ids, settings, cancel, response_format=response_format)

    def stream_chat(
        self,
        query: str,
        history: Sequence | None = None,
        system: str | None = None,
        *,
        cancel: threading.Event | None = None,
        system_in_first_turn: bool = False,
        stream: bool = True,
        reply_prefix: str = "",
        **gen,
    ) -> RemoteReplyStream:
        """Stream the reply to ``query``; see :meth:`Engine.stream_chat`.

        ``stream=False`` asks the server for one JSON reply (the stream then yields it as one piece).
        ``reply_prefix`` travels in the prompt (token ids or text), so endpoints that take only chat
        messages are skipped for it (their template would close the assistant turn).
        """
        settings = self.settings(**gen)
        plan = self.plan_prompt(query, history, system, settings.max_window_size, system_in_first_turn, reply_prefix)
        messages = None if reply_prefix else chat_messages(plan, query, history, system, system_in_first_turn)
        return self._start(plan, plan.ids, settings, cancel, messages=messages, stream=stream)

    def chat(self, query: str, history: Sequence | None = None, system: str | None = None, **gen) -> str:
        """The whole reply, stripped, from one non-streaming request."""
        with self.stream_chat(query, history, system, stream=False, **gen) as reply:
            return reply.text().strip()

    def prompt_logprobs(self, prompt_ids: list[int], top: int = 0) -> list:
        """Each prompt token's log-probability given the ones before (None for the first), from the
        servers (see :func:`~qwen_core.remote.scoring.score_remote`); the values are the server's."""
        ids = self.scoring_prompt(prompt_ids, top)
        return score_remote(self.pool, ids, top)

    def unload(self) -> None:
        """Close the connections; the engine is unusable afterwards."""
        self.pool.close()
