"""TensorBoard export: event files read back with TensorBoard's own readers.

The values must equal the report's (stored as float32 by the scalar summaries, hence
``rtol=1e-6``: float32 has a relative spacing of 1.2e-7), and the histograms must count
every finite entry of the raw gradient tensors between their minimum and maximum.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea

import gradscope
from gradscope.errors import OutputError
from gradscope.export import tensorboard as tb

FLOAT32_RTOL = 1e-6


def _read(logdir: Path) -> ea.EventAccumulator:
    accumulator = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    accumulator.Reload()
    return accumulator


def _values(accumulator: ea.EventAccumulator, tag: str) -> list[tuple[int, np.ndarray]]:
    import tensorflow as tf

    return [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]


def _value(accumulator: ea.EventAccumulator, tag: str) -> float:
    (_, array), *rest = _values(accumulator, tag)
    assert not rest
    return float(array)


@pytest.fixture(scope="module")
def model(keras):  # type: ignore[no-untyped-def]
    """A nested model (layer paths with a slash), ReLU, and a regularized kernel."""
    keras.utils.set_random_seed(3)
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, activation="relu", name="hidden")],
        name="encoder",
    )
    inputs = keras.Input((5,), name="x")
    outputs = keras.layers.Dense(2, name="head", kernel_regularizer=keras.regularizers.L2(0.01))(
        inner(inputs)
    )
    built = keras.Model(inputs, outputs, name="net")
    built.compile(loss="mse")
    return built


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(12, 5)).astype("float32"), rng.normal(size=(12, 2)).astype("float32")


@pytest.fixture(scope="module")
def report(model, batch):  # type: ignore[no-untyped-def]
    return gradscope.inspect(model, *batch, keep_tensors=True)


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):  # type: ignore[no-untyped-def]
    logdir = tmp_path_factory.mktemp("tb")
    path = tb.write_inspect(report, logdir, step=7)
    return logdir, path


def test_one_event_file_and_no_leftovers(written) -> None:  # type: ignore[no-untyped-def]
    logdir, path = written
    assert path.parent == logdir
    assert "tfevents" in path.name
    assert sorted(p.name for p in logdir.iterdir()) == [path.name]


def test_scalars_equal_the_report(written, report) -> None:  # type: ignore[no-untyped-def]
    acc = _read(written[0])
    assert [step for step, _ in _values(acc, "global_grad_norm")] == [7]
    assert np.isclose(_value(acc, "global_grad_norm"), report.global_grad_norm, rtol=FLOAT32_RTOL)
    assert np.isclose(_value(acc, "loss/total"), report.loss.value, rtol=FLOAT32_RTOL)
    assert np.isclose(
        _value(acc, "loss/regularization"), report.loss.regularization, rtol=FLOAT32_RTOL
    )
    for row in report.variables:
        name = f"{row.layer}/{row.path.split('/')[-1]}"
        assert np.isclose(_value(acc, f"grad_norm/{name}"), row.grad.l2, rtol=FLOAT32_RTOL)
        if row.ratio is not None:
            assert np.isclose(
                _value(acc, f"grad_weight_ratio/{name}"), row.ratio, rtol=FLOAT32_RTOL
            )
    for row in report.activations:
        assert np.isclose(
            _value(acc, f"activation_grad_norm/{row.path}"), row.grad.l2, rtol=FLOAT32_RTOL
        )
        assert np.isclose(
            _value(acc, f"activation_norm/{row.path}"), row.value.l2, rtol=FLOAT32_RTOL
        )
        assert _value(acc, f"dead_fraction/{row.path}") == pytest.approx(row.value.dead_frac)
    assert np.isclose(_value(acc, "input_grad_norm/x"), report.inputs[0].grad.l2, rtol=1e-6)


def test_tags_are_grouped_by_layer_path(written) -> None:  # type: ignore[no-untyped-def]
    tags = set(_read(written[0]).Tags()["tensors"])
    assert {
        "grad_norm/encoder/hidden/kernel",
        "grad_norm/encoder/hidden/bias",
        "grad_norm/head/kernel",
        "grad_hist/encoder/hidden/kernel",
        "activation_grad_norm/encoder/hidden",
        "activation_grad_hist/head",
        "dead_fraction/encoder/hidden",
        "input_grad_hist/x",
    } <= tags
    assert {f"health/{kind}" for kind in gradscope.health.KINDS} <= tags


def test_grad_norm_equals_an_independent_tape(written, model, batch, tf) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    with tf.GradientTape() as tape:
        prediction = model(x, training=False)
        loss = tf.reduce_mean(tf.square(prediction - y)) + tf.add_n(model.losses)
    kernel = model.get_layer("head").kernel
    expected = np.linalg.norm(tape.gradient(loss, kernel).numpy().astype(np.float64))
    assert np.isclose(_value(_read(written[0]), "grad_norm/head/kernel"), expected, rtol=1e-5)


def test_tensorboard_dashboards_see_the_plugins(written) -> None:  # type: ignore[no-untyped-def]
    """What the Scalars and Histograms dashboards list, through the plugin accumulator."""
    acc = pea.EventAccumulator(str(written[0]))
    acc.Reload()
    scalars = set(acc.PluginTagToContent("scalars"))
    histograms = set(acc.PluginTagToContent("histograms"))
    assert "global_grad_norm" in scalars
    assert "grad_norm/head/kernel" in scalars
    assert "grad_hist/head/kernel" in histograms
    assert "grad_hist/head/kernel" not in scalars
    assert not any(tag.startswith("grad_norm/") for tag in histograms)


def test_histograms_count_every_entry_between_min_and_max(written, report) -> None:  # type: ignore[no-untyped-def]
    acc = _read(written[0])
    cases = [
        *[(f"grad_hist/{r.layer}/{r.path.split('/')[-1]}", report.tensors.variables[r.path])
          for r in report.variables],
        *[(f"activation_grad_hist/{r.path}", report.tensors.activations[r.path])
          for r in report.activations],
        ("input_grad_hist/x", report.tensors.inputs["x"]),
    ]  # fmt: skip
    for tag, array in cases:
        (step, buckets), *rest = _values(acc, tag)
        assert not rest
        assert step == 7
        assert buckets.shape == (tb.DEFAULT_BUCKETS, 3)
        flat = np.asarray(array, dtype=np.float64).ravel()
        assert buckets[:, 2].sum() == flat.size, tag
        assert buckets[0, 0] == flat.min(), tag
        assert buckets[-1, 1] == flat.max(), tag
        assert np.all(buckets[:-1, 1] == buckets[1:, 0]), tag
        inside = [
            np.sum((flat >= left) & ((flat < right) if i < len(buckets) - 1 else (flat <= right)))
            for i, (left, right, _) in enumerate(buckets)
        ]
        assert np.array_equal(buckets[:, 2], inside), tag


def test_without_tensors_only_scalars(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    bare = dataclasses.replace(report, tensors=None)
    tb.write_inspect(bare, tmp_path)
    tags = _read(tmp_path).Tags()["tensors"]
    assert "grad_norm/head/kernel" in tags
    assert not [t for t in tags if "_hist/" in t]
    tb.write_inspect(bare, tmp_path / "given", tensors=report.tensors, step=2)
    assert "grad_hist/head/kernel" in _read(tmp_path / "given").Tags()["tensors"]


def test_histogram_buckets_edge_cases() -> None:
    values = np.array([1.0, np.nan, 3.0, np.inf, 2.0, -np.inf, 3.0])
    buckets = tb.histogram_buckets(values, 4)
    assert buckets[:, 2].sum() == 4  # the finite entries
    assert buckets[0, 0] == 1.0
    assert buckets[-1, 1] == 3.0
    assert buckets[-1, 2] == 2  # the maximum falls in the last, closed bucket
    constant = tb.histogram_buckets(np.full((3, 2), 0.5), 5)
    assert np.all(constant[:, :2] == 0.5)
    assert constant[:, 2].tolist() == [0, 0, 0, 0, 6]
    empty = tb.histogram_buckets(np.array([np.nan]), 3)
    assert empty.shape == (3, 3)
    assert not empty.any()


def test_logdir_that_is_a_file_is_one_line_output_error(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for logdir in (blocker, blocker / "sub"):
        with pytest.raises(OutputError) as caught:
            tb.write_inspect(report, logdir)
        assert "\n" not in str(caught.value)
        assert str(logdir) in str(caught.value)


def test_a_failed_write_leaves_no_event_file(report, tmp_path: Path, tf, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args: object, **kwargs: object) -> None:
        raise tf.errors.ResourceExhaustedError(None, None, "disk full")

    monkeypatch.setattr(tf.summary.experimental, "write_raw_pb", broken)
    with pytest.raises(OutputError, match="disk full"):
        tb.write_inspect(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_summary_leaves_no_event_file(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    bad = dataclasses.replace(report.tensors, variables={report.variables[0].path: object()})
    with pytest.raises(TypeError):
        tb.write_inspect(report, tmp_path, tensors=bad)
    assert list(tmp_path.iterdir()) == []


def test_hessian_eigenvalues_trace_and_density(model, batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gradscope.commands.hessian import HessianOptions

    options = HessianOptions(block="layer", top_k=2, trace=True, density=True)
    report = gradscope.hessian(model, *batch, options=options)
    tb.write_hessian(report, tmp_path, step=4)
    acc = _read(tmp_path)
    assert np.isclose(_value(acc, "loss/total"), report.loss.value, rtol=FLOAT32_RTOL)
    assert len(report.blocks) == 2
    for block in report.blocks:
        label = block.layers[0]
        for rank, value in enumerate(block.eigenvalues, start=1):
            stored = _value(acc, f"hessian_eigenvalue/{label}/top_{rank}")
            assert np.isclose(stored, value, rtol=FLOAT32_RTOL, atol=1e-12)
        assert np.isclose(
            _value(acc, f"hessian_min_eigenvalue/{label}"), block.min_eigenvalue,
            rtol=FLOAT32_RTOL, atol=1e-12,
        )  # fmt: skip
        assert np.isclose(_value(acc, f"hessian_trace/{label}"), block.trace, rtol=FLOAT32_RTOL)
        (step, density), *_ = _values(acc, f"hessian_density/{label}")
        grid = np.asarray(block.density.grid)
        assert step == 4
        assert density.shape == (grid.size, 3)
        centers = (density[:, 0] + density[:, 1]) / 2
        assert np.allclose(centers, grid)
        # counts: expected eigenvalues per bucket, so they add up to the block size
        assert density[:, 2].sum() == pytest.approx(block.size, rel=0.05)
    plugin = pea.EventAccumulator(str(tmp_path))
    plugin.Reload()
    assert f"hessian_density/{report.blocks[0].layers[0]}" in plugin.PluginTagToContent(
        "histograms"
    )


def test_importing_the_exporter_does_not_import_tensorflow() -> None:
    code = (
        "import sys, gradscope.export.tensorboard; "
        "print('tensorflow' in sys.modules, 'gradscope.keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


# -- through the command line ------------------------------------------------------------


def test_cli_inspect_and_hessian_write_event_files(tmp_path: Path) -> None:
    from cli_helpers import invoke

    samples = REPO / "sample_models"
    logdir = tmp_path / "logs" / "run1"  # created on success, with its parents
    files = (samples / "mlp.keras", "-d", samples / "mlp.npz")
    result = invoke("inspect", *files, "--tensorboard", logdir, "-f", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    accumulator = _read(logdir)
    assert _value(accumulator, "global_grad_norm") == pytest.approx(report["global_grad_norm"])
    kernel = next(v for v in report["variables"] if v["path"] == "hidden_1/kernel")
    assert _value(accumulator, "grad_norm/hidden_1/kernel") == pytest.approx(kernel["grad"]["l2"])
    assert "grad_hist/hidden_1/kernel" in accumulator.Tags()["tensors"]  # tensors were kept

    hessian_dir = tmp_path / "hessian"
    args = ("hessian", *files, "--layers", "probs", "--block", "layer", "--density")
    result = invoke(*args, "--tensorboard", hessian_dir, "-f", "json")
    assert result.exit_code == 0, result.stderr
    block = json.loads(result.stdout)["blocks"][0]
    accumulator = _read(hessian_dir)
    assert _value(accumulator, "hessian_eigenvalue/probs/top_1") == pytest.approx(
        block["eigenvalues"][0]
    )
    assert "hessian_density/probs" in accumulator.Tags()["tensors"]


def test_cli_bad_logdir_fails_before_any_work(tmp_path: Path) -> None:
    from cli_helpers import error_line

    from gradscope.errors import ExitCode

    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    samples = REPO / "sample_models"
    message = error_line(
        ["inspect", samples / "mlp.keras", "--tensorboard", a_file], ExitCode.OUTPUT
    )
    assert "is a file" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
