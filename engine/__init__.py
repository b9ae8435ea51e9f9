"""Explanations for PyTorch classifiers: ``from engine import explain``.

The names below are imported on first use (PEP 562), so that ``python -m engine --help`` and
other torch-free paths (the CLI's argument parser) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.catalogue import all_methods, get_method
    from engine.explain import explain
    from engine.models import MODELS, load_model
    from engine.result import Explanation, Prediction
    from engine.study import study

_HOMES = {
    "MODELS": "engine.models",
    "Explanation": "engine.result",
    "Prediction": "engine.result",
    "all_methods": "engine.catalogue",
    "explain": "engine.explain",
    "get_method": "engine.catalogue",
    "load_model": "engine.models",
    "study": "engine.study",
}
__all__ = [
    "MODELS",
    "Explanation",
    "Prediction",
    "all_methods",
    "explain",
    "get_method",
    "load_model",
    "study",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``engine.explain`` and ``engine.study`` are the functions, as ``explain`` was when this
    module imported it eagerly: the import system's binding of the submodule (or subpackage) of
    the same name to the package (done after it first loads) is skipped; the module stays in
    ``sys.modules``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("explain", "study") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
