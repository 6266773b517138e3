"""``gradscope check``: the autodiff gradient against central finite differences.

The reference is independent of gradscope's engine: a tiny model whose forward pass and
gradient are written out in numpy float64 (``cube_reference``), with the true derivative
of ``x**3`` and with the wrong one its custom gradient uses.  The check's numeric column
must equal the true gradient and its autodiff column what TensorFlow computes; a wrong
``tf.custom_gradient`` must fail (exit 1) and a right one pass.  Every sample model must
pass, and its autodiff values must equal ``gradscope.inspect``'s float32 gradients (the
float64 copy is the same function).  Error paths check exit code, one stderr line, no
traceback, as the other CLI tests do.

Tolerances: in float64 a central difference with h ~ 6e-6 is good to ~1e-9 relative to
the largest entry (truncation h^2 ~ 4e-11, rounding eps/h ~ 4e-11, times the loss's
scale), so numeric values are compared with ``rtol=1e-6`` of the tensor's largest entry.
float32 gradients against the float64 copy's: a few float32 ulps through a small network,
``1e-4`` of the largest entry.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke
from conftest import SAMPLE_PAIRS

import gradscope
from gradscope.commands.check import float64, options, run
from gradscope.commands.check.report import CheckReport
from gradscope.errors import ExitCode, UsageError
from gradscope.loading.custom_objects import import_custom_objects

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MLP, MLP_DATA = SAMPLES / "mlp.keras", SAMPLES / "mlp.npz"
FD_RTOL = 1e-6
F32_RTOL = 1e-4


def close_to(actual: float, expected: np.ndarray, index: tuple[int, ...], rtol: float) -> bool:
    """``actual`` equals ``expected[index]`` within ``rtol`` of ``max|expected|``."""
    scale = float(np.max(np.abs(expected)))
    return abs(actual - float(expected[index])) <= rtol * scale


# -- a custom layer with a tf.custom_gradient -----------------------------------------------

LAYER_SOURCE = '''\
"""``y = (x * scale) ** 3`` through a ``tf.custom_gradient`` (tests/test_check.py)."""
import keras
import tensorflow as tf


@tf.custom_gradient
def cube(x):
    def gradient(upstream):
        return {gradient} * upstream

    return x * x * x, gradient


@keras.saving.register_keras_serializable(package="{package}")
class Cube(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.RandomNormal(1.0, 0.2, seed=5),
            name="scale",
        )

    def call(self, inputs):
        return cube({argument})
'''
GRADIENTS = {"wrong": "2.0 * x", "right": "3.0 * x * x"}
ARGUMENTS = {
    "float64": "inputs * self.scale",
    # hard-coded float32: the float64 copy would still compute the cube in float32
    "float32": "tf.cast(inputs, tf.float32) * tf.cast(self.scale, tf.float32)",
}


@pytest.fixture(scope="module")
def cube_case(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``make(gradient, precision)``: the custom-objects file, the saved model, the batch
    file, the in-memory model and the arrays, for each kind of Cube layer."""
    folder = tmp_path_factory.mktemp("cube")
    rng = np.random.default_rng(17)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    data = folder / "batch.npz"
    np.savez(data, x=x, y=y)
    made: dict[tuple[str, str], Any] = {}

    def make(gradient: str, precision: str) -> Any:
        if (gradient, precision) not in made:
            source = folder / f"cube_{gradient}_{precision}.py"
            source.write_text(
                LAYER_SOURCE.format(
                    gradient=GRADIENTS[gradient],
                    argument=ARGUMENTS[precision],
                    package=f"gradscope_check_{gradient}_{precision}",
                )
            )
            cube = import_custom_objects(source).objects["Cube"]
            keras.utils.set_random_seed(3)
            inputs = keras.Input((3,), name="x")
            hidden = keras.layers.Dense(4, activation="tanh", name="dense_in")(inputs)
            hidden = cube(name="cube")(hidden)
            outputs = keras.layers.Dense(1, name="out")(hidden)
            model = keras.Model(inputs, outputs, name="cubic")
            model.compile(loss="mse")
            path = folder / f"cube_{gradient}_{precision}.keras"
            model.save(path)
            made[gradient, precision] = (source, path, data, model, x, y)
        return made[gradient, precision]

    return make


