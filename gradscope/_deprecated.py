"""Old module paths that moved: a module-level ``__getattr__`` that warns and forwards.

``gradscope.gradcheck`` and friends became thin shims when their code moved into
``gradscope.commands``; :func:`forwarder` keeps ``from gradscope.gradcheck import check``
working, with a :class:`DeprecationWarning` naming the new home.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any


def forwarder(old: str, new: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the deprecated module ``old``: an attribute is looked
    up in the modules ``new``, in order, with a warning; a missing one raises
    ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # module protocol lookups (``__path__``, ...): no warning
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(
                    f"{old}.{name} is deprecated; import it from {target} instead.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
