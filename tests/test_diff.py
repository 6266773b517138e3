"""Tests of ``gradscope diff``: comparing two saved inspect JSON reports.

The reports are real: ``inspect_file`` on the shipped ``mlp`` sample, on the whole batch,
on its first 8 rows, on a copy of the batch holding one NaN (non-finite gradients) and
on a copy of the model whose ``hidden_1`` kernel is scaled by 3, each written with
``report.to_json()``.  Edge cases (zero or missing norms, added and removed tensors) come
from controlled edits of those JSON documents.  Every number the diff reports is checked
against a value computed here, directly from the two JSON files.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.commands.diff import DIFF_SCHEMA, diff_reports
from gradscope.commands.inspect.report import Report, VariableRow
from gradscope.errors import ExitCode
from gradscope.report import BatchInfo, LossInfo, ModelInfo, TensorStats

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
REL = 1e-12  # the diff divides the float64 numbers it reads: only rounding separates them

Doc = dict[str, Any]


# -- fixtures: real reports ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> dict[str, Path]:
    """JSON files of real inspect reports: ``full``, ``part``, ``nan`` and ``scaled``."""
    from gradscope import inspect_file

    folder = tmp_path_factory.mktemp("reports")
    batch = dict(np.load(SAMPLES / "mlp.npz"))
    batch["x"] = batch["x"].copy()
    batch["x"][0, 0] = np.nan
    np.savez(folder / "nan.npz", **batch)
    model = keras.saving.load_model(SAMPLES / "mlp.keras")
    kernel = model.get_layer("hidden_1").kernel
    kernel.assign(3.0 * kernel.numpy())
    model.save(folder / "scaled.keras")
    runs = {
        "full": (SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", None),
        "part": (SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", 8),
        "nan": (SAMPLES / "mlp.keras", folder / "nan.npz", None),
        "scaled": (folder / "scaled.keras", SAMPLES / "mlp.npz", None),
    }
    paths = {}
    for name, (model_path, data_path, limit) in runs.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(inspect_file(model_path, data_path, limit=limit).to_json())
    return paths


def load(path: Path) -> Doc:
    """A JSON file, refusing NaN/Infinity literals (the output must be strict JSON)."""
    return json.loads(path.read_text(), parse_constant=_no_constant)


def _no_constant(token: str) -> None:
    raise AssertionError(f"{token} in JSON output")


def write(folder: Path, name: str, doc: Doc) -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def invoke(*args: object) -> Any:
    """Run ``gradscope ARGS`` in-process; stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\nstderr: {result.stderr}")
    return result


def diff_json(a: Path, b: Path, *options: object, code: int = 0) -> Doc:
    result = invoke("diff", a, b, "--format", "json", *options)
    assert result.exit_code == code, result.stderr
    return json.loads(result.stdout, parse_constant=_no_constant)


def error_line(result: Any, code: int) -> str:
    """Check the one-line error contract and return the message after the prefix."""
    assert result.exit_code == code, f"exit {result.exit_code}; stderr: {result.stderr!r}"
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradscope: error: "), lines[0]
    return lines[0][len("gradscope: error: ") :]


# -- the reference: ratios computed here from the two JSON files ---------------------------


def rows(doc: Doc, key: str) -> dict[str, Doc]:
    return {row["path"]: row for row in doc[key]}


def l2(stats: Doc | None) -> float | None:
    return None if stats is None else stats["l2"]


def check_change(change: Doc, a: float | None, b: float | None) -> None:
    """A reported change against ``a``, ``b``, ``b / a`` and ``log10(b / a)`` from here."""
    assert change["a"] == a
    assert change["b"] == b
    if a is not None and b is not None and a > 0 and b > 0:
        assert change["ratio"] == pytest.approx(b / a, rel=REL)
        assert change["log10_ratio"] == pytest.approx(math.log10(b / a), rel=REL, abs=1e-15)
        assert change["reason"] is None


def expected_top(a: Doc, b: Doc) -> list[tuple[str, str, str, float]]:
    """All finite, non-zero ``|log10 B/A|`` of grad/weight/value norms, largest first."""
    out = []
    quantities = {"variables": ("grad_l2", "weight_l2"), "activations": ("grad_l2", "value_l2")}
    for key, names in quantities.items():
        kind = key[:-1]
        for path, row_a in rows(a, key).items():
            row_b = rows(b, key)[path]
            for name in names:
                if name == "weight_l2":
                    va, vb = row_a["weight_l2"], row_b["weight_l2"]
                else:
                    field = "grad" if name == "grad_l2" else "value"
                    va, vb = l2(row_a[field]), l2(row_b[field])
                if va and vb and va != vb:
                    out.append((kind, path, name, abs(math.log10(vb / va))))
    return sorted(out, key=lambda item: -item[3])


