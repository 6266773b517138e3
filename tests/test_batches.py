"""Several batches: the mean-gradient report, its spread statistics, and streaming.

Every expected number comes from the one-tape references of ``tests/reference.py``
(eager tapes over ``model.compute_loss``, what ``fit`` minimises) and numpy, never
from another gradscope report:

* The merged report equals the reference on the whole data in one batch (for the
  sample models' mean-reduced losses), for equal batches and for a short last batch:
  loss, global norm, every variable's, input's and layer output's gradient statistics
  and every layer output's value statistics (numpy float64 on the reference tensors).
* The per-batch norms, the spread ``E||g - E[g]||^2`` and the SNR equal numpy over
  each batch's gradients from its own tape (:func:`tests.reference.one_tape_gradients`),
  aggregated by the documented formulas (weights ``rows / total rows``).
* The statistics merge (:func:`gradscope.aggregate._merge_rows`) of numpy statistics
  equals numpy on the concatenation.
* Reading batches from ``.npz`` (stored and deflated), ``.npy`` and ``.h5`` never holds
  more than about one batch: the file is larger than the memory the test allows.

Tolerances: ``RTOL = 2e-5`` for the loss, the global norm and the variables' gradient
norms (float32 gradients of different batch splits, summed in float64); ``1e-4`` for
the other statistics, as before these tests had an independent reference.
"""

from __future__ import annotations

