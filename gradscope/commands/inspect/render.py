"""``inspect``'s renderers: the human table and the CSV (the JSON is the report's own).

The table is a short header, then one rich table per kind of tensor, built from the
shared primitives of :mod:`gradscope.render.table`.  The CSV is one row per tensor
(variables, then inputs, then layer outputs): a flat table is what spreadsheets and
``pandas.read_csv`` want, so the three kinds of rows share one header
(:data:`CSV_COLUMNS`) and cells that do not apply to a kind are empty.  Unlike the JSON
output, non-finite values are kept in the CSV (``nan``, ``inf``, ``-inf``, which
``float()`` and pandas parse back); an empty cell always means "not applicable/missing".
Floats are written with ``repr`` (shortest round-trip), so no precision is lost.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ...health import Health, layer_norms
from ...render import OutputFormat, by_format, format_shape, json
from ...render.csv import Row, format_float
from ...render.table import (
    MISSING,
    Column,
    fmt_float,
    fmt_percent,
    log_bar,
    log_scale,
    make_console,
    make_table,
    run_lines,
    sparkline,
    strip_trailing_spaces,
    summary_grid,
)
from ...report import TensorStats, size_of
from .report import (
    ActivationRow,
    BatchesReport,
    InputRow,
    NormSpread,
    PerSampleReport,
    PerSampleRow,
    Report,
    VariableRow,
)

__all__ = ["CSV_COLUMNS", "format_csv", "format_table", "render"]


def render(report: Report, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: json.format_report(report),
        csv=lambda: format_csv(report),
    )


def gradient_profile(report: Report) -> str | None:
    """``▁▂▄█  1.2e-07 … 6.2e-01 (input → output)``: log10 of each layer's gradient norm,
    layers in forward order, so vanishing or exploding gradients show at a glance."""
    norms = [layer.grad_l2 for layer in layer_norms(report.variables)]
    scale = log_scale(norms)
    if len(norms) < 2 or scale is None:
        return None
    return f"{sparkline(norms)}  {10 ** scale[0]:.1e} … {10 ** scale[1]:.1e} (input → output)"


def _spread(spread: NormSpread) -> str:
    return f"{fmt_float(spread.min)} / {fmt_float(spread.median)} / {fmt_float(spread.max)}"


def header(report: Report) -> Table:
    """The summary block above the tables: model, batch, loss, mode, global norm."""
    lines = [*run_lines(report), ("global ‖g‖", fmt_float(report.global_grad_norm))]
    profile = gradient_profile(report)
    if profile is not None:
        lines.append(("‖g‖ by layer", profile))
    if report.batches is not None:
        batches = report.batches
        lines[2 + len(report.model.notes) : 2 + len(report.model.notes)] = [
            (
                "batches",
                f"{batches.count} of {batches.batch_size:,} rows; the rows below describe "
                "their mean gradient",
            ),
            ("batch loss", f"{_spread(batches.losses)} (min / median / max)"),
            ("batch ‖g‖", f"{_spread(batches.global_norms)} (min / median / max)"),
        ]
    return summary_grid(lines)


VARIABLE_COLUMNS: tuple[Column, ...] = (
    ("layer", "path"),
    ("class", "text"),
    ("variable", "path"),
    ("shape", "text"),
    ("‖g‖", "num"),
    ("max|g|", "num"),
    ("‖g‖/‖w‖", "num"),
    ("zeros", "num"),
    ("non-finite", "num"),
)


ACTIVATION_COLUMNS: tuple[Column, ...] = (
    ("path", "path"),
    ("class", "text"),
    ("shape", "text"),
    ("‖g‖", "num"),
    ("log ‖g‖", "text"),
    ("max|g|", "num"),
    ("‖a‖", "num"),
    ("dead", "num"),
    ("zeros", "num"),
    ("non-finite", "num"),
)


INPUT_COLUMNS: tuple[Column, ...] = (
    ("name", "path"),
    ("shape", "text"),
    ("dtype", "text"),
    ("‖g‖", "num"),
    ("max|g|", "num"),
    ("non-finite", "num"),
)


def _grad_cells(grad: TensorStats | None) -> tuple[Text, Text]:
    """The ``‖g‖`` and ``max|g|`` cells (``—`` when there is no gradient)."""
    if grad is None:
        return Text(MISSING), Text(MISSING)
    return Text(fmt_float(grad.l2)), Text(fmt_float(grad.max_abs))


def _zeros_cell(grad: TensorStats | None) -> Text:
    """Fraction of exact zeros in the gradient, as a percentage."""
    return Text(fmt_percent(None if grad is None else grad.zero_frac))


def _nonfinite_cell(grad: TensorStats | None) -> Text:
    """Non-finite count; red (visible only with colour on) when there are any."""
    if grad is None:
        return Text(MISSING)
    count = int(grad.nonfinite)
    return Text(str(count), style="bold red" if count > 0 else "")


def variable_cells(row: VariableRow) -> list[Text]:
    """Cells of one row of the variables table, in :data:`VARIABLE_COLUMNS` order."""
    return [
        Text(row.layer),
        Text(row.layer_class),
        Text(row.path),
        Text(format_shape(row.shape)),
        *_grad_cells(row.grad),
        Text(fmt_float(row.ratio)),
        _zeros_cell(row.grad),
        _nonfinite_cell(row.grad),
    ]


def activation_cells(row: ActivationRow, scale: tuple[float, float] | None = None) -> list[Text]:
    """Cells of one row of the layer-output table, in :data:`ACTIVATION_COLUMNS` order;
    ``scale`` is the log10 range of the gradient norms the bars share."""
    value = row.value
    norm, largest = _grad_cells(row.grad)
    return [
        Text(row.path),
        Text(row.layer_class),
        Text(format_shape(row.shape)),
        norm,
        Text(log_bar(None if row.grad is None else row.grad.l2, scale), style="cyan"),
        largest,
        Text(fmt_float(None if value is None else value.l2)),
        Text(fmt_percent(None if value is None else value.dead_frac)),
        _zeros_cell(row.grad),
        _nonfinite_cell(row.grad),
    ]


def input_cells(row: InputRow) -> list[Text]:
    """Cells of one row of the inputs table, in :data:`INPUT_COLUMNS` order."""
    return [
        Text(row.name),
        Text(format_shape(row.shape)),
        Text(row.dtype),
        *_grad_cells(row.grad),
        _nonfinite_cell(row.grad),
    ]


def variables_table(variables: Sequence[VariableRow]) -> Table:
    """Gradient per trainable variable, in report order."""
    rows = [variable_cells(row) for row in variables]
    notes = [variable_note(row) for row in variables]
    return make_table("Gradients by variable", VARIABLE_COLUMNS, rows, notes)


def variable_note(row: VariableRow) -> str | None:
    """The note cell of a variable row: its note, and for a LoRA adapter the frozen
    weight it adapts (``LoRA of dense/kernel``)."""
    parts = [part for part in (row.note, row.adapts and f"LoRA of {row.adapts}") if part]
    return "; ".join(parts) if parts else None


def activations_table(activations: Sequence[ActivationRow]) -> Table:
    """Gradient per layer output, with the output's own norm and dead-unit fraction."""
    scale = log_scale([r.grad.l2 for r in activations if r.grad is not None])
    rows = [activation_cells(row, scale) for row in activations]
    notes = [row.note for row in activations]
    return make_table("Gradients by layer output", ACTIVATION_COLUMNS, rows, notes)


