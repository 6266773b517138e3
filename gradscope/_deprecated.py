"""Old module paths that moved: a module-level ``__getattr__`` that warns and forwards.

``gradscope.api``, ``gradscope.gradcheck``, ``gradscope.diff`` and friends became thin
shims when their code moved into :mod:`gradscope.session` and ``gradscope.commands``;
:func:`forwarder` keeps ``from gradscope.gradcheck import check`` working, with a
:class:`DeprecationWarning` that names the new home.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def forwarder(
    old: str, new: Sequence[str], renames: Mapping[str, str] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the deprecated module ``old``: an attribute is looked
    up in the modules ``new``, in order (under its new name where ``renames`` maps it),
    with a warning; a missing one raises ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # module protocol lookups (``__path__``, ...): no warning
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        new_name = (renames or {}).get(name, name)
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, new_name):
                warnings.warn(
                    f"{old} is deprecated: import {new_name} from {target}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, new_name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
