"""The ``attribute`` command: which inputs drive the loss or a chosen output.

* :mod:`.options`: :class:`AttributeOptions`, validated when built (and the target and
  baseline syntax);
* :mod:`.run`: :func:`attribute` and :func:`attribute_file` (the session, then
  :mod:`gradscope.engine.attribution`);
* :mod:`.report`: :class:`AttributeReport` and its parts (schema ``gradscope.attribute/1``);
* :mod:`.render`: the table and CSV renderers.

The options and report types are imported with the package; the entry points on first
use, so that reading a report does not import the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import AttributeOptions
from .report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
    InputAttribution,
    MethodInfo,
    TargetInfo,
    Timing,
    TopPosition,
)

if TYPE_CHECKING:
    from .run import attribute, attribute_file

__all__ = [
    "AttributeOptions",
    "AttributeReport",
    "AttributedInput",
    "AttributionTensors",
    "ExampleAttribution",
    "InputAttribution",
    "MethodInfo",
    "TargetInfo",
    "Timing",
    "TopPosition",
    "attribute",
    "attribute_file",
]

_RUN = frozenset({"attribute", "attribute_file"})


def __getattr__(name: str) -> Any:
    """:func:`attribute` and :func:`attribute_file`, imported on first use."""
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
