"""``--custom-objects FILE.py`` and ``--unsafe``: loading models that need user code.

Gradients are checked against an independent reference: the in-memory model the file was
saved from, the loss written out with TensorFlow ops (not the restored compiled loss, so
a loss restored with the wrong parameters would be caught), and one eager
``tf.GradientTape`` per quantity.  Error paths check the exit code, one stderr line and
no traceback, as the other CLI tests do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke

import gradscope
from gradscope.errors import ExitCode, ModelLoadError, UsageError
from gradscope.loading.custom_objects import CustomObjects, import_custom_objects
from gradscope.loading.models import LoadOptions, load_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CUSTOM = FIXTURES / "custom_objects_ok.py"
MLP = Path(__file__).resolve().parent.parent / "sample_models" / "mlp.keras"
KERAS2_LAMBDA = FIXTURES / "keras2_lambda.h5"

# Both sides compute the same float32 ops on the same numbers; only the order of
# reductions differs (eager per-op vs. one optimized graph), which is a few ulps on
# values of order 1 here.
RTOL, ATOL = 1e-5, 1e-6


# -- the reference -------------------------------------------------------------------------


def mse(factor: float) -> Callable[[Any, Any], Any]:
    """``factor * mean((y - p)^2)``: Keras's mean over features, then over the batch."""

    def loss(y: Any, p: Any) -> Any:
        from gradscope import _tf

        tf = _tf.tensorflow()
        return factor * tf.reduce_mean(tf.square(tf.cast(y, p.dtype) - p))

    return loss


