"""Old module paths kept working after a move: a module ``__getattr__`` that warns.

A module whose code moved (``gradscope.api`` to :mod:`gradscope.session` and
:mod:`gradscope.commands.inspect`, for instance) keeps its name as a shim: reading one
of its old attributes returns the object from its new home and emits a
``DeprecationWarning`` that names the new home.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def forwarding(
    old: str, new_homes: Sequence[str], renames: Mapping[str, str] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that looks each name up in ``new_homes``
    (under its new name, when ``renames`` maps it)."""

    def __getattr__(name: str) -> Any:
        new_name = (renames or {}).get(name, name)
        for home in new_homes:
            module = importlib.import_module(home)
            if hasattr(module, new_name):
                warnings.warn(
                    f"{old}.{name} moved to {home}.{new_name}; the old path will be "
                    "removed in a future release",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, new_name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
