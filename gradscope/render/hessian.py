"""Deprecated: the hessian renderers live in :mod:`gradscope.commands.hessian.render`.

Any name read from this module still works, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from typing import Any

from .._deprecated import moved_attribute


def __getattr__(name: str) -> Any:
    """``name`` from :mod:`gradscope.commands.hessian.render`, with a DeprecationWarning."""
    return moved_attribute(__name__, "gradscope.commands.hessian.render", name)
