"""Find a Qwen-1 checkpoint (folder or hub id) and check it before anything is loaded.

Only data files are fetched or read: the repos' ``*.py`` remote code is never
downloaded, imported or executed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError, CheckpointNotFound
from .tokenizer import VOCAB_FILE

# What a chat needs from a repo; deliberately no *.py.
HUB_PATTERNS = ["*.json", "*.safetensors", VOCAB_FILE]
QWEN1_ARCHITECTURES = {"QWenLMHeadModel"}
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "I8": 1, "U8": 1, "F64": 8, "I16": 2, "BOOL": 1}


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds, read from its metadata only."""

    path: Path
    config: dict
    generation_config: dict
    weight_files: tuple[Path, ...]
    n_params: int  # elements of all stored tensors
    weight_bytes: int  # bytes of all stored tensors as stored
    stored_dtype: str  # "bf16", "fp16" or "fp32": the dtype most tensors are stored in
    quant_bits: int | None = None  # 4 or 8 for GPTQ checkpoints
    quantize_config: dict = field(default_factory=dict)

    @property
    def is_gptq(self) -> bool:
        """Whether the checkpoint is a GPTQ Int4/Int8 one."""
        return self.quant_bits is not None


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _safetensors_header(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); download it again.") from exc
    header.pop("__metadata__", None)
    return header


def _weight_files(path: Path) -> tuple[Path, ...]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{path} is incomplete: {len(missing)} of {len(shards)} weight shards are missing "
                f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}). Download them again into that folder."
            )
        return tuple(path / s for s in shards)
    single = path / "model.safetensors"
    if single.is_file():
        return (single,)
    loose = sorted(path.glob("*.safetensors"))
    if loose:
        return tuple(loose)
    if list(path.glob("pytorch_model*.bin")):
        raise CheckpointError(
            f"{path} has only pytorch_model*.bin weights (pickle). Use the safetensors files of the same "
            "Hugging Face repo: every Qwen-1 chat repo publishes them."
        )
    raise CheckpointError(f"{path} has no model weights (*.safetensors). Download the checkpoint into it.")


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Check that ``path`` is a complete first-generation Qwen chat checkpoint and describe it."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointNotFound(f"Checkpoint folder {path} does not exist.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a model checkpoint folder.")
    config = _read_json(config_file)
    model_type = config.get("model_type")
    archs = set(config.get("architectures") or [])
    if model_type != "qwen" and not archs & QWEN1_ARCHITECTURES:
        raise CheckpointError(
            f"{config_file} describes a '{model_type}' model ({', '.join(sorted(archs)) or 'no architecture'}), "
            "not a first-generation Qwen chat model (model_type 'qwen', QWenLMHeadModel). This app runs "
            "Qwen-1_8B/7B/14B/72B-Chat and their Int8/Int4 versions."
        )
    if not (path / VOCAB_FILE).is_file():
        raise CheckpointError(f"{path} has no {VOCAB_FILE}; copy it from the original repository into the folder.")
    gen_file = path / "generation_config.json"
    generation_config = _read_json(gen_file) if gen_file.is_file() else {}
    files = _weight_files(path)
    n_params = weight_bytes = 0
    dtype_bytes: dict[str, int] = {}
    for file in files:
        for meta in _safetensors_header(file).values():
            count = 1
            for dim in meta.get("shape", []):
                count *= int(dim)
            nbytes = count * _DTYPE_BYTES.get(meta.get("dtype"), 4)
            n_params += count
            weight_bytes += nbytes
            dtype_bytes[meta.get("dtype")] = dtype_bytes.get(meta.get("dtype"), 0) + nbytes
    float_dtypes = {k: v for k, v in dtype_bytes.items() if k in ("F32", "F16", "BF16")}
    stored = max(float_dtypes, key=float_dtypes.get) if float_dtypes else "BF16"
    quant = config.get("quantization_config") or {}
    qfile = path / "quantize_config.json"
    quantize_config = _read_json(qfile) if qfile.is_file() else dict(quant)
    bits = quant.get("bits") or quantize_config.get("bits") if (quant or qfile.is_file()) else None
    if bits is not None and int(bits) not in (4, 8):
        raise CheckpointError(f"{path}: GPTQ with {bits} bits; Qwen publishes only Int4 and Int8.")
    return CheckpointInfo(
        path=path,
        config=config,
        generation_config=generation_config,
        weight_files=files,
        n_params=n_params,
        weight_bytes=weight_bytes,
        stored_dtype={"F32": "fp32", "F16": "fp16", "BF16": "bf16"}[stored],
        quant_bits=int(bits) if bits is not None else None,
        quantize_config=quantize_config,
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or Path(model).expanduser().exists()


def resolve_checkpoint(
    model: str,
    *,
    source: str = "huggingface",
    cache_dir: str | Path | None = None,
    offline: bool = False,
    revision: str | None = None,
) -> Path:
    """A local folder holding the checkpoint ``model`` names: itself if a folder, else the hub's snapshot.

    ``source`` is ``"huggingface"`` or ``"modelscope"``. The local cache is tried first,
    so a cached model starts with no network. When the weights are neither cached nor
    reachable, :class:`CheckpointNotFound` names the folder to put them in.
    """
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise CheckpointNotFound(f"Checkpoint folder {path} does not exist. Pass --model with an existing folder.")
        return path
    if source == "modelscope":
        return _from_modelscope(model, cache_dir, offline, revision)
    if source != "huggingface":
        raise ValueError(f"unknown checkpoint source {source!r}: use 'huggingface' or 'modelscope'")
    return _from_huggingface(model, cache_dir, offline, revision)


def _not_found(model: str, where: str, cause: str) -> CheckpointNotFound:
    name = model.split("/")[-1]
    return CheckpointNotFound(
        f"{model} is not in the local cache ({where}) and {cause}. Download it on a machine with access "
        f"(huggingface-cli download {model} --local-dir ./models/{name}), copy the folder here, and start "
        f"with --model ./models/{name}; or put it in the cache folder above."
    )


def _from_huggingface(model: str, cache_dir, offline: bool, revision) -> Path:
    from huggingface_hub import constants, snapshot_download

    where = str(cache_dir or constants.HF_HUB_CACHE)
    try:
        return Path(
            snapshot_download(
                model, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir, revision=revision, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - any miss means: not cached, try the network
        if offline:
            raise _not_found(model, where, "offline mode is on") from None
    try:
        return Path(snapshot_download(model, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir, revision=revision))
    except Exception as exc:
        raise _not_found(model, where, f"the Hugging Face Hub can't be reached ({type(exc).__name__})") from exc


def _from_modelscope(model: str, cache_dir, offline: bool, revision) -> Path:
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise CheckpointNotFound(
            "ModelScope was chosen as the source but the modelscope package is not installed: pip install modelscope"
        ) from exc
    try:
        return Path(
            snapshot_download(
                model,
                cache_dir=str(cache_dir) if cache_dir else None,
                revision=revision or "master",
                allow_file_pattern=HUB_PATTERNS,
                local_files_only=offline,
            )
        )
    except Exception as exc:
        raise _not_found(
            model, str(cache_dir or "~/.cache/modelscope"), f"ModelScope can't be reached ({exc})"
        ) from exc