def one_tape_reference(
    model: Any, x: np.ndarray, y: np.ndarray, loss_fn: Callable[[Any, Any], Any]
) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """Loss, per-variable gradients and input gradient, one eager tape per quantity."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    grads: dict[str, np.ndarray] = {}
    for variable in model.trainable_variables:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads[variable.path] = tape.gradient(loss, variable).numpy()
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = loss_fn(y, model(inputs, training=False))
    return float(loss), grads, tape.gradient(loss, inputs).numpy()


def check_report(
    report: Any, reference: tuple[float, dict[str, np.ndarray], np.ndarray], input_name: str
) -> None:
    """The report's loss, variable and input gradients equal the reference's."""
    loss, grads, input_grad = reference
    assert report.loss.value == pytest.approx(loss, rel=RTOL)
    assert set(report.tensors.variables) == set(grads)
    for path, expected in grads.items():
        np.testing.assert_allclose(
            report.tensors.variables[path], expected, rtol=RTOL, atol=ATOL, err_msg=path
        )
    np.testing.assert_allclose(report.tensors.inputs[input_name], input_grad, rtol=RTOL, atol=ATOL)


def batch(tmp_path: Path, features: int, outputs: int, rows: int = 8) -> tuple[Path, Any, Any]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = rng.standard_normal((rows, outputs)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    return tmp_path / "batch.npz", x, y


# -- importing the file --------------------------------------------------------------------


@pytest.fixture(scope="module")
def custom() -> CustomObjects:
    return import_custom_objects(CUSTOM)


def test_import_collects_defined_and_registered_objects(custom: CustomObjects, keras: Any) -> None:
    objects = custom.objects
    # unregistered classes and functions are collected under their names
    assert issubclass(objects["Offset"], keras.layers.Layer)
    assert callable(objects["half_mse"])
    # registered ones under their registered name too, and in Keras's global registry
    assert objects["gradscope_test>ScaleShift"] is objects["ScaleShift"]
    registry = keras.saving.get_custom_objects()
    assert registry["gradscope_test>ScaleShift"] is objects["ScaleShift"]
    assert registry["gradscope_test>ScaledMSE"] is objects["ScaledMSE"]
    # Keras's own classes re-exported by the file are not the file's objects
    assert "Dense" not in objects
    # importing the same unchanged file again does not run it again
    assert import_custom_objects(CUSTOM) is custom


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda tmp: tmp / "missing.py", "no such file"),
        (lambda tmp: tmp, "not a file"),
        (lambda tmp: (tmp / "objects.txt", (tmp / "objects.txt").write_text("")), "not a Python"),
    ],
    ids=["missing", "directory", "not_py"],
)
def test_bad_custom_objects_path_is_a_usage_error(
    make: Callable[[Path], Any], pattern: str, tmp_path: Path
) -> None:
    made = make(tmp_path)
    path = made[0] if isinstance(made, tuple) else made
    message = error_line(["inspect", MLP, "--custom-objects", path], ExitCode.USAGE)
    assert message.startswith(f"{path}: "), message
    assert pattern in message
    assert "--custom-objects" in message
    with pytest.raises(UsageError):
        load_model(MLP, LoadOptions(custom_objects=path))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('boom: the GPU is gone')\n", "RuntimeError: boom: the GPU is gone"),
        (
            "import gradscope_no_such_module_xyz\n",
            "ModuleNotFoundError: No module named 'gradscope_no_such_module_xyz'",
        ),
        ("def broken(:\n", "SyntaxError: "),
    ],
    ids=["raises", "missing_import", "syntax_error"],
)
def test_custom_objects_file_raising_on_import(source: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "raising.py"
    path.write_text(source)
    message = error_line(["inspect", MLP, "--custom-objects", path], ExitCode.MODEL)
    assert message.startswith(f"{path}: importing it raised {expected}"), message
    assert not [name for name in sys.modules if "custom_objects_raising" in name]


def test_custom_objects_file_can_import_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "helpers_for_gradscope_test.py").write_text("def helper(a, b):\n    return a\n")
    path = tmp_path / "objects.py"
    path.write_text("from helpers_for_gradscope_test import helper as loss_helper\n")
    assert import_custom_objects(path).path == path
    assert str(tmp_path) not in sys.path


# -- a model that needs the file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def custom_model(custom: CustomObjects, keras: Any) -> Any:
    """Dense -> registered ScaleShift -> unregistered Offset -> Dense; ScaledMSE(0.25)."""
    objects = custom.objects
    keras.utils.set_random_seed(11)
    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(5, name="dense_in")(inputs)
    hidden = objects["ScaleShift"](name="scale_shift")(hidden)
    hidden = objects["Offset"](name="offset")(hidden)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    model = keras.Model(inputs, outputs, name="custom")
    model.compile(loss=objects["ScaledMSE"](factor=0.25))
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_custom_model_gradients_match_reference(
    suffix: str, custom_model: Any, tmp_path: Path
) -> None:
    path = tmp_path / f"custom{suffix}"
    custom_model.save(path)
    data, x, y = batch(tmp_path, 4, 2)
    report = gradscope.inspect_file(path, data, custom_objects=CUSTOM, keep_tensors=True)
    assert report.loss.kind == "compiled"
    assert {row.layer_class for row in report.variables} >= {"ScaleShift", "Offset"}
    check_report(report, one_tape_reference(custom_model, x, y, mse(0.25)), "features")


def test_custom_model_through_the_cli(custom_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "custom.keras"
    custom_model.save(path)
    data, x, y = batch(tmp_path, 4, 2)
    result = invoke("inspect", path, "--data", data, "--custom-objects", CUSTOM, "--format", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    report = json.loads(result.stdout)
    loss, grads, input_grad = one_tape_reference(custom_model, x, y, mse(0.25))
    assert report["loss"]["value"] == pytest.approx(loss, rel=RTOL)
    norms = {row["path"]: row["grad"]["l2"] for row in report["variables"]}
    assert set(norms) == set(grads)
    for name, grad in grads.items():
        assert norms[name] == pytest.approx(float(np.linalg.norm(grad)), rel=RTOL), name
    assert report["inputs"][0]["grad"]["l2"] == pytest.approx(
        float(np.linalg.norm(input_grad)), rel=RTOL
    )


def test_unregistered_class_without_custom_objects(custom_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "custom.keras"
    custom_model.save(path)
    message = error_line(["inspect", path], ExitCode.MODEL)
    assert message.startswith(f"{path}: "), message
    assert "class 'Offset'" in message
    assert "--custom-objects FILE.py" in message


def test_unregistered_loss_function(custom: CustomObjects, keras: Any, tmp_path: Path) -> None:
    """A plain function as the loss: missing without the file, exact with it."""
    keras.utils.set_random_seed(12)
    inputs = keras.Input(shape=(3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs), name="half")
    model.compile(loss=custom.objects["half_mse"])
    data, x, y = batch(tmp_path, 3, 2)
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"half{suffix}"
        model.save(path)
        message = error_line(["inspect", path, "--data", data], ExitCode.MODEL)
        assert "function 'half_mse'" in message, message
        assert "--custom-objects FILE.py" in message
        report = gradscope.inspect_file(path, data, custom_objects=CUSTOM, keep_tensors=True)
        check_report(report, one_tape_reference(model, x, y, mse(0.5)), "x")
        # --loss replaces the saved loss, which is then not read at all
        override = gradscope.inspect_file(path, data, loss="mse", keep_tensors=True)
        assert override.loss.kind == "override"
        check_report(override, one_tape_reference(model, x, y, mse(1.0)), "x")


# -- a registered class nobody provides ----------------------------------------------------


@pytest.fixture(scope="module")
def vanishing_models(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model needing ``gradscope_missing>Vanishing``, unregistered once it is saved."""

    @keras.saving.register_keras_serializable(package="gradscope_missing")
    class Vanishing(keras.layers.Layer):  # type: ignore[misc]
        def call(self, inputs: Any) -> Any:
            return inputs * 0.5

    inputs = keras.Input(shape=(3,), name="x")
    hidden = Vanishing(name="vanishing")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    folder = tmp_path_factory.mktemp("vanishing")
    paths = {suffix: folder / f"vanishing{suffix}" for suffix in (".keras", ".h5")}
    for path in paths.values():
        model.save(path)
    del keras.saving.get_custom_objects()["gradscope_missing>Vanishing"]
    return paths


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_missing_registered_class_names_class_and_package(
    suffix: str, vanishing_models: dict[str, Path]
) -> None:
    path = vanishing_models[suffix]
    message = error_line(["inspect", path], ExitCode.MODEL)
    assert message.startswith(f"{path}: "), message
    assert "class 'Vanishing'" in message
    assert "'gradscope_missing>Vanishing'" in message
    assert "--custom-objects FILE.py" in message
    assert "Full object config" not in message


