"""CSV renderer: one row per tensor (variables, then inputs, then layer outputs).

A flat table is what spreadsheets and ``pandas.read_csv`` want, so the three kinds of
rows share one header (:data:`COLUMNS`) and cells that do not apply to a kind are empty.
Unlike the JSON output, non-finite values are kept (``nan``, ``inf``, ``-inf``, which
``float()`` and pandas parse back); an empty cell always means "not applicable/missing".
Floats are written with ``repr`` (shortest round-trip), so no precision is lost.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from gradscope.render import format_shape
from gradscope.report import ActivationRow, InputRow, Report, TensorStats, VariableRow, size_of

__all__ = ["COLUMNS", "format_report"]

COLUMNS: tuple[str, ...] = (
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

Row = dict[str, str]


def format_float(value: float | None) -> str:
    """A float cell: ``repr`` precision, ``nan``/``inf``/``-inf`` kept, ``None`` empty.

    ``float()`` first so numpy scalars print as plain numbers (numpy 2's ``repr`` of a
    ``float64`` is ``np.float64(...)``).
    """
    return "" if value is None else repr(float(value))


def _grad_cells(grad: TensorStats | None) -> Row:
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
        **_grad_cells(row.grad),
        "weight_l2": format_float(row.weight_l2),
        "ratio": format_float(row.ratio),
        "adapts": row.adapts or "",
    }


def input_row(row: InputRow) -> Row:
    """CSV cells of a model input (``path`` is the input name; no layer or class)."""
    return {
        **_common_cells("input", row.shape, row.dtype, row.note),
        "path": row.name,
        **_grad_cells(row.grad),
    }


def activation_row(row: ActivationRow) -> Row:
    """CSV cells of a layer output, with the output value's norm and dead fraction."""
    cells: Row = {
        **_common_cells("activation", row.shape, row.dtype, row.note),
        "path": row.path,
        "layer": row.layer,
        "class": row.layer_class,
        **_grad_cells(row.grad),
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


def format_report(report: Report) -> str:
    """The report as CSV text: header row first, then one row per tensor."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(iter_rows(report))
    return buffer.getvalue()
