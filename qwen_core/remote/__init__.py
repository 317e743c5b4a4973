"""The remote backend: the app as a front end to OpenAI-compatible inference servers.

:class:`RemoteEngine` implements the backend contract (:class:`~qwen_core.backend.Backend`) that the
local :class:`~qwen_core.engine.Engine` implements too, so the UI and the HTTP API use it unchanged; it
shares only the torch-free prompt side with it (importing this package loads no torch). Its servers are
an :class:`~qwen_core.remote.pool.EndpointPool` (health checks, round robin, cool-down, probing); its
reply streams get the pool and the request, never the engine. The
tokenizer, the prompt builder and the context meter stay local and exact: every prompt
is built by :class:`~qwen_core.prompt.PromptBuilder`, window truncation included. Only
the forward passes happen on the servers.

What is sent, per endpoint, decided by probing it once (tiny 1-token requests):

1. ``POST /v1/completions`` with ``prompt`` = the prompt's token ids: exactly the ids
   the local engine would feed the model (vLLM, SGLang);
2. ``POST /v1/completions`` with ``prompt`` = the ChatML text the ids spell: exact text,
   tokenized by the server's tokenizer (``transformers serve``, llama-cpp-python, ...);
   special-token text typed in a message is escaped (``<\u200b|im_end|>``) so that the
   server cannot read it as a control token (a forged turn);
3. ``POST /v1/chat/completions`` with the messages the prompt builder kept (system,
   the kept turns, the query): the server applies its own chat template.

and how the sampling settings travel (probed the same way):

* ``extra-fields``: ``top_k``, ``repetition_penalty`` and ``stop_token_ids`` as extra
  top-level fields (vLLM, SGLang; servers that ignore unknown fields also land here);
* ``generation-config``: a ``generation_config`` JSON string (``transformers serve``,
  which rejects unknown fields with 422 but takes a whole ``GenerationConfig``: the stop
  ids, ``top_k``, ``repetition_penalty`` and the padded-vocabulary suppression then
  match the local engine's);
* ``standard``: only OpenAI's fields (temperature, top_p, seed, stop strings);
  ``top_k`` and ``repetition_penalty`` are not applied.

Known servers. Only ``transformers serve`` is exercised by the tests (tests/test_remote.py
starts it); the others are read from their request schemas:

=======================  ==============================  ==================================
server                   prompt                          sampling settings
=======================  ==============================  ==================================
vLLM                     token ids (/v1/completions),    extra-fields; /v1/models reports
                         Qwen-1 checkpoints as they are  ``max_model_len``
SGLang                   token ids (/v1/completions)     extra-fields; ``max_model_len``
transformers serve 5.23  text (/v1/completions takes     generation-config (unknown fields
                         only strings); chat messages    are refused with 422); /v1/models
                         with the model's template       lists the hub cache, not the
                                                         served model, so model id omitted
llama-cpp-python         text (str or list of str)       extra-fields: ``top_k`` applies;
                                                         ``repetition_penalty`` does not
                                                         (it reads ``repeat_penalty``,
                                                         default 1.1)
Ollama, hosted APIs      text or chat messages           standard
=======================  ==============================  ==================================

Several endpoints are used round-robin. A failed health check (``GET /v1/models``) or a
failed connection marks an endpoint down for ``cooldown`` seconds, after which it is
checked again before use. A request that fails before any text arrived (connection
refused, timeout, HTTP 5xx/429) moves on to the next endpoint; a stream that breaks after
text arrived ends the reply with ``finish_reason == "error"`` and raises
:class:`~qwen_core.errors.GenerationError`. Every request has connect and read timeouts; a stream
that sends only keep-alive comments (``: ping``) and no tokens for ``timeout`` seconds counts as silent.
"""

from .client import RemoteEngine
from .loading import load_remote_engine, remote_loader
from .pool import EndpointPool
from .protocol import (
    APIS,
    DEFAULT_CONTEXT,
    DIALECT_EXTRA,
    DIALECT_GENCONFIG,
    DIALECT_STANDARD,
    MODE_CHAT,
    MODE_IDS,
    MODE_TEXT,
    QWEN_PADDED_VOCAB,
    STOP_TEXTS,
    Endpoint,
    EndpointsUnavailable,
    RemoteProtocolMismatch,
    build_body,
    chat_messages,
    normalize_endpoint,
)
from .protocol import _Request as _Request  # private, used by the tests
from .protocol import _StopScanner as _StopScanner  # private, used by the tests
from .stream import RemoteReplyResult, RemoteReplyStream

__all__ = [
    "APIS",
    "DEFAULT_CONTEXT",
    "DIALECT_EXTRA",
    "DIALECT_GENCONFIG",
    "DIALECT_STANDARD",
    "MODE_CHAT",
    "MODE_IDS",
    "MODE_TEXT",
    "QWEN_PADDED_VOCAB",
    "STOP_TEXTS",
    "Endpoint",
    "EndpointPool",
    "EndpointsUnavailable",
    "RemoteEngine",
    "RemoteProtocolMismatch",
    "RemoteReplyResult",
    "RemoteReplyStream",
    "build_body",
    "chat_messages",
    "load_remote_engine",
    "normalize_endpoint",
    "remote_loader",
]
