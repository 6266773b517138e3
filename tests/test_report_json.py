"""``Report.from_dict`` is the exact inverse of ``Report.to_dict``.

Real reports (``inspect_file`` on the shipped samples: several batches with per-example
norms, a batch holding a NaN, an Embedding model) and one report built by hand with every
optional field set go through ``to_dict`` -> JSON text -> ``from_dict``.  The result is
compared field by field, recursively, with the original dataclasses: a field that
``from_dict`` drops or misreads fails the comparison, and a coverage check makes sure that
every field of every report dataclass holds a non-default value in at least one report
(so that dropping it cannot go unnoticed).  The one loss allowed is the documented one:
a non-finite float is written as ``null`` and reads back as NaN (or ``None``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLE_MODELS

from gradscope.commands.inspect.report import (
    ActivationRow,
    BatchesReport,
    InputRow,
    NormSpread,
    PerSampleReport,
    PerSampleRow,
    Report,
    VariableRow,
    VariableSpread,
)
from gradscope.errors import DataLoadError
from gradscope.health import Finding, Health, Thresholds
from gradscope.report import BatchInfo, LossInfo, ModelInfo, TensorStats, ValueStats

MLP = SAMPLE_MODELS / "mlp.keras"
MLP_DATA = SAMPLE_MODELS / "mlp.npz"


def _stats(l2: float, nonfinite: int = 0) -> TensorStats:
    return TensorStats(l2, 2.5, -0.25, 1.5, 0.125, nonfinite)


def every_field_report() -> Report:
    """A report with every optional field set, and non-finite values in several places."""
    spread = NormSpread(0.5, 1.0, math.inf)
    return Report(
        model=ModelInfo("m", "Functional", "/tmp/m.keras", "keras", 12, 3, ("a note",)),
        batch=BatchInfo("synthetic", 4, "/tmp/x.npz", 7, False, ("x", "y")),
        loss=LossInfo(math.nan, "override: mse", "override", 0.5, 2),
        training=True,
        variables=(
            VariableRow(
                "d/kernel",
                "d",
                "Dense",
                (3, 2),
                "float32",
                _stats(math.inf, 3),
                math.nan,
                None,
                "a row note",
                5,
                "d/base_kernel",
            ),
            VariableRow("d/bias", "d", "Dense", (2,), "float16", None, 0.0, 2.0),
        ),
        inputs=(InputRow("x", (-1, 3), "float32", _stats(1.0), "no gradient: ints"),),
        activations=(
            ActivationRow(
                "d",
                "d@1:2",
                "Dense",
                1,
                2,
                (4, 2),
                "float32",
                _stats(3.0),
                ValueStats(1.0, 2.0, 0.5, 0.25, 0.0, 0, 0.75),
                "an output note",
                "relu",
            ),
        ),
        global_grad_norm=math.inf,
        batches=BatchesReport(
            3, 2, 6, 10, spread, spread, (VariableSpread("d/kernel", spread, 0.5, math.nan),)
        ),
        per_sample=PerSampleReport(
            4, PerSampleRow("*", spread, (2, 0), (3.0, 1.0)), (), "loop: a reason"
        ),
        health=Health(
            (Finding("dead", "d is dead", ("d",), {"count": 3, "frac": 0.5, "x": None}, 0.25),),
            Thresholds(1e-3, 1e4, 5.0, 0.25, 1e-7),
        ),
    )


@pytest.fixture(scope="module")
def real_reports(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> dict[str, Report]:
    from gradscope import inspect_file

    batch = dict(np.load(MLP_DATA))
    batch["x"] = batch["x"].copy()
    batch["x"][0, 0] = np.nan
    nan_data = tmp_path_factory.mktemp("data") / "nan.npz"
    np.savez(nan_data, **batch)
    text = SAMPLE_MODELS / "text_lstm.keras"
    return {
        "batches_per_sample": inspect_file(MLP, MLP_DATA, batch_size=8, per_sample=True),
        "nonfinite": inspect_file(MLP, nan_data),
        "embedding": inspect_file(text, SAMPLE_MODELS / "text_lstm.npz"),
    }


# -- the comparison -----------------------------------------------------------------------


def _null_like(value: Any) -> bool:
    """``None`` or a non-finite float: what the JSON writes as ``null``."""
    if value is None:
        return True
    return isinstance(value, float | np.floating) and not math.isfinite(value)


def assert_same(a: Any, b: Any, where: str = "report") -> None:
    """``a == b`` field by field, recursively, arrays included; any two of ``None``, NaN
    and ±Inf count as equal (all are ``null`` in the JSON)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        for field in dataclasses.fields(a):
            if field.compare:
                assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, tuple | list):
        assert isinstance(b, tuple | list), f"{where}: {a!r} vs {b!r}"
        assert len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{where}: {a!r} vs {b!r}"
        assert list(a) == list(b), f"{where}: {a!r} vs {b!r}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif _null_like(a) or _null_like(b):
        assert _null_like(a), f"{where}: {a!r} vs {b!r}"
        assert _null_like(b), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"
        assert isinstance(a, bool) == isinstance(b, bool), f"{where}: {a!r} vs {b!r}"


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def set_fields(value: Any, found: set[str]) -> set[str]:
    """``Class.field`` of every compared field that holds a non-default value somewhere."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.compare and (
                _default(field) is dataclasses.MISSING or item != _default(field)
            ):
                found.add(f"{type(value).__name__}.{field.name}")
            set_fields(item, found)
    elif isinstance(value, tuple | list):
        for item in value:
            set_fields(item, found)
    return found


def all_fields(cls: type) -> set[str]:
    """``Class.field`` of every compared field of ``cls`` (``schema``, a constant that
    ``from_dict`` checks, aside)."""
    names = (f.name for f in dataclasses.fields(cls) if f.compare and f.name != "schema")
    return {f"{cls.__name__}.{name}" for name in names}


REPORT_CLASSES = (
    Report, ModelInfo, BatchInfo, LossInfo, VariableRow, InputRow, ActivationRow, TensorStats,
    ValueStats, BatchesReport, NormSpread, VariableSpread, PerSampleReport, PerSampleRow,
    Health, Finding, Thresholds,
)  # fmt: skip


def round_trip(report: Report) -> Report:
    return Report.from_dict(json.loads(report.to_json()), source="r.json")


# -- tests ---------------------------------------------------------------------------------


def test_from_dict_inverts_to_dict_for_every_field() -> None:
    report = every_field_report()
    back = round_trip(report)
    assert_same(report, back)
    assert back.to_dict() == report.to_dict()
    assert back.to_json() == report.to_json()


def test_from_dict_inverts_to_dict_on_real_reports(real_reports: dict[str, Report]) -> None:
    for name, report in real_reports.items():
        back = round_trip(report)
        assert_same(report, back, name)
        assert back.to_dict() == json.loads(json.dumps(report.to_dict()))
        assert back.to_json() == report.to_json()
    # The real reports hold what they were made for.
    assert real_reports["batches_per_sample"].batches is not None
    assert real_reports["batches_per_sample"].per_sample is not None
    assert not math.isfinite(real_reports["nonfinite"].global_grad_norm)
    assert any(v.rows_touched is not None for v in real_reports["embedding"].variables)


def test_every_field_is_exercised(real_reports: dict[str, Report]) -> None:
    # If from_dict dropped a field, the comparisons above would see it only if some
    # report holds a value other than the field's default there.
    found: set[str] = set()
    for report in (every_field_report(), *real_reports.values()):
        set_fields(report, found)
    expected = set().union(*(all_fields(cls) for cls in REPORT_CLASSES))
    assert expected - found == set()


MALFORMED: dict[str, tuple[Any, str]] = {
    "name": (lambda d: d["model"].pop("name"), "model.name: expected a string. Received: missing"),
    "kind": (lambda d: d["loss"].update(kind="hinge"), "loss.kind: expected one of 'compiled'"),
    "flag": (
        lambda d: d.update(training="yes"),
        "training: expected true or false. Received: 'yes'",
    ),
    "shape": (
        lambda d: d["variables"][0].update(shape=[3, "2"]),
        "variables[0].shape: expected a list of integers",
    ),
    "where": (
        lambda d: d["health"]["findings"][0].update(where="d"),
        "health.findings[0].where: expected a list of strings",
    ),
    "index": (
        lambda d: d["per_sample"]["total"]["top"][0].update(index=-1),
        "per_sample.total.top[0].index: expected a non-negative integer. Received: -1",
    ),
    "section": (
        lambda d: d["batches"].pop("loss"),
        "batches.loss: expected an object. Received: missing",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_report_names_the_key(case: str) -> None:
    edit, message = MALFORMED[case]
    doc = every_field_report().to_dict()
    edit(doc)
    with pytest.raises(DataLoadError) as raised:
        Report.from_dict(doc, source="r.json")
    assert str(raised.value).startswith(f"r.json: {message}"), str(raised.value)
