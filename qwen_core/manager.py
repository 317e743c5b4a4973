"""The owner of the loaded model: which variant is up, switching at run time, memory in use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import QwenCoreError


@dataclass(frozen=True)
class ModelSpec:
    """A model the operator configured: where it is and how to load it."""

    model: str  # folder or hub id
    precision: str = "auto"
    device: str = "auto"
    source: str = "huggingface"
    label: str = ""

    @property
    def name(self) -> str:
        """What the UI shows."""
        return self.label or self.model.rstrip("/").split("/")[-1]


class ModelManager:
    """Holds one engine; switching unloads it and loads another, restoring it if that fails."""

    def __init__(self, loader: Callable, specs: list[ModelSpec], offline: bool = False, cache_dir=None):
        self._loader = loader
        self.specs = list(specs)
        self.offline = offline
        self.cache_dir = cache_dir
        self.engine = None
        self.current: ModelSpec | None = None
        self._switch_lock = threading.Lock()

    def _load(self, spec: ModelSpec, progress=None):
        return self._loader(
            spec.model,
            precision=spec.precision,
            device=spec.device,
            source=spec.source,
            offline=self.offline,
            cache_dir=self.cache_dir,
            progress=progress,
        )

    def start(self, spec: ModelSpec, progress=None) -> None:
        """Load the first model (errors propagate: the app cannot serve without one)."""
        self.engine = self._load(spec, progress)
        self.current = spec
        if spec not in self.specs:
            self.specs.insert(0, spec)

    def switch(self, spec: ModelSpec, progress=None) -> str:
        """Replace the engine with ``spec``; on failure the previous model is loaded again.

        Returns a message for the user. Raises :class:`QwenCoreError` if the new model
        failed (the message says so, and that the previous one is back).
        """
        if not self._switch_lock.acquire(blocking=False):
            raise QwenCoreError("Another model switch is in progress; wait for it to finish.")
        try:
            if spec == self.current:
                return f"{spec.name} is already loaded."
            previous, old_engine = self.current, self.engine
            self.engine = None  # new chats wait for the switch instead of using a half-unloaded model
            if old_engine is not None:
                old_engine.unload()
            try:
                self.engine = self._load(spec, progress)
                self.current = spec
                return f"Loaded {spec.name}."
            except Exception as exc:
                restored = ""
                if previous is not None:
                    self.engine = self._load(previous, None)
                    self.current = previous
                    restored = f" {previous.name} is loaded again."
                raise QwenCoreError(f"Could not load {spec.name}: {exc}{restored}") from exc
        finally:
            self._switch_lock.release()

    def status(self) -> dict:
        """Loaded variant, precision, device map and memory, for the model panel and health checks.

        Served by the open ``/readyz``: the model's id only, never its folder or any other path.
        """
        engine = self.engine
        if engine is None:
            return {"loaded": False, "model": self.current.name if self.current else None}
        info = engine.info
        return {
            "loaded": True,
            "model": self.current.name if self.current else info.model_id,
            "precision": info.precision,
            "dtype": info.dtype,
            "device": info.device,
            "device_map": info.device_map,
            "attention": info.attn_implementation,
            "decode": getattr(info, "decode", "eager"),
            "context_length": info.context_length,
            "params_b": round(info.n_params / 1e9, 3),
            "memory": memory_in_use(),
            "prefix_cache": _prefix_cache_line(engine),
        }


def _prefix_cache_line(engine) -> str | None:
    """The Model tab's prefix-cache line (hit rate, tokens reused, bytes), or None without a local decoder."""
    batcher = getattr(engine, "batcher", None)
    if batcher is None:
        return None
    from .prefix_cache import describe

    return describe(batcher.stats().get("prefix_cache"))


def memory_in_use() -> dict:
    """Process RSS and, per GPU, allocated/free memory in GB."""
    import psutil

    report = {"rss_gb": round(psutil.Process().memory_info().rss / 1e9, 2)}
    import torch

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            report[f"cuda:{i}"] = {
                "allocated_gb": round(torch.cuda.memory_allocated(i) / 1e9, 2),
                "free_gb": round(free / 1e9, 2),
                "total_gb": round(total / 1e9, 2),
            }
    return report
