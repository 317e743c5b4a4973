"""Keep transformers from importing quantization backends no Qwen-1 checkpoint uses.

transformers imports torchao (≈1 s, and its native kernels) whenever the package is installed,
from its quantizer registry, even for an fp32 checkpoint. No Qwen-1 variant is torchao-quantized
(GPTQ Int4/Int8 go through gptqmodel, which is imported only for a GPTQ checkpoint), so
``is_torchao_available`` is made to answer False. Done with an import hook, so importing
qwen_core stays cheap: nothing of transformers is imported here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "transformers.utils.import_utils"
_HIDDEN = ("is_torchao_available",)


def _never(*_args, **_kwargs) -> bool:
    return False


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``transformers.utils.import_utils`` as usual and patches it once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for name in _HIDDEN:  # before transformers.utils binds them (``from .import_utils import …``)
                if hasattr(module, name):
                    setattr(module, name, _never)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Install the hook (idempotent); a no-op when transformers has been imported already."""
    if _TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
