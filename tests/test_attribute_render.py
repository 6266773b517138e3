"""The ``attribute`` report without the engine: table, CSV and JSON, the JSON read back,
and the ``--save`` HDF5 layout read back with h5py.

Every report here is built by hand, so the expected text is written out from the
numbers put in (no TensorFlow is imported).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradscope.commands.attribute.render import MAX_EXAMPLES, format_csv, format_table
from gradscope.commands.attribute.report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
    MethodInfo,
    TargetInfo,
)
from gradscope.errors import DataLoadError, UsageError
from gradscope.render import OutputFormat, render
from tests.attribute_reports import (
    gradcam,
    ig_tensors,
    integrated_gradients,
    saliency,
    smoothgrad,
)

WIDTH = 100


def _lines(text: str) -> list[str]:
    """The lines of ``text`` with runs of spaces made one (column widths aside)."""
    return [" ".join(line.split()) for line in text.splitlines()]


def _line_starting(lines: list[str], prefix: str) -> int:
    (index,) = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    return index


# --- table -------------------------------------------------------------------------------


def test_table_header_names_method_target_and_inputs() -> None:
    lines = _lines(format_table(integrated_gradients(), width=WIDTH))
    expected = [
        "model cnn (Sequential) — cnn.keras (keras), 1,234 trainable params",
        "batch file cnn.npz, 3 rows",
        "mode inference",
        "method integrated-gradients: 50 steps (gauss-legendre), baseline mean",
        "target class 2 of probs (logits)",
        "input pixels: image 4x4x1 float32; positions 4x4 (axis 2 summed)",
        "input ids: tokens 6x8 float32, through encoder/embedding; positions 6 (axis 1 summed)",
        "completeness error up to 3.2%; 1 of 3 examples above 1.0% (marked !)",
        "time 150 rows evaluated in 1.25s, 1 trace(s), at most 64 rows a call",
        "note one note",
    ]
    for line in expected:
        assert line in lines


def test_table_rows_ofintegrated_gradients() -> None:
    lines = _lines(format_table(integrated_gradients(), width=WIDTH))
    header = lines.index("Attributions") + 1
    assert lines[header].split() == [
        "row", "class", "score", "baseline", "error", "input", "total", "l2", "max", "|a|", "top"
    ]  # fmt: skip
    # Example 1, input pixels (scale 4): total 3, l2 2.5, max 2; its top positions wrap
    # (the top column is what gives way at this width).
    first = _line_starting(lines, "1 2 ")
    assert lines[first] == (
        "1 2 5.000e-01 2.500e-01 3.2% ! pixels 3.000e+00 2.500e+00 2.000e+00 (3,1)=2 (0,0)=-1"
    )
    assert lines[first + 1] == "(2,2)=0.5"
    # Its second input has a row of its own, without the example's cells.
    assert lines[first + 2] == "ids 3.750e-01 3.125e-01 2.500e-01 (3,1)=0.25"
    # Example 0 is within 1%; example 2 has no completeness error; its ids hold NaN/Inf.
    assert lines[_line_starting(lines, "0 2 ")].startswith("0 2 8.750e-01 1.250e-01 0.4% pixels")
    last = _line_starting(lines, "2 0 ")
    assert lines[last].startswith("2 0 5.000e-01 5.000e-01 — pixels 6.000e+00")
    assert lines[last + 2] == "ids 7.500e-01 6.250e-01 5.000e-01 nonfinite=3"
    assert lines[last + 3] == "(3,1)=0.5"


def test_table_of_a_single_input_has_no_input_column() -> None:
    text = format_table(saliency(), width=WIDTH)
    lines = _lines(text)
    header = lines.index("Attributions") + 1
    assert lines[header].split() == ["row", "class", "score", "total", "l2", "max", "|a|", "top"]
    assert lines[header + 2] == (
        "0 — 1.000e+00 7.500e-01 6.250e-01 5.000e-01 (3,1)=0.5 (0,0)=-0.25 (2,2)=0.125"
    )
    assert "method saliency" in lines
    assert "target loss" in lines
    assert max(len(line) for line in text.splitlines()) <= WIDTH


def test_table_of_gradcam_names_the_layer_and_the_overlay() -> None:
    lines = _lines(format_table(gradcam(), width=WIDTH))
    assert "method gradcam: layer encoder/conv (chosen: the last convolution)" in lines
    assert "target predicted class" in lines
    assert (
        "input encoder/conv: feature_map 2x2x3 float32; positions 2x2 (axis 2 summed); "
        "drawn over pixels" in lines
    )


def test_table_of_smoothgrad_with_nonfinite_values() -> None:
    lines = _lines(format_table(smoothgrad(), width=WIDTH))
    assert "method smoothgrad: 25 samples, noise 15.0% of each example's value range" in lines
    assert "0 — nan inf inf inf (3,1)=inf (0,0)=-inf (2,2)=inf" in lines


def test_named_layer_is_not_said_to_be_chosen() -> None:
    report = dataclasses.replace(gradcam(), method=MethodInfo("gradcam", layer="conv_2"))
    assert "method gradcam: layer conv_2 (named by --layer)" in _lines(format_table(report))


def test_long_example_lists_are_cut_in_the_table_only() -> None:
    report = saliency(MAX_EXAMPLES + 7)
    lines = _lines(format_table(report, width=WIDTH))
    rows = [line for line in lines if line[:1].isdecimal()]
    assert [int(line.split()[0]) for line in rows] == list(range(MAX_EXAMPLES))
    assert "… 7 more examples (--format json or csv lists every one)" in lines
    assert len(list(csv.DictReader(io.StringIO(format_csv(report))))) == MAX_EXAMPLES + 7
    assert len(json.loads(report.to_json())["examples"]) == MAX_EXAMPLES + 7


def test_the_registry_renders_thebuild_report() -> None:
    report = saliency()
    assert render(report, OutputFormat.TABLE, width=WIDTH) == format_table(report, width=WIDTH)
    assert render(report, "csv") == format_csv(report)
    assert render(report, "json") == report.to_json() + "\n"


# --- CSV ---------------------------------------------------------------------------------


def test_csv_has_one_row_per_example_andsummary() -> None:
    rows = list(csv.DictReader(io.StringIO(format_csv(integrated_gradients()))))
    assert [(row["index"], row["input"]) for row in rows] == [
        ("0", "pixels"), ("0", "ids"), ("1", "pixels"), ("1", "ids"), ("2", "pixels"), ("2", "ids"),
    ]  # fmt: skip
    assert rows[2] == {
        "index": "1",
        "target": "2",
        "score": "0.5",
        "baseline_score": "0.25",
        "completeness_error": "0.032",
        "input": "pixels",
        "total": "3.0",
        "abs_total": "6.0",
        "l2": "2.5",
        "max_abs": "2.0",
        "nonfinite": "0",
        "top": "(3,1)=2.0;(0,0)=-1.0;(2,2)=0.5;(1,3)=0.25",
    }
    assert rows[4]["completeness_error"] == ""
    assert rows[5]["nonfinite"] == "3"


def test_csv_of_a_loss_target_and_nonfinite_values() -> None:
    (row,) = csv.DictReader(io.StringIO(format_csv(smoothgrad())))
    assert row["target"] == ""
    assert row["score"] == "nan"
    assert row["baseline_score"] == ""
    assert row["l2"] == "inf"
    assert row["top"] == "(3,1)=inf;(0,0)=-inf;(2,2)=inf;(1,3)=inf"


# --- JSON --------------------------------------------------------------------------------


def test_json_is_the_documented_structure() -> None:
    data = json.loads(render(integrated_gradients(), "json"))
    assert data["schema"] == "gradscope.attribute/1"
    assert data["method"]["steps"] == 50
    assert data["target"] == {"kind": "class", "index": 2, "output": "probs", "logits": True}
    assert data["inputs"][1]["through"] == "encoder/embedding"
    assert data["examples"][1]["completeness_error"] == 0.032
    assert data["examples"][1]["inputs"][0]["top"][0] == {"position": [3, 1], "value": 2.0}
    assert data["completeness"] == {"max_error": 0.032, "above_1pct": 1, "threshold": 0.01}
    assert data["notes"] == ["one note"]


@pytest.mark.parametrize("build", [saliency, integrated_gradients, gradcam])
def test_from_dict_inverts_to_dict(build: Any) -> None:
    report = build()
    assert AttributeReport.from_dict(json.loads(report.to_json())) == report


def _non_default_fields(value: Any, found: set[tuple[str, str]]) -> None:
    """Every (class, field) of a dataclass in ``value`` that holds a non-default value."""
    if isinstance(value, tuple):
        for item in value:
            _non_default_fields(item, found)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    for item in dataclasses.fields(value):
        current = getattr(value, item.name)
        if item.default is dataclasses.MISSING or current != item.default:
            found.add((type(value).__name__, item.name))
        _non_default_fields(current, found)


def test_round_trip_reports_cover_every_optional_field() -> None:
    """Each defaulted field of the attribute dataclasses is set in one of the reports
    above, so :func:`test_from_dict_inverts_to_dict` would catch it being dropped."""
    found: set[tuple[str, str]] = set()
    for report in (saliency(), integrated_gradients(), gradcam()):
        _non_default_fields(report, found)
    classes = (AttributedInput, ExampleAttribution, MethodInfo, TargetInfo)
    optional = {
        (cls.__name__, item.name)
        for cls in classes
        for item in dataclasses.fields(cls)
        if item.default is not dataclasses.MISSING
    }
    missing = optional - found - {("MethodInfo", "samples"), ("MethodInfo", "noise")}
    assert missing == set()
    smooth = AttributeReport.from_dict(json.loads(smoothgrad().to_json()))
    assert (smooth.method.samples, smooth.method.noise) == (25, 0.15)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("examples", 1, "score"), "high", "r.json: examples[1].score: expected a number"),
        (
            ("examples", 0, "inputs", 0, "top", 0, "position"),
            [1.5],
            "r.json: examples[0].inputs[0].top[0].position",
        ),
        (("method", "steps"), "fifty", "r.json: method.steps"),
        (("target", "kind"), "logit", "r.json: target.kind"),
        (("inputs", 0, "kind"), "picture", "r.json: inputs[0].kind"),
        (("schema",), "gradscope.attribute/2", "schema 'gradscope.attribute/2'"),
    ],
)
def test_from_dict_names_the_broken_key(path: tuple[Any, ...], value: Any, message: str) -> None:
    data = json.loads(integrated_gradients().to_json())
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(DataLoadError) as caught:
        AttributeReport.from_dict(data, source="r.json")
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert "Received: " in text


def test_from_dict_refuses_a_missing_key() -> None:
    data = json.loads(saliency().to_json())
    del data["examples"][0]["inputs"]
    with pytest.raises(DataLoadError, match=r"r\.json: examples\[0\]\.inputs: .*Received: missing"):
        AttributeReport.from_dict(data, source="r.json")


# --- HDF5 --------------------------------------------------------------------------------


def test_hdf5_layout(tmp_path: Path) -> None:
    import h5py

    from gradscope.export.attribution_hdf5 import write_attributions

    report = dataclasses.replace(integrated_gradients(), tensors=ig_tensors())
    path = tmp_path / "attributions.h5"
    write_attributions(report, path)
    tensors = report.tensors
    assert tensors is not None
    with h5py.File(path, "r") as handle:
        assert handle.attrs["schema"] == "gradscope.attribute-tensors/1"
        assert handle.attrs["model"] == "cnn"
        assert handle.attrs["seed"] == 7
        assert json.loads(handle.attrs["method"])["baseline"] == "mean"
        assert json.loads(handle.attrs["target"])["index"] == 2
        assert json.loads(handle["attributions"].attrs["names"]) == ["pixels", "ids"]
        ids = handle["attributions/1"]
        assert ids.attrs["name"] == "ids"
        assert ids.attrs["kind"] == "tokens"
        assert ids.attrs["through"] == "encoder/embedding"
        assert ids.attrs["reduced_axis"] == 1
        assert handle["attributions/0"].attrs["overlay"] == ""
        np.testing.assert_array_equal(ids[()], tensors.attributions["ids"])
        np.testing.assert_array_equal(handle["inputs/1"][()], tensors.inputs["ids"])
        assert handle["inputs/1"].dtype == np.int32
        assert handle["masks/0"].attrs["name"] == "ids"
        np.testing.assert_array_equal(handle["masks/0"][()], tensors.masks["ids"])
        np.testing.assert_array_equal(handle["indices"][()], [0, 1, 2])
        np.testing.assert_array_equal(handle["targets"][()], [2, 2, 0])
        np.testing.assert_array_equal(handle["scores"][()], [0.875, 0.5, 0.5])
        np.testing.assert_array_equal(handle["baseline_scores"][()], [0.125, 0.25, 0.5])
        np.testing.assert_array_equal(handle["completeness_error"][()], [0.004, 0.032, np.nan])
        assert "resized" not in handle
    assert [p.name for p in tmp_path.iterdir()] == ["attributions.h5"]  # no temporary file


def test_hdf5_of_gradcam_keeps_slashed_names_and_the_resized_map(tmp_path: Path) -> None:
    import h5py

    from gradscope.export.attribution_hdf5 import write_attributions

    resized = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    tensors = AttributionTensors(
        attributions={"encoder/conv": np.ones((1, 2, 2, 3), np.float32)},
        inputs={"pixels": np.zeros((1, 4, 4, 1), np.float32)},
        resized=resized,
    )
    path = tmp_path / "cam.hdf5"
    write_attributions(dataclasses.replace(gradcam(), tensors=tensors), path)
    with h5py.File(path, "r") as handle:
        assert list(handle["attributions"]) == ["0"]
        cam = handle["attributions/0"]
        assert cam.attrs["name"] == "encoder/conv"
        assert cam.attrs["kind"] == "feature_map"
        assert cam.attrs["overlay"] == "pixels"
        assert cam.shape == (1, 2, 2, 3)
        np.testing.assert_array_equal(handle["resized"][()], resized)
        np.testing.assert_array_equal(handle["targets"][()], [1])
        assert np.isnan(handle["completeness_error"][0])
        assert list(handle["masks"]) == []


def test_hdf5_without_tensors_is_a_usage_error(tmp_path: Path) -> None:
    from gradscope.export.attribution_hdf5 import write_attributions

    with pytest.raises(UsageError, match=r"keep_tensors=True\)\. Received: a report without"):
        write_attributions(saliency(), tmp_path / "a.h5")
    assert list(tmp_path.iterdir()) == []
