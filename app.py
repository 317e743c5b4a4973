"""Start the Qwen chat app: ``python app.py --model PATH_OR_HUB_ID [options]``.

Every flag can also come from an environment variable (``QWEN_MODEL``, ``QWEN_PORT``, …;
``PORT`` too, for Spaces-style hosts). Configuration is read here, once; nothing below
this file reads the environment.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("qwen_chat")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
# --concurrency when not given: the local batch's rows; with --compile one reply at a time; in remote
# mode the servers batch (vLLM's default max-num-seqs is 256 per server), so a local cap of 4 would
# leave a fleet idle: 64 per endpoint, within the flag's bounds.
LOCAL_CONCURRENCY = 4
REMOTE_CONCURRENCY_PER_ENDPOINT = 64
MAX_CONCURRENCY = 256


def default_concurrency(backend: str, endpoints: int, compile: bool) -> int:
    """What ``--concurrency`` is when not given (see the constants above)."""
    if compile:
        return 1
    if backend == "openai":
        return max(1, min(MAX_CONCURRENCY, REMOTE_CONCURRENCY_PER_ENDPOINT * endpoints))
    return LOCAL_CONCURRENCY


@dataclass(frozen=True)
class AppConfig:
    """Everything the app is started with; bounds checked in ``__post_init__``."""

    model: str | None = None
    precision: str = "auto"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    source: str = "huggingface"
    offline: bool = False
    cache_dir: str | None = None
    data_dir: str = "data"
    models: tuple[str, ...] = ()  # more variants to switch to at run time
    server_history: bool = False
    concurrency: int | None = None  # None: default_concurrency(backend, endpoints, compile)
    max_message_chars: int = 64_000
    updates_per_second: float = 25.0  # UI / Gradio-API stream updates per reply (0: one per token)
    max_queue: int = 32
    rate_limit: int = 0  # requests per minute per user; 0 = off
    max_body_bytes: int = 2_000_000
    cors_origins: tuple[str, ...] = ()
    login_attempts: int = 10  # failed sign-ins per user and per address in --login-window, then 429
    login_window: float = 60.0
    hash_concurrency: int = 1  # password hashes (scrypt) computed at once, in worker threads
    log_content: bool = False
    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    admins: tuple[str, ...] = ()  # --auth logins that may change what all users share
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    backend: str = "local"  # or "openai": front end to OpenAI-compatible engines (vLLM, SGLang, ...)
    endpoints: tuple[str, ...] = ()
    endpoint_api_key: str | None = field(default=None, repr=False)
    tokenizer_dir: str | None = None
    remote_timeout: float = 60.0
    session_ttl: float = 600.0  # seconds a closed page's server-side session data is kept
    store_cache_mb: int = 512  # the chat stores sent to pages, kept for events that name them (ui.store_ref)
    hang_exit: float = 120.0  # exit when no Python code ran for this long (0: off); see server/watchdog.py
    compile: bool = False  # one reply at a time through a static KV cache + torch.compile
    compile_backend: str = "inductor"
    prefix_cache_mb: float | None = None  # K/V reused across chat turns; None: the device's default, 0: off
    startup_delay_s: float = 0.0  # tests only: the loading thread waits this long first (keeps the loading page up)

    def __post_init__(self) -> None:
        if self.concurrency is None:
            object.__setattr__(
                self, "concurrency", default_concurrency(self.backend, len(self.endpoints), self.compile)
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if not 1 <= self.port <= 65535:
            raise ValueError("--port must be between 1 and 65535")
        if self.source not in ("huggingface", "modelscope"):
            raise ValueError("--source must be huggingface or modelscope")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
        if not 1 <= self.max_message_chars <= 10_000_000:
            raise ValueError("--max-message-chars must be between 1 and 10,000,000")
        if self.updates_per_second != 0 and not 1 <= self.updates_per_second <= 1000:
            raise ValueError("--updates-per-second must be 0 (one update per token) or between 1 and 1000")
        if not 0 <= self.max_queue <= 100_000:
            raise ValueError("--max-queue must be between 0 and 100,000")
        if not 0 <= self.rate_limit <= 1_000_000:
            raise ValueError("--rate-limit must be between 0 and 1,000,000 per minute")
        if not 1024 <= self.max_body_bytes <= 1_000_000_000:
            raise ValueError("--max-body-bytes must be between 1 KB and 1 GB")
        if not 1 <= self.login_attempts <= 10_000:
            raise ValueError("--login-attempts must be between 1 and 10,000")
        if not 1 <= self.login_window <= 86400:
            raise ValueError("--login-window must be between 1 second and a day")
        if not 1 <= self.hash_concurrency <= 64:
            raise ValueError("--hash-concurrency must be between 1 and 64")
        if self.backend not in ("local", "openai"):
            raise ValueError("--backend must be local or openai")
        if self.backend == "openai" and (not self.endpoints or not self.tokenizer_dir):
            raise ValueError(
                "--backend openai needs at least one --endpoint URL and --tokenizer-dir (a folder with qwen.tiktoken)"
            )
        if not 1 <= self.remote_timeout <= 3600:
            raise ValueError("--remote-timeout must be between 1 and 3600 seconds")
        if not 10 <= self.session_ttl <= 7 * 86400:
            raise ValueError("--session-ttl must be between 10 seconds and 7 days")
        if not 0 <= self.store_cache_mb <= 65536:
            raise ValueError("--store-cache-mb must be between 0 and 65536")
        if self.hang_exit != 0 and not 10 <= self.hang_exit <= 86400:
            raise ValueError("--hang-exit must be 0 (off) or between 10 and 86400 seconds")
        if self.admins and not self.auth:
            raise ValueError("--admins needs --auth: admins are logins (without logins nobody can change shared state)")
        unknown = sorted(set(self.admins) - {user for user, _ in self.auth})
        if unknown:
            raise ValueError(f"--admins names {', '.join(unknown)}: not --auth users; list --auth logins only")
        if self.prefix_cache_mb is not None and not 0 <= self.prefix_cache_mb <= 1_048_576:
            raise ValueError("--prefix-cache-mb must be between 0 (off) and 1048576 (1 TB)")
        if not 0 <= self.startup_delay_s <= 600:
            raise ValueError("--startup-delay-s must be between 0 and 600 seconds")
        if self.compile and self.backend != "local":
            raise ValueError("--compile applies to the local model only (the --endpoint servers compile their own)")
        if self.compile and self.concurrency != 1:
            raise ValueError(
                "--compile decodes one reply at a time: leave --concurrency at 1, "
                "or drop --compile to decode several replies together in one batch"
            )


def _env(name: str, default=None):
    return os.environ.get(f"QWEN_{name}", default)


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _parse_auth(value: str | None) -> tuple[tuple[str, str], ...]:
    """``user:pass[,user2:pass2]`` or ``@file`` with one ``user:pass`` per line."""
    if not value:
        return ()
    if value.startswith("@"):
        value = ",".join(line.strip() for line in Path(value[1:]).read_text().splitlines() if line.strip())
    pairs = []
    for item in value.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth takes user:password pairs separated by commas, or @file")
        pairs.append((user, password))
    return tuple(pairs)


def parse_config(argv: list[str] | None = None) -> AppConfig:
    """Flags first, then ``QWEN_*`` environment variables, then defaults."""
    ap = argparse.ArgumentParser(description="Chat with first-generation Qwen chat models in the browser.")
    ap.add_argument("--model", default=_env("MODEL"), help="checkpoint folder or hub id (default: the planner's pick)")
    ap.add_argument("--precision", default=_env("PRECISION", "auto"), choices=PRECISIONS)
    ap.add_argument("--device", default=_env("DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(_env("PORT", os.environ.get("PORT", "7860"))))
    ap.add_argument("--share", action="store_true", default=_truthy(_env("SHARE", "0")))
    ap.add_argument("--source", default=_env("SOURCE", "huggingface"), choices=("huggingface", "modelscope"))
    ap.add_argument(
        "--offline", action="store_true", default=_truthy(_env("OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0")))
    )
    ap.add_argument("--cache-dir", default=_env("CACHE_DIR"))
    ap.add_argument("--data-dir", default=_env("DATA_DIR", "data"), help="personas, server-side history, secrets")
    ap.add_argument("--models", default=_env("MODELS", ""), help="comma-separated variants to switch to at run time")
    ap.add_argument("--server-history", action="store_true", default=_truthy(_env("SERVER_HISTORY", "0")))
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"replies decoded at once (default {LOCAL_CONCURRENCY}; 1 with --compile; "
        f"{REMOTE_CONCURRENCY_PER_ENDPOINT} per --endpoint with --backend openai)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        default=_truthy(_env("COMPILE", "0")),
        help="fastest single stream: static KV cache + torch.compile (CUDA graphs on a GPU); "
        "replies run one at a time; compiling takes a minute or two at start",
    )
    ap.add_argument(
        "--compile-backend",
        default=_env("COMPILE_BACKEND", "inductor"),
        help="torch.compile backend for --compile (inductor; eager only checks that the model traces)",
    )
    ap.add_argument("--max-message-chars", type=int, default=int(_env("MAX_MESSAGE_CHARS", "64000")))
    ap.add_argument(
        "--updates-per-second",
        type=float,
        default=float(_env("UPDATES_PER_SECOND", "25")),
        help="most stream updates a reply sends to a page or the Gradio API (0: one per token); /v1 sends every token",
    )
    ap.add_argument("--auth", default=_env("AUTH"), help="user:password[,…] or @file; protects UI and API")
    ap.add_argument("--api-key", default=_env("API_KEY", ""), help="comma-separated keys accepted by /v1 (Bearer)")
    ap.add_argument(
        "--admins",
        default=_env("ADMINS", ""),
        help="comma-separated --auth logins that may switch the model and edit the shared persona library",
    )
    ap.add_argument("--max-queue", type=int, default=int(_env("MAX_QUEUE", "32")), help="replies waiting before 429")
    ap.add_argument("--rate-limit", type=int, default=int(_env("RATE_LIMIT", "0")), help="requests/minute/user, 0=off")
    ap.add_argument("--max-body-bytes", type=int, default=int(_env("MAX_BODY_BYTES", "2000000")))
    ap.add_argument("--cors-origins", default=_env("CORS_ORIGINS", ""), help="comma-separated; closed by default")
    ap.add_argument(
        "--login-attempts",
        type=int,
        default=int(_env("LOGIN_ATTEMPTS", "10")),
        help="failed sign-ins allowed per user and per client address within --login-window; then 429",
    )
    ap.add_argument("--login-window", type=float, default=float(_env("LOGIN_WINDOW", "60")), help="seconds")
    ap.add_argument(
        "--hash-concurrency",
        type=int,
        default=int(_env("HASH_CONCURRENCY", "1")),
        help="password hashes computed at once (each ~0.1 s of one core, off the event loop)",
    )
    ap.add_argument("--log-content", action="store_true", default=_truthy(_env("LOG_CONTENT", "0")))
    ap.add_argument("--backend", default=_env("BACKEND", "local"), choices=("local", "openai"))
    ap.add_argument("--endpoint", action="append", default=None, help="OpenAI-compatible base URL (repeatable)")
    ap.add_argument("--endpoint-api-key", default=_env("ENDPOINT_API_KEY"), help="key sent to the --endpoint servers")
    ap.add_argument("--tokenizer-dir", default=_env("TOKENIZER_DIR"), help="folder with qwen.tiktoken (remote mode)")
    ap.add_argument("--remote-timeout", type=float, default=float(_env("REMOTE_TIMEOUT", "60")))
    ap.add_argument(
        "--session-ttl",
        type=float,
        default=float(_env("SESSION_TTL", "600")),
        help="seconds a closed page's server-side session data is kept (Gradio's own: until 10,000 sessions)",
    )
    ap.add_argument(
        "--store-cache-mb",
        type=int,
        default=int(_env("STORE_CACHE_MB", "512")),
        help="MB of the chat stores last sent to pages, kept so events send a reference instead of every chat",
    )
    ap.add_argument(
        "--hang-exit",
        type=float,
        default=float(_env("HANG_EXIT", "120")),
        help="exit with every thread's traceback if the process stalls this many seconds, for a supervisor "
        "to restart it (0: off)",
    )
    ap.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=float(_env("PREFIX_CACHE_MB")) if _env("PREFIX_CACHE_MB") else None,
        help="MB for K/V reused across chat turns (default: 4096 on CPU, at most 1/4 of the free RAM; "
        "20%% of the free GPU memory; 0: off)",
    )
    ap.add_argument(  # for tests: makes the loading page's window observable; not a user option
        "--startup-delay-s", type=float, default=float(_env("STARTUP_DELAY_S", "0")), help=argparse.SUPPRESS
    )
    a = ap.parse_args(argv)
    if a.concurrency is None and _env("CONCURRENCY"):
        a.concurrency = int(_env("CONCURRENCY"))
    endpoints = a.endpoint or [e.strip() for e in (_env("ENDPOINTS", "") or "").split(",") if e.strip()]
    return AppConfig(
        model=a.model or None,
        precision=a.precision,
        device=a.device,
        host=a.host,
        port=a.port,
        share=a.share,
        source=a.source,
        offline=a.offline,
        cache_dir=a.cache_dir,
        data_dir=a.data_dir,
        models=tuple(m.strip() for m in a.models.split(",") if m.strip()),
        server_history=a.server_history,
        concurrency=a.concurrency,
        max_message_chars=a.max_message_chars,
        updates_per_second=a.updates_per_second,
        max_queue=a.max_queue,
        rate_limit=a.rate_limit,
        max_body_bytes=a.max_body_bytes,
        cors_origins=tuple(o.strip() for o in a.cors_origins.split(",") if o.strip()),
        login_attempts=a.login_attempts,
        login_window=a.login_window,
        hash_concurrency=a.hash_concurrency,
        log_content=a.log_content,
        auth=_parse_auth(a.auth),
        admins=tuple(u.strip() for u in a.admins.split(",") if u.strip()),
        api_keys=tuple(k.strip() for k in a.api_key.split(",") if k.strip()),
        backend=a.backend,
        endpoints=tuple(endpoints),
        endpoint_api_key=a.endpoint_api_key,
        tokenizer_dir=a.tokenizer_dir,
        remote_timeout=a.remote_timeout,
        session_ttl=a.session_ttl,
        store_cache_mb=a.store_cache_mb,
        hang_exit=a.hang_exit,
        compile=a.compile,
        compile_backend=a.compile_backend,
        prefix_cache_mb=a.prefix_cache_mb,
        startup_delay_s=a.startup_delay_s,
    )


def pick_model(config: AppConfig) -> str:
    """The model to load: the flag, else the planner's recommendation for this machine."""
    if config.model:
        return config.model
    from qwen_core.catalog import recommend
    from qwen_core.placement import visible_gpus

    rec = recommend(visible_gpus())
    log.info("No --model given: %s. %s", rec.variant.hf_id, rec.reason)
    return rec.variant.modelscope_id if config.source == "modelscope" else rec.variant.hf_id