# -- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize("pair", [("full", "part"), ("full", "scaled"), ("part", "full")])
def test_every_ratio_matches_the_two_files(reports: dict[str, Path], pair: tuple[str, str]) -> None:
    path_a, path_b = reports[pair[0]], reports[pair[1]]
    a, b = load(path_a), load(path_b)
    out = diff_json(path_a, path_b, "--top", 4)
    assert out["schema"] == DIFF_SCHEMA
    check_change(out["global_grad_norm"], a["global_grad_norm"], b["global_grad_norm"])
    loss = out["loss"]
    assert loss["delta"] == pytest.approx(b["loss"]["value"] - a["loss"]["value"], rel=REL)
    assert [v["path"] for v in out["variables"]] == [v["path"] for v in a["variables"]]
    for row in out["variables"]:
        va, vb = rows(a, "variables")[row["path"]], rows(b, "variables")[row["path"]]
        check_change(row["grad_l2"], l2(va["grad"]), l2(vb["grad"]))
        check_change(row["weight_l2"], va["weight_l2"], vb["weight_l2"])
        check_change(row["grad_weight_ratio"], va["ratio"], vb["ratio"])
    assert [r["path"] for r in out["activations"]] == [r["path"] for r in a["activations"]]
    for row in out["activations"]:
        ra, rb = rows(a, "activations")[row["path"]], rows(b, "activations")[row["path"]]
        check_change(row["grad_l2"], l2(ra["grad"]), l2(rb["grad"]))
        check_change(row["value_l2"], l2(ra["value"]), l2(rb["value"]))
    reference = expected_top(a, b)[:4]
    assert [(t["kind"], t["path"], t["quantity"]) for t in out["top"]] == [
        item[:3] for item in reference
    ]
    for top, item in zip(out["top"], reference, strict=True):
        assert abs(top["log10_ratio"]) == pytest.approx(item[3], rel=REL)
    assert out["added"] == out["removed"] == []
    assert out["nonfinite"] == {"new": [], "recovered": []}


def test_scaled_kernel_shows_as_a_weight_norm_ratio_of_three(reports: dict[str, Path]) -> None:
    out = diff_json(reports["full"], reports["scaled"])
    weights = {row["path"]: row["weight_l2"]["ratio"] for row in out["variables"]}
    assert weights.pop("hidden_1/kernel") == pytest.approx(3.0, rel=1e-6)  # float32 weights
    assert all(ratio == 1.0 for ratio in weights.values())
    assert out["notes"] == []  # same model name, batch, loss and mode: nothing else differs


def test_identical_reports_give_ratio_one_and_exit_zero(reports: dict[str, Path]) -> None:
    out = diff_json(reports["full"], reports["full"], "--fail-on", "nonfinite,ratio,added,removed")
    changes = [out["global_grad_norm"]]
    for row in out["variables"]:
        changes += [row["grad_l2"], row["weight_l2"], row["grad_weight_ratio"]]
    for row in out["activations"]:
        changes += [row["grad_l2"], row["value_l2"]]
    assert len(changes) == 1 + 3 * 6 + 2 * 3
    for change in changes:
        assert change["ratio"] == 1.0
        assert change["log10_ratio"] == 0.0
        assert change["reason"] is None
    assert out["loss"]["delta"] == 0.0
    assert out["top"] == []
    assert out["added"] == []
    assert out["removed"] == []
    assert out["checks"]["failed"] is False
    assert not any(result["triggered"] for result in out["checks"]["results"])


def test_python_api_equals_cli_json(reports: dict[str, Path]) -> None:
    a, b = load(reports["full"]), load(reports["part"])
    from_cli = diff_json(reports["full"], reports["part"])
    from_api = diff_reports(a, b).to_dict()
    for side in ("a", "b"):
        assert from_api[side].pop("file") is None
        assert from_cli[side].pop("file") == str(reports["full" if side == "a" else "part"])
    assert from_api == from_cli
    assert from_cli["notes"] == ["batch size differs: A 32 vs B 8"]


