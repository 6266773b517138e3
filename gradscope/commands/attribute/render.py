"""Renderers of an :class:`~gradscope.commands.attribute.report.AttributeReport`: table, CSV.

JSON is ``report.to_json()``.  The table starts with the run's summary lines (model,
batch, loss, the method and its settings, the target, what was attributed), then one row
per example: its class and score, and per attributed input the sum, L2 norm and largest
absolute value of its attribution with its three largest positions (``(3,4)=0.12``);
Integrated Gradients adds the baseline's score and the completeness error.  The table
shows at most :data:`MAX_EXAMPLES` examples; JSON and CSV have every one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.render import OutputFormat, by_format, format_shape, json
from gradscope.render.csv import format_float
from gradscope.render.table import (
    MISSING,
    Column,
    fmt_float,
    fmt_percent,
    make_console,
    make_table,
    run_lines,
    strip_trailing_spaces,
    summary_grid,
)

from .report import (
    COMPLETENESS_WARNING,
    AttributedInput,
    AttributeReport,
    ExampleAttribution,
    InputAttribution,
    MethodInfo,
    TopPosition,
)

MAX_EXAMPLES = 50
"""The table lists at most this many examples (JSON and CSV list them all)."""
TOP_SHOWN = 3
"""The table shows each input's three largest positions (CSV: every one in the report)."""
TOP_MIN_WIDTH = 14
"""The top positions wrap, one per line at worst (``(12,34)=-0.125``), never mid-entry."""
FLAG = " !"
"""Marks a completeness error above :data:`COMPLETENESS_WARNING` in the table."""

CSV_COLUMNS = (
    "index",
    "target",
    "score",
    "baseline_score",
    "completeness_error",
    "input",
    "total",
    "abs_total",
    "l2",
    "max_abs",
    "nonfinite",
    "top",
)
"""One CSV row per example and attributed input; ``top`` is ``(3,4)=0.12;(3,5)=-0.08``."""


# --- summary lines ------------------------------------------------------------------------


def method_line(method: MethodInfo) -> str:
    """The method and the settings it ran with, e.g. ``integrated-gradients: 50 steps
    (gauss-legendre), baseline zeros``."""
    settings: list[str] = []
    if method.steps is not None:
        rule = f" ({method.rule})" if method.rule else ""
        settings.append(f"{method.steps} steps{rule}")
    if method.baseline is not None:
        settings.append(f"baseline {method.baseline}")
    if method.samples is not None:
        settings.append(f"{method.samples} samples")
    if method.noise is not None:
        settings.append(f"noise {fmt_percent(method.noise)} of each example's value range")
    if method.layer is not None:
        how = "chosen: the last convolution" if method.chosen else "named by --layer"
        settings.append(f"layer {method.layer} ({how})")
    return method.name + (": " + ", ".join(settings) if settings else "")


def input_line(item: AttributedInput) -> str:
    """An attributed tensor: ``x: image 28x28x1 float32; positions 28x28``, with the
    layer a token input is attributed through and the input a Grad-CAM map is drawn over."""
    line = f"{item.name}: {item.kind} {format_shape(item.shape)} {item.dtype}"
    if item.through is not None:
        line += f", through {item.through}"
    if item.reduced_axis is not None:
        line += f"; positions {format_shape(item.position_shape)} (axis {item.reduced_axis} summed)"
    if item.overlay is not None:
        line += f"; drawn over {item.overlay}"
    return line


def completeness_line(report: AttributeReport) -> str | None:
    """Integrated Gradients: the largest completeness error and how many are above 1%."""
    worst, above = report.completeness()
    if worst is None:
        return None
    marked = f" (marked {FLAG.strip()})" if above else ""
    return (
        f"error up to {fmt_percent(worst)}; {above} of {len(report.examples)} examples "
        f"above {fmt_percent(COMPLETENESS_WARNING)}{marked}"
    )


def _summary(report: AttributeReport) -> list[tuple[str, str]]:
    t = report.timing
    lines = [
        *run_lines(report),
        ("method", method_line(report.method)),
        ("target", report.target.describe()),
        *(("input", input_line(item)) for item in report.inputs),
    ]
    completeness = completeness_line(report)
    if completeness is not None:
        lines.append(("completeness", completeness))
    timing = (
        f"{t.rows} rows evaluated in {t.seconds:.2f}s, {t.traces} trace(s), "
        f"at most {t.chunk_rows} rows a call"
    )
    lines.append(("time", timing))
    return [*lines, *(("note", note) for note in report.notes)]


# --- the examples table -------------------------------------------------------------------


def position_text(position: Sequence[int]) -> str:
    """``(3,4)``, ``(7)``: a position without spaces."""
    return "(" + ",".join(str(int(i)) for i in position) + ")"


