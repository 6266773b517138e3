"""Deprecated: the ``hessian`` command lives in :mod:`gradscope.commands.hessian`.

:class:`HessianOptions` is in :mod:`gradscope.commands.hessian.options`, everything else
(:func:`hessian`, :func:`hessian_file`, block selection, exact and Lanczos blocks) in
:mod:`gradscope.commands.hessian.run`; ``gradscope.hessian``, ``gradscope.hessian_file``
and ``gradscope.HessianOptions`` are the public names.  Any name read from this module
still works, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from typing import Any

from ._deprecated import moved_attribute


def __getattr__(name: str) -> Any:
    """``name`` from :mod:`gradscope.commands.hessian.run`, with a DeprecationWarning."""
    return moved_attribute(__name__, "gradscope.commands.hessian.run", name)