def inputs_table(inputs: Sequence[InputRow]) -> Table:
    """Gradient per model input (integer inputs have none, and say so in the note)."""
    rows = [input_cells(row) for row in inputs]
    notes = [row.note for row in inputs]
    return make_table("Gradients by input", INPUT_COLUMNS, rows, notes)


SPREAD_COLUMNS: tuple[Column, ...] = (
    ("variable", "path"),
    ("‖g‖ min", "num"),
    ("median", "num"),
    ("max", "num"),
    ("E‖g−ḡ‖²", "num"),
    ("SNR", "num"),
)


PER_SAMPLE_COLUMNS: tuple[Column, ...] = (
    ("variable", "path"),
    ("‖gᵢ‖ min", "num"),
    ("median", "num"),
    ("max", "num"),
    ("largest (example: ‖gᵢ‖)", "text"),
)


def batches_table(batches: BatchesReport) -> Table:
    """Per variable across batches: per-batch norms, spread around the mean, SNR."""
    rows = [
        [
            Text(row.path),
            *(Text(fmt_float(v)) for v in (row.norms.min, row.norms.median, row.norms.max)),
            Text(fmt_float(row.variance)),
            Text(fmt_float(row.snr)),
        ]
        for row in batches.variables
    ]
    title = f"Across {batches.count} batches"
    return make_table(title, SPREAD_COLUMNS, rows, [None] * len(rows))


def _per_sample_cells(row: PerSampleRow) -> list[Text]:
    largest = ", ".join(f"{i}: {fmt_float(n)}" for i, n in zip(row.top, row.top_norms, strict=True))
    spread = (row.norms.min, row.norms.median, row.norms.max)
    return [Text(row.path), *(Text(fmt_float(v)) for v in spread), Text(largest)]


def per_sample_table(per_sample: PerSampleReport) -> Table:
    """Per-example gradient norms: all variables first, then each variable."""
    rows = [_per_sample_cells(per_sample.total)]
    rows += [_per_sample_cells(row) for row in per_sample.variables]
    title = f"Per-example gradient norms ({per_sample.examples:,} examples)"
    return make_table(title, PER_SAMPLE_COLUMNS, rows, [None] * len(rows))