def build(config: AppConfig, report: Callable[[float, str], None] | None = None):
    """Load the model and compose UI + API; returns the ASGI app. ``report(fraction, message)``
    hears the load's progress (the loading page shows it)."""
    from qwen_core import load_engine
    from qwen_core.compiled import CompileSettings
    from qwen_core.manager import ModelManager, ModelSpec
    from qwen_core.scheduler import Scheduler, SchedulerConfig
    from server.auth import Auth
    from server.http import create_app
    from ui import UIConfig, build_app
    from ui.owner import Access
    from ui.service import Limits

    if config.backend == "openai":
        from qwen_core.remote import remote_loader

        loader = remote_loader(
            list(config.endpoints),
            api_key=config.endpoint_api_key,
            tokenizer_dir=config.tokenizer_dir,
            timeout=config.remote_timeout,
        )
        first = ModelSpec(config.model or "", label=config.model or "remote")
        manager = ModelManager(loader, [first])
    else:
        first = ModelSpec(pick_model(config), config.precision, config.device, config.source)
        others = [ModelSpec(m, "auto", config.device, config.source) for m in config.models]
        # Every reply granted a slot (--concurrency) is decoded in the one shared batch.
        compiled = CompileSettings(backend=config.compile_backend) if config.compile else False
        loader = functools.partial(
            load_engine,
            max_batch=config.concurrency,
            compile=compiled,
            prefix_cache_mb=config.prefix_cache_mb,
            data_dir=config.data_dir,  # llama.cpp's converted weights are cached under DATA/gguf
        )
        manager = ModelManager(loader, [first, *others], offline=config.offline, cache_dir=config.cache_dir)

    def progress(fraction: float, message: str) -> None:
        log.info("%3d%% %s", int(fraction * 100), message)
        if report is not None:
            report(fraction, message)

    manager.start(first, progress)
    if report is not None:
        report(1.0, "Preparing the chat page")
    scheduler = Scheduler(SchedulerConfig(config.concurrency, config.max_queue, config.rate_limit))
    ui_config = UIConfig(
        data_dir=Path(config.data_dir),
        server_history=config.server_history,
        concurrency=config.concurrency,
        limits=Limits(max_message_chars=config.max_message_chars, updates_per_second=config.updates_per_second),
        closed_session_ttl=config.session_ttl,
        store_cache_mb=config.store_cache_mb,
        access=Access(bool(config.auth), bool(config.api_keys), frozenset(config.admins)),
        log_content=config.log_content,
    )
    demo, launch_kwargs = build_app(manager, ui_config, scheduler)
    auth = Auth.from_pairs(
        config.auth,
        config.api_keys,
        hash_concurrency=config.hash_concurrency,
        attempts=config.login_attempts,
        window_s=config.login_window,
    )
    return create_app(
        manager,
        scheduler,
        demo,
        launch_kwargs,
        auth=auth,
        cors_origins=config.cors_origins,
        max_body_bytes=config.max_body_bytes,
        log_content=config.log_content,
    )


