"""The llama.cpp backend: Qwen-1 checkpoints as GGUF (Q8_0 / Q4_K_M), decoded by llama.cpp on the CPU.

:class:`LlamaCppEngine` implements the backend contract (:class:`~qwen_core.backend.Backend`); prompts,
sampling and streaming are the app's own, only the forward passes run in llama.cpp (through
llama-cpp-python). Checkpoints are converted on first use with llama.cpp's own converter and cached
under the data folder (:class:`GgufCache`). Install with ``scripts/install_llamacpp.sh``.
"""

from .cache import ConversionError, GgufCache, converter_dir, source_checksum
from .engine import LlamaCppEngine, LlamaCppWorker, LlamaReplyStream
from .loading import FILE_TYPE, llamacpp_available, load_llamacpp_engine, model_params, require_llamacpp

__all__ = [
    "FILE_TYPE",
    "ConversionError",
    "GgufCache",
    "LlamaCppEngine",
    "LlamaCppWorker",
    "LlamaReplyStream",
    "converter_dir",
    "llamacpp_available",
    "load_llamacpp_engine",
    "model_params",
    "require_llamacpp",
    "source_checksum",
]
