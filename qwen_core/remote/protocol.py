"""The wire protocol of the remote backend: endpoints, request bodies, server-sent events and errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from ..errors import BackendUnavailable, GenerationError, QwenCoreError
from ..info import TokenLogprob
from ..prompt import DEFAULT_SYSTEM, PromptPlan, normalize_history
from ..settings import GenerationSettings
from ..stops import StopMatcher
from ..tokenizer import ENDOFTEXT, IM_END, IM_START, escape_special_text

DEFAULT_CONTEXT = 8192  # used when no server reports its model's max length
QWEN_PADDED_VOCAB = 151_936  # every Qwen-1 chat checkpoint pads its 151,851 ids to this
STOP_TEXTS = (IM_END, IM_START, ENDOFTEXT)

MODE_IDS = "completions-ids"
MODE_TEXT = "completions-text"
MODE_CHAT = "chat"
DIALECT_EXTRA = "extra-fields"
DIALECT_GENCONFIG = "generation-config"
DIALECT_STANDARD = "standard"
APIS = {"auto": (MODE_IDS, MODE_TEXT, MODE_CHAT), "completions": (MODE_IDS, MODE_TEXT), "chat": (MODE_CHAT,)}
_PATHS = {MODE_IDS: "/v1/completions", MODE_TEXT: "/v1/completions", MODE_CHAT: "/v1/chat/completions"}
_FINISH = {
    "stop": "stop",
    "eos": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "tool_calls": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
}


class EndpointsUnavailable(BackendUnavailable):
    """No configured endpoint could take the request; the message names each and why."""


class RemoteProtocolMismatch(QwenCoreError):
    """An endpoint answers but accepts none of the request kinds this app sends."""


# --- endpoints ------------------------------------------------------------------------


def normalize_endpoint(url: str) -> str:
    """``host:8000``, ``http://host:8000/``, ``http://host:8000/v1`` → ``http://host:8000``."""
    url = (url or "").strip()
    if not url:
        raise QwenCoreError("An empty --endpoint was given; pass the server's base URL, e.g. http://127.0.0.1:8000")
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


@dataclass
class Endpoint:
    """One server: what it serves, what it accepts, and whether it is up."""

    url: str
    models: tuple[str, ...] = ()
    max_model_len: int | None = None
    owned_by: str | None = None
    mode: str | None = None  # MODE_*: how prompts are sent, once probed
    dialect: str | None = None  # DIALECT_*: how sampling settings are sent, once probed
    down_until: float = 0.0  # monotonic time until which it is not used
    failures: int = 0
    last_error: str | None = None
    checked_at: float = 0.0  # monotonic time of the last health check
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def is_down(self) -> bool:
        """Whether it is in its cool-down after a failure."""
        return time.monotonic() < self.down_until

    def status(self) -> dict:
        """Plain-data state for health panels."""
        return {
            "url": self.url,
            "up": not self.is_down and self.failures == 0,
            "mode": self.mode,
            "dialect": self.dialect,
            "models": list(self.models),
            "max_model_len": self.max_model_len,
            "last_error": self.last_error,
        }


@dataclass
class _Request:
    ids: list[int] | None
    text: str | None
    messages: list[dict] | None
    settings: GenerationSettings
    max_new: int
    seed: int | None
    stream: bool = True
    response_format: dict | None = None  # OpenAI's JSON output request, passed through (vLLM, SGLang enforce it)


def chat_messages(
    plan: PromptPlan, query: str, history: Sequence | None, system: str | None, system_in_first_turn: bool
) -> list[dict]:
    """The messages a plan keeps (system, kept turns, query), with the persona moved as the plan moved it."""
    system = DEFAULT_SYSTEM if system is None else system
    turns = normalize_history(history)
    persona = ""
    if system_in_first_turn and system.strip() and system != DEFAULT_SYSTEM:
        persona, system = system + "\n\n", DEFAULT_SYSTEM
    kept = list(turns[plan.kept_from :])
    if persona and kept:
        kept[0] = (persona + kept[0][0], kept[0][1])
    elif persona:
        query = persona + query
    # The server renders these with its chat template and tokenizes the result: special-token
    # text in them is escaped so that it stays text there, as it is in the local prompt.
    messages = [{"role": "system", "content": escape_special_text(system)}]
    for user, assistant in kept:
        messages.append({"role": "user", "content": escape_special_text(user)})
        if assistant is not None:
            messages.append({"role": "assistant", "content": escape_special_text(assistant)})
    messages.append({"role": "user", "content": escape_special_text(query)})
    return messages


