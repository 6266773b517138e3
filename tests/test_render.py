"""Tests of the report renderers (table, JSON, CSV) on hand-built reports.

No model and no TensorFlow: a :class:`Report` is plain data, so each renderer is checked
against values we wrote down ourselves, including NaN/inf statistics and rows without a
gradient.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType

from gradscope.commands.inspect import render as inspect_render
from gradscope.commands.inspect.report import ActivationRow, InputRow, Report, VariableRow
from gradscope.render import OutputFormat, format_shape, render
from gradscope.render import json as json_render
from gradscope.render import table as table_render
from gradscope.render.table import fmt_float, fmt_percent
from gradscope.report import BatchInfo, LossInfo, ModelInfo, TensorStats, ValueStats, size_of

NAN = float("nan")
INF = float("inf")

CSV_HEADER = [
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
]

ANSI_ESCAPE = "\x1b["
RULE = "─"  # the header rule of box.SIMPLE_HEAD


def make_report(**changes: Any) -> Report:
    """A small report: 2 variables, a float and an integer input, 2 layer outputs.

    The bias gradient and the ``head`` output gradient contain NaN and inf values, the
    integer input has no gradient (and a note), so every "missing" path is exercised.
    """
    kernel_grad = TensorStats(
        l2=1.23456, max_abs=0.5, mean=0.1 + 0.2, std=0.02, zero_frac=0.125, nonfinite=0
    )
    bad_grad = TensorStats(l2=NAN, max_abs=INF, mean=-INF, std=NAN, zero_frac=0.0, nonfinite=3)
    fields: dict[str, Any] = {
        "model": ModelInfo(
            name="tiny",
            class_name="Functional",
            path="models/tiny.keras",
            format="keras",
            trainable_params=1234,
            layers=3,
        ),
        "batch": BatchInfo(source="synthetic", size=8, seed=7),
        "loss": LossInfo(
            value=0.6931471805599453,
            source="compiled: binary_crossentropy",
            kind="compiled",
        ),
        "training": False,
        "variables": (
            VariableRow(
                path="dense/kernel",
                layer="dense",
                layer_class="Dense",
                shape=(3, 4),
                dtype="float32",
                grad=kernel_grad,
                weight_l2=2.5,
                ratio=0.493824,
            ),
            VariableRow(
                path="dense/bias",
                layer="dense",
                layer_class="Dense",
                shape=(4,),
                dtype="float32",
                grad=bad_grad,
                weight_l2=0.0,
                ratio=None,
                note="gradient has NaN/inf",
            ),
        ),
        "inputs": (
            InputRow(name="features", shape=(8, 3), dtype="float32", grad=kernel_grad),
            InputRow(
                name="token_ids",
                shape=(8, 5),
                dtype="int32",
                grad=None,
                note="integer input: no gradient",
            ),
        ),
        "activations": (
            ActivationRow(
                layer="dense",
                path="dense",
                layer_class="Dense",
                call=0,
                output=0,
                shape=(8, 4),
                dtype="float32",
                grad=kernel_grad,
                value=ValueStats(
                    l2=7.0,
                    max_abs=3.0,
                    mean=0.1,
                    std=1.0,
                    zero_frac=0.5,
                    nonfinite=0,
                    dead_frac=0.25,
                ),
            ),
            ActivationRow(
                layer="head",
                path="head@1",
                layer_class="Lambda",
                call=1,
                output=0,
                shape=(),
                dtype="float32",
                grad=bad_grad,
                value=ValueStats(
                    l2=NAN,
                    max_abs=NAN,
                    mean=NAN,
                    std=NAN,
                    zero_frac=0.0,
                    nonfinite=1,
                    dead_frac=None,
                ),
            ),
        ),
        "global_grad_norm": NAN,
    }
    fields.update(changes)
    return Report(**fields)


def render_plain(renderable: RenderableType, width: int = 100) -> str:
    """Render with the same console the tests always use; trailing padding removed."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    file = console.file
    assert isinstance(file, io.StringIO)
    return "\n".join(line.rstrip() for line in file.getvalue().splitlines()) + "\n"