# -- non-finite --------------------------------------------------------------------------


def test_newly_nonfinite_and_recovered(reports: dict[str, Path]) -> None:
    a, b = load(reports["full"]), load(reports["nan"])
    out = diff_json(reports["full"], reports["nan"])
    new = {(c["kind"], c["path"], c["quantity"]): (c["a"], c["b"]) for c in out["nonfinite"]["new"]}
    expected = {}
    for key, kind, fields in (
        ("variables", "variable", ("grad",)),
        ("activations", "activation", ("grad", "value")),
        ("inputs", "input", ("grad",)),
    ):
        name = "name" if key == "inputs" else "path"
        for row_a, row_b in zip(a[key], b[key], strict=True):
            for field in fields:
                count_a, count_b = row_a[field]["nonfinite"], row_b[field]["nonfinite"]
                if count_a == 0 and count_b > 0:
                    expected[(kind, row_b[name], field)] = (count_a, count_b)
    assert new == expected
    assert len(new) >= 6 + 3  # every variable gradient, every layer-output gradient
    assert out["nonfinite"]["recovered"] == []
    for row in out["variables"]:
        assert row["grad_l2"]["ratio"] is None
        assert row["grad_l2"]["reason"] == "nonfinite_b"
    assert out["global_grad_norm"]["reason"] == "nonfinite_b"
    assert out["loss"] == {
        "a": a["loss"]["value"],
        "b": None,
        "delta": None,
        "reason": "nonfinite_b",
    }
    back = diff_json(reports["nan"], reports["full"])
    recovered = {(c["kind"], c["path"], c["quantity"]) for c in back["nonfinite"]["recovered"]}
    assert recovered == set(expected)
    assert back["nonfinite"]["new"] == []


def test_fail_on_nonfinite_prints_the_report_then_exits_1(reports: dict[str, Path]) -> None:
    result = invoke("diff", reports["full"], reports["nan"], "--fail-on", "nonfinite")
    assert result.exit_code == ExitCode.CHECK_FAILED == 1
    assert "Non-finite changes" in result.stdout
    assert "newly non-finite" in result.stdout
    assert result.stderr == "gradscope: --fail-on: nonfinite fired\n"
    quiet = invoke("diff", reports["full"], reports["nan"], "--fail-on", "nonfinite", "-q")
    assert quiet.exit_code == 1
    assert quiet.stderr == ""
    recovered = invoke("diff", reports["nan"], reports["full"], "--fail-on", "NonFinite")
    assert recovered.exit_code == 0, recovered.stderr


# -- --fail-on ratio, added, removed --------------------------------------------------------


@pytest.mark.parametrize("max_ratio", [2.0, 3.5, 3.8, 5.0])
def test_fail_on_ratio_fires_beyond_the_factor(reports: dict[str, Path], max_ratio: float) -> None:
    a, b = load(reports["full"]), load(reports["part"])
    beyond = [
        path
        for path, row_a in rows(a, "variables").items()
        if not 1 / max_ratio
        <= l2(rows(b, "variables")[path]["grad"]) / l2(row_a["grad"])
        <= max_ratio
    ]
    code = 1 if beyond else 0
    for first, second in ((reports["full"], reports["part"]), (reports["part"], reports["full"])):
        out = diff_json(first, second, "--fail-on", "ratio", "--max-ratio", max_ratio, code=code)
        ratio = next(r for r in out["checks"]["results"] if r["condition"] == "ratio")
        assert ratio == {"condition": "ratio", "requested": True, "triggered": bool(beyond),
                         "paths": beyond}  # fmt: skip
        assert out["checks"]["max_ratio"] == max_ratio
        assert out["checks"]["failed"] is bool(beyond)