def cube_reference(model: Any, x: np.ndarray, y: np.ndarray, exact: bool) -> dict[str, Any]:
    """Gradients of mse for Dense(tanh) -> Cube -> Dense, by hand in numpy float64.

    ``exact``: with the derivative 3 z^2 of z^3; otherwise with the 2 z the wrong
    custom gradient uses (what TensorFlow's autodiff returns for that layer).
    """
    w1, b1 = (np.asarray(w, np.float64) for w in model.get_layer("dense_in").get_weights())
    (scale,) = (np.asarray(w, np.float64) for w in model.get_layer("cube").get_weights())
    w2, b2 = (np.asarray(w, np.float64) for w in model.get_layer("out").get_weights())
    x, y = x.astype(np.float64), y.astype(np.float64)
    a = np.tanh(x @ w1 + b1)
    z = a * scale
    c = z**3
    out = c @ w2 + b2
    d_out = 2.0 * (out - y) / out.size  # mse: mean over the batch and the last axis
    d_z = (d_out @ w2.T) * (3.0 * z**2 if exact else 2.0 * z)
    d_pre = d_z * scale * (1.0 - a**2)
    return {
        "loss": float(np.mean((out - y) ** 2)),
        "dense_in/kernel": x.T @ d_pre,
        "dense_in/bias": d_pre.sum(axis=0),
        "cube/scale": (d_z * a).sum(axis=0),
        "out/kernel": c.T @ d_out,
        "out/bias": d_out.sum(axis=0),
        "x": d_pre @ w1.T,
    }


def _assert_columns(report: dict[str, Any], true: dict[str, Any], coded: dict[str, Any]) -> None:
    """Every coordinate: numeric == the true gradient, autodiff == the coded one."""
    for row in report["variables"] + report["inputs"]:
        assert row["coordinates"], row["path"]
        for point in row["coordinates"]:
            index = tuple(point["index"])
            assert close_to(point["numeric"], true[row["path"]], index, FD_RTOL), (row, point)
            assert close_to(point["autodiff"], coded[row["path"]], index, FD_RTOL), (row, point)


def test_wrong_custom_gradient_fails(cube_case: Any) -> None:
    source, path, data, model, x, y = cube_case("wrong", "float64")
    result = invoke("check", path, "--data", data, "--custom-objects", source, "-f", "json")
    assert result.exit_code == ExitCode.CHECK_FAILED == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert report["precision"]["dtype"] == "float64"
    assert report["precision"]["cast"] is True
    verdict = {row["path"]: row["passed"] for row in report["variables"] + report["inputs"]}
    # the wrong rule corrupts the Cube's weight and everything upstream of it; the
    # layer after it is still right
    assert verdict == {
        "dense_in/kernel": False,
        "dense_in/bias": False,
        "cube/scale": False,
        "out/kernel": True,
        "out/bias": True,
        "x": False,
    }
    assert report["failed"] == ["dense_in/kernel", "dense_in/bias", "cube/scale", "x"]
    cube_row = next(row for row in report["variables"] if row["path"] == "cube/scale")
    assert cube_row["class"] == "Cube"
    assert cube_row["max_rel_error"] > 0.1
    assert "cube/scale" in result.stderr
    assert "Traceback" not in result.stderr
    assert report["loss"]["value"] == pytest.approx(cube_reference(model, x, y, True)["loss"])
    _assert_columns(
        report, cube_reference(model, x, y, exact=True), cube_reference(model, x, y, exact=False)
    )


