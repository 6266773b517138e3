"""Renderers of a :class:`~gradscope.commands.dashboard.report.DashboardReport`.

The table is a terminal summary of the run: one row per series (first, last, minimum and
maximum value, and a sparkline ``▁▂▃▄▅▆▇█`` of its trend), the per-layer gradient norms
and update ratios (only the ``top`` layers that moved most when there are more, saying
how many were left out), and the steps at which each health diagnosis fired.  Its length
does not grow with the number of layers or records.  ``N null`` in a row's note counts
its points that were ``null`` in the file (not finite, or not defined there).  JSON is
``report.to_json()``; CSV has one row per point.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.render import OutputFormat, by_format, json
from gradscope.render.table import (
    MISSING,
    Column,
    fmt_float,
    linear_sparkline,
    make_console,
    make_table,
    sparkline,
    strip_trailing_spaces,
    summary_grid,
)

from .report import DashboardReport
from .summary import HealthEvent, Series

TREND_WIDTH = 24
"""Characters of a sparkline: longer series are averaged over this many buckets."""
LAYER_TREND_WIDTH = 16
"""The same for a layer's row (layer paths need the room)."""
FLAT = "▄"
"""A constant series' sparkline character."""
MAX_STEPS_SHOWN = 6
"""A diagnosis that fired at more steps lists the first ones and the last."""
MAX_TARGETS_SHOWN = 3