def test_added_and_removed(reports: dict[str, Path], tmp_path: Path) -> None:
    a = load(reports["full"])
    b = copy.deepcopy(a)
    del b["variables"][1]  # hidden_1/bias removed
    b["activations"][2]["path"] = "logits"  # probs removed, logits added
    b["variables"].append({**a["variables"][0], "path": "extra/kernel"})
    path_a, path_b = reports["full"], write(tmp_path, "b.json", b)
    out = diff_json(path_a, path_b)
    assert out["added"] == [
        {"kind": "variable", "path": "extra/kernel"},
        {"kind": "activation", "path": "logits"},
    ]
    assert out["removed"] == [
        {"kind": "variable", "path": "hidden_1/bias"},
        {"kind": "activation", "path": "probs"},
    ]
    assert [v["path"] for v in out["variables"]] == [
        "hidden_1/kernel", "hidden_2/kernel", "hidden_2/bias", "probs/kernel", "probs/bias",
    ]  # fmt: skip
    assert invoke("diff", path_a, path_b, "--fail-on", "ratio,nonfinite").exit_code == 0
    for condition in ("added", "removed", "added,removed"):
        result = invoke("diff", path_a, path_b, "--fail-on", condition)
        assert result.exit_code == 1, condition
        assert "Added and removed" in result.stdout
    table = invoke("diff", path_a, path_b, "-f", "table").stdout
    assert "added (only in B)" in table
    assert "removed (only in A)" in table


# -- zero and missing norms ----------------------------------------------------------------


def _zeroed(doc: Doc, edits: dict[tuple[str, int, str], Any]) -> Doc:
    """A copy of ``doc`` with ``(list, index, dotted.key) -> value`` edits."""
    out = copy.deepcopy(doc)
    for (key, index, dotted), value in edits.items():
        target = out[key][index]
        *parents, last = dotted.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return out


def test_zero_and_missing_norms_give_null_and_a_reason(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    a0 = load(reports["full"])
    a = _zeroed(a0, {
        ("variables", 0, "grad.l2"): 0.0,  # zero in A only: infinite ratio
        ("variables", 2, "grad.l2"): 0.0,  # zero in both: undefined
        ("variables", 3, "grad"): None,  # no gradient in A
        ("activations", 1, "value.l2"): 0.0,
    })  # fmt: skip
    b = _zeroed(a0, {
        ("variables", 1, "grad.l2"): 0.0,  # zero in B only: ratio 0
        ("variables", 2, "grad.l2"): 0.0,
        ("variables", 4, "weight_l2"): 0.0,
        ("variables", 4, "ratio"): None,  # ‖w‖ = 0: inspect writes no ‖g‖/‖w‖
        ("activations", 0, "value.l2"): None,
        ("activations", 0, "value.nonfinite"): 5,
        ("activations", 1, "value.l2"): 0.0,
    })  # fmt: skip
    path_a, path_b = write(tmp_path, "a.json", a), write(tmp_path, "b.json", b)
    out = diff_json(path_a, path_b, "--fail-on", "ratio", code=1)  # strict JSON: no NaN
    var = [row["grad_l2"] for row in out["variables"]]
    assert var[0] == {"a": 0.0, "b": l2(a0["variables"][0]["grad"]), "ratio": None,
                      "log10_ratio": None, "reason": "zero_a"}  # fmt: skip
    assert var[1]["ratio"] == 0.0
    assert var[1]["log10_ratio"] is None
    assert var[1]["reason"] == "zero_b"
    assert (var[2]["ratio"], var[2]["reason"]) == (None, "zero_both")
    assert (var[3]["ratio"], var[3]["reason"]) == (None, "missing_a")
    weight, gw = out["variables"][4]["weight_l2"], out["variables"][4]["grad_weight_ratio"]
    assert (weight["ratio"], weight["reason"]) == (0.0, "zero_b")
    assert (gw["ratio"], gw["reason"]) == (None, "missing_b")
    assert out["activations"][0]["value_l2"]["reason"] == "nonfinite_b"
    assert out["activations"][1]["value_l2"]["reason"] == "zero_both"
    assert out["nonfinite"]["new"] == [
        {"kind": "activation", "path": "hidden_1", "quantity": "value", "a": 0, "b": 5}
    ]
    # a change from or to zero is the largest there is, and fires the ratio check
    assert [(t["path"], t["quantity"]) for t in out["top"][:3]] == [
        ("hidden_1/kernel", "grad_l2"), ("hidden_1/bias", "grad_l2"), ("probs/kernel", "weight_l2"),
    ]  # fmt: skip
    ratio = next(r for r in out["checks"]["results"] if r["condition"] == "ratio")
    assert ratio["paths"] == ["hidden_1/kernel", "hidden_1/bias"]
    table = invoke("diff", path_a, path_b, "--top", 3).stdout
    line = next(x for x in table.splitlines() if x.startswith("hidden_1/kernel "))
    assert " inf " in line
    assert "+inf" in line
    assert "0 in A: infinite ratio" in line
    line = next(x for x in table.splitlines() if x.startswith("hidden_2/kernel "))
    assert "0/0" in line
    assert "ratio undefined" in line


# -- other formats ------------------------------------------------------------------------


def test_csv_numbers_equal_json(reports: dict[str, Path]) -> None:
    out = diff_json(reports["full"], reports["nan"])
    result = invoke("diff", reports["full"], reports["nan"], "-f", "csv")
    assert result.exit_code == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))

    def num(cell: str) -> float | None:
        return None if cell == "" else float(cell)

    cells = {(r["kind"], r["path"], r["quantity"]): r for r in table}
    for row in out["variables"]:
        for quantity in ("grad_l2", "weight_l2", "grad_weight_ratio"):
            cell, change = cells[("variable", row["path"], quantity)], row[quantity]
            for key in ("a", "b", "ratio", "log10_ratio"):
                assert num(cell[key]) == change[key]
            assert cell["reason"] == (change["reason"] or "")
    new = [r for r in table if r["status"] == "nonfinite_new"]
    assert len(new) == len(out["nonfinite"]["new"])
    # the batch files differ: a note on stderr (the table shows it in its header instead)
    assert "batch file differs" in result.stderr


