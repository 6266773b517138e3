"""``gradscope dashboard``: reading ``gradscope.monitor/1`` JSON Lines, series, rendering.

The lines are built here, by hand, from ``docs/monitor_schema.md`` (not by the monitor):
:func:`record` builds one valid record around a nested inspect report, either the real
one of ``sample_models/mlp.keras`` (:func:`real_report`) or a trimmed valid one with any
number of layers (:func:`trimmed_report`).  Expected values (layer norms, top movers,
sparklines) are computed independently in the tests.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke, run_reporting_heavy_modules
from rich.console import Console

from gradscope.commands.dashboard import DashboardOptions, dashboard, read_run
from gradscope.commands.dashboard.reader import MonitorRecord, write_lines
from gradscope.commands.dashboard.render import format_table, trend
from gradscope.commands.dashboard.summary import layer_norms, mover_score, top_movers
from gradscope.errors import DataLoadError, UsageError

REPO = Path(__file__).resolve().parents[1]
Doc = dict[str, Any]

# --- the fixture generator -------------------------------------------------------------


def trimmed_report(
    layer_grads: dict[str, Sequence[float | None]],
    loss: float | None = 1.0,
    findings: Sequence[Doc] = (),
) -> Doc:
    """A valid ``gradscope.inspect/1`` report, trimmed to the keys the spec promises:
    ``layer_grads`` maps each layer to its variables' ``grad.l2`` (``kernel``, ``bias``)."""
    variables = [
        {
            "path": f"{layer}/{name}",
            "layer": layer,
            "class": "Dense",
            "grad": {"l2": l2, "nonfinite": 0 if l2 is not None else 1},
        }
        for layer, grads in layer_grads.items()
        for name, l2 in zip(("kernel", "bias", "gamma"), grads, strict=False)
    ]
    squares = [v["grad"]["l2"] for v in variables]
    norm = math.sqrt(sum(x * x for x in squares)) if None not in squares else None
    return {
        "schema": "gradscope.inspect/1",
        "loss": {"value": loss},
        "global_grad_norm": norm,
        "variables": variables,
        "health": {"ok": not findings, "findings": list(findings)},
    }


def finding(kind: str, target: str) -> Doc:
    """A health finding as the spec lists it (``kind``, ``severity``, ``target``, ``message``)."""
    return {"kind": kind, "severity": "warning", "target": target, "message": f"{kind} {target}"}


def update(layers: dict[str, float | None], steps: int = 1) -> Doc:
    """``instruments.update`` with these per-layer ratios (norm = ratio, ‖w‖ = 1)."""
    rows = [
        {"name": n, "norm": r, "ratio": r, "distance": 0.5, "weight_norm": 1.0}
        for n, r in layers.items()
    ]
    total = {"norm": 0.1, "ratio": 0.01, "distance": 0.5, "weight_norm": 10.0}
    return {"steps": steps, "total": total, "layers": rows}


def sharpness(lam: float | None, lr: float) -> Doc:
    return {
        "lambda_max": lam,
        "two_over_lr": 2.0 / lr,
        "eos_ratio": None if lam is None else lam * lr / 2.0,
        "matvecs": 6,
        "residual": 0.004,
        "converged": True,
    }


def batch_tests(norm: float, inner: float, orth: float) -> Doc:
    return {
        "batch_size": 64,
        "theta": 0.5,
        "nu": 5.84,
        "gradient_norm": 0.9,
        "norm_test": norm,
        "inner_product_test": inner,
        "orthogonality_test": orth,
        "suggested_batch_size": {"norm": 41, "inner_product": 11, "orthogonality": 1},
        "snr": 0.02,
    }


def record(
    report: Doc,
    *,
    step: int,
    epoch: int = 0,
    batch: int | None = None,
    logs: Doc | None = None,
    lr: float | None = 0.01,
    instruments: Doc | None = None,
) -> Doc:
    """One ``gradscope.monitor/1`` record, keys in the spec's order."""
    return {
        "schema": "gradscope.monitor/1",
        "fit": {
            "epoch": epoch,
            "batch": batch if batch is not None else step - 1,
            "step": step,
            "trigger": "batch",
        },
        "logs": logs if logs is not None else {"loss": 1.0 / step},
        "learning_rate": lr,
        "instruments": instruments or {},
        "report": report,
    }


