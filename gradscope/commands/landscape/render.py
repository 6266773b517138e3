"""Renderers of a :class:`~gradscope.commands.landscape.report.LandscapeReport`: table, CSV.

JSON is ``report.to_json()``.  The table starts with the run's summary lines, then shows
the loss: for one axis a sparkline of the whole curve and a table of its points, for two
a heat map (a sparkline per value of the first axis, on one common scale).
"""

from __future__ import annotations

import csv
import io

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.render import OutputFormat, by_format, json
from gradscope.render.table import (
    Column,
    fmt_float,
    linear_sparkline,
    make_console,
    make_table,
    run_lines,
    strip_trailing_spaces,
    summary_grid,
)

from .report import LandscapeReport

MAX_ROWS = 41
"""A 1-D table longer than this shows every k-th point (the CSV has them all)."""


def _directions_line(report: LandscapeReport) -> str:
    d = report.directions
    if d.kind == "interpolation":
        return f"interpolation from MODEL (alpha=0) to {d.to} (alpha=1)"
    what = f"{d.kind}, {d.normalization}-normalized, seed {d.seed}"
    if d.eigenvalues is not None:
        what += ", eigenvalues " + " ".join(fmt_float(e) for e in d.eigenvalues)
    zeroed = f", {len(d.zeroed)} zeroed (1-D)" if d.zeroed else ""
    return f"{what}; {len(d.variables)} variables{zeroed}"


def _grid_line(report: LandscapeReport) -> str:
    return " × ".join(
        f"{a.name} {a.start:g}..{a.stop:g} ({len(a.values)} points)" for a in report.axes
    )


def _minimum_line(report: LandscapeReport) -> str:
    found = report.minimum()
    if found is None:
        return "no finite loss"
    where = ", ".join(f"{a.name}={c:g}" for a, c in zip(report.axes, found[0], strict=True))
    return f"{fmt_float(found[1])} at {where}"


def _summary(report: LandscapeReport) -> list[tuple[str, str]]:
    t = report.timing
    lines = [
        *run_lines(report),
        ("directions", _directions_line(report)),
        ("statistics", f"BatchNorm moving statistics: {report.directions.statistics}"),
        ("grid", _grid_line(report)),
        ("minimum", _minimum_line(report)),
    ]
    if report.other_loss is not None:
        lines.append(("other", f"{fmt_float(report.other_loss)} (loss of {report.directions.to})"))
    lines.append(
        ("time", f"{t.points} points in {t.seconds:.2f}s, {t.traces} trace(s), {t.chunk} a call")
    )
    return [*lines, *(("note", note) for note in report.notes)]


def _shown_indices(count: int) -> list[int]:
    if count <= MAX_ROWS:
        return list(range(count))
    return sorted({round(float(i)) for i in np.linspace(0, count - 1, MAX_ROWS)})


def _curve_table(report: LandscapeReport) -> Table:
    axis = report.axes[0]
    columns: tuple[Column, ...] = ((axis.name, "num"), ("loss", "num"), ("", "text"))
    values = list(report.losses)
    found = report.minimum()
    low = found[1] if found else 0.0
    finite = [v for v in values if np.isfinite(v)]
    scale = (low, max(finite)) if finite else None
    rows, notes = [], []
    for i in _shown_indices(len(values)):
        rows.append(
            [
                Text(f"{axis.values[i]:g}"),
                Text(fmt_float(values[i])),
                Text(linear_sparkline([values[i]], scale)),
            ]
        )
        note = []
        if found and values[i] == found[1]:
            note.append("minimum")
        if axis.name == "alpha" and axis.values[i] in (0.0, 1.0):
            note.append("MODEL" if axis.values[i] == 0.0 else "OTHER")
        notes.append(", ".join(note) or None)
    return make_table("Loss along the line", columns, rows, notes)


def _heat_map(report: LandscapeReport) -> Table:
    x, y = report.axes
    grid = report.loss_grid()
    finite = grid[np.isfinite(grid)]
    scale = (float(finite.min()), float(finite.max())) if finite.size else None
    columns: tuple[Column, ...] = (
        (x.name, "num"),
        (f"loss over {y.name} {y.start:g}..{y.stop:g}", "text"),
        ("row min", "num"),
    )
    rows = [
        [
            Text(f"{x.values[i]:g}"),
            Text(linear_sparkline(list(grid[i]), scale)),
            Text(fmt_float(float(np.nanmin(grid[i])) if np.isfinite(grid[i]).any() else None)),
        ]
        for i in range(len(x.values))
    ]
    return make_table("Loss over the plane", columns, rows, [None] * len(rows))


def format_table(report: LandscapeReport, *, width: int | None = None, color: bool = False) -> str:
    """The report as its summary lines, a curve sparkline and table (1-D) or a heat map."""
    buffer = io.StringIO()
    parts: list[RenderableType] = [summary_grid(_summary(report)), Text("")]
    if len(report.axes) == 1:
        parts.append(summary_grid([("curve", linear_sparkline(list(report.losses)))]))
        parts.extend([Text(""), _curve_table(report)])
    else:
        parts.append(_heat_map(report))
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


def csv_columns(report: LandscapeReport) -> list[str]:
    """The axes' names (``alpha``, or ``x`` and ``y``), then ``loss``."""
    return [*(axis.name for axis in report.axes), "loss"]


def format_csv(report: LandscapeReport) -> str:
    """One row per grid point, row-major: its coordinates and its loss (empty when not
    finite)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(report))
    for point, loss in zip(report.points(), report.losses, strict=True):
        writer.writerow([*(repr(c) for c in point), repr(loss) if np.isfinite(loss) else ""])
    return buffer.getvalue()


def render(report: LandscapeReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: json.format_report(report),
        csv=lambda: format_csv(report),
    )