# --- shared helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "text", "size"),
    [((3, 4), "3x4", 12), ((4,), "4", 4), ((), "scalar", 1), ((2, 0, 5), "2x0x5", 0)],
)
def test_format_shape_and_size(shape: tuple[int, ...], text: str, size: int) -> None:
    assert format_shape(shape) == text
    assert size_of(shape) == size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.23456, "1.235e+00"),
        (-0.000123456, "-1.235e-04"),
        (12345.0, "1.234e+04"),
        (0.0, "0"),
        (-0.0, "0"),
        (NAN, "nan"),
        (INF, "inf"),
        (-INF, "-inf"),
        (None, "—"),
        (np.float32(0.5), "5.000e-01"),
        (1e-300, "1.000e-300"),
        (-1e300, "-1.000e+300"),
        (5e-324, "4.941e-324"),
    ],
)
def test_fmt_float(value: float | None, expected: str) -> None:
    assert fmt_float(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.125, "12.5%"), (0.0, "0.0%"), (1.0, "100.0%"), (None, "—"), (NAN, "nan")],
)
def test_fmt_percent(value: float | None, expected: str) -> None:
    assert fmt_percent(value) == expected


def test_output_format_values() -> None:
    assert [f.value for f in OutputFormat] == ["table", "json", "csv"]
    assert OutputFormat("csv") is OutputFormat.CSV


def test_import_is_cheap() -> None:
    """Importing the package must not pull in rich, TensorFlow or Keras."""
    code = (
        "import sys, gradscope.render; "
        "print(sorted(m for m in ('rich', 'tensorflow', 'keras') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root)},
    )
    assert result.stdout.strip() == "[]"


# --- render() dispatch --------------------------------------------------------------------


def test_render_dispatches_to_each_format() -> None:
    report = make_report()
    assert render(report, OutputFormat.JSON) == json_render.format_report(report)
    assert render(report, OutputFormat.CSV) == inspect_render.format_csv(report)
    assert render(report, OutputFormat.TABLE, width=100) == inspect_render.format_table(
        report, width=100
    )
    # A CLI hands over the plain string value.
    assert render(report, "csv") == inspect_render.format_csv(report)  # type: ignore[arg-type]


def test_render_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        render(make_report(), "xml")  # type: ignore[arg-type]


# --- JSON ---------------------------------------------------------------------------------


def test_json_is_to_json_plus_newline() -> None:
    report = make_report()
    text = json_render.format_report(report)
    assert text == report.to_json() + "\n"
    assert not text.endswith("\n\n")


def test_json_structure_and_nonfinite_as_null() -> None:
    data = json.loads(json_render.format_report(make_report()))
    assert list(data) == [
        "schema",
        "model",
        "batch",
        "loss",
        "training",
        "global_grad_norm",
        "variables",
        "inputs",
        "activations",
    ]
    assert data["schema"] == "gradscope.inspect/1"
    assert data["global_grad_norm"] is None
    assert [v["path"] for v in data["variables"]] == ["dense/kernel", "dense/bias"]
    assert [i["name"] for i in data["inputs"]] == ["features", "token_ids"]
    assert [a["path"] for a in data["activations"]] == ["dense", "head@1"]

    kernel, bias = data["variables"]
    assert kernel["shape"] == [3, 4]
    assert kernel["grad"]["l2"] == 1.23456
    assert bias["grad"] == {
        "l2": None,
        "max_abs": None,
        "mean": None,
        "std": None,
        "zero_frac": 0.0,
        "nonfinite": 3,
    }
    assert bias["ratio"] is None
    assert bias["note"] == "gradient has NaN/inf"
    assert data["inputs"][1]["grad"] is None
    assert data["activations"][1]["value"]["dead_frac"] is None
    assert data["activations"][0]["value"]["dead_frac"] == 0.25


# --- CSV ----------------------------------------------------------------------------------


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert reader.fieldnames is not None
    return list(reader.fieldnames), rows


def test_csv_header_and_one_row_per_tensor() -> None:
    text = inspect_render.format_csv(make_report())
    header, rows = read_csv(text)
    assert header == CSV_HEADER
    assert text.splitlines()[0] == ",".join(CSV_HEADER)
    assert "\r" not in text
    assert [(r["kind"], r["path"]) for r in rows] == [
        ("variable", "dense/kernel"),
        ("variable", "dense/bias"),
        ("input", "features"),
        ("input", "token_ids"),
        ("activation", "dense"),
        ("activation", "head@1"),
    ]


