"""Converted GGUF files under the app's data folder: built on first use, reused, rebuilt when the source changes.

Layout: ``<data_dir>/gguf/<checkpoint folder name>-<hash of its path>/`` holds ``model-f16.gguf`` (the
converter's output), ``model-<type>.gguf`` (quantised from it by llama.cpp's ``llama_model_quantize``)
and ``manifest.json``: the source's checksum (SHA-256 of config.json, the safetensors files, the index,
qwen.tiktoken and quantize_config.json) and each output's size and checksum of its first and last MiB.

Hashing a 3.6 GB checkpoint on every start would cost seconds, so the manifest also keeps each source
file's size and mtime: while they are unchanged the recorded checksum stands; when any differs the
files are hashed again and a different checksum rebuilds the cache. An output whose size, ``GGUF``
magic or head/tail checksum is wrong (a crash mid-write, a truncated copy) is replaced, with a warning
that says so. Writes go to a temporary name and are renamed, under a lock file, so two processes never
convert the same checkpoint at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import QwenCoreError

log = logging.getLogger(__name__)

FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_* numbers
SOURCE_GLOBS = ("config.json", "*.safetensors", "model.safetensors.index.json", "qwen.tiktoken", "quantize_config.json")
MANIFEST = "manifest.json"
_EDGE = 1 << 20  # bytes checksummed at each end of an output


class ConversionError(QwenCoreError):
    """The checkpoint could not be converted to GGUF (the message says why and what to do)."""


def converter_dir() -> Path | None:
    """Where ``scripts/install_llamacpp.sh`` unpacked llama.cpp's converter (``conversion/`` and ``gguf-py/``)."""
    path = Path(sys.prefix) / "share" / "llama-cpp-convert"
    return path if (path / "conversion" / "__init__.py").is_file() else None


def _source_files(source: Path) -> list[Path]:
    return sorted({p for pattern in SOURCE_GLOBS for p in source.glob(pattern) if p.is_file()})


def _stat_key(files: list[Path]) -> list:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def source_checksum(source: Path) -> str:
    """SHA-256 over the names and contents of the files the conversion reads."""
    digest = hashlib.sha256()
    for path in _source_files(source):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _edges(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(_EDGE))
        fh.seek(max(0, size - _EDGE))
        digest.update(fh.read(_EDGE))
    return digest.hexdigest()


def _problem(path: Path, record: dict | None) -> str | None:
    """Why ``path`` cannot be used (None: it looks whole)."""
    if record is None:
        return "not recorded in the manifest"
    if not path.is_file():
        return "missing"
    if path.stat().st_size != record.get("size"):
        return f"{path.stat().st_size} bytes instead of {record.get('size')}"
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            return "not a GGUF file"
    if _edges(path) != record.get("edges"):
        return "its contents changed"
    return None


class GgufCache:
    """The converted files of one checkpoint folder (see the module docstring)."""

    def __init__(self, data_dir: str | Path, source: str | Path, converter: Path | None = None):
        self.source = Path(source).resolve()
        tag = hashlib.sha1(str(self.source).encode()).hexdigest()[:8]
        self.folder = Path(data_dir) / "gguf" / f"{self.source.name}-{tag}"
        self.converter = converter or converter_dir()
        self.warnings: list[str] = []  # what was rebuilt and why (for the log and the Model tab)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _read_manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, self.manifest_path)

    @contextlib.contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _current_manifest(self) -> dict:
        """The manifest, emptied of outputs when the source changed since they were made."""
        manifest = self._read_manifest()
        files = _source_files(self.source)
        stats = _stat_key(files)
        if manifest.get("source_stats") == stats and manifest.get("source_sha256"):
            return manifest
        checksum = source_checksum(self.source)
        if manifest.get("source_sha256") not in (None, checksum):
            self._warn(f"{self.source} changed since it was converted; converting it again")
            manifest = {}
        elif manifest.get("source_sha256") is None:
            manifest = {}
        manifest.update(source=str(self.source), source_sha256=checksum, source_stats=stats)
        manifest.setdefault("files", {})
        self._write_manifest(manifest)
        return manifest

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def path(self, file_type: str, progress: Callable[[float, str], None] | None = None) -> Path:
        """The GGUF file of ``file_type`` (f16, q8_0, q4_k_m), made now if it is missing, stale or corrupt."""
        if file_type not in FILE_TYPES:
            raise ValueError(f"file_type must be one of {', '.join(FILE_TYPES)}")
        report = progress or (lambda fraction, message: None)
        with self._locked():
            manifest = self._current_manifest()
            out = self.folder / f"model-{file_type}.gguf"
            problem = _problem(out, manifest["files"].get(out.name))
            if problem is None:
                return out
            if out.name in manifest["files"]:
                self._warn(f"The converted weights {out} are unusable ({problem}); converting again")
            if file_type == "f16":
                report(0.15, f"Converting {self.source.name} to GGUF (once; cached in {self.folder})")
                self._convert(out)
            else:
                base = self.folder / "model-f16.gguf"
                if _problem(base, manifest["files"].get(base.name)) is not None:
                    report(0.15, f"Converting {self.source.name} to GGUF (once; cached in {self.folder})")
                    self._convert(base)
                    manifest["files"][base.name] = self._record(base)
                report(0.5, f"Quantising to {file_type.upper()} (once)")
                self._quantize(base, out, file_type)
            manifest["files"][out.name] = self._record(out)
            self._write_manifest(manifest)
            return out

    def forget(self, path: Path, reason: str) -> None:
        """Drop ``path`` (llama.cpp could not load it) so that the next :meth:`path` rebuilds it."""
        with self._locked():
            manifest = self._read_manifest()
            manifest.get("files", {}).pop(path.name, None)
            self._write_manifest(manifest)
            path.unlink(missing_ok=True)
        self._warn(f"The converted weights {path} could not be loaded ({reason}); converting again")

    @staticmethod
    def _record(path: Path) -> dict:
        return {"size": path.stat().st_size, "edges": _edges(path), "made": time.time()}

    def _convert(self, out: Path) -> None:
        if self.converter is None:
            raise ConversionError(
                "llama.cpp's converter is not installed (expected in .venv/share/llama-cpp-convert). "
                "Run scripts/install_llamacpp.sh, or use --precision fp32."
            )
        tmp = out.with_suffix(".part")
        cmd = [sys.executable, "-m", "qwen_core.llamacpp.convert", str(self.source), str(tmp)]
        cmd += ["--converter-dir", str(self.converter)]
        vocab = hashlib.sha256((self.source / "qwen.tiktoken").read_bytes()).hexdigest()[:16]
        # Next to the converter (one per install, shared by every data folder) when that is writable.
        where = self.converter if os.access(self.converter, os.W_OK) else self.folder.parent
        cmd += ["--merges-cache", str(where / f"qwen-merges-{vocab}.json")]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        if done.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise ConversionError(f"Converting {self.source} to GGUF failed:\n{tail}")
        os.replace(tmp, out)
        log.info("Converted %s to %s in %.1f s", self.source, out, time.perf_counter() - started)

    @staticmethod
    def _quantize(base: Path, out: Path, file_type: str) -> None:
        import llama_cpp

        tmp = out.with_suffix(".part")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FILE_TYPES[file_type]
        params.nthread = len(os.sched_getaffinity(0))
        started = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(str(base).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise ConversionError(f"llama.cpp could not quantise {base} to {file_type.upper()} (code {rc})")
        os.replace(tmp, out)
        log.info("Quantised %s to %s in %.1f s", base.name, out.name, time.perf_counter() - started)
