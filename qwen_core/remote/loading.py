"""Loading the remote backend: the local tokenizer and defaults, then the servers checked and probed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import QwenCoreError
from ..info import EngineInfo
from ..settings import GenerationSettings
from ..tokenizer import VOCAB_FILE, QwenTokenizer
from .client import RemoteEngine
from .protocol import DEFAULT_CONTEXT, QWEN_PADDED_VOCAB


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QwenCoreError(f"{path} cannot be read as JSON ({exc}).") from exc
    return data if isinstance(data, dict) else {}


def _tokenizer_folder(tokenizer_dir: str | Path | None) -> Path:
    if tokenizer_dir is None or not str(tokenizer_dir).strip():
        raise QwenCoreError(
            f"The remote backend needs Qwen's vocabulary to build prompts: pass --tokenizer-dir, a folder holding "
            f"{VOCAB_FILE} (the original checkpoint folder, or a folder with {VOCAB_FILE} and generation_config.json "
            "copied from the Qwen/Qwen-*-Chat repository)."
        )
    path = Path(tokenizer_dir).expanduser()
    if path.is_file() and path.name == VOCAB_FILE:
        path = path.parent
    if not (path / VOCAB_FILE).is_file():
        raise QwenCoreError(
            f"{path} holds no {VOCAB_FILE}. Pass --tokenizer-dir a folder with Qwen's {VOCAB_FILE} "
            "(copy it from the Qwen/Qwen-*-Chat repository)."
        )
    return path


def load_remote_engine(
    endpoints: str | Sequence[str],
    api_key: str | None = None,
    model: str | None = None,
    tokenizer_dir: str | Path | None = None,
    timeout: float = 60.0,
    *,
    connect_timeout: float = 5.0,
    health_timeout: float = 3.0,
    response_timeout: float = 600.0,
    cooldown: float = 30.0,
    api: str = "auto",
    context_length: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> RemoteEngine:
    """A :class:`RemoteEngine` for ``endpoints``, checked and probed.

    ``tokenizer_dir``: a folder with ``qwen.tiktoken`` (and, if present, the
    checkpoint's ``generation_config.json`` for the defaults and ``config.json`` for
    ``seq_length``/``vocab_size``). ``model``: the served model id; ``None`` takes the
    one the first reachable server lists. ``timeout``: seconds a streaming reply may go
    without data (first token included); ``connect_timeout`` per connection;
    ``health_timeout`` for ``GET /v1/models``; ``response_timeout`` for a whole
    non-streaming reply. ``api``: ``auto``, ``completions`` or ``chat`` (restricts the
    probe). ``context_length`` overrides what the servers report (else 8192).
    Raises :class:`EndpointsUnavailable` when no endpoint answers.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    folder = _tokenizer_folder(tokenizer_dir)
    report(0.0, f"Reading {VOCAB_FILE} from {folder}")
    tokenizer = QwenTokenizer(folder / VOCAB_FILE)
    gen_file, cfg_file = folder / "generation_config.json", folder / "config.json"
    defaults = GenerationSettings.from_generation_config(_read_json(gen_file) if gen_file.is_file() else {})
    config = _read_json(cfg_file) if cfg_file.is_file() else {}
    vocab_size = int(config.get("vocab_size") or config.get("padded_vocab_size") or QWEN_PADDED_VOCAB)
    placeholder = EngineInfo("remote", str(folder), "remote", "remote", "", {}, "remote", 0, 0, DEFAULT_CONTEXT, 0, 0.0)
    engine = RemoteEngine(
        urls,
        tokenizer,
        defaults,
        placeholder,
        model=model,
        api_key=api_key,
        timeout=timeout,
        connect_timeout=connect_timeout,
        health_timeout=health_timeout,
        response_timeout=response_timeout,
        cooldown=cooldown,
        api=api,
        vocab_size=vocab_size,
    )
    try:
        engine.connect(report)
    except BaseException:
        engine.unload()
        raise
    lengths = [ep.max_model_len for ep in engine.endpoints if ep.max_model_len]
    context = int(context_length or (min(lengths) if lengths else DEFAULT_CONTEXT))
    engine.info = EngineInfo(
        model_id=engine.served_model or next((m for ep in engine.endpoints for m in ep.models), "remote"),
        path=str(folder),
        precision="remote",
        dtype="remote",
        device=", ".join(ep.url for ep in engine.endpoints),
        device_map={ep.url: f"{ep.mode or 'unprobed'}/{ep.dialect or '-'}" for ep in engine.endpoints},
        attn_implementation="remote",
        n_params=0,
        weight_bytes=0,
        context_length=context,
        seq_length=int(config.get("seq_length") or DEFAULT_CONTEXT),
        load_seconds=time.perf_counter() - started,
        decode="remote (the servers decode)",
    )
    report(1.0, "Ready")
    return engine


def remote_loader(endpoints: Sequence[str], **options) -> Callable[..., RemoteEngine]:
    """A loader with :func:`qwen_core.load_engine`'s signature, for :class:`~qwen_core.manager.ModelManager`.

    The spec's ``model`` becomes the served model id (empty: the server's only model);
    precision, device, source, offline and cache_dir do not apply and are ignored.
    ``options`` go to :func:`load_remote_engine` (api_key, tokenizer_dir, timeout, ...).
    """

    def load(model: str | None = None, precision: str = "auto", device: str = "auto", *, progress=None, **_ignored):
        return load_remote_engine(endpoints, model=model or None, progress=progress, **options)

    return load