def renderables(report: Report) -> list[RenderableType]:
    """Header, then each non-empty table, separated by blank lines."""
    tables: list[Table] = []
    if report.variables:
        tables.append(variables_table(report.variables))
    if report.batches is not None and report.batches.variables:
        tables.append(batches_table(report.batches))
    if report.per_sample is not None:
        tables.append(per_sample_table(report.per_sample))
    if report.activations:
        tables.append(activations_table(report.activations))
    if report.inputs:
        tables.append(inputs_table(report.inputs))
    parts: list[RenderableType] = [header(report)]
    for table in tables:
        parts.extend([Text(""), table])
    if report.health is not None:
        parts.extend([Text(""), health_footer(report.health)])
    return parts


def health_footer(health: Health) -> Text:
    """``Health: ok``, or one line per finding, its kind in bold red."""
    if not health.findings:
        return Text.assemble(("Health", "bold"), ": no findings")
    text = Text.assemble(("Health", "bold"), f": {len(health.findings)} findings")
    for finding in health.findings:
        text.append("\n  ")
        text.append(finding.kind, style="bold red")
        text.append(f"  {finding.message}")
    return text


def format_table(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """The report as text tables, no line wider than ``width`` (default 120) cells.

    With ``color`` the text contains ANSI escapes (bold headers, red non-finite counts,
    dim notes); without it the output is plain text.  Empty sections are left out.
    """
    buffer = io.StringIO()
    console = make_console(buffer, width, color)
    console.print(Group(*renderables(report)))
    return strip_trailing_spaces(buffer.getvalue())


CSV_COLUMNS: tuple[str, ...] = (
    "kind",
    "path",
    "layer",
    "class",
    "shape",
    "dtype",
    "size",
    "grad_l2",
    "grad_max_abs",
    "grad_mean",
    "grad_std",
    "grad_zero_frac",
    "grad_nonfinite",
    "weight_l2",
    "ratio",
    "value_l2",
    "value_dead_frac",
    "note",
    "adapts",
)


def _grad_csv_cells(grad: TensorStats | None) -> Row:
    """The ``grad_*`` cells of one row; all empty when there is no gradient."""
    if grad is None:
        return {}
    return {
        "grad_l2": format_float(grad.l2),
        "grad_max_abs": format_float(grad.max_abs),
        "grad_mean": format_float(grad.mean),
        "grad_std": format_float(grad.std),
        "grad_zero_frac": format_float(grad.zero_frac),
        "grad_nonfinite": str(int(grad.nonfinite)),
    }


def _common_cells(kind: str, shape: tuple[int, ...], dtype: str, note: str | None) -> Row:
    """Cells every kind of row has."""
    return {
        "kind": kind,
        "shape": format_shape(shape),
        "dtype": dtype,
        "size": "" if (size := size_of(shape)) is None else str(size),
        "note": note or "",
    }


def variable_row(row: VariableRow) -> Row:
    """CSV cells of a trainable variable (``layer`` is the owning layer's path)."""
    return {
        **_common_cells("variable", row.shape, row.dtype, row.note),
        "path": row.path,
        "layer": row.layer,
        "class": row.layer_class,
        **_grad_csv_cells(row.grad),
        "weight_l2": format_float(row.weight_l2),
        "ratio": format_float(row.ratio),
        "adapts": row.adapts or "",
    }


def input_row(row: InputRow) -> Row:
    """CSV cells of a model input (``path`` is the input name; no layer or class)."""
    return {
        **_common_cells("input", row.shape, row.dtype, row.note),
        "path": row.name,
        **_grad_csv_cells(row.grad),
    }


def activation_row(row: ActivationRow) -> Row:
    """CSV cells of a layer output, with the output value's norm and dead fraction."""
    cells: Row = {
        **_common_cells("activation", row.shape, row.dtype, row.note),
        "path": row.path,
        "layer": row.layer,
        "class": row.layer_class,
        **_grad_csv_cells(row.grad),
    }
    if row.value is not None:
        cells["value_l2"] = format_float(row.value.l2)
        cells["value_dead_frac"] = format_float(row.value.dead_frac)
    return cells


def iter_rows(report: Report) -> Iterator[Row]:
    """All rows of the report in output order: variables, inputs, activations."""
    yield from (variable_row(row) for row in report.variables)
    yield from (input_row(row) for row in report.inputs)
    yield from (activation_row(row) for row in report.activations)


def format_csv(report: Report) -> str:
    """The report as CSV text: header row first, then one row per tensor."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(iter_rows(report))
    return buffer.getvalue()
