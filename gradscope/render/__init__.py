"""Rendering: a registry from report types to their command's renderer module.

Each command's ``render`` module (``gradscope.commands.<name>.render``) exposes
``render(report, fmt, *, width, color) -> str`` for the formats of :class:`OutputFormat`;
each report type names that module with the :func:`renders_with` class decorator, so
:func:`render` looks the renderer up instead of testing types one by one, and a new
command's report renders without any change here.  Renderers only read the frozen
report; they never compute statistics, so every format shows the same numbers.  The
renderer modules are imported on first use, which keeps ``import gradscope.render``
cheap for commands that only need :class:`OutputFormat`.  The shared primitives are in
:mod:`gradscope.render.table` (rich tables), :mod:`gradscope.render.csv` and
:mod:`gradscope.render.json`.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["OutputFormat", "by_format", "format_shape", "render", "renders_with"]

ReportType = TypeVar("ReportType", bound=type)

_RENDERERS: dict[type, str] = {}
"""Report type -> the module that renders it (imported on first use)."""


class OutputFormat(str, enum.Enum):
    """The output formats of every command (the value is the CLI spelling)."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def renders_with(module: str) -> Callable[[ReportType], ReportType]:
    """Class decorator: reports of this type are rendered by ``module``'s ``render``."""

    def register(report_type: ReportType) -> ReportType:
        _RENDERERS[report_type] = module
        return report_type

    return register


def format_shape(shape: tuple[int, ...]) -> str:
    """A tensor shape as ``3x4`` (``scalar`` for rank 0), compact and comma-free for CSV."""
    if not shape:
        return "scalar"
    return "x".join(str(int(dim)) for dim in shape)


def by_format(
    fmt: OutputFormat,
    *,
    table: Callable[[], str],
    json: Callable[[], str],
    csv: Callable[[], str],
) -> str:
    """Call the one of ``table``, ``json`` and ``csv`` that ``fmt`` names."""
    chosen = {OutputFormat.TABLE: table, OutputFormat.JSON: json, OutputFormat.CSV: csv}
    return chosen[OutputFormat(fmt)]()


def renderer_of(report: object) -> Any:
    """The renderer module registered for ``report``'s type (or its nearest base)."""
    for report_type in type(report).__mro__:
        if report_type in _RENDERERS:
            return importlib.import_module(_RENDERERS[report_type])
    raise TypeError(f"no renderer is registered for {type(report).__name__}")


def render(
    report: object,
    fmt: OutputFormat | str,
    *,
    width: int | None = None,
    color: bool = False,
) -> str:
    """Render any gradscope report in format ``fmt``.

    ``width`` and ``color`` only affect the table format (JSON and CSV are meant for
    machines and never wrap or colour).  ``fmt`` may also be given as its string value
    (``"json"``), which is what a CLI option hands over.
    """
    text: str = renderer_of(report).render(report, OutputFormat(fmt), width=width, color=color)
    return text