def display_name(config: AppConfig) -> str | None:
    """The model's name for the loading page before anything is loaded (``ModelSpec.name``'s rule)."""
    if config.backend == "openai":
        return config.model or "remote"
    return config.model.rstrip("/").split("/")[-1] if config.model else None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code.

    The port is opened first, on :class:`server.loading.LoadingApp` (a page with the load's
    progress, ``/readyz`` 503); the model and the app are built on a thread and handed over once
    built. A build that fails stops the server and the process, as before the port was opened.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from qwen_core.errors import QwenCoreError

    # After every queued event Gradio rebuilds a pandas table of its last 10,000 events, for a
    # monitoring page this app does not serve: CPU on every reply, and memory that grew by
    # ~120 MB over 15 minutes of the soak (docs/RELIABILITY.md). Keep a short window, summarised
    # now and then. A deployment that wants Gradio's numbers can still set both.
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "50")
    if config.share:
        log.warning("--share is not available when the API is mounted beside the UI; use a tunnel or --host 0.0.0.0")
    import uvicorn

    from server.loading import InnerStartupFailed, LoadingApp

    loading = LoadingApp(display_name(config))
    server = uvicorn.Server(
        uvicorn.Config(
            loading, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5, lifespan="on"
        )
    )
    outcome: dict = {}
    watchdogs: list = []
    stopped = threading.Event()  # the server has returned

    def load() -> None:
        while not server.started:  # listen first: the imports below would slow the start of the server
            if stopped.wait(0.05):
                return
        try:
            if config.startup_delay_s:
                time.sleep(config.startup_delay_s)
            asgi = build(config, loading.progress)
            if not loading.serve(asgi):
                return  # the server is stopping already
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            outcome["error"] = exc
            loading.fail(str(exc) if isinstance(exc, QwenCoreError) else None)
            loading.linger(3.0)  # a page watching the load shows why it stopped
            server.should_exit = True
            return
        log.info("Serving the UI at http://%s:%d/ and the API at /v1", config.host, config.port)
        if config.hang_exit and not (server.should_exit or stopped.is_set()):
            from server.watchdog import HangWatchdog

            log.info(
                "Hang watchdog: the process exits (for its supervisor to restart it) if it stalls %g s",
                config.hang_exit,
            )
            watchdogs.append(HangWatchdog(config.hang_exit).start())

    log.info("Listening at http://%s:%d/ (a loading page until the model is loaded)", config.host, config.port)
    threading.Thread(target=load, name="model-load", daemon=True).start()
    try:
        server.run()
    finally:
        stopped.set()
        for watchdog in watchdogs:
            watchdog.stop()
    error = outcome.get("error")
    if isinstance(error, QwenCoreError):
        print(f"\nCannot start: {error}\n", file=sys.stderr)
        return 2
    if isinstance(error, InnerStartupFailed):
        log.error("The app's startup failed: %s", error)
        return 3  # what uvicorn exits with when the lifespan startup of the app it serves fails
    if error is not None:
        raise error
    return 0


if __name__ == "__main__":
    sys.exit(main())