def _buckets(values: Sequence[float], width: int) -> list[float]:
    """``values`` averaged over at most ``width`` consecutive buckets; a bucket with a
    non-finite value is NaN (a NaN spike stays visible)."""
    count = len(values)
    if count <= width:
        return list(values)
    out = []
    for i in range(width):
        chunk = values[i * count // width : (i + 1) * count // width]
        finite = all(math.isfinite(v) for v in chunk)
        out.append(sum(chunk) / len(chunk) if finite else math.nan)
    return out


def trend(values: Sequence[float], scale: str, width: int = TREND_WIDTH) -> str:
    """A sparkline of ``values``, at most ``width`` characters: log10 heights for a
    ``log`` series (``·`` for zero), linear ones otherwise; ``×`` for NaN.  A constant
    series is a flat line at mid height."""
    shown = _buckets(values, width)
    finite = {v for v in shown if math.isfinite(v)}
    if len(finite) == 1 and (scale != "log" or min(finite) > 0):
        return "".join(FLAT if math.isfinite(v) else "×" for v in shown)
    return sparkline(shown) if scale == "log" else linear_sparkline(shown)


def _change(series: Series) -> str:
    """``last / first`` as a factor (``×12.5``), ``—`` when not defined."""
    first, last = series.first(), series.last()
    if first is None or last is None or first == 0:
        return MISSING
    return f"×{last / first:.3g}"


def _header(report: DashboardReport) -> list[tuple[str, str]]:
    run = report.run
    epochs = f"{run.epochs} epoch{'s' if run.epochs != 1 else ''}"
    lines = [
        ("file", run.file),
        ("records", f"{run.records}, steps {run.first_step}..{run.last_step}, {epochs}"),
        ("instruments", ", ".join(run.instruments) or "none"),
    ]
    return [*lines, *(("note", note) for note in report.notes)]


def _row(
    label: str, series: Series, extra: Sequence[str] = (), *, layer: bool = False
) -> list[Text]:
    """A series' cells; a layer's row has no point count and a shorter trend."""
    numbers = (series.first(), series.last(), series.minimum(), series.maximum())
    count = [] if layer else [Text(str(len(series.values)))]
    width = LAYER_TREND_WIDTH if layer else TREND_WIDTH
    return [
        Text(label),
        *count,
        *(Text(fmt_float(v)) for v in numbers),
        *(Text(e) for e in extra),
        Text(trend(series.values, series.scale, width)),
    ]


def _nonfinite_note(series: Series) -> str | None:
    count = series.nonfinite()
    return f"{count} null" if count else None


def _series_table(report: DashboardReport) -> Table:
    columns: tuple[Column, ...] = (
        ("series", "text"),
        ("n", "num"),
        ("first", "num"),
        ("last", "num"),
        ("min", "num"),
        ("max", "num"),
        ("trend", "text"),
    )
    rows = [_row(s.label, s) for s in report.series]
    notes = [_nonfinite_note(s) for s in report.series]
    return make_table("Series over training steps", columns, rows, notes)


def _layer_table(title: str, layers: tuple[Series, ...], shown: tuple[Series, ...]) -> Table:
    columns: tuple[Column, ...] = (
        ("layer", "path"),
        ("first", "num"),
        ("last", "num"),
        ("min", "num"),
        ("max", "num"),
        ("last/first", "num"),
        ("trend", "text"),
    )
    if len(shown) < len(layers):
        title += f": the {len(shown)} of {len(layers)} layers that moved most (|log10 last/first|)"
    rows = [_row(s.key, s, (_change(s),), layer=True) for s in shown]
    return _wide(make_table(title, columns, rows, [_nonfinite_note(s) for s in shown]), title)


def _wide(table: Table, title: str) -> Table:
    """``table`` at least as wide as its title, so that the title stays on one line."""
    table.min_width = len(title)
    return table


def _left_out(layers: tuple[Series, ...], shown: tuple[Series, ...]) -> Text | None:
    hidden = len(layers) - len(shown)
    if hidden <= 0:
        return None
    return Text(
        f"{hidden} more layer{'s' if hidden != 1 else ''} not shown "
        "(--top K shows more; --format json has every layer)"
    )


def _layer_section(
    title: str, layers: tuple[Series, ...], shown: tuple[Series, ...]
) -> list[RenderableType]:
    if not layers:
        return []
    in_order = shown if len(shown) < len(layers) else layers
    parts: list[RenderableType] = [Text(""), _layer_table(title, layers, in_order)]
    left_out = _left_out(layers, shown)
    return parts if left_out is None else [*parts, left_out]


def _steps_text(steps: Sequence[int]) -> str:
    """``10, 20, 30`` or, for many, ``10, 20, 30, 40, 50, …, 200 (20 steps)``."""
    if len(steps) <= MAX_STEPS_SHOWN:
        return ", ".join(map(str, steps))
    head = ", ".join(map(str, steps[: MAX_STEPS_SHOWN - 1]))
    return f"{head}, …, {steps[-1]} ({len(steps)} steps)"


def _targets_text(events: Sequence[HealthEvent]) -> str:
    counts = Counter(event.target for event in events)
    common = counts.most_common(MAX_TARGETS_SHOWN)
    text = ", ".join(f"{target or MISSING} ×{n}" for target, n in common)
    rest = len(counts) - len(common)
    return f"{text}, +{rest} more" if rest > 0 else text


def _events_section(report: DashboardReport) -> list[RenderableType]:
    if not report.events:
        return [Text(""), Text(f"health: no findings in {report.run.records} records")]
    kinds: dict[str, list[HealthEvent]] = {}
    for event in report.events:
        kinds.setdefault(event.kind, []).append(event)
    columns: tuple[Column, ...] = (("kind", "text"), ("steps", "path"), ("targets", "path"))
    rows = [
        [
            Text(kind),
            Text(_steps_text(sorted({e.step for e in events}))),
            Text(_targets_text(events)),
        ]
        for kind, events in kinds.items()
    ]
    count = len(report.events)
    title = (
        f"Health: the steps where each diagnosis fired ({count} finding{'' if count == 1 else 's'})"
    )
    return [Text(""), _wide(make_table(title, columns, rows, [None] * len(rows)), title)]


def format_table(report: DashboardReport, *, width: int | None = None, color: bool = False) -> str:
    """The run's summary: series, per-layer sections (top movers) and health events."""
    parts: list[RenderableType] = [summary_grid(_header(report)), Text(""), _series_table(report)]
    parts += _layer_section("Gradient norm per layer", report.grad_norms, report.top_grad_norms())
    parts += _layer_section(
        "Update ratio per layer", report.update_ratios, report.top_update_ratios()
    )
    parts += _events_section(report)
    buffer = io.StringIO()
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


CSV_COLUMNS = ("group", "key", "step", "value")


def format_csv(report: DashboardReport) -> str:
    """One row per point: ``group`` (``series``, ``grad_norm`` or ``update_ratio``), the
    series key (the layer path for a layer), the step and the value (empty when null)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    groups = (
        ("series", report.series),
        ("grad_norm", report.grad_norms),
        ("update_ratio", report.update_ratios),
    )
    for group, all_series in groups:
        for series in all_series:
            for step, value in zip(series.steps, series.values, strict=True):
                writer.writerow(
                    [group, series.key, step, repr(value) if math.isfinite(value) else ""]
                )
    return buffer.getvalue()


def render(report: DashboardReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: json.format_report(report),
        csv=lambda: format_csv(report),
    )