import functools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope import aggregate, api
from gradscope.cli import app
from gradscope.errors import ExitCode
from gradscope.loading.data import iter_batches, load_batch, plan_batches
from gradscope.loading.signature import TensorSpec
from tests.reference import (
    ReferenceGradients,
    Sample,
    load_sample,
    model_loss,
    numpy_dead_frac,
    numpy_stats,
    one_tape_gradients,
    reference_gradients,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RTOL = 2e-5  # float32 gradients of different batch splits, summed in float64
STATS_RTOL = 1e-4


def _assert_fields(got: Any, want: np.ndarray, tolerances: dict[str, float], what: str) -> None:
    """The named statistics of ``got`` against numpy float64 on ``want``."""
    assert got is not None, what
    expected = numpy_stats(want)
    for name, rel in tolerances.items():
        assert getattr(got, name) == pytest.approx(expected[name], rel=rel, abs=1e-12), (
            what,
            name,
        )
    assert got.nonfinite == expected["nonfinite"], what


def _assert_matches_reference(merged: Any, ref: ReferenceGradients) -> None:
    """The merged report against the reference gradients of the same rows in one batch."""
    assert merged.loss.value == pytest.approx(ref.loss, rel=RTOL)
    squares = sum(float(np.sum(g * g)) for g in ref.variables.values())
    assert merged.global_grad_norm == pytest.approx(np.sqrt(squares), rel=RTOL)
    assert {row.path for row in merged.variables if row.grad is not None} == set(ref.variables)
    variable_tolerances = {"l2": RTOL, "max_abs": STATS_RTOL, "std": STATS_RTOL}
    for row in merged.variables:
        if row.grad is not None:
            _assert_fields(row.grad, ref.variables[row.path], variable_tolerances, row.path)
            assert row.rows_touched == ref.rows_touched.get(row.path), row.path
    fields = ("l2", "max_abs", "mean", "std", "zero_frac")
    tolerances = dict.fromkeys(fields, STATS_RTOL)
    probed = [row for row in merged.activations if row.path in ref.activations]
    assert {row.path for row in probed} == set(ref.activations)
    for row in merged.activations:
        if row not in probed:  # an RNN cell inside its loop: a note row
            assert row.grad is None, row.path
            assert row.note is not None, row.path
            continue
        value = ref.values[row.path]
        assert row.shape == value.shape, row.path
        _assert_fields(row.grad, ref.activations[row.path], tolerances, row.path)
        _assert_fields(row.value, value, tolerances, f"{row.path} value")
        assert row.value.dead_frac == numpy_dead_frac(value), row.path
    assert {row.name for row in merged.inputs if row.grad is not None} == set(ref.inputs)
    for row in merged.inputs:
        if row.grad is not None:
            _assert_fields(
                row.grad, ref.inputs[row.name], {"l2": STATS_RTOL, "mean": STATS_RTOL}, row.name
            )


@functools.cache
def _whole_data_reference(name: str, limit: int | None = None) -> ReferenceGradients:
    """The reference gradients of a sample model on its first ``limit`` rows (or all)."""
    sample = load_sample(SAMPLES / f"{name}.keras", SAMPLES / f"{name}.npz")
    if limit is not None:
        arrays = [a[:limit] for a in sample.input_arrays]
        x = arrays[0] if len(arrays) == 1 else arrays
        y = sample.y[:limit] if isinstance(sample.y, np.ndarray) else [t[:limit] for t in sample.y]
        sample = Sample(sample.model, x, y, sample.input_names, arrays)
    return reference_gradients(sample)


@pytest.mark.parametrize(
    ("name", "batch_size"), [("mlp", 8), ("mlp", 7), ("cnn", 5), ("multi_io", 6), ("text_lstm", 5)]
)
def test_mean_of_batches_equals_the_whole_data(name: str, batch_size: int) -> None:
    model, data = SAMPLES / f"{name}.keras", SAMPLES / f"{name}.npz"
    merged = api.inspect_file(model, data, batch_size=batch_size)
    with np.load(data) as file:
        rows = len(file[sorted(file.files)[0]])
    assert merged.batches is not None
    assert merged.batches.count == -(-rows // batch_size)
    assert merged.batch.size == merged.batches.rows == rows
    _assert_matches_reference(merged, _whole_data_reference(name))


def test_spread_statistics_against_each_batch_on_its_own(keras: Any) -> None:
    model = keras.saving.load_model(SAMPLES / "mlp.keras")
    with np.load(SAMPLES / "mlp.npz") as file:
        x, y = file["x"], file["y"]
    batch_size = 7  # 32 rows: 4 batches of 7 and one of 4
    merged = api.inspect(model, x, y, batch_size=batch_size, keep_tensors=True)
    grads, losses, weights = [], [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]

        def loss_of(pred: Any, xb: Any = xb, yb: Any = yb) -> Any:
            return model_loss(model, xb, yb, pred, training=False)

        part = one_tape_gradients(model, xb, loss_of)
        grads.append({k: v for k, v in part.variables.items() if v is not None})
        losses.append(part.loss)
        weights.append(len(xb) / len(x))
    assert merged.batches is not None
    assert merged.tensors is not None
    w = np.asarray(weights)
    assert merged.loss.value == pytest.approx(float(np.dot(w, losses)), rel=1e-6)
    assert merged.batches.losses.median == pytest.approx(float(np.median(losses)), rel=1e-6)
    globals_ = [np.sqrt(sum(np.sum(g[k] ** 2) for k in g)) for g in grads]
    assert merged.batches.global_norms.max == pytest.approx(max(globals_), rel=1e-6)
    for row in merged.batches.variables:
        per_batch = np.stack([g[row.path] for g in grads])
        mean = np.tensordot(w, per_batch, axes=1)
        np.testing.assert_allclose(merged.tensors.variables[row.path], mean, rtol=1e-6, atol=1e-12)
        norms = [float(np.linalg.norm(g)) for g in per_batch]
        assert row.norms.min == pytest.approx(min(norms), rel=1e-6)
        assert row.norms.median == pytest.approx(float(np.median(norms)), rel=1e-6)
        assert row.norms.max == pytest.approx(max(norms), rel=1e-6)
        variance = float(np.dot(w, [np.sum((g - mean) ** 2) for g in per_batch]))
        assert row.variance == pytest.approx(variance, rel=1e-6)
        assert row.snr == pytest.approx(float(np.sum(mean**2)) / variance, rel=1e-6)


def test_max_batches_caps_the_rows() -> None:
    report = api.inspect_file(
        SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", batch_size=5, max_batches=3
    )
    assert report.batches is not None
    assert (report.batches.count, report.batches.rows, report.batch.size) == (3, 15, 15)
    _assert_matches_reference(report, _whole_data_reference("mlp", 15))


def _numpy_row(values: np.ndarray) -> np.ndarray:
    """A statistics row in gradscope's layout (``stats.FIELDS``), from numpy float64."""
    stats = numpy_stats(values)
    fields = ("l2", "max_abs", "mean", "std", "zero_frac", "nonfinite")
    return np.array([stats[f] for f in fields] + [np.nan])


def test_merge_rows_equals_numpy_on_the_concatenation() -> None:
    """Rows of numpy statistics, merged (scaled first), against numpy on the
    concatenation (of the scaled tensors)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(300) * 3 + 1
    b = np.where(rng.random(120) < 0.3, 0.0, rng.standard_normal(120) - 2)
    merged = aggregate._MergedStats()
    merged.add(_numpy_row(a)[None, :], np.array([300.0]), 1.0)
    merged.add(_numpy_row(b)[None, :], np.array([120.0]), 1.0)
    assert merged.rows is not None
    expected = _numpy_row(np.concatenate([a, b]))
    np.testing.assert_allclose(merged.rows[0][:6], expected[:6], rtol=1e-12)
    scaled = aggregate._MergedStats()
    scaled.add(_numpy_row(a)[None, :], np.array([300.0]), 0.25)
    scaled.add(_numpy_row(b)[None, :], np.array([120.0]), 0.5)
    assert scaled.rows is not None
    expected = _numpy_row(np.concatenate([0.25 * a, 0.5 * b]))
    np.testing.assert_allclose(scaled.rows[0][:6], expected[:6], rtol=1e-12)


# -- streaming ------------------------------------------------------------------------


class _Signature:
    """The two-tensor signature of a (rows, 256) float32 regression."""

    inputs = (TensorSpec("x", (None, 256), "float32"),)
    outputs = (TensorSpec("y", (None, 1), "float32"),)
    input_names = ("x",)
    output_names = ("y",)


ROWS, BATCH = 16_000, 500  # 16 MB of inputs; one batch is 0.5 MB


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.name.endswith("_deflated.npz"):
        np.savez_compressed(path, x=x, y=y)
    elif path.suffix == ".npz":
        np.savez(path, x=x, y=y)
    else:
        with h5py.File(path, "w") as file:
            file["x"], file["y"] = x, y


@pytest.mark.parametrize("name", ["data.npz", "data_deflated.npz", "data.npy", "data.h5"])
def test_batches_stream_from_disk(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((ROWS, 256)).astype(np.float32)
    y = rng.standard_normal((ROWS, 1)).astype(np.float32)
    path = tmp_path / name
    _write(path, x, y)
    signature: Any = _Signature()
    plan = plan_batches(path, signature, BATCH, limit=ROWS - 250)
    assert (plan.rows, plan.count) == (ROWS - 250, -(-(ROWS - 250) // BATCH))
    # A few batches' worth (the batch being read, the one being used, the test's own
    # temporaries): a quarter of the file's inputs alone.
    budget = 8 * BATCH * 256 * 4
    assert budget <= x.nbytes // 3
    checksum = np.zeros(256)
    tracemalloc.start()
    try:
        rows = 0
        for index, batch in enumerate(iter_batches(plan, signature)):
            start = index * BATCH
            np.testing.assert_array_equal(batch.inputs["x"], x[start : start + batch.size])
            checksum += batch.inputs["x"].sum(axis=0)
            rows += batch.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        del x
    assert rows == ROWS - 250
    assert peak < budget, f"peak {peak:,} bytes for a {4 * ROWS * 256:,}-byte file"


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros((2, 1)))
    with pytest.raises(Exception, match="pickled Python objects"):
        load_batch(path, _Signature())  # type: ignore[arg-type]


# -- command line ---------------------------------------------------------------------


def _invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, ["inspect", *map(str, args)])


def test_cli_batches_json_contract() -> None:
    result = _invoke(
        SAMPLES / "cnn.keras", "-d", SAMPLES / "cnn.npz", "--batch-size", "4", "-f", "json"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    batches = data["batches"]
    assert set(batches) == {
        "count", "batch_size", "rows", "max_batches", "loss", "global_norm", "variables"
    }  # fmt: skip
    assert batches["batch_size"] == 4
    assert batches["rows"] == data["batch"]["size"]
    assert [v["path"] for v in batches["variables"]] == [v["path"] for v in data["variables"]]
    for row in batches["variables"]:
        assert row["norms"]["min"] <= row["norms"]["median"] <= row["norms"]["max"]
        assert row["variance"] >= 0
        assert row["snr"] >= 0
    assert "per_sample" not in data


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-size", "0"], "batch_size: expected an integer >= 1. Received: batch_size=0"),
        (["--max-batches", "2"], "needs --batch-size"),
        (
            ["--batch-size", "4", "--max-batches", "0"],
            "max_batches: expected an integer >= 1. Received: max_batches=0",
        ),
    ],
)
def test_cli_batch_option_errors(args: list[str], fragment: str) -> None:
    result = _invoke(SAMPLES / "mlp.keras", "-d", SAMPLES / "mlp.npz", *args)
    assert result.exit_code == ExitCode.USAGE
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
