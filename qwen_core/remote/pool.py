"""The endpoint pool: the remote servers, their health, round robin, cool-down and probing.

A :class:`~qwen_core.remote.RemoteEngine` owns one pool; its reply streams get ``(pool, request)``
and use only the pool's public methods (:meth:`EndpointPool.candidates`, :meth:`EndpointPool.ready`,
:meth:`EndpointPool.mark_down`, :meth:`EndpointPool.unavailable`, ``client``). Torch-free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import httpx

from ..errors import QwenCoreError
from ..prompt import DEFAULT_SYSTEM, PromptBuilder
from ..settings import GenerationSettings
from ..tokenizer import QwenTokenizer
from .protocol import (
    _PATHS,
    APIS,
    DIALECT_EXTRA,
    DIALECT_GENCONFIG,
    DIALECT_STANDARD,
    MODE_CHAT,
    MODE_IDS,
    MODE_TEXT,
    Endpoint,
    EndpointsUnavailable,
    RemoteProtocolMismatch,
    _describe,
    _error_detail,
    _Failover,
    _Request,
    build_body,
    chat_messages,
    normalize_endpoint,
)

log = logging.getLogger(__name__)


class EndpointPool:
    """The servers one remote engine sends to, and what is known of each."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tokenizer: QwenTokenizer,
        defaults: GenerationSettings,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        health_timeout: float = 3.0,
        response_timeout: float = 600.0,
        cooldown: float = 30.0,
        api: str = "auto",
        suppress_ids: tuple[int, ...] = (),
    ):
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {api!r}")
        self.endpoints = [Endpoint(normalize_endpoint(u)) for u in endpoints]
        if not self.endpoints:
            raise QwenCoreError("No endpoint given: pass --endpoint URL (one or more).")
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.prompts = PromptBuilder(tokenizer)
        self.served_model = model
        self.api = api
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.health_timeout = float(health_timeout)
        self.response_timeout = max(float(response_timeout), self.timeout)
        self.cooldown = float(cooldown)
        self.stop_ids = tuple(tokenizer.stop_ids)
        self.suppress_ids = tuple(suppress_ids)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._next = 0
        self._refreshing = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    def live(self) -> list[Endpoint]:
        """Endpoints whose last request or health check succeeded (as last seen; no requests)."""
        return [ep for ep in self.endpoints if ep.failures == 0 and not ep.is_down]

    def refresh(self, max_age: float = 5.0) -> int:
        """Health-check the endpoints last checked over ``max_age`` seconds ago; how many are live.

        For readiness probes: one caller checks at a time (a flood of probes does not become a flood
        of requests to the servers); the others answer from the last states.
        """
        if self._refreshing.acquire(blocking=False):
            try:
                now = time.monotonic()
                for ep in self.endpoints:
                    if now - ep.checked_at > max_age:
                        self.check_health(ep)
            finally:
                self._refreshing.release()
        return len(self.live())

    def cooling_for(self) -> float:
        """Seconds until some endpoint may be tried again while every one is in its cool-down; 0 otherwise
        (as last seen; no requests)."""
        now = time.monotonic()
        return max(0.0, min(ep.down_until - now for ep in self.endpoints))

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    # --- endpoint state ----------------------------------------------------------------
    def mark_down(self, ep: Endpoint, reason: str) -> None:
        with self._lock:
            ep.failures += 1
            ep.last_error = reason
            ep.down_until = time.monotonic() + self.cooldown
        log.warning("Endpoint %s marked down for %.0f s: %s", ep.url, self.cooldown, reason)

    def check_health(self, ep: Endpoint) -> bool:
        """``GET /v1/models`` with the short health timeout; updates what the endpoint serves."""
        try:
            resp = self.client.get(ep.url + "/v1/models", timeout=self.health_timeout)
            if resp.status_code in (401, 403):
                raise _Failover(f"HTTP {resp.status_code}: the server refused the API key ({_error_detail(resp)})")
            if resp.status_code != 200:
                raise _Failover(f"GET /v1/models answered HTTP {resp.status_code}: {_error_detail(resp)}")
            data = resp.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError, _Failover) as exc:
            reason = str(exc) if isinstance(exc, _Failover) else _describe(exc, self.health_timeout)
            self.mark_down(ep, reason)
            ep.checked_at = time.monotonic()
            return False
        cards = [d for d in data if isinstance(d, dict) and d.get("id")]
        lengths = [d["max_model_len"] for d in cards if isinstance(d.get("max_model_len"), int)]
        with self._lock:
            ep.models = tuple(str(d["id"]) for d in cards)
            ep.max_model_len = min(lengths) if lengths else None
            ep.owned_by = next((str(d["owned_by"]) for d in cards if d.get("owned_by")), None)
            ep.failures, ep.last_error, ep.down_until = 0, None, 0.0
            ep.checked_at = time.monotonic()
        return True

    def check_endpoints(self) -> list[dict]:
        """Health-check every endpoint now; their states (for a health API)."""
        for ep in self.endpoints:
            self.check_health(ep)
        return [ep.status() for ep in self.endpoints]

    def endpoint_status(self) -> list[dict]:
        """The endpoints' states as last seen (no requests)."""
        return [ep.status() for ep in self.endpoints]

    def candidates(self) -> list[Endpoint]:
        """Endpoints to try, in order: round-robin over those not in cool-down; all of them if none is up."""
        with self._lock:
            n = len(self.endpoints)
            start = self._next % n
            self._next += 1
            order = [self.endpoints[(start + i) % n] for i in range(n)]
        up = [ep for ep in order if not ep.is_down]
        return up or order

    def ready(self, ep: Endpoint) -> bool:
        """Whether ``ep`` can take a request: health-checked after a failure, probed once.

        Requests waiting on the same failed endpoint share one health check: whoever gets
        the lock after a check that ended while it waited takes that check's answer.
        """
        asked = time.monotonic()
        with ep.lock:
            if ep.failures:
                if ep.checked_at >= asked:
                    return False  # checked while we waited, and still failing
                if not self.check_health(ep):
                    return False
            if ep.mode is None:
                try:
                    self._probe(ep)
                except _Failover as exc:
                    self.mark_down(ep, str(exc))
                    return False
                except RemoteProtocolMismatch as exc:
                    self.mark_down(ep, str(exc))
                    return False
            return True

    def unavailable(self, attempts: list[tuple[str, str]]) -> EndpointsUnavailable:
        tried = "; ".join(f"{url} ({why})" for url, why in attempts) or ", ".join(e.url for e in self.endpoints)
        return EndpointsUnavailable(
            f"No inference server could take the request. Tried: {tried}. Check that the servers are running and "
            "reachable from this machine, that each --endpoint is the server's base URL (e.g. http://host:8000 or "
            "http://host:8000/v1), and --endpoint-api-key if they require a key. "
            f"Endpoints that failed are retried after {self.cooldown:.0f} s.",
            retry_after=self.cooldown,
        )

    # --- probing -------------------------------------------------------------------------
    def _probe_request(self, ep: Endpoint, mode: str, dialect: str) -> tuple[int, str, dict]:
        """One 1-token request: (HTTP status, error detail, answer)."""
        plan = self.prompts.plan("Hi", None, DEFAULT_SYSTEM, self.defaults.max_window_size)
        sampling = dialect != DIALECT_STANDARD
        settings = (
            GenerationSettings(do_sample=True, temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=1.05)
            if sampling
            else GenerationSettings(do_sample=False, repetition_penalty=1.0)
        )
        req = _Request(
            ids=plan.ids,
            text=self.tokenizer.text_for_server(plan.ids),
            messages=chat_messages(plan, "Hi", None, DEFAULT_SYSTEM, False),
            settings=settings,
            max_new=1,
            seed=0 if sampling else None,
            stream=False,
        )
        body = build_body(
            mode, dialect, req, model=self.served_model, stop_ids=self.stop_ids, suppress_ids=self.suppress_ids
        )
        if dialect == DIALECT_STANDARD:
            # The mode probe: the plainest request. (Stop strings cost transformers serve seconds per
            # request, a scan of the whole vocabulary; the dialect it is then found to take sends none.)
            body.pop("stop", None)
        try:
            resp = self.client.post(
                ep.url + _PATHS[mode], json=body, timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout)
            )
        except httpx.HTTPError as exc:
            raise _Failover(_describe(exc, self.timeout)) from exc
        if resp.status_code >= 500 and resp.status_code not in (500, 501):
            raise _Failover(f"HTTP {resp.status_code} while probing: {_error_detail(resp)}")
        if resp.status_code in (401, 403):
            raise _Failover(f"HTTP {resp.status_code}: the server refused the API key ({_error_detail(resp)})")
        if resp.status_code != 200:
            return resp.status_code, _error_detail(resp), {}
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return resp.status_code, "the answer is not an OpenAI completion", {}
        if len(data["choices"]) != 1:
            return resp.status_code, f"one prompt got {len(data['choices'])} answers", {}
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        counted = usage.get("prompt_tokens")
        if isinstance(counted, int) and counted != len(plan.ids):
            if mode == MODE_IDS:
                return resp.status_code, f"it counted {counted} prompt tokens for {len(plan.ids)} token ids", {}
            if (ep.url, mode) not in self._warned:
                self._warned.add((ep.url, mode))
                log.warning(
                    "Endpoint %s counts %d tokens where Qwen's tokenizer counts %d: its tokenizer or chat template "
                    "is not Qwen-1's ChatML, so replies will differ from the local engine's.",
                    ep.url,
                    counted,
                    len(plan.ids),
                )
        return resp.status_code, "", data

    def _probe(self, ep: Endpoint) -> None:
        """Find the most exact prompt mode and the sampling dialect ``ep`` accepts (1-token requests)."""
        rejected = []
        for mode in APIS[self.api]:
            code, detail, _ = self._probe_request(ep, mode, DIALECT_STANDARD)
            if code == 200 and not detail:
                break
            what = {MODE_IDS: "token-id prompts", MODE_TEXT: "text prompts", MODE_CHAT: "chat messages"}[mode]
            rejected.append(f"{_PATHS[mode]} with {what}: HTTP {code} {detail}")
        else:
            hint = ""
            if self.served_model is None and len(ep.models) > 1:
                hint = f" It serves several models ({', '.join(ep.models)}): choose one with --model."
            raise RemoteProtocolMismatch(
                f"{ep.url} accepts none of the requests this app sends: {'; '.join(rejected)}.{hint}"
            )
        dialect = DIALECT_STANDARD
        for candidate in (DIALECT_EXTRA, DIALECT_GENCONFIG):
            code, detail, _ = self._probe_request(ep, mode, candidate)
            if code == 200 and not detail:
                dialect = candidate
                break
        with self._lock:
            ep.mode, ep.dialect = mode, dialect
        log.info("Endpoint %s: prompts as %s, sampling settings as %s", ep.url, mode, dialect)
        if mode != MODE_IDS:
            log.warning(
                "Endpoint %s does not take token-id prompts: it tokenizes %s itself, so prompts are exact "
                "only as far as its tokenizer matches qwen.tiktoken.",
                ep.url,
                "the ChatML text" if mode == MODE_TEXT else "the messages after applying its chat template",
            )
        if dialect == DIALECT_STANDARD:
            log.warning(
                "Endpoint %s takes only OpenAI's sampling fields: top_k and repetition_penalty are ignored.", ep.url
            )

    def connect(self, progress: Callable[[float, str], None] | None = None) -> None:
        """Check every endpoint, pick the served model, probe what each accepts; raise if none is usable."""
        report = progress or (lambda fraction, message: None)
        n = len(self.endpoints)
        reachable = []
        for i, ep in enumerate(self.endpoints):
            report(0.1 + 0.4 * i / n, f"Checking {ep.url}")
            if self.check_health(ep):
                reachable.append(ep)
        if not reachable:
            raise self.unavailable([(ep.url, ep.last_error or "unreachable") for ep in self.endpoints])
        if self.served_model is None:
            listed = reachable[0].models
            if len(listed) == 1:
                self.served_model = listed[0]
        usable, problems = [], []
        for i, ep in enumerate(reachable):
            report(0.5 + 0.5 * i / len(reachable), f"Probing {ep.url}")
            try:
                self._probe(ep)
                usable.append(ep)
            except (RemoteProtocolMismatch, _Failover) as exc:
                self.mark_down(ep, str(exc))
                problems.append(str(exc))
        if not usable:
            raise RemoteProtocolMismatch(" ".join(problems))
        for ep in self.endpoints:
            if ep not in usable:
                log.warning("Endpoint %s is not usable now (%s); it is retried later.", ep.url, ep.last_error)