def test_csv_variable_row() -> None:
    _, rows = read_csv(inspect_render.format_csv(make_report()))
    assert rows[0] == {
        "kind": "variable",
        "path": "dense/kernel",
        "layer": "dense",
        "class": "Dense",
        "shape": "3x4",
        "dtype": "float32",
        "size": "12",
        "grad_l2": "1.23456",
        "grad_max_abs": "0.5",
        "grad_mean": "0.30000000000000004",  # shortest round-trip repr, nothing lost
        "grad_std": "0.02",
        "grad_zero_frac": "0.125",
        "grad_nonfinite": "0",
        "weight_l2": "2.5",
        "ratio": "0.493824",
        "value_l2": "",
        "value_dead_frac": "",
        "note": "",
        "adapts": "",
    }
    assert float(rows[0]["grad_mean"]) == 0.1 + 0.2


def test_csv_nonfinite_and_missing_cells() -> None:
    _, rows = read_csv(inspect_render.format_csv(make_report()))
    bias = rows[1]
    assert (
        bias["grad_l2"],
        bias["grad_max_abs"],
        bias["grad_mean"],
        bias["grad_std"],
    ) == (
        "nan",
        "inf",
        "-inf",
        "nan",
    )
    assert bias["grad_nonfinite"] == "3"
    assert bias["ratio"] == ""
    assert bias["note"] == "gradient has NaN/inf"

    token_ids = rows[3]
    assert token_ids["layer"] == token_ids["class"] == ""
    assert token_ids["shape"] == "8x5"
    assert token_ids["size"] == "40"
    assert token_ids["dtype"] == "int32"
    assert all(token_ids[c] == "" for c in CSV_HEADER if c.startswith("grad_"))
    assert token_ids["note"] == "integer input: no gradient"


def test_csv_activation_rows() -> None:
    _, rows = read_csv(inspect_render.format_csv(make_report()))
    dense, head = rows[4], rows[5]
    assert (dense["layer"], dense["class"], dense["shape"], dense["size"]) == (
        "dense",
        "Dense",
        "8x4",
        "32",
    )
    assert (dense["value_l2"], dense["value_dead_frac"]) == ("7.0", "0.25")
    assert (dense["weight_l2"], dense["ratio"]) == ("", "")
    assert (head["path"], head["layer"], head["shape"], head["size"]) == (
        "head@1",
        "head",
        "scalar",
        "1",
    )
    assert (head["value_l2"], head["value_dead_frac"]) == ("nan", "")


def test_csv_numpy_scalars_written_as_plain_numbers() -> None:
    grad = TensorStats(
        l2=np.float64(0.25),
        # Not a float subclass, but stats computed with numpy may arrive as float32.
        max_abs=np.float32(0.5),  # type: ignore[arg-type]
        mean=0.0,
        std=0.0,
        zero_frac=0.0,
        nonfinite=0,
    )
    report = make_report(
        inputs=(InputRow(name="x", shape=(2,), dtype="float32", grad=grad),),
        variables=(),
        activations=(),
    )
    _, rows = read_csv(inspect_render.format_csv(report))
    assert (rows[0]["grad_l2"], rows[0]["grad_max_abs"]) == ("0.25", "0.5")


def test_csv_quotes_commas_in_notes() -> None:
    row = dataclasses.replace(make_report().inputs[1], note="integer input, no gradient")
    report = make_report(inputs=(row,), variables=(), activations=())
    _, rows = read_csv(inspect_render.format_csv(report))
    assert rows[0]["note"] == "integer input, no gradient"


# --- table --------------------------------------------------------------------------------


def test_table_header_block() -> None:
    assert render_plain(inspect_render.header(make_report())) == (
        "model       tiny (Functional) — models/tiny.keras (keras), 1,234 trainable params\n"
        "batch       synthetic (seed 7), 8 rows\n"
        "loss        0.693147 (compiled: binary_crossentropy)\n"
        "mode        inference\n"
        "global ‖g‖  nan\n"
    )


def test_table_header_file_batch_regularization_training() -> None:
    report = make_report(
        batch=BatchInfo(source="file", size=32, path="data/batch.npz", has_targets=False),
        loss=LossInfo(
            value=INF,
            source="sum of outputs",
            kind="sum_of_outputs",
            regularization=0.0123456789,
            regularization_terms=2,
        ),
        training=True,
        global_grad_norm=3.0,
    )
    assert render_plain(inspect_render.header(report)) == (
        "model       tiny (Functional) — models/tiny.keras (keras), 1,234 trainable params\n"
        "batch       file data/batch.npz, 32 rows, no targets\n"
        "loss        inf (sum of outputs), incl. regularization 0.0123457 (2 terms)\n"
        "mode        training\n"
        "global ‖g‖  3.000e+00\n"
    )