def build_body(
    mode: str,
    dialect: str,
    req: _Request,
    *,
    model: str | None,
    stop_ids: Sequence[int],
    suppress_ids: Sequence[int] = (),
) -> dict:
    """The JSON body of one request (a pure function, so every dialect can be checked on its own)."""
    s = req.settings
    body: dict = {}
    if model:
        body["model"] = model
    if mode == MODE_IDS:
        body["prompt"] = list(req.ids or [])
    elif mode == MODE_TEXT:
        body["prompt"] = req.text
    else:
        body["messages"] = req.messages
    body["max_tokens"] = req.max_new
    body["stream"] = req.stream
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.seed is not None:
        body["seed"] = req.seed
    if req.response_format is not None:
        body["response_format"] = req.response_format
    if s.logprobs is not None:
        if mode == MODE_CHAT:
            body["logprobs"], body["top_logprobs"] = True, s.logprobs
        else:
            body["logprobs"] = s.logprobs  # the legacy completions field: how many alternatives
        if dialect == DIALECT_EXTRA:
            # vLLM's extra field: tokens named "token_id:N", so each maps back to one Qwen id exactly
            # (a token's text alone does not: partial UTF-8, or the same text from two ids).
            body["return_tokens_as_token_ids"] = True
    if dialect == DIALECT_GENCONFIG:
        config: dict = {
            "do_sample": not s.greedy,
            "max_new_tokens": req.max_new,
            "repetition_penalty": s.repetition_penalty,
            "eos_token_id": list(stop_ids),
            "pad_token_id": stop_ids[-1],
        }
        if suppress_ids:
            config["suppress_tokens"] = list(suppress_ids)
        if not s.greedy:
            config.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            if s.min_p:
                config["min_p"] = s.min_p
        if s.min_tokens:
            config["min_new_tokens"] = s.min_tokens
        if s.stop_token_ids:
            config["eos_token_id"] = list(dict.fromkeys([*stop_ids, *s.stop_token_ids]))
        body["generation_config"] = json.dumps(config)
        return body
    body["temperature"] = 0.0 if s.greedy else s.temperature
    if not s.greedy:
        body["top_p"] = s.top_p
    body["stop"] = list(STOP_TEXTS)
    # OpenAI's own fields: every OpenAI-compatible server reads them (sent only when not neutral).
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in s.logit_bias}
    if dialect == DIALECT_EXTRA:
        if not s.greedy and s.top_k > 0:
            body["top_k"] = s.top_k
        if not s.greedy and s.min_p:
            body["min_p"] = s.min_p
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.min_tokens:
            body["min_tokens"] = s.min_tokens
        if s.ignore_eos:
            body["ignore_eos"] = True
        body["stop_token_ids"] = list(dict.fromkeys([*stop_ids, *s.stop_token_ids]))
        # Qwen's decode keeps special-token text (e.g. <|extra_107|> a model wrote) in the reply, as the
        # local engine does; vLLM and SGLang drop it unless told not to (found against vLLM 0.32).
        body["skip_special_tokens"] = False
        body["spaces_between_special_tokens"] = False
    return body


# --- replies --------------------------------------------------------------------------


def _token_id(token: object, tokenizer) -> int:
    """A logprobs entry's token as a Qwen id: ``token_id:N`` (vLLM's ``return_tokens_as_token_ids``), or
    text that is exactly one token of the vocabulary."""
    if isinstance(token, str):
        if token.startswith("token_id:") and token[9:].isdigit():
            return int(token[9:])
        ids = tokenizer.encode(token) if token else []
        if len(ids) == 1:
            return ids[0]
    raise GenerationError(
        f"The server's logprobs name the token {token!r}, which is not one Qwen token: it must return token "
        "ids (vLLM does with return_tokens_as_token_ids, which this app sends it)."
    )


def parse_logprobs(choice: dict, chat: bool, tokenizer, top: int) -> list[TokenLogprob]:
    """The entries one streamed or whole choice carries (OpenAI's chat or legacy completions shape)."""
    data = choice.get("logprobs")
    if not isinstance(data, dict):
        return []
    out = []
    if chat:
        for e in data.get("content") or ():
            alts = [(_token_id(a["token"], tokenizer), float(a["logprob"])) for a in e.get("top_logprobs") or ()]
            out.append(TokenLogprob(_token_id(e["token"], tokenizer), float(e["logprob"]), tuple(alts[:top])))
        return out
    tops = data.get("top_logprobs") or []
    for k, (token, lp) in enumerate(zip(data.get("tokens") or (), data.get("token_logprobs") or (), strict=False)):
        alts = tops[k] if k < len(tops) and isinstance(tops[k], dict) else {}
        # vLLM's dict holds the N best and the chosen token besides: the N best are the alternatives.
        ranked = sorted(((_token_id(t, tokenizer), float(v)) for t, v in alts.items()), key=lambda a: -a[1])
        out.append(TokenLogprob(_token_id(token, tokenizer), float(lp), tuple(ranked[:top])))
    return out


class _StopScanner(StopMatcher):
    """Cuts the text at the first stop-token *text* a server let through (the one stop matcher, with
    Qwen's ChatML stop texts by default)."""

    def __init__(self, stops: Sequence[str] = STOP_TEXTS):
        super().__init__(stops)


# --- failures and server-sent events --------------------------------------------------


class _Failover(Exception):
    """The request failed before any text: try the next endpoint."""

    def __init__(self, reason: str, mark_down: bool = True):
        super().__init__(reason)
        self.mark_down = mark_down


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        return "connection refused" if "refused" in text.lower() else f"cannot connect ({text or 'no route'})"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data for {timeout:g} s (read timeout)" if timeout else "read timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server closed the connection ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _error_detail(response: httpx.Response) -> str:
    try:
        raw = response.read()[:2000]
    except httpx.HTTPError:
        return "(no body)"
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip() or "(no body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:500]
    return str(data)[:500]


def _sse_events(response: httpx.Response, stalled: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """The ``data`` of each server-sent event.

    ``stalled()`` is asked on every line: keep-alive comments (``: ping``, which
    sse-starlette servers send every 15 s) and empty events reset httpx's read timeout,
    so a server that is alive but never produces a token would otherwise hold the reply
    for ever. It raises :class:`httpx.ReadTimeout` when ``stalled()`` says so.
    """
    data: list[str] = []
    for line in response.iter_lines():
        if stalled():
            raise httpx.ReadTimeout("no tokens, only keep-alive traffic")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