def top_text(top: Sequence[TopPosition], count: int) -> str:
    """The first ``count`` positions, compact: ``(3,4)=0.12 (3,5)=-0.0812``."""
    return " ".join(f"{position_text(item.position)}={item.value:.3g}" for item in top[:count])


def _is_ig(report: AttributeReport) -> bool:
    """Integrated Gradients: the baseline's score and the completeness error are shown."""
    return report.method.name == "integrated-gradients"


def _columns(report: AttributeReport) -> tuple[Column, ...]:
    columns: list[Column] = [("row", "num"), ("class", "num"), ("score", "num")]
    if _is_ig(report):
        columns += [("baseline", "num"), ("error", "num")]
    if len(report.inputs) > 1:
        columns.append(("input", "text"))
    columns += [("total", "num"), ("l2", "num"), ("max |a|", "num"), ("top", "path")]
    return tuple(columns)


def _example_cells(report: AttributeReport, example: ExampleAttribution, first: bool) -> list[Text]:
    """The example's own cells: on its first row only (several inputs: several rows)."""
    if not first:
        return [Text("")] * (5 if _is_ig(report) else 3)
    cells = [
        Text(str(example.index)),
        Text(MISSING if example.target is None else str(example.target)),
        Text(fmt_float(example.score)),
    ]
    if _is_ig(report):
        cells += [
            Text(fmt_float(example.baseline_score)),
            Text(_error_text(example)),
        ]
    return cells


def _error_text(example: ExampleAttribution) -> str:
    """The completeness error, flagged when above :data:`COMPLETENESS_WARNING`."""
    error = example.completeness_error
    flagged = error is not None and error > COMPLETENESS_WARNING
    return fmt_percent(error) + (FLAG if flagged else "")


def _input_cells(report: AttributeReport, item: InputAttribution) -> list[Text]:
    cells = [Text(item.name)] if len(report.inputs) > 1 else []
    return [
        *cells,
        Text(fmt_float(item.total)),
        Text(fmt_float(item.l2)),
        Text(fmt_float(item.max_abs)),
        Text(_top_cell(item)),
    ]


def _top_cell(item: InputAttribution) -> str:
    """The largest positions, after ``nonfinite=N`` when the attribution holds NaN/Inf
    (in this column rather than a note column of its own, which a narrow table drops)."""
    top = top_text(item.top, TOP_SHOWN)
    return f"nonfinite={item.nonfinite} {top}" if item.nonfinite else top


def examples_table(report: AttributeReport, examples: Sequence[ExampleAttribution]) -> Table:
    """One row per example (and per attributed input, when there are several)."""
    rows = [
        [*_example_cells(report, example, position == 0), *_input_cells(report, item)]
        for example in examples
        for position, item in enumerate(example.inputs)
    ]
    table = make_table("Attributions", _columns(report), rows, [None] * len(rows))
    table.columns[len(_columns(report)) - 1].min_width = TOP_MIN_WIDTH
    return table


def _left_out(report: AttributeReport, shown: int) -> Text | None:
    hidden = len(report.examples) - shown
    if hidden <= 0:
        return None
    plural = "s" if hidden != 1 else ""
    return Text(f"… {hidden} more example{plural} (--format json or csv lists every one)")


def format_table(report: AttributeReport, *, width: int | None = None, color: bool = False) -> str:
    """The report as its summary lines, then the examples (at most :data:`MAX_EXAMPLES`)."""
    shown = report.examples[:MAX_EXAMPLES]
    parts: list[RenderableType] = [summary_grid(_summary(report))]
    if shown:
        parts.extend([Text(""), examples_table(report, shown)])
    left_out = _left_out(report, len(shown))
    if left_out is not None:
        parts.append(left_out)
    buffer = io.StringIO()
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


# --- CSV ------------------------------------------------------------------------------------


def top_csv(top: Sequence[TopPosition]) -> str:
    """Every listed position with its exact value: ``(3,4)=0.1234;(3,5)=-0.08``."""
    return ";".join(f"{position_text(item.position)}={format_float(item.value)}" for item in top)


def _csv_row(example: ExampleAttribution, item: InputAttribution) -> list[str]:
    return [
        str(example.index),
        "" if example.target is None else str(example.target),
        format_float(example.score),
        format_float(example.baseline_score),
        format_float(example.completeness_error),
        item.name,
        format_float(item.total),
        format_float(item.abs_total),
        format_float(item.l2),
        format_float(item.max_abs),
        str(item.nonfinite),
        top_csv(item.top),
    ]


def format_csv(report: AttributeReport) -> str:
    """One row per example and attributed input, header first (see :data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for example in report.examples:
        for item in example.inputs:
            writer.writerow(_csv_row(example, item))
    return buffer.getvalue()


def render(report: AttributeReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: json.format_report(report),
        csv=lambda: format_csv(report),
    )


__all__ = ["CSV_COLUMNS", "MAX_EXAMPLES", "format_csv", "format_table", "render"]