def test_right_custom_gradient_passes(cube_case: Any) -> None:
    source, path, data, model, x, y = cube_case("right", "float64")
    result = invoke("check", path, "--data", data, "--custom-objects", source, "-f", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["failed"] == []
    assert all(row["passed"] for row in report["variables"] + report["inputs"])
    reference = cube_reference(model, x, y, exact=True)
    _assert_columns(report, reference, reference)


def test_table_names_the_failing_layer(cube_case: Any) -> None:
    source, path, data, *_ = cube_case("wrong", "float64")
    result = invoke("check", path, "--data", data, "--custom-objects", source)
    assert result.exit_code == ExitCode.CHECK_FAILED
    lines = result.stdout.splitlines()
    assert any(line.startswith("result") and "FAILED: 4 of 6 tensors" in line for line in lines)
    cube_line = next(line for line in lines if line.startswith("cube "))
    assert cube_line.split()[:4] == ["cube", "Cube", "cube/scale", "4"]
    assert cube_line.rstrip().endswith("FAIL")
    assert next(line for line in lines if line.startswith("out ")).rstrip().endswith("ok")


def test_float32_fallback_still_catches_the_wrong_gradient(cube_case: Any) -> None:
    """A layer that hard-codes float32 cannot be cast: float32, looser tolerance, note."""
    for gradient, code in (("wrong", ExitCode.CHECK_FAILED), ("right", ExitCode.OK)):
        source, path, data, *_ = cube_case(gradient, "float32")
        result = invoke("check", path, "--data", data, "--custom-objects", source, "-f", "json")
        assert result.exit_code == code, result.stderr
        report = json.loads(result.stdout)
        precision = report["precision"]
        assert precision["dtype"] == "float32"
        assert precision["cast"] is False
        assert precision["fallback"] is True
        assert precision["requested"] == "auto"
        assert precision["reason"].startswith("no float64 copy: the copy still computes in float32")
        assert precision["tol"] == options.DEFAULT_TOL["float32"]
        assert "float32" in precision["note"]
        assert "Cast" in precision["note"]
        assert precision["note"] in result.stderr
        cube_row = next(row for row in report["variables"] if row["path"] == "cube/scale")
        assert cube_row["passed"] is (gradient == "right")
    message = error_line(
        ["check", path, "--data", data, "--custom-objects", source, "--precision", "float64"],
        ExitCode.USAGE,
    )
    assert message.startswith(
        "--precision float64: the model cannot be checked in float64 (the copy still computes "
        "in float32 at op "
    )
    assert message.endswith("Received: precision='float64'")


# -- a small derivative error where the loss curves: no kink ---------------------------------

SQUARE_SOURCE = '''\
"""``y = x * w**2`` through a ``tf.custom_gradient`` (tests/test_check.py)."""
import keras
import tensorflow as tf


@tf.custom_gradient
def square_scale(x, w):
    def gradient(upstream):
        return upstream * w * w, tf.reduce_sum(upstream * x * 2.0 * w * {factor}, axis=0)

    return x * w * w, gradient


@keras.saving.register_keras_serializable(package="{package}")
class SquareScale(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.RandomNormal(1e-3, 1e-4, seed=7),
            name="w",
        )

    def call(self, inputs):
        # tf.identity: a custom_gradient function that read the variable itself would
        # need a ``variables=`` argument in its gradient
        return square_scale(inputs, tf.identity(self.w))
'''


@pytest.fixture(scope="module")
def square_case(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``make(factor)``: (custom-objects file, model file, batch file) of
    ``Input(6) -> SquareScale -> Dense(1)``, mse, whose gradient for ``w`` is ``factor``
    times the true one."""
    folder = tmp_path_factory.mktemp("square")
    rng = np.random.default_rng(23)
    data = folder / "batch.npz"
    np.savez(
        data,
        x=rng.normal(size=(8, 6)).astype(np.float32),
        y=rng.normal(size=(8, 1)).astype(np.float32),
    )

    def make(factor: str) -> tuple[Path, Path, Path]:
        tag = factor.replace(".", "_")
        source = folder / f"square_{tag}.py"
        path = folder / f"square_{tag}.keras"
        if not path.exists():
            source.write_text(
                SQUARE_SOURCE.format(factor=factor, package=f"gradscope_check_square_{tag}")
            )
            layer = import_custom_objects(source).objects["SquareScale"]
            keras.utils.set_random_seed(4)
            inputs = keras.Input((6,), name="x")
            outputs = keras.layers.Dense(1, name="out")(layer(name="square")(inputs))
            model = keras.Model(inputs, outputs, name="square")
            model.compile(loss="mse")
            model.save(path)
        return source, path, data

    return make


def test_small_error_where_the_loss_curves_is_no_kink(square_case: Any) -> None:
    """The user's case: w ~ 1e-3, so dL/dw ~ 1e-3 C while h f'' ~ 6e-6 * 2C; a gradient
    0.3% too large (an error of 3e-6 C) was taken for a kink ("6 entries at a kink of the
    loss, left out") and the check passed."""
    source, path, data = square_case("1.003")
    result = invoke("check", path, "--data", data, "--custom-objects", source, "-f", "json")
    assert result.exit_code == ExitCode.CHECK_FAILED, result.stderr
    report = json.loads(result.stdout)
    row = next(row for row in report["variables"] if row["path"] == "square/w")
    assert row["nonsmooth"] == 0
    assert row["checked"] == 6
    assert row["passed"] is False
    for point in row["coordinates"]:  # the numeric column is the true gradient
        assert point["smooth"]
        assert point["autodiff"] == pytest.approx(1.003 * point["numeric"])
    assert row["max_rel_error"] > 100 * report["precision"]["tol"]
    assert report["failed"] == ["square/w"]
    assert report["unchecked"] == []
    source, path, data = square_case("1.0")
    right = invoke("check", path, "--data", data, "--custom-objects", source, "-f", "json")
    assert right.exit_code == ExitCode.OK, right.stderr
    row = next(row for row in json.loads(right.stdout)["variables"] if row["path"] == "square/w")
    assert row["passed"] is True
    assert row["checked"] == 6


# -- a tensor with no checkable entry -----------------------------------------------------------


GATE_SOURCE = '''\
"""``x * relu(g)`` with ``g = 0`` (tests/test_check.py)."""
import keras


class Gate(keras.layers.Layer):
    def build(self, input_shape):
        self.g = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="g")

    def call(self, inputs):
        return inputs * keras.ops.relu(self.g)
'''


def gate_model(keras: Any, source: Path) -> Any:
    """``Dense -> Gate -> Dense`` with ``g = 0``: every entry of ``g`` sits on the kink of
    relu."""
    source.write_text(GATE_SOURCE)
    gate = import_custom_objects(source).objects["Gate"]
    keras.utils.set_random_seed(9)
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(5, activation="tanh", name="dense")(inputs)
    outputs = keras.layers.Dense(1, name="out")(gate(name="gate")(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse")
    return model


def test_unchecked_tensor_is_not_a_pass(keras: Any, tmp_path: Path) -> None:
    source = tmp_path / "gate.py"
    model = gate_model(keras, source)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 5)), rng.normal(size=(8, 1))
    report = run.check(model, x, y)
    row = next(row for row in report.variables if row.path == "gate/g")
    assert row.checked == 0
    assert row.nonsmooth == 5
    assert row.passed is None
    assert report.failed == ()
    assert [r.path for r in report.unchecked] == ["gate/g"]
    assert report.passed is False
    document = json.loads(report.to_json())
    assert document["passed"] is False
    assert document["unchecked"] == ["gate/g"]
    allowed = run.check(model, x, y, allow_unchecked=True)
    assert allowed.passed is True
    assert [r.path for r in allowed.unchecked] == ["gate/g"]
    assert json.loads(allowed.to_json())["allow_unchecked"] is True
    # the command line: exit 1 with a note, exit 0 with --allow-unchecked
    path, data = tmp_path / "gate.keras", tmp_path / "gate.npz"
    model.save(path)
    np.savez(data, x=x.astype(np.float32), y=y.astype(np.float32))
    result = invoke("check", path, "--data", data, "--custom-objects", source)
    assert result.exit_code == ExitCode.CHECK_FAILED, result.stderr
    assert "no sampled entry of gate/g could be checked" in result.stderr
    assert "result     FAILED: 1 tensor unchecked" in result.stdout
    assert "unchecked" in next(line for line in result.stdout.splitlines() if "gate/g" in line)
    result = invoke("check", path, "--data", data, "--custom-objects", source, "--allow-unchecked")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert "allowed by --allow-unchecked" in result.stdout


# -- the float64 copy: what falls back, what does not -------------------------------------------


def constant32_model(keras: Any) -> Any:
    """A layer multiplying by a float32 constant: its graph cannot run on float64 inputs."""
    import tensorflow as tf

    class Constant32(keras.layers.Layer):  # type: ignore[misc]
        def call(self, inputs: Any) -> Any:
            return inputs * tf.constant(2.0)

    keras.utils.set_random_seed(12)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, activation="tanh", name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(Constant32(name="c32")(hidden)))
    model.compile(loss="mse")
    return model


def test_model_that_cannot_run_in_float64_falls_back_with_the_reason(keras: Any) -> None:
    model = constant32_model(keras)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 1))
    report = run.check(model, x, y)
    precision = report.precision
    assert (precision.dtype, precision.cast, precision.fallback) == ("float32", False, True)
    assert precision.tol == options.DEFAULT_TOL["float32"]
    # the innermost error of Keras's chain, which says what does not run in float64
    assert precision.reason.startswith("no float64 copy: it cannot be rebuilt in float64: ")
    # the innermost error of Keras's chain ("could not be deserialized" < "Exception
    # encountered when calling" < the dtype error), which says what needs float32
    assert "requested dtype float32 for Tensor with dtype float64" in precision.reason
    assert precision.note is not None
    assert precision.reason in precision.note
    assert report.passed
    from gradscope.commands.check.render import format_table

    header = format_table(report).splitlines()
    assert any(
        line.startswith("precision  the model, in float32 (fallback: no float64 copy")
        for line in header
    )
    assert any(line.startswith("note       checked in float32") for line in header)
    with pytest.raises(UsageError, match=r"^--require-float64: the model cannot be checked in"):
        run.check(model, x, y, require_float64=True)