def test_table_inputs() -> None:
    assert render_plain(inspect_render.inputs_table(make_report().inputs)) == (
        "Gradients by input\n"
        "name       shape  dtype          ‖g‖     max|g|  non-finite  note\n"
        f"{RULE * 87}\n"
        "features   8x3    float32  1.235e+00  5.000e-01           0\n"
        "token_ids  8x5    int32            —          —           —  integer input: no gradient\n"
    )


def test_table_variables() -> None:
    """At width 100 the note column is the one that gives way (it wraps on words)."""
    assert render_plain(inspect_render.variables_table(make_report().variables)) == (
        "Gradients by variable\n"
        "layer  class  variable      shape        ‖g‖     max|g|    ‖g‖/‖w‖  zeros  non-finite"
        "  note\n"
        f"{RULE * 100}\n"
        "dense  Dense  dense/kernel  3x4    1.235e+00  5.000e-01  4.938e-01  12.5%           0\n"
        "dense  Dense  dense/bias    4            nan        inf          —   0.0%           3"
        "  gradient has\n"
        f"{' ' * 87}NaN/inf\n"
    )


def test_table_activations_without_notes_has_no_note_column() -> None:
    assert render_plain(inspect_render.activations_table(make_report().activations)) == (
        "Gradients by layer output\n"
        "path    class   shape         ‖g‖  log ‖g‖      max|g|        ‖a‖   dead  zeros"
        "  non-finite\n"
        f"{RULE * 91}\n"
        "dense   Dense   8x4     1.235e+00  ████████  5.000e-01  7.000e+00  25.0%  12.5%"
        "           0\n"
        "head@1  Lambda  scalar        nan  ×               inf        nan      —   0.0%"
        "           3\n"
    )


def test_sparkline_and_bars_follow_log10() -> None:
    # 1e-6 .. 1e0: seven decades on eight levels; zero and NaN get their own marks.
    assert table_render.sparkline([1e-6, 1e-3, 1.0, 0.0, float("nan")]) == "▁▅█·×"
    assert table_render.sparkline([2.0, 2.0]) == "██"
    scale = (-6.0, 0.0)
    bars = [table_render.log_bar(v, scale) for v in (1e-6, 1e-3, 1.0)]
    assert [len(b.rstrip()) for b in bars] == [1, 5, 8]
    assert bars[2] == "████████"
    assert bars[0].startswith("▍")
    assert table_render.log_bar(None, scale) == ""
    assert table_render.log_bar(0.0, scale) == "·"


def test_header_shows_the_gradient_profile_by_layer() -> None:
    import gradscope as api

    sample = Path(__file__).resolve().parent.parent / "sample_models"
    report = api.inspect_file(sample / "deep_sigmoid.keras", sample / "deep_sigmoid.npz")
    line = next(
        ln for ln in inspect_render.format_table(report).splitlines() if "‖g‖ by layer" in ln
    )
    assert "▁▂▃▃▄▅▅▆▇▇█" in line
    assert "(input → output)" in line


def test_full_table_plain_text() -> None:
    report = make_report()
    text = inspect_render.format_table(report, width=100)
    assert ANSI_ESCAPE not in text
    for title in (
        "Gradients by variable",
        "Gradients by layer output",
        "Gradients by input",
    ):
        assert title in text
    # Sections in order, separated by a blank line, with the header block first.
    assert text.index("model ") < text.index("Gradients by variable")
    assert text.index("Gradients by variable") < text.index("Gradients by layer output")
    assert text.index("Gradients by layer output") < text.index("Gradients by input")
    assert "\n\nGradients by input\n" in text
    for path in ("dense/kernel", "dense/bias", "features", "token_ids", "head@1"):
        assert path in text
    assert "1.235e+00" in text
    assert "nan" in text
    assert "—" in text
    assert not any(line.endswith(" ") for line in text.splitlines())


def test_full_table_matches_pieces() -> None:
    """format_report is exactly the header and the three tables, blank-line separated."""
    report = make_report()
    expected = "\n".join(
        render_plain(part)
        for part in (
            inspect_render.header(report),
            inspect_render.variables_table(report.variables),
            inspect_render.activations_table(report.activations),
            inspect_render.inputs_table(report.inputs),
        )
    )
    assert inspect_render.format_table(report, width=100) == expected