def test_table_lists_every_row(reports: dict[str, Path]) -> None:
    result = invoke("diff", reports["full"], reports["part"], "--top", 2)
    assert result.exit_code == 0
    assert result.stderr == ""
    text = result.stdout
    for title in ("Largest changes", "Gradients by variable", "Gradients by layer output"):
        assert title in text
    out = diff_json(reports["full"], reports["part"])
    for row in out["variables"]:
        line = next(x for x in text.splitlines() if x.startswith(row["path"] + " "))
        assert f"{row['grad_l2']['ratio']:.3e}" in line
        assert f"{row['grad_l2']['log10_ratio']:+.3f}" in line
    assert "batch size differs: A 32 vs B 8" in text
    assert "Non-finite changes" not in text
    assert "Added and removed" not in text


@pytest.mark.parametrize("columns", ["abc", "-5", "0", "", "12x"])
def test_a_malformed_columns_variable_is_ignored(reports: dict[str, Path], columns: str) -> None:
    # A pipe without COLUMNS gets the documented 160 cells; a value that is not a positive
    # integer is ignored (it used to be an internal error), as shells and rich do.
    args = ["diff", str(reports["full"]), str(reports["part"])]
    default = CliRunner().invoke(app, args, env={"COLUMNS": None})
    result = CliRunner().invoke(app, args, env={"COLUMNS": columns})
    assert result.exit_code == default.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == default.stdout
    widest = max(map(len, default.stdout.splitlines()))
    narrow = CliRunner().invoke(app, args, env={"COLUMNS": "90"})
    assert max(map(len, narrow.stdout.splitlines())) <= 90 < widest <= 160


# -- errors -------------------------------------------------------------------------------