def test_require_float64_on_the_command_line(tmp_path: Path, keras: Any) -> None:
    model = constant32_model(keras)
    path = tmp_path / "c32.keras"
    model.save(path)
    # an unregistered class: rebuilt from --custom-objects
    source = tmp_path / "layers.py"
    source.write_text(
        "import keras\nimport tensorflow as tf\n\n\n"
        "class Constant32(keras.layers.Layer):\n"
        "    def call(self, inputs):\n"
        "        return inputs * tf.constant(2.0)\n"
    )
    message = error_line(
        ["check", path, "--custom-objects", source, "--require-float64"], ExitCode.USAGE
    )
    assert message.startswith("--require-float64: the model cannot be checked in float64 (")
    assert message.endswith("Received: require_float64=True")
    result = invoke("check", path, "--custom-objects", source, "-f", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    precision = json.loads(result.stdout)["precision"]
    assert precision["fallback"] is True
    assert precision["dtype"] == "float32"
    assert "requested dtype float32 for Tensor with dtype float64" in precision["reason"]


def test_an_unexpected_error_is_not_a_fallback(keras: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while casting propagates: it must not turn into a float32 check with a
    1000x looser tolerance."""

    def broken(model: Any) -> Any:
        raise RuntimeError("bug")

    # called while the copy is rebuilt, where Keras's own dtype errors are caught
    monkeypatch.setattr(float64, "_classes_of", broken)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 4)), rng.normal(size=(4, 2))
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))
    model.compile(loss="mse")
    with pytest.raises(RuntimeError, match=r"^bug$"):
        run.check(model, x, y)
    assert keras.config.floatx() == "float32"
    result = invoke("check", MLP, "--data", MLP_DATA)
    assert result.exit_code == ExitCode.INTERNAL
    assert "internal error: RuntimeError: bug" in result.stderr


# -- old import paths ---------------------------------------------------------------------------


def test_old_modules_forward_with_a_deprecation_warning() -> None:
    import gradscope.check_report
    import gradscope.gradcheck
    import gradscope.render.check
    from gradscope.commands.check import render, report

    with pytest.deprecated_call(match="gradscope.commands.check.run"):
        assert gradscope.gradcheck.check_file is run.check_file
    with pytest.deprecated_call(match="gradscope.commands.check.options"):
        assert gradscope.gradcheck.DEFAULT_TOL is options.DEFAULT_TOL
    with pytest.deprecated_call(match="gradscope.commands.check.float64"):
        assert gradscope.gradcheck.keras_dtype is float64.keras_dtype
    with pytest.deprecated_call(match="gradscope.commands.check.report"):
        assert gradscope.check_report.CheckReport is report.CheckReport
    with pytest.deprecated_call(match="gradscope.commands.check.render"):
        assert gradscope.render.check.format_report is render.format_report
    with pytest.raises(AttributeError):
        _ = gradscope.gradcheck.no_such_name
    assert gradscope.check is run.check
    assert gradscope.CheckReport is report.CheckReport


# -- the sample models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLE_PAIRS))
def test_sample_models_pass(name: str) -> None:
    model_file, data_file = (SAMPLES / f for f in SAMPLE_PAIRS[name])
    report = run.check_file(model_file, data_file)
    assert report.passed, [(r.path, r.max_rel_error) for r in report.failed]
    assert report.precision.dtype == "float64"
    assert report.precision.cast
    inspected = gradscope.inspect_file(model_file, data_file, keep_tensors=True)
    assert inspected.tensors is not None
    assert {row.path for row in report.variables} == {v.path for v in inspected.variables}
    assert report.loss.value == pytest.approx(inspected.loss.value, rel=F32_RTOL)
    for row in report.variables:
        assert row.passed, row
        assert row.checked >= max(1, len(row.coordinates) // 2), row
        expected = inspected.tensors.variables[row.path]
        for point in row.coordinates:
            assert close_to(point.autodiff, expected, point.index, F32_RTOL), (row.path, point)
    for row in report.inputs:
        if row.dtype.startswith("int"):
            assert row.passed is None
            assert row.checked == 0
            assert "not differentiable" in row.note
            continue
        expected = inspected.tensors.inputs[row.path]
        assert row.passed
        for point in row.coordinates:
            assert close_to(point.autodiff, expected, point.index, F32_RTOL), (row.path, point)


def test_training_mode_fixes_the_dropout_mask(keras: Any) -> None:
    """cnn: Dropout and BatchNorm in training mode; every evaluation sees the same mask."""
    report = run.check_file(SAMPLES / "cnn.keras", SAMPLES / "cnn.npz", training=True)
    assert report.training, [(r.path, r.max_rel_error) for r in report.failed]
    assert report.passed, [(r.path, r.max_rel_error) for r in report.failed]
    assert keras.config.floatx() == "float32"


def tape_gradients(model: Any, x: np.ndarray, y: np.ndarray, training: bool) -> dict[str, Any]:
    """mse gradients by one hand-written ``tf.GradientTape`` in float32, from the model's
    current state (put back afterwards): the reference of the training-mode tests."""
    import tensorflow as tf

    state = [np.array(v.numpy()) for v in model.non_trainable_variables]
    inputs = tf.constant(x.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_mean(tf.square(model(inputs, training=training) - y.astype(np.float32)))
    grads = tape.gradient(loss, [*model.trainable_variables, inputs])
    for variable, value in zip(model.non_trainable_variables, state, strict=True):
        variable.assign(value)
    paths = [v.path for v in model.trainable_variables] + ["x"]
    return {path: np.asarray(g, np.float64) for path, g in zip(paths, grads, strict=True)}


def differs(rows: Any, reference: dict[str, Any], field: str) -> set[str]:
    """The rows with a coordinate whose ``field`` is off ``reference`` by > 1% of its max."""
    return {
        row.path
        for row in rows
        if not all(
            close_to(getattr(p, field), reference[row.path], p.index, 1e-2) for p in row.coordinates
        )
    }


def bn_model(keras: Any, dropout: bool) -> Any:
    keras.utils.set_random_seed(11)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    if dropout:
        hidden = keras.layers.Dropout(0.5, name="drop")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    model.compile(loss="mse")
    return model


def bn_batch() -> tuple[np.ndarray, np.ndarray]:
    """Inputs far from BatchNorm's initial moving statistics (mean 0, variance 1), so
    batch statistics and moving ones give very different functions."""
    rng = np.random.default_rng(8)
    x = (3.0 + 2.0 * rng.normal(size=(16, 4))).astype(np.float32)
    return x, rng.normal(size=(16, 2)).astype(np.float32)


def test_training_mode_is_the_function_checked(keras: Any) -> None:
    """BatchNorm: the float64 check in training mode has the gradient of the training
    function (batch statistics), numerically and by autodiff, not the inference one."""
    model = bn_model(keras, dropout=False)
    x, y = bn_batch()
    trained = tape_gradients(model, x, y, training=True)
    inferred = tape_gradients(model, x, y, training=False)
    report = run.check(model, x, y, training=True, samples=6)
    assert report.training
    assert report.passed
    assert report.precision.cast
    for row in report.rows:
        for point in row.coordinates:
            assert close_to(point.autodiff, trained[row.path], point.index, F32_RTOL), row.path
            assert close_to(point.numeric, trained[row.path], point.index, F32_RTOL), row.path
    # every tensor's gradient differs between the modes (hidden/bias: ~0 under batch
    # statistics, which remove the mean)
    every = {row.path for row in report.rows}
    assert differs(report.rows, inferred, "autodiff") == every
    assert differs(report.rows, inferred, "numeric") == every
    inference = run.check(model, x, y, samples=6)
    assert differs(inference.rows, trained, "autodiff") == every


def test_training_mode_dropout_mask_is_the_models(keras: Any) -> None:
    """Dropout: checked in float32 (the mask of a float64 copy is drawn in float64, a
    different mask), the gradient is the model's own under its current seed state."""
    model = bn_model(keras, dropout=True)
    x, y = bn_batch()
    trained = tape_gradients(model, x, y, training=True)
    inferred = tape_gradients(model, x, y, training=False)
    report = run.check(model, x, y, training=True, samples=6, precision="float32")
    assert report.passed, [(r.path, r.max_rel_error) for r in report.failed]
    for row in report.rows:
        for point in row.coordinates:
            assert close_to(point.autodiff, trained[row.path], point.index, 1e-5), row.path
    assert differs(report.rows, inferred, "autodiff") == {row.path for row in report.rows}


def test_in_memory_model_is_left_as_it_was(keras: Any) -> None:
    from keras.src.backend.common import global_state

    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.Dropout(0.5, name="drop")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    model.compile(loss="mse")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    before = [np.array(v.numpy()) for v in model.variables]
    policy = global_state.get_global_attribute("dtype_policy", None)
    python_random = random.getstate()
    report = run.check(model, x, y, training=True, samples=4)
    assert report.passed
    assert report.precision.cast
    assert random.getstate() == python_random  # the copy's seeds were drawn and put back
    for variable, value in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert keras.config.floatx() == "float32"
    assert global_state.get_global_attribute("dtype_policy", None) is policy


def test_sum_of_outputs_is_differenced_in_float64(keras: Any) -> None:
    """No compiled loss: the sum of the outputs, in float64 (rounded to float32 it would
    leave errors of ~1e-3 and fail)."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(8, activation="sigmoid", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden))
    x = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    report = run.check(model, x)
    assert report.loss.kind == "sum_of_outputs"
    assert report.passed
    assert max(row.max_abs_error or 0.0 for row in report.rows) < 1e-8
    overridden = run.check_file(
        SAMPLES / "regression_keras3.h5", SAMPLES / "regression_keras3.npz", loss="huber"
    )
    assert overridden.loss.kind == "override"
    assert overridden.passed
    assert max(row.max_abs_error or 0.0 for row in overridden.rows) < 1e-8


def test_random_layer_is_refused(keras: Any, tmp_path: Path) -> None:
    import tensorflow as tf

    class Noisy(keras.layers.Layer):  # type: ignore[misc]
        def call(self, inputs: Any) -> Any:
            return inputs + tf.random.uniform(tf.shape(inputs), dtype=inputs.dtype)

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(Noisy(name="noisy")(inputs)))
    with pytest.raises(UsageError, match="not a deterministic function of the weights"):
        run.check(model, np.ones((4, 3), np.float32))


# -- options, JSON, table and CSV -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_json() -> dict[str, Any]:
    result = invoke("check", MLP, "--data", MLP_DATA, "--format", "json", "--samples", "5")
    assert result.exit_code == ExitCode.OK, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_json_contract(mlp_json: dict[str, Any]) -> None:
    report = mlp_json
    assert report["schema"] == "gradscope.check/1"
    assert list(report) == [
        "schema", "model", "batch", "loss", "training", "passed", "failed",
        "precision", "samples", "seed", "variables", "inputs",
        "unchecked", "allow_unchecked",  # added keys come last
    ]  # fmt: skip
    assert report["unchecked"] == []
    assert report["allow_unchecked"] is False
    precision = report["precision"]
    assert list(precision) == [
        "dtype", "cast", "step", "tol", "noise", "floor", "note",
        "requested", "fallback", "reason",
    ]  # fmt: skip
    assert precision["requested"] == "auto"
    assert precision["fallback"] is False
    assert precision["reason"] == "a float64 copy of the model"
    eps = float(np.finfo(np.float64).eps)
    assert precision["step"] == pytest.approx(eps ** (1 / 3))
    assert precision["tol"] == 1e-5
    assert precision["note"] is None
    assert precision["floor"] == pytest.approx(precision["noise"] / precision["tol"])
    assert report["samples"] == 5
    assert report["seed"] == 0
    row_keys = {
        "kind", "path", "layer", "class", "shape", "size", "dtype", "checked", "nonsmooth",
        "nonfinite", "max_rel_error", "max_abs_error", "passed", "coordinates",
    }  # fmt: skip
    point_keys = {"index", "autodiff", "numeric", "abs_error", "rel_error", "step", "smooth"}
    for row in report["variables"] + report["inputs"]:
        assert set(row) == row_keys, row["path"]
        assert row["kind"] == ("variable" if row in report["variables"] else "input")
        size = row["size"]
        assert len(row["coordinates"]) == min(size, 5 + options.TOP_ENTRIES)
        assert len({tuple(p["index"]) for p in row["coordinates"]}) == len(row["coordinates"])
        for point in row["coordinates"]:
            assert set(point) == point_keys
            # the relative error, from the values in the report
            noise = precision["noise"] * precision["step"] / point["step"]
            scale = max(abs(point["autodiff"]), abs(point["numeric"]), noise / precision["tol"])
            assert point["abs_error"] == pytest.approx(abs(point["autodiff"] - point["numeric"]))
            assert point["rel_error"] == pytest.approx(point["abs_error"] / scale)
        smooth = [p for p in row["coordinates"] if p["smooth"]]
        assert row["checked"] == len(smooth)
        assert row["max_rel_error"] == max(p["rel_error"] for p in smooth)
        assert row["passed"] is (row["max_rel_error"] <= precision["tol"])


def test_largest_gradients_are_always_checked(mlp_json: dict[str, Any]) -> None:
    inspected = gradscope.inspect_file(MLP, MLP_DATA, keep_tensors=True)
    assert inspected.tensors is not None
    for row in mlp_json["variables"]:
        grad = np.abs(inspected.tensors.variables[row["path"]])
        if grad.size <= 5 + options.TOP_ENTRIES:
            continue
        checked = {tuple(p["index"]) for p in row["coordinates"]}
        top = np.argsort(-grad, axis=None)[: options.TOP_ENTRIES]
        for flat in top:
            assert tuple(int(i) for i in np.unravel_index(flat, grad.shape)) in checked


def test_vars_selects_and_samples_do_not_depend_on_it(mlp_json: dict[str, Any]) -> None:
    result = invoke(
        "check", MLP, "-d", MLP_DATA, "-f", "json", "--samples", "5",
        "--vars", "hidden_1/kernel,probs", "--no-inputs",
    )  # fmt: skip
    assert result.exit_code == ExitCode.OK, result.stderr
    report = json.loads(result.stdout)
    assert [row["path"] for row in report["variables"]] == [
        "hidden_1/kernel",
        "probs/kernel",
        "probs/bias",
    ]
    assert report["inputs"] == []
    everything = {row["path"]: row for row in mlp_json["variables"]}
    for row in report["variables"]:
        assert row["coordinates"] == everything[row["path"]]["coordinates"]
    other_seed = invoke(
        "check", MLP, "-d", MLP_DATA, "-f", "json", "--samples", "5", "--seed", "1",
        "--vars", "hidden_1/kernel", "--no-inputs",
    )  # fmt: skip
    indices = [p["index"] for p in json.loads(other_seed.stdout)["variables"][0]["coordinates"]]
    assert indices != [p["index"] for p in everything["hidden_1/kernel"]["coordinates"]]


def test_table_and_csv(mlp_json: dict[str, Any]) -> None:
    result = invoke("check", MLP, "-d", MLP_DATA, "--samples", "5")
    assert result.exit_code == ExitCode.OK
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model      mlp (Functional)")
    assert any(line.startswith("precision  a float64 copy of the model") for line in lines)
    assert any(line.startswith("result     passed: 7 of 7 tensors") for line in lines)
    assert "Gradient check by variable" in lines
    assert "Gradient check by input" in lines
    assert result.stderr == ""
    table = invoke("check", MLP, "-d", MLP_DATA, "-f", "csv", "--samples", "5")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    expected = mlp_json["variables"] + mlp_json["inputs"]
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        assert got["passed"] == "true"
        assert int(got["checked"]) == want["checked"]
        assert float(got["max_rel_error"]) == pytest.approx(want["max_rel_error"])


def test_report_object(mlp_json: dict[str, Any]) -> None:
    report = run.check_file(MLP, MLP_DATA, samples=5, precision="float32")
    assert isinstance(report, CheckReport)
    assert report.passed
    assert report.precision.dtype == "float32"
    assert not report.precision.cast
    assert report.precision.tol == options.DEFAULT_TOL["float32"]
    assert report.precision.requested == "float32"
    assert report.precision.fallback is False
    assert report.precision.reason == "precision='float32' was requested"
    assert json.loads(report.to_json())["schema"] == mlp_json["schema"]


# -- error paths ----------------------------------------------------------------------------


def test_unknown_glob_suggests_close_names() -> None:
    message = error_line(["check", MLP, "--vars", "hiden_1/kernel"], ExitCode.USAGE)
    assert message.startswith("--vars 'hiden_1/kernel': no trainable variable matches.")
    assert "Close names: hidden_1/kernel" in message
    message = error_line(["check", MLP, "--vars", "probs,zzz_nothing"], ExitCode.USAGE)
    assert message.startswith("--vars 'zzz_nothing'")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--samples", "-1", "samples: expected an integer >= 0. Received: samples=-1"),
        ("--tol", "0", "tol: expected a positive number. Received: tol=0.0"),
        ("--tol", "nan", "tol: expected a positive number. Received: tol=nan"),
        (
            "--precision",
            "float16",
            "precision: unknown value. Received: precision='float16'; "
            "expected one of auto, float64, float32",
        ),
    ],
)
def test_bad_option_values(option: str, value: str, expected: str) -> None:
    assert error_line(["check", MLP, option, value], ExitCode.USAGE) == expected


def test_options_validate_in_python_as_on_the_command_line() -> None:
    with pytest.raises(UsageError, match=r"^samples: expected an integer >= 0\. Received"):
        options.CheckOptions(samples=-1)
    with pytest.raises(UsageError, match=r"^allow_unchecked: expected True or False"):
        options.CheckOptions(allow_unchecked="yes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^require_float64: cannot be combined"):
        options.CheckOptions(require_float64=True, precision="float32")
    with pytest.raises(UsageError, match=r"^samples: expected an integer"):
        run.check_file(MLP, MLP_DATA, samples=2.5)  # type: ignore[arg-type]


def test_missing_model_and_data(tmp_path: Path) -> None:
    message = error_line(["check", tmp_path / "none.keras"], ExitCode.MODEL)
    assert message.startswith(f"{tmp_path / 'none.keras'}: no such file")
    error_line(["check", MLP, "--data", tmp_path / "none.npz"], ExitCode.DATA)


def test_keras_dtype_restores_state_after_an_error(keras: Any) -> None:
    from keras.src.backend.common import global_state

    policy = global_state.get_global_attribute("dtype_policy", None)
    seen: list[str] = []

    def fail_inside() -> None:
        with float64.keras_dtype("float64"):
            seen.append(keras.config.floatx())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == ["float64"]
    assert keras.config.floatx() == "float32"
    assert global_state.get_global_attribute("dtype_policy", None) is policy


def test_check_help_does_not_import_tensorflow() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gradscope.cli import main
        sys.argv = ["gradscope", "check", "--help"]
        try:
            main()
        except SystemExit:
            pass
        print("HEAVY", "tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert "--samples" in proc.stdout
    assert "--precision" in proc.stdout
    assert proc.stdout.strip().endswith("HEAVY False False"), proc.stdout + proc.stderr