def test_missing_class_with_a_file_that_lacks_it(vanishing_models: dict[str, Path]) -> None:
    path = vanishing_models[".keras"]
    message = error_line(["inspect", path, "--custom-objects", CUSTOM], ExitCode.MODEL)
    assert "'gradscope_missing>Vanishing'" in message
    assert f"{CUSTOM} does not define or register it" in message
    assert "gradscope_test>ScaleShift" in message  # what the file does provide
    with pytest.raises(ModelLoadError):
        load_model(path, LoadOptions(custom_objects=CUSTOM))


# -- safe mode and --unsafe ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lambda_model(keras: Any) -> Any:
    keras.utils.set_random_seed(13)
    inputs = keras.Input(shape=(3,), name="x")
    doubled = keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="double")(inputs)
    outputs = keras.layers.Dense(2, name="out")(doubled)
    model = keras.Model(inputs, outputs, name="with_lambda")
    model.compile(loss="mean_squared_error")
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_refused_then_accepted_with_unsafe(
    suffix: str, lambda_model: Any, tmp_path: Path
) -> None:
    path = tmp_path / f"lambda{suffix}"
    lambda_model.save(path)
    message = error_line(["inspect", path], ExitCode.MODEL)
    assert message.startswith(f"{path}: "), message
    assert "Lambda layer 'double'" in message
    assert "safe mode" in message
    assert "--unsafe" in message

    data, x, y = batch(tmp_path, 3, 2)
    report = gradscope.inspect_file(path, data, unsafe=True, keep_tensors=True)
    check_report(report, one_tape_reference(lambda_model, x, y, mse(1.0)), "x")
    result = invoke("inspect", path, "--data", data, "--unsafe", "--format", "json")
    assert result.exit_code == ExitCode.OK, result.stderr

    # --unsafe applied to that load only: safe mode is back on for the next one
    assert error_line(["inspect", path], ExitCode.MODEL) == message


def test_keras2_lambda_accepted_with_unsafe(keras: Any, tmp_path: Path) -> None:
    """The legacy Keras 2 file: its bytecode runs with --unsafe, gradients are right."""
    message = error_line(["inspect", KERAS2_LAMBDA], ExitCode.MODEL)
    assert "--unsafe" in message
    assert "Lambda" in message
    reference_model = keras.saving.load_model(KERAS2_LAMBDA, compile=False, safe_mode=False)
    data, x, y = batch(tmp_path, 3, 1)
    report = gradscope.inspect_file(KERAS2_LAMBDA, data, unsafe=True, keep_tensors=True)
    assert report.loss.kind == "compiled"  # "mse", from the file's training_config
    check_report(report, one_tape_reference(reference_model, x, y, mse(1.0)), "input_1")
