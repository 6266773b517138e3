"""The ``inspect`` command: every weight, input and layer-output gradient in one pass.

* :mod:`.options`: :class:`InspectOptions`, validated when built;
* :mod:`.run`: :func:`inspect` and :func:`inspect_file` (over the session core and
  :mod:`gradscope.engine.gradients`);
* :mod:`.report`: :class:`Report` and its rows (schema ``gradscope.inspect/1``);
* :mod:`.render`: the table and CSV renderers.

The options and report types are imported with the package; the entry points on first
use, so that reading a report does not import the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import InspectOptions
from .report import Report

if TYPE_CHECKING:
    from .run import inspect, inspect_file, run_inspect

__all__ = ["InspectOptions", "Report", "inspect", "inspect_file", "run_inspect"]

_RUN = frozenset({"inspect", "inspect_file", "run_inspect"})


def __getattr__(name: str) -> Any:
    """:func:`inspect`, :func:`inspect_file` and :func:`run_inspect`, on first use."""
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