def test_table_omits_empty_sections() -> None:
    text = inspect_render.format_table(make_report(activations=()), width=100)
    assert "Gradients by layer output" not in text
    assert "Gradients by input" in text


def column_text(table_text: str, first_cell: str, start: int, end: int) -> str:
    """The concatenated, stripped ``[start:end)`` slices of a table's body lines.

    A folded cell continues on the next lines in the same character range, so joining
    the slices gives back the full cell texts of the column, top to bottom.
    """
    lines = table_text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(first_cell))
    body = lines[first:]
    return "".join(line[start:end].strip() for line in body)


def test_table_never_wider_than_width_and_paths_folded_not_cut() -> None:
    long_layer = "encoder/block_3/attention/multi_head_attention/query_dense"
    rows = tuple(
        dataclasses.replace(
            row,
            layer=long_layer,
            layer_class="EinsumDense",
            path=f"{long_layer}/{row.path.rsplit('/', 1)[1]}",
            note="a rather long note that has to wrap onto a second line somewhere",
        )
        for row in make_report().variables
    )
    report = make_report(variables=rows, activations=(), inputs=())
    for width in (100, 80):
        text = inspect_render.format_table(report, width=width)
        assert max(cell_len(line) for line in text.splitlines()) <= width
        assert "…" not in text
        first_row = next(line for line in text.splitlines() if "EinsumDense" in line)
        class_at = first_row.index("EinsumDense")
        shape_at = first_row.index("3x4")
        variable_at = class_at + len("EinsumDense  ")
        assert column_text(text, first_row, 0, class_at) == long_layer * 2
        assert column_text(text, first_row, variable_at, shape_at) == (
            f"{long_layer}/kernel{long_layer}/bias"
        )
    wide = inspect_render.format_table(report, width=300)
    assert f"{long_layer}/kernel" in wide


def test_table_default_width_is_120() -> None:
    long_path = "x" * 300
    row = dataclasses.replace(make_report().inputs[0], name=long_path)
    text = inspect_render.format_table(make_report(inputs=(row,)))
    assert max(cell_len(line) for line in text.splitlines()) == 120


def test_table_cells_are_not_markup() -> None:
    """Names with brackets or emoji codes are printed verbatim, not interpreted by rich."""
    row = dataclasses.replace(make_report().inputs[0], name="[bold]x[/bold]:smile:")
    text = inspect_render.format_table(make_report(inputs=(row,)), width=100)
    assert "[bold]x[/bold]:smile:" in text


def test_table_color_highlights_nonfinite_counts() -> None:
    report = make_report()
    colored = inspect_render.format_table(report, width=100, color=True)
    assert ANSI_ESCAPE in colored
    # Non-finite counts > 0 in bold red (the style spans the right-aligned cell).
    red_counts = re.findall(r"\x1b\[1;31m *(\d+)\x1b\[0m", colored)
    assert red_counts == ["3", "3"]  # dense/bias and head@1; zero counts stay plain
    assert render(report, OutputFormat.TABLE, width=100, color=False).count(ANSI_ESCAPE) == 0


def test_table_loss_six_significant_digits() -> None:
    report = make_report(loss=LossInfo(value=123.456789, source="override: mse", kind="override"))
    text = inspect_render.format_table(report, width=100)
    assert "loss        123.457 (override: mse)\n" in text
    nan_loss = make_report(loss=LossInfo(value=NAN, source="override: mse", kind="override"))
    assert "loss        nan (override: mse)\n" in inspect_render.format_table(nan_loss)


def test_reports_display_in_rich_ipython_and_jupyter() -> None:
    from rich.console import Console

    report = make_report()
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system="standard")
    console.print(report)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", console.file.getvalue())  # type: ignore[attr-defined]
    lines = [line.rstrip() for line in shown.rstrip("\n").split("\n")]
    assert lines == inspect_render.format_table(report, width=100).rstrip("\n").split("\n")

    class Printer:
        text_out = ""

        def text(self, value: str) -> None:
            self.text_out += value

    printer = Printer()
    report._repr_pretty_(printer, False)
    assert printer.text_out == inspect_render.format_table(report)
    html = report._repr_html_()
    assert html.startswith("<pre>")
    assert "dense/kernel" in html
    assert "font-weight: bold" in html
