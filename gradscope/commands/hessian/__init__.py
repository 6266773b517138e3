"""The ``hessian`` command: curvature of the loss, per variable, per layer or whole.

* :mod:`.options`: :class:`HessianOptions`, validated when built;
* :mod:`.run`: :func:`hessian` and :func:`hessian_file` (block selection, exact blocks
  and matrix-free Lanczos/Hutch++/SLQ over :mod:`gradscope.engine.hessian`);
* :mod:`.report`: :class:`HessianReport` and its parts (schema ``gradscope.hessian/1``);
* :mod:`.render`: the table and CSV renderers.

The options and report types are imported with the package; the entry points on first
use, so that reading a report does not import the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import HessianOptions
from .report import CrossBlock, Density, HessianBlock, HessianReport

if TYPE_CHECKING:
    from .run import hessian, hessian_file

__all__ = [
    "CrossBlock",
    "Density",
    "HessianBlock",
    "HessianOptions",
    "HessianReport",
    "hessian",
    "hessian_file",
]

_RUN = frozenset({"hessian", "hessian_file"})


def __getattr__(name: str) -> Any:
    """:func:`hessian` and :func:`hessian_file`, imported on first use."""
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