def write_jsonl(path: Path, records: Sequence[Doc], tail: str = "") -> Path:
    """The records as JSON Lines (one ``\\n``-terminated line each), then ``tail``."""
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    path.write_text(text + tail, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def real_report() -> Doc:
    """The real inspect report of ``sample_models/mlp.keras`` (TensorFlow, once)."""
    import gradscope

    return gradscope.inspect_file(str(REPO / "sample_models" / "mlp.keras")).to_dict()


def with_grads(report: Doc, scale: float, loss: float) -> Doc:
    """A copy of ``report`` with every ``grad.l2`` times ``scale`` and this loss."""
    out = copy.deepcopy(report)
    out["loss"]["value"] = loss
    for variable in out["variables"]:
        variable["grad"]["l2"] *= scale
    return out


def three_layer_run(tmp_path: Path) -> tuple[Path, list[Doc]]:
    """Four records of a 3-layer model with every instrument, and a finding at steps 20, 40."""
    lr = 0.1
    records = []
    for i, step in enumerate((10, 20, 30, 40)):
        grads = {
            "a": [1.0 * (i + 1), 0.5],
            "b": [3.0, 4.0],
            "c": [0.1 / (i + 1), None][: 1 + (i == 3)],
        }
        found = [finding("exploding", "a")] if step in (20, 40) else []
        report = trimmed_report(grads, loss=2.0 - 0.25 * i, findings=found)
        ratios = {"a": 1e-3 * 10**i, "b": 1e-3, "c": 1e-2 / 10 ** min(i, 2)}
        instruments = {
            "update": None if i == 0 else update(ratios),
            "sharpness": sharpness(5.0 * (i + 1), lr),
            "batch_tests": batch_tests(0.5 * (i + 1), 0.25, 2.0),
        }
        logs = {"loss": 1.5 - 0.1 * i, "accuracy": 0.5 + 0.1 * i}
        records.append(record(report, step=step, logs=logs, lr=lr, instruments=instruments))
    return write_jsonl(tmp_path / "run.jsonl", records), records


# --- reading ---------------------------------------------------------------------------


def test_real_report_lines_read_back(tmp_path: Path, real_report: Doc) -> None:
    lines = [record(with_grads(real_report, s, loss=1.0 / s), step=s, lr=None) for s in (1, 2, 4)]
    run = read_run(write_jsonl(tmp_path / "run.jsonl", lines))
    assert [r.fit.step for r in run.records] == [1, 2, 4]
    assert [r.line for r in run.records] == [1, 2, 3]
    second = run.records[1]
    assert second.report.loss == pytest.approx(0.5)
    expected = {v["path"]: 2.0 * v["grad"]["l2"] for v in real_report["variables"]}
    got = {v.path: v.grad_l2 for v in second.report.variables}
    assert got == pytest.approx(expected)
    norms = layer_norms(second.report)
    kernel = expected["hidden_1/kernel"]
    bias = expected["hidden_1/bias"]
    assert norms["hidden_1"] == pytest.approx(math.hypot(kernel, bias), rel=1e-12)
    assert list(norms) == ["hidden_1", "hidden_2", "probs"]


def test_round_trip_keeps_every_value_and_nulls(tmp_path: Path) -> None:
    report = trimmed_report(
        {"a": [1.5, None], "b": [2.0]}, loss=None, findings=[finding("nonfinite", "a")]
    )
    instruments = {
        "update": update({"a": None, "b": 0.25}, steps=3),
        "alignment": {"total": -0.97, "layers": [{"name": "a", "cosine": None}]},
        "batch_tests": {
            **batch_tests(0.8, 0.4, 0.1),
            "suggested_batch_size": {"norm": None, "inner_product": 3, "orthogonality": None},
            "snr": None,
        },
        "sharpness": sharpness(None, 0.5),
        "trace": {"trace": 812.0, "stderr": 12.5, "probes": 30, "matrix": "hessian"},
    }
    doc = record(
        report, step=7, epoch=2, logs={"loss": None, "val_loss": 0.3}, instruments=instruments
    )
    doc["fit"]["batch"] = None
    doc["fit"]["trigger"] = "epoch"
    first = read_run(write_jsonl(tmp_path / "a.jsonl", [doc])).records[0]
    again = read_run(write_jsonl(tmp_path / "b.jsonl", [first.to_dict()])).records[0]
    assert again == first
    assert again.to_line() == first.to_line()
    assert again.fit.batch is None
    assert again.fit.trigger == "epoch"
    assert again.fit.epoch == 2
    assert again.logs == {"loss": None, "val_loss": 0.3}
    assert again.report.loss is None
    assert again.report.global_grad_norm is None
    assert [v.grad_l2 for v in again.report.variables] == [1.5, None, 2.0]
    assert again.report.findings[0].target == "a"
    assert again.report.findings[0].severity == "warning"
    upd = again.instruments["update"]
    assert upd.steps == 3
    ratios = [layer.ratio for layer in upd.layers]  # null reads as NaN
    assert math.isnan(ratios[0])
    assert ratios[1] == 0.25
    assert again.instruments["alignment"].total == -0.97
    assert math.isnan(again.instruments["alignment"].layers[0].cosine)
    tests = again.instruments["batch_tests"]
    assert tests.suggested_batch_size == {"norm": None, "inner_product": 3, "orthogonality": None}
    assert tests.norm_test == 0.8
    assert math.isnan(tests.snr)
    sharp = again.instruments["sharpness"]
    assert math.isnan(sharp.lambda_max)
    assert sharp.two_over_lr == 4.0
    assert again.instruments["trace"].probes == 30
    assert json.loads(again.to_line())["report"]["variables"][1]["grad"]["l2"] is None


def test_null_instrument_is_kept_as_asked_for_without_value(tmp_path: Path) -> None:
    doc = record(trimmed_report({"a": [1.0]}), step=1, instruments={"update": None})
    got = read_run(write_jsonl(tmp_path / "r.jsonl", [doc])).records[0]
    assert got.instruments == {"update": None}
    assert got.to_dict()["instruments"] == {"update": None}


def test_old_inspect_finding_shape_names_its_targets(tmp_path: Path) -> None:
    """This version's inspect reports list a finding's targets in ``where``."""
    old = {
        "kind": "vanishing",
        "message": "m",
        "where": ["d1", "d2"],
        "values": {},
        "threshold": 1e-4,
    }
    doc = record(trimmed_report({"a": [1.0]}, findings=[old]), step=1)
    got = read_run(write_jsonl(tmp_path / "r.jsonl", [doc])).records[0]
    assert got.report.findings[0].target == "d1, d2"


def test_write_lines_reads_back(tmp_path: Path) -> None:
    docs = [record(trimmed_report({"a": [float(s)]}), step=s) for s in (1, 2)]
    records = read_run(write_jsonl(tmp_path / "a.jsonl", docs)).records
    path = tmp_path / "b.jsonl"
    path.write_text(write_lines(records), encoding="utf-8")
    assert read_run(path).records == records


# --- series ----------------------------------------------------------------------------


def test_series_values_are_the_numbers_put_in(tmp_path: Path) -> None:
    path, _ = three_layer_run(tmp_path)
    report = dashboard(path)
    loss = report.get("logs.loss")
    assert loss is not None
    assert loss.steps == (10, 20, 30, 40)
    assert loss.values == pytest.approx([1.5, 1.4, 1.3, 1.2])
    probe = report.get("report.loss")
    assert probe.values == pytest.approx([2.0, 1.75, 1.5, 1.25])
    lam = report.get("sharpness.lambda_max")
    assert lam.values == pytest.approx([5.0, 10.0, 15.0, 20.0])
    assert report.get("sharpness.two_over_lr").values == pytest.approx([20.0] * 4)
    assert report.get("sharpness.eos_ratio").values == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert report.get("batch_tests.norm_test").values == pytest.approx([0.5, 1.0, 1.5, 2.0])
    ratio = report.get("update.ratio")
    assert ratio.steps == (20, 30, 40)  # update is null at the first record: no point
    assert report.get("alignment.total") is None  # not asked for
    a = next(s for s in report.grad_norms if s.key == "a")
    assert a.values == pytest.approx([math.hypot(i, 0.5) for i in (1, 2, 3, 4)])
    c = next(s for s in report.grad_norms if s.key == "c")
    assert c.values[:3] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert math.isnan(c.values[3])  # a null grad.l2 makes the layer's norm NaN
    ua = next(s for s in report.update_ratios if s.key == "a")
    assert ua.steps == (20, 30, 40)
    assert ua.values == pytest.approx([1e-2, 1e-1, 1.0])
    assert [(e.step, e.kind, e.target) for e in report.events] == [
        (20, "exploding", "a"),
        (40, "exploding", "a"),
    ]
    assert report.run.instruments == ("update", "batch_tests", "sharpness")


def test_sparkline_matches_a_hand_example() -> None:
    assert trend([0, 1, 2, 3, 4, 5, 6, 7], "linear") == "▁▂▃▄▅▆▇█"
    assert trend([1.0, 10.0, 100.0], "log") == "▁▅█"  # log10 0, 1, 2 of 0..2 on 8 levels
    assert trend([1.0, math.nan, 4.0], "linear") == "▁×█"
    assert trend([2.0, 2.0, math.nan], "log") == "▄▄×"
    # 8 values over 4 buckets: the means 1, 3, 5, 7 of the pairs, linear from 1 to 7
    assert trend([0, 2, 2, 4, 4, 6, 6, 8], "linear", width=4) == "▁▃▆█"


def _score(values: list[float]) -> float:
    """|log10(last/first)| by hand; inf when a value is not finite."""
    if any(not math.isfinite(v) for v in values):
        return math.inf
    return abs(math.log10(values[-1] / values[0]))


def test_top_movers_pick_the_largest_relative_changes(tmp_path: Path) -> None:
    path, _ = three_layer_run(tmp_path)
    report = dashboard(path, DashboardOptions(top=2))
    # a: sqrt(1.25) -> sqrt(16.25); b: constant 5; c: NaN at the end
    assert [s.key for s in report.top_grad_norms()] == ["c", "a"]
    assert mover_score(report.grad_norms[1]) == 0.0
    # update ratios: a 1e-2 -> 1 (2 decades), b constant, c 1e-3 -> 1e-4 (1 decade)
    assert [s.key for s in report.top_update_ratios()] == ["a", "c"]
    assert [s.key for s in top_movers(report.grad_norms, 10)] == ["c", "a", "b"]


# --- many layers -----------------------------------------------------------------------


def many_layer_run(
    tmp_path: Path, layers: int, records: int = 12
) -> tuple[Path, dict[str, list[float]], dict[str, list[float]]]:
    """``layers`` layers named ``block_{b}/dense_{i}`` with seeded gradient norms and
    update ratios; returns the file and each layer's norm and ratio series (computed here,
    independently of the dashboard)."""
    rng = np.random.default_rng(layers)
    names = [f"block_{i // 10}/dense_{i}" for i in range(layers)]
    base = rng.uniform(0.1, 10.0, layers)
    drift = rng.normal(0.0, 0.05, layers)  # log10 change per record
    ratio_drift = rng.normal(0.0, 0.05, layers)
    norms: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    docs = []
    for t in range(records):
        grads: dict[str, Sequence[float | None]] = {}
        for j, name in enumerate(names):
            kernel = float(base[j] * 10 ** (drift[j] * t))
            grads[name] = [kernel, 0.5 * kernel]
            norms[name].append(math.hypot(kernel, 0.5 * kernel))
        step_ratios = {n: float(1e-3 * 10 ** (ratio_drift[j] * t)) for j, n in enumerate(names)}
        if t > 0:
            for name, value in step_ratios.items():
                ratios[name].append(value)
        found = [finding("vanishing", names[t % layers])] if t % 3 == 0 else []
        instruments = {
            "update": None if t == 0 else update(step_ratios),
            "sharpness": sharpness(1.0 + t, 0.1),
        }
        report = trimmed_report(grads, loss=3.0 - 0.1 * t, findings=found)
        docs.append(record(report, step=t + 1, instruments=instruments))
    return write_jsonl(tmp_path / f"run{layers}.jsonl", docs), norms, ratios


def _render(report: Any) -> str:
    """The table at width 100, no colour, through a rich console as the brief asks."""
    text = format_table(report, width=100)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(text, markup=False, highlight=False)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _top_by_hand(series: dict[str, list[float]], k: int) -> list[str]:
    names = list(series)
    scores = {name: _score(values) for name, values in series.items()}
    return sorted(names, key=lambda n: (-scores[n], names.index(n)))[:k]


def _named(section: str, names: Sequence[str]) -> list[str]:
    """The layers that start a row of ``section``, in the order they appear."""
    rows = [line.split(" ")[0] for line in section.splitlines()]
    return [row for row in rows if row in set(names)]


@pytest.mark.parametrize(("layers", "records"), [(10, 12), (200, 120)])
def test_table_stays_readable_and_names_the_top_movers(
    tmp_path: Path, layers: int, records: int
) -> None:
    path, norms, ratios = many_layer_run(tmp_path, layers, records)
    text = _render(dashboard(path))
    lines = text.splitlines()
    assert len(lines) < 60
    assert max(len(line) for line in lines) <= 100
    grad_part, _, rest = text.partition("Update ratio per layer")
    ratio_part, _, health = rest.partition("Health:")
    assert _named(grad_part, list(norms)) == _top_by_hand(norms, 8)
    assert _named(ratio_part, list(ratios)) == _top_by_hand(ratios, 8)
    assert f"{layers - 8} more layers not shown" in grad_part
    assert f"{layers - 8} more layers not shown" in ratio_part
    assert f"the 8 of {layers} layers that moved most" in grad_part
    assert health.splitlines()[3].startswith("vanishing  1, 4, 7, 10")
    if records > 100:  # the trend of 119 update records, averaged over 16 buckets
        assert all(len(line.split()[-1]) == 16 for line in ratio_part.splitlines()[3:11])


def test_few_layers_are_all_shown_in_model_order(tmp_path: Path) -> None:
    path, norms, _ = many_layer_run(tmp_path, 5, records=3)
    text = _render(dashboard(path))
    grad_part = text.partition("Update ratio per layer")[0]
    assert _named(grad_part, list(norms)) == list(norms)
    assert "not shown" not in text


def test_ten_layers_exact_table_head(tmp_path: Path) -> None:
    path, _, _ = many_layer_run(tmp_path, 10, records=4)
    text = format_table(dashboard(path), width=100)
    head = text.splitlines()[:3]
    assert head == [
        f"file         {path}",
        "records      4, steps 1..4, 1 epoch",
        "instruments  update, sharpness",
    ]
    rows = {line.split("  ")[0]: line for line in text.splitlines()}
    assert rows["2/lr"].split()[1:6] == ["4", *["2.000e+01"] * 4]
    assert rows["2/lr"].endswith("▄▄▄▄")  # a constant series: flat at mid height


# --- the plot --------------------------------------------------------------------------


def test_plot_has_a_panel_per_instrument_present(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from gradscope.export.dashboard_plot import dashboard_figure, plot_dashboard

    path, _ = three_layer_run(tmp_path)
    report = dashboard(path)
    figure, panels = dashboard_figure(report)
    assert panels == ("loss", "gradient norm", "update ratio", "sharpness", "batch tests")
    assert len(figure.axes) == 5
    out = tmp_path / "run.png"
    result = plot_dashboard(report, out)
    assert result.plotted == panels
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100
    assert image.shape[1] > 100


def test_plot_leaves_out_absent_instruments(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gradscope.export.dashboard_plot import dashboard_figure

    docs = [record(trimmed_report({"a": [1.0 * s]}), step=s) for s in (1, 2, 3)]
    _, panels = dashboard_figure(dashboard(write_jsonl(tmp_path / "r.jsonl", docs)))
    assert panels == ("loss", "gradient norm")


# --- the CLI ---------------------------------------------------------------------------


def test_cli_table_and_json(tmp_path: Path) -> None:
    path, _ = three_layer_run(tmp_path)
    table = invoke("dashboard", path)
    assert table.exit_code == 0, table.stderr
    assert "Series over training steps" in table.stdout
    result = invoke("dashboard", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "gradscope.dashboard/1"
    series = {s["key"]: s for s in doc["series"]}
    assert series["sharpness.lambda_max"]["values"] == [5.0, 10.0, 15.0, 20.0]
    c = next(s for s in doc["layers"]["grad_norm"] if s["key"] == "c")
    assert c["values"][3] is None
    assert c["nonfinite"] == 1
    assert doc["top_movers"]["grad_norm"][:2] == ["c", "a"]


def test_cli_top_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path, _, _ = many_layer_run(tmp_path, 20, records=3)
    out = tmp_path / "d.png"
    result = invoke("dashboard", path, "--top", "3", "--plot", out)
    assert result.exit_code == 0, result.stderr
    assert "17 more layers not shown" in result.stdout
    assert out.stat().st_size > 0
    assert f"wrote the plot to {out}" in result.stderr


def test_truncated_last_line_is_skipped_with_a_note(tmp_path: Path) -> None:
    docs = [record(trimmed_report({"a": [1.0]}), step=s) for s in (1, 2)]
    cut = json.dumps(record(trimmed_report({"a": [1.0]}), step=3))[:50]
    path = write_jsonl(tmp_path / "r.jsonl", docs, tail=cut)
    result = invoke("dashboard", path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["run"]["records"] == 2
    assert result.stderr == (
        f"gradscope: {path}: line 3 is incomplete (training may still be writing the file); "
        "skipped\n"
    )


def test_complete_last_line_without_newline_is_read(tmp_path: Path) -> None:
    docs = [record(trimmed_report({"a": [1.0]}), step=s) for s in (1, 2)]
    path = write_jsonl(tmp_path / "r.jsonl", docs)
    path.write_text(path.read_text().rstrip("\n"))
    assert len(read_run(path).records) == 2


def _bad_file(tmp_path: Path, case: str) -> Path:
    good = json.dumps(record(trimmed_report({"a": [1.0]}), step=1))
    path = tmp_path / "bad.jsonl"
    inspect_line = json.dumps(trimmed_report({"a": [1.0]}))
    missing_step = record(trimmed_report({"a": [1.0]}), step=2)
    del missing_step["fit"]["step"]
    bad_value = record(
        trimmed_report({"a": [1.0]}), step=2, instruments={"sharpness": sharpness(1.0, 0.1)}
    )
    bad_value["instruments"]["sharpness"]["lambda_max"] = "big"
    contents = {
        "empty": "",
        "blank": "\n\n",
        "not_json": good + "\n{not json\n" + good + "\n",
        "not_json_last_with_newline": good + "\n{not json\n",
        "inspect_schema": inspect_line + "\n",
        "other_schema": good.replace("gradscope.monitor/1", "gradscope.monitor/2") + "\n",
        "no_schema": "[1, 2]\n",
        "missing_key": good + "\n" + json.dumps(missing_step) + "\n",
        "missing_report": json.dumps({k: v for k, v in json.loads(good).items() if k != "report"})
        + "\n",
        "bad_value": json.dumps(bad_value) + "\n",
        "nan_literal": good.replace('"learning_rate": 0.01', '"learning_rate": NaN') + "\n",
        "only_truncated": good[:40],
    }
    if case == "missing_file":
        return tmp_path / "nope.jsonl"
    if case == "directory":
        return tmp_path
    if case == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage\n")
        return path
    path.write_text(contents[case], encoding="utf-8")
    return path


BAD_CASES = {
    "missing_file": ("no such file", "Received:"),
    "directory": ("is a directory", "Received:"),
    "binary": ("not text (not UTF-8)", "Received: byte 0"),
    "empty": ("empty file; expected at least one record", "Received: 0 line(s)"),
    "blank": ("empty file", "Received: 2 line(s)"),
    "not_json": (
        "line 2: expected a JSON object of schema 'gradscope.monitor/1'",
        "Received: Expecting property name",
    ),
    "not_json_last_with_newline": ("line 2: expected a JSON object", "Received:"),
    "inspect_schema": (
        "line 1: schema: expected 'gradscope.monitor/1'; this line is a bare inspect report",
        "Received: 'gradscope.inspect/1'",
    ),
    "other_schema": (
        "line 1: schema: expected 'gradscope.monitor/1'",
        "Received: 'gradscope.monitor/2'",
    ),
    "no_schema": ("line 1: expected a JSON object", "Received: a JSON list"),
    "missing_key": ("line 2: fit.step: expected a non-negative integer", "Received: missing"),
    "missing_report": ("line 1: report: expected an object", "Received: missing"),
    "bad_value": (
        "line 1: instruments.sharpness.lambda_max: expected a number or null",
        "Received: 'big'",
    ),
    "nan_literal": ("line 1: expected a JSON object", "Received: NaN is not a JSON value"),
    "only_truncated": ("only an incomplete line", "Received: 1 line(s)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_is_one_line_and_exit_4(tmp_path: Path, case: str) -> None:
    path = _bad_file(tmp_path, case)
    message = error_line(["dashboard", path], 4)
    what, tail = BAD_CASES[case]
    assert message.startswith(f"{path}: ")
    assert what in message
    assert tail in message


def test_bad_data_raises_data_load_error_in_python(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match=r"line 1: schema: expected 'gradscope\.monitor/1'"):
        dashboard(_bad_file(tmp_path, "inspect_schema"))


@pytest.mark.parametrize("top", [0, -1, True, 2.5])
def test_bad_top_is_a_usage_error(top: object) -> None:
    with pytest.raises(UsageError, match=r"top: expected an integer"):
        DashboardOptions(top=top)  # type: ignore[arg-type]


def test_cli_bad_top_exits_2(tmp_path: Path) -> None:
    path, _ = three_layer_run(tmp_path)
    message = error_line(["dashboard", path, "--top", "0"], 2)
    assert "top: expected an integer >= 1. Received: top=0" in message


def test_cli_existing_plot_needs_force(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path, _ = three_layer_run(tmp_path)
    out = tmp_path / "p.png"
    out.write_bytes(b"x")
    message = error_line(["dashboard", path, "--plot", out], 8)
    assert "the file exists" in message


def test_dashboard_never_imports_tensorflow(tmp_path: Path) -> None:
    """A real process: ``gradscope dashboard`` (table, json, plot) loads no TensorFlow."""
    path, _ = three_layer_run(tmp_path)
    extra = ["--plot", str(tmp_path / "p.png")] if _has_matplotlib() else []
    args = ["dashboard", str(path), "-f", "json", *extra]
    code, out, err, heavy = run_reporting_heavy_modules(args, str(REPO))
    assert code == 0, err
    assert heavy == ""
    assert json.loads(out)["run"]["records"] == 4


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_record_from_dict_names_its_source() -> None:
    with pytest.raises(DataLoadError, match=r"^rec: fit: expected an object\. Received: missing$"):
        MonitorRecord.from_dict({"schema": "gradscope.monitor/1", "learning_rate": None}, "rec")


def test_csv_has_one_row_per_point(tmp_path: Path) -> None:
    path, _ = three_layer_run(tmp_path)
    result = invoke("dashboard", path, "-f", "csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["group", "key", "step", "value"]
    lam = [r for r in rows if r[1] == "sharpness.lambda_max"]
    assert [(r[2], float(r[3])) for r in lam] == [
        ("10", 5.0),
        ("20", 10.0),
        ("30", 15.0),
        ("40", 20.0),
    ]
    assert ["grad_norm", "c", "40", ""] in rows  # null: an empty cell


def test_unknown_instrument_is_ignored_with_a_note(tmp_path: Path) -> None:
    docs = [
        record(trimmed_report({"a": [1.0]}), step=s, instruments={"future": {"x": 1}})
        for s in (1, 2, 3)
    ]
    path = write_jsonl(tmp_path / "r.jsonl", docs)
    result = invoke("dashboard", path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"gradscope: {path}: lines 1..3 (3 lines): instruments.future: unknown instrument; "
        "ignored\n"
    )
    assert json.loads(result.stdout)["run"]["instruments"] == []


@pytest.mark.parametrize(
    ("losses", "scale"), [((1.0, 0.5, 2000.0), "log"), ((1.0, 0.5, 9.0), "linear")]
)
def test_a_loss_blowup_is_drawn_on_a_log_axis(tmp_path: Path, losses, scale) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from gradscope.export.dashboard_plot import dashboard_figure

    docs = [
        record(trimmed_report({"a": [1.0]}, loss=loss), step=s, logs={})
        for s, loss in enumerate(losses, start=1)
    ]
    figure, panels = dashboard_figure(dashboard(write_jsonl(tmp_path / "r.jsonl", docs)))
    assert panels[0] == "loss"
    assert figure.axes[0].get_yscale() == scale
