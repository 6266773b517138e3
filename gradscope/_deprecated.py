"""Old module paths that still work: each name is read from the module it moved to."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def moved_attribute(old: str, new: str, name: str) -> Any:
    """``name`` from module ``new``, with a :class:`DeprecationWarning` naming both paths.

    For a module-level ``__getattr__`` of the deprecated module ``old``; the warning
    points at the line that read the name.  A name ``new`` does not have is the usual
    :class:`AttributeError`, without a warning.
    """
    module = importlib.import_module(new)
    if not hasattr(module, name):
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    warnings.warn(
        f"{old} is deprecated; import {name} from {new} instead", DeprecationWarning, stacklevel=3
    )
    return getattr(module, name)
