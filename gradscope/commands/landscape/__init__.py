"""The ``landscape`` command: the loss along directions in weight space.

* :mod:`.options`: :class:`LandscapeOptions`, validated when built (and the grid syntax);
* :mod:`.run`: :func:`landscape` and :func:`landscape_file` (directions, then the grid
  over :mod:`gradscope.engine.landscape`);
* :mod:`.report`: :class:`LandscapeReport` and its parts (schema ``gradscope.landscape/1``);
* :mod:`.render`: the table and CSV renderers.

The options and report types are imported with the package; the entry points on first
use, so that reading a report does not import the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import LandscapeOptions
from .report import Axis, Directions, LandscapeReport, Timing

if TYPE_CHECKING:
    from .run import landscape, landscape_file

__all__ = [
    "Axis",
    "Directions",
    "LandscapeOptions",
    "LandscapeReport",
    "Timing",
    "landscape",
    "landscape_file",
]

_RUN = frozenset({"landscape", "landscape_file"})


def __getattr__(name: str) -> Any:
    """:func:`landscape` and :func:`landscape_file`, imported on first use."""
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
