"""Several batches: the mean-gradient report, its spread statistics, and streaming.

* The merged report equals the report of the whole data in one batch (for the sample
  models' mean-reduced losses), for equal batches and for a short last batch.
* The per-batch norms, the spread ``E||g - E[g]||^2`` and the SNR equal numpy over the
  gradients of each batch computed on its own.
* The statistics merge (:func:`gradscope.aggregate._merge_rows`) equals numpy on the
  concatenation.
* Reading batches from ``.npz`` (stored and deflated), ``.npy`` and ``.h5`` never holds
  more than about one batch: the file is larger than the memory the test allows.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope import aggregate, api, stats
from gradscope.cli import app
from gradscope.errors import ExitCode
from gradscope.loading.data import iter_batches, load_batch, plan_batches
from gradscope.loading.signature import TensorSpec

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RTOL = 2e-5  # float32 gradients of different batch splits, summed in float64


def _assert_same_report(merged: Any, whole: Any) -> None:
    assert merged.loss.value == pytest.approx(whole.loss.value, rel=RTOL)
    assert merged.global_grad_norm == pytest.approx(whole.global_grad_norm, rel=RTOL)
    for a, b in zip(merged.variables, whole.variables, strict=True):
        assert a.path == b.path
        if b.grad is None:
            assert a.grad is None
            continue
        assert a.grad.l2 == pytest.approx(b.grad.l2, rel=RTOL, abs=1e-9), a.path
        assert a.grad.max_abs == pytest.approx(b.grad.max_abs, rel=1e-4, abs=1e-9), a.path
        assert a.grad.std == pytest.approx(b.grad.std, rel=1e-4, abs=1e-9), a.path
        assert a.rows_touched == b.rows_touched
    for a, b in zip(merged.activations, whole.activations, strict=True):
        assert (a.path, a.shape) == (b.path, b.shape)
        for got, want in ((a.grad, b.grad), (a.value, b.value)):
            if want is None:
                assert got is None
                continue
            assert got is not None
            for field in ("l2", "max_abs", "mean", "std", "zero_frac"):
                assert getattr(got, field) == pytest.approx(
                    getattr(want, field), rel=1e-4, abs=1e-12
                ), (a.path, field)
            assert got.nonfinite == want.nonfinite
        if b.value is not None and b.value.dead_frac is not None:
            assert a.value is not None and a.value.dead_frac == b.value.dead_frac
    for a, b in zip(merged.inputs, whole.inputs, strict=True):
        assert (a.name, a.shape) == (b.name, b.shape)
        if b.grad is not None:
            assert a.grad is not None
            assert a.grad.l2 == pytest.approx(b.grad.l2, rel=1e-4)
            assert a.grad.mean == pytest.approx(b.grad.mean, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize(
    "name, batch_size", [("mlp", 8), ("mlp", 7), ("cnn", 5), ("multi_io", 6), ("text_lstm", 5)]
)
def test_mean_of_batches_equals_the_whole_data(name: str, batch_size: int) -> None:
    model, data = SAMPLES / f"{name}.keras", SAMPLES / f"{name}.npz"
    whole = api.inspect_file(model, data)
    merged = api.inspect_file(model, data, batch_size=batch_size)
    assert merged.batches is not None
    assert merged.batches.count == -(-whole.batch.size // batch_size)
    assert merged.batch.size == merged.batches.rows == whole.batch.size
    _assert_same_report(merged, whole)


def test_spread_statistics_against_each_batch_on_its_own(keras: Any) -> None:
    model = keras.saving.load_model(SAMPLES / "mlp.keras")
    with np.load(SAMPLES / "mlp.npz") as file:
        x, y = file["x"], file["y"]
    batch_size = 7  # 32 rows: 4 batches of 7 and one of 4
    merged = api.inspect(model, x, y, batch_size=batch_size, keep_tensors=True)
    grads, losses, weights = [], [], []
    for start in range(0, len(x), batch_size):
        part = api.inspect(
            model, x[start : start + batch_size], y[start : start + batch_size], keep_tensors=True
        )
        assert part.tensors is not None
        grads.append({k: v.astype(np.float64) for k, v in part.tensors.variables.items()})
        losses.append(part.loss.value)
        weights.append(len(x[start : start + batch_size]) / len(x))
    assert merged.batches is not None and merged.tensors is not None
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
    first_15 = api.inspect_file(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", limit=15)
    _assert_same_report(report, first_15)


def test_merge_rows_equals_numpy_on_the_concatenation(tf: Any) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(300) * 3 + 1
    b = np.where(rng.random(120) < 0.3, 0.0, rng.standard_normal(120) - 2)
    rows = [stats.tensor_stats(tf.constant(v)).numpy() for v in (a, b)]
    merged = aggregate._MergedStats()
    merged.add(rows[0][None, :], np.array([300.0]), 1.0)
    merged.add(rows[1][None, :], np.array([120.0]), 1.0)
    assert merged.rows is not None
    expected = stats.tensor_stats(tf.constant(np.concatenate([a, b]))).numpy()
    np.testing.assert_allclose(merged.rows[0][:6], expected[:6], rtol=1e-12)
    scaled = aggregate._scaled(rows[0][None, :], 0.25)[0]
    np.testing.assert_allclose(
        scaled[:6], stats.tensor_stats(tf.constant(0.25 * a)).numpy()[:6], rtol=1e-12
    )


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
    assert batches["batch_size"] == 4 and batches["rows"] == data["batch"]["size"]
    assert [v["path"] for v in batches["variables"]] == [v["path"] for v in data["variables"]]
    for row in batches["variables"]:
        assert row["norms"]["min"] <= row["norms"]["median"] <= row["norms"]["max"]
        assert row["variance"] >= 0 and row["snr"] >= 0
    assert "per_sample" not in data


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--max-batches", "2"], "needs --batch-size"),
        (["--batch-size", "4", "--max-batches", "0"], "--max-batches"),
    ],
)
def test_cli_batch_option_errors(args: list[str], fragment: str) -> None:
    result = _invoke(SAMPLES / "mlp.keras", "-d", SAMPLES / "mlp.npz", *args)
    assert result.exit_code == ExitCode.USAGE
    assert fragment in result.stderr and "Traceback" not in result.stderr