def _bad_cases() -> dict[str, tuple[Callable[[Path, str], Path], str]]:
    """Ways a report file can be bad, each with a part of the expected message."""

    def text(content: str | bytes) -> Callable[[Path, str], Path]:
        def make(folder: Path, real: str) -> Path:
            path = folder / "bad.json"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            return path

        return make

    def edited(edit: Callable[[Doc], None]) -> Callable[[Path, str], Path]:
        def make(folder: Path, real: str) -> Path:
            doc = json.loads(real)
            edit(doc)
            return write(folder, "bad.json", doc)

        return make

    def truncated(folder: Path, real: str) -> Path:
        path = folder / "bad.json"
        path.write_text(real[: len(real) // 2])
        return path

    def nan_literal(folder: Path, real: str) -> Path:
        path = folder / "bad.json"
        path.write_text(real.replace('"global_grad_norm": ', '"global_grad_norm": NaN, "x": ', 1))
        return path

    return {
        "missing": (lambda folder, real: folder / "nope.json", "no such file; expected a JSON"),
        "directory": (lambda folder, real: folder, "is a directory"),
        "empty": (text(""), "empty file"),
        "not_json": (text("gradscope says hi"), "not valid JSON (line 1, column 1"),
        "binary": (text(b"\xff\xfe\x00\x01"), "not text (not UTF-8)"),
        "truncated": (truncated, "not valid JSON (line"),
        "nan_literal": (nan_literal, "NaN is not a JSON value"),
        "list": (text("[1, 2]"), "Received: a JSON list"),
        "wrong_schema": (
            text('{"schema": "gradscope.hessian/1", "blocks": []}'),
            "expected a gradscope inspect report (JSON object with schema "
            "'gradscope.inspect/1'). Received: schema 'gradscope.hessian/1'",
        ),
        "no_schema": (text('{"variables": []}'), "Received: an object without a 'schema' key"),
        "no_variables": (
            edited(lambda d: d.pop("variables")),
            "variables: expected a list. Received: missing",
        ),
        "bad_number": (
            edited(lambda d: d["variables"][2]["grad"].update(l2="big")),
            "variables[2].grad.l2: expected a non-negative number or null. Received: 'big'",
        ),
        "negative_norm": (
            edited(lambda d: d["activations"][0].update(value={"l2": -1.0, "nonfinite": 0})),
            "activations[0].value.l2: expected a non-negative number or null. Received: -1.0",
        ),
        "bad_count": (
            edited(lambda d: d["inputs"][0]["grad"].update(nonfinite=True)),
            "inputs[0].grad.nonfinite: expected a non-negative integer. Received: True",
        ),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_report_file_is_one_line_data_error(
    reports: dict[str, Path], tmp_path: Path, case: str, side: str
) -> None:
    make, expected = BAD[case]
    good = reports["full"]
    bad = make(tmp_path, good.read_text())
    args = (bad, good) if side == "A" else (good, bad)
    message = error_line(invoke("diff", *args), ExitCode.DATA)
    assert message.startswith(f"{bad}: "), message
    assert expected in message


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--fail-on", "nonfinite,bogus", "--fail-on: expected a comma-separated list of"),
        ("--fail-on", ",", "--fail-on: expected"),
        ("--max-ratio", "0.5", "--max-ratio: expected a factor >= 1. Received: 0.5"),
        ("--max-ratio", "nan", "--max-ratio: expected a factor >= 1"),
        ("--top", "-1", "--top: expected a number >= 0. Received: -1"),
        ("--format", "xml", "xml"),
    ],
)
def test_bad_option_is_a_usage_error(
    reports: dict[str, Path], option: str, value: str, expected: str
) -> None:
    message = error_line(invoke("diff", reports["full"], "missing.json", option, value), 2)
    assert expected in message


def test_diff_never_imports_tensorflow(tmp_path: Path) -> None:
    """A real process: ``gradscope diff`` on two reports loads no TensorFlow/Keras/h5py."""

    def report(grad_l2: float) -> Doc:
        """A complete inspect report of one variable, built without TensorFlow."""
        grad = TensorStats(grad_l2, 1.0, 0.0, 1.0, 0.0, 0)
        return Report(
            model=ModelInfo("m", "Sequential", None, "keras", 2, 1),
            batch=BatchInfo("synthetic", 4, seed=0),
            loss=LossInfo(1.0, "compiled: mse", "compiled"),
            training=False,
            variables=(VariableRow("d/kernel", "d", "Dense", (2,), "float32", grad, 1.0, 2.0),),
            inputs=(),
            activations=(),
            global_grad_norm=grad_l2,
        ).to_dict()

    doc, doc_b = report(2.0), report(50.0)
    path_a, path_b = write(tmp_path, "a.json", doc), write(tmp_path, "b.json", doc_b)
    script = (
        "import sys\nfrom gradscope.cli import main\n"
        "sys.argv = ['gradscope', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\nsys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", script, "diff", str(path_a), str(path_b), "-f", "json"]
    proc = subprocess.run(
        [*args, "--fail-on", "ratio"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    out, _, heavy = proc.stdout.rpartition("HEAVY=")
    assert heavy.strip() == ""
    variable = json.loads(out)["variables"][0]["grad_l2"]
    assert variable["ratio"] == 25.0
    assert variable["log10_ratio"] == pytest.approx(math.log10(25))


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("gradscope.diff", "diff_files", "gradscope.commands.diff.compare"),
        ("gradscope.diff", "DiffReport", "gradscope.commands.diff.report"),
        ("gradscope.render.diff", "format_json", "gradscope.commands.diff.render"),
    ],
)
def test_the_old_module_paths_still_work_with_a_deprecation_warning(
    old: str, name: str, new: str
) -> None:
    import importlib

    with pytest.warns(DeprecationWarning, match=f"import {name} from {new}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = importlib.import_module(old).nope
