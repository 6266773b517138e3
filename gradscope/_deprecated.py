"""Old module paths that still work, with a :class:`DeprecationWarning`, after a move."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for the shim left at ``old``: each name is looked up
    in the modules ``new`` (in order), with a warning that names where it lives now."""

    def __getattr__(name: str) -> Any:
        for module_name in new:
            module = importlib.import_module(module_name)
            if hasattr(module, name):
                warnings.warn(
                    f"{old} is deprecated: import {name} from {module_name}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
