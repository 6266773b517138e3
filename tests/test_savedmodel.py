"""TensorFlow SavedModel directories: loaded through their serving signature.

The SavedModels are written at test time into temporary folders: ``model.export`` of a
small seeded Keras model (two inputs, two outputs), and ``tf.saved_model.save`` of
``tf.Module`` objects with a ``tf.function`` signature, one with a trainable variable and
one without.  Every gradient is compared with a reference computed on the *original*
in-memory object the SavedModel was written from (same weights, same batch), with one
eager ``tf.GradientTape`` per quantity and the loss written out with TensorFlow ops.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import error_line, invoke

import gradscope
from gradscope.errors import ExitCode, ModelLoadError
from gradscope.loading.models import load_model
from gradscope.loading.savedmodel import LAYER_OUTPUTS_NOTE, NO_VARIABLES_NOTE

# Same float32 ops on the same numbers on both sides; the saved graph and the eager
# reference may sum in a different order: a few ulps on values of order 1.
RTOL, ATOL = 1e-5, 1e-6
ROWS = 6


def arrays(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def reference(
    forward: Callable[[dict[str, Any]], list[Any]],
    variables: dict[str, Any],
    inputs: dict[str, np.ndarray],
    loss_of: Callable[[list[Any]], Any],
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loss, gradient per variable and per input: one eager tape for each quantity."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    grads = {}
    for name, variable in variables.items():
        with tf.GradientTape() as tape:
            loss = loss_of(forward({k: tf.constant(v) for k, v in inputs.items()}))
        grads[name] = tape.gradient(loss, variable).numpy()
    input_grads = {}
    for name in inputs:
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        with tf.GradientTape() as tape:
            tape.watch(tensors[name])
            loss = loss_of(forward(tensors))
        input_grads[name] = tape.gradient(loss, tensors[name]).numpy()
    return float(loss), grads, input_grads


def sum_of_outputs(outputs: list[Any]) -> Any:
    from gradscope import _tf

    tf = _tf.tensorflow()
    return tf.add_n([tf.reduce_sum(o) for o in outputs])


def check_report(
    report: Any, expected: tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    loss, grads, input_grads = expected
    assert report.loss.value == pytest.approx(loss, rel=RTOL)
    assert set(report.tensors.variables) == set(grads)
    for name, grad in grads.items():
        np.testing.assert_allclose(
            report.tensors.variables[name], grad, rtol=RTOL, atol=ATOL, err_msg=name
        )
    assert set(report.tensors.inputs) == set(input_grads)
    for name, grad in input_grads.items():
        np.testing.assert_allclose(
            report.tensors.inputs[name], grad, rtol=RTOL, atol=ATOL, err_msg=name
        )


# -- model.export() of a Keras model -----------------------------------------------------------


@pytest.fixture(scope="module")
def exported(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A seeded two-input, two-output Keras model and its ``model.export`` directory."""
    keras.utils.set_random_seed(21)
    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(
        keras.layers.Concatenate(name="concat")([a, b])
    )
    first = keras.layers.Dense(2, name="head_1")(hidden)
    second = keras.layers.Dense(1, activation="sigmoid", name="head_2")(hidden)
    model = keras.Model([a, b], [first, second], name="two_heads")
    folder = tmp_path_factory.mktemp("exported") / "two_heads"
    model.export(folder, verbose=False)
    return model, folder


def keras_reference(model: Any, inputs: dict[str, np.ndarray], loss_of: Any) -> Any:
    """The reference on the original model, its variables named as the SavedModel's."""
    variables = {
        "serving_default/" + v.path.replace("/", "_"): v for v in model.trainable_variables
    }
    return reference(lambda t: model([t["a"], t["b"]], training=False), variables, inputs, loss_of)


def test_exported_keras_model_sum_of_outputs(exported: tuple[Any, Path]) -> None:
    model, folder = exported
    loaded = load_model(folder)
    assert loaded.format == "savedmodel"
    assert LAYER_OUTPUTS_NOTE in loaded.notes
    assert NO_VARIABLES_NOTE not in loaded.notes

    inputs = arrays({"a": (ROWS, 3), "b": (ROWS, 2)}, seed=1)
    np.savez(folder.parent / "inputs.npz", **inputs)
    report = gradscope.inspect_file(folder, folder.parent / "inputs.npz", keep_tensors=True)
    assert report.model.format == "savedmodel"
    assert report.loss.kind == "sum_of_outputs"
    check_report(report, keras_reference(model, inputs, sum_of_outputs))
    # the only layer-output rows are the signature's own outputs
    assert [row.path for row in report.activations] == ["serving_default:0", "serving_default:1"]


def test_exported_keras_model_with_loss_and_targets(exported: tuple[Any, Path]) -> None:
    from gradscope import _tf

    tf = _tf.tensorflow()
    model, folder = exported
    inputs = arrays({"a": (ROWS, 3), "b": (ROWS, 2)}, seed=2)
    targets = arrays({"output_0": (ROWS, 2), "output_1": (ROWS, 1)}, seed=3)
    np.savez(folder.parent / "batch.npz", **inputs, **targets)
    report = gradscope.inspect_file(
        folder, folder.parent / "batch.npz", loss="mse", keep_tensors=True
    )
    assert report.loss.kind == "override"

    def mse_sum(outputs: list[Any]) -> Any:
        pairs = zip(outputs, (targets["output_0"], targets["output_1"]), strict=True)
        return tf.add_n([tf.reduce_mean(tf.square(y - p)) for p, y in pairs])

    check_report(report, keras_reference(model, inputs, mse_sum))


def test_exported_keras_model_through_the_cli(exported: tuple[Any, Path]) -> None:
    _, folder = exported
    result = invoke("inspect", folder, "--format", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["format"] == "savedmodel"
    assert [row["name"] for row in report["inputs"]] == ["a", "b"]
    assert all(row["grad"]["l2"] > 0 for row in report["inputs"])
    assert len(report["variables"]) == 6
    assert "sum of outputs" in result.stderr


def test_savedmodel_note_reaches_json_table_and_stderr(exported: tuple[Any, Path]) -> None:
    _, folder = exported
    result = invoke("inspect", folder, "--format", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert LAYER_OUTPUTS_NOTE in json.loads(result.stdout)["model"]["notes"]
    assert LAYER_OUTPUTS_NOTE in result.stderr
    table = invoke("inspect", folder, "--quiet")
    assert "note" in table.stdout
    assert table.stderr == ""


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_hessian_of_a_savedmodel_matches_the_original(
    mode: str, exported: tuple[Any, Path]
) -> None:
    """Forward mode loses the tangent through a loaded function; it must fall back to
    back-over-back instead of reading the products as zeros."""
    model, folder = exported
    inputs = arrays({"a": (ROWS, 3), "b": (ROWS, 2)}, seed=4)
    options = gradscope.HessianOptions(
        block="model",
        method="lanczos",
        top_k=2,
        tol=1e-6,
        hvp=mode,  # type: ignore[arg-type]
    )
    saved = gradscope.hessian(load_model(folder).model, inputs, options=options)
    exact = gradscope.HessianOptions(block="model", method="exact", top_k=2)
    original = gradscope.hessian(model, [inputs["a"], inputs["b"]], options=exact)
    scale = abs(original.blocks[0].eigenvalues[0])
    assert scale > 0
    np.testing.assert_allclose(
        saved.blocks[0].eigenvalues, original.blocks[0].eigenvalues, atol=1e-4 * scale
    )


# -- tf.saved_model.save() of a tf.Module ------------------------------------------------------


def module_class(trainable: bool) -> Any:
    """A ``tf.Module``: ``y = (a @ w + c) * b``, ``z = sum(a^2)``, one signature."""
    from gradscope import _tf

    tf = _tf.tensorflow()
    spec_a = tf.TensorSpec([None, 3], tf.float32, name="a")
    spec_b = tf.TensorSpec([None, 2], tf.float32, name="b")

    class Scorer(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(31)
            weights = rng.standard_normal((3, 2)).astype(np.float32)
            self.w = tf.Variable(weights, trainable=trainable, name="w")
            self.c = tf.constant(rng.standard_normal(2).astype(np.float32))

        @tf.function(input_signature=[spec_a, spec_b])
        def score(self, a: Any, b: Any) -> dict[str, Any]:
            return {
                "y": (tf.matmul(a, self.w) + self.c) * b,
                "z": tf.reduce_sum(tf.square(a), axis=1, keepdims=True),
            }

    return Scorer()


@pytest.mark.parametrize("trainable", [True, False], ids=["variable", "no_variable"])
def test_tf_module_savedmodel(trainable: bool, tf: Any, tmp_path: Path) -> None:
    module = module_class(trainable)
    folder = tmp_path / "scorer"
    tf.saved_model.save(module, str(folder), signatures=module.score)
    inputs = arrays({"a": (ROWS, 3), "b": (ROWS, 2)}, seed=4)
    np.savez(tmp_path / "inputs.npz", **inputs)

    loaded = load_model(folder)
    assert (NO_VARIABLES_NOTE in loaded.notes) is not trainable
    report = gradscope.inspect_file(folder, tmp_path / "inputs.npz", keep_tensors=True)
    variables = {"serving_default/w": module.w} if trainable else {}
    expected = reference(
        lambda t: list(module.score(t["a"], t["b"]).values()), variables, inputs, sum_of_outputs
    )
    check_report(report, expected)
    assert [row.path for row in report.variables] == list(variables)


def test_single_non_default_signature_is_used(tf: Any, tmp_path: Path) -> None:
    module = module_class(True)
    folder = tmp_path / "predict_only"
    tf.saved_model.save(module, str(folder), signatures={"predict": module.score})
    report = gradscope.inspect_file(folder)
    assert [row.path for row in report.variables] == ["predict/w"]


# -- errors ------------------------------------------------------------------------------------


def test_several_signatures_without_serving_default(tf: Any, tmp_path: Path) -> None:
    module = module_class(True)
    folder = tmp_path / "two_signatures"
    concrete = module.score.get_concrete_function()
    tf.saved_model.save(module, str(folder), signatures={"left": concrete, "right": concrete})
    message = error_line(["inspect", folder], ExitCode.MODEL)
    assert message.startswith(f"{folder}: "), message
    assert "serving_default" in message
    assert "['left', 'right']" in message


def test_directory_without_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    message = error_line(["inspect", tmp_path], ExitCode.MODEL)
    assert message.startswith(f"{tmp_path}: "), message
    assert "saved_model.pb" in message
    assert "SavedModel directory" in message


def test_corrupt_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a protobuf" * 10)
    message = error_line(["inspect", tmp_path], ExitCode.MODEL)
    assert message.startswith(f"{tmp_path}: "), message
    assert "SavedModel" in message
    with pytest.raises(ModelLoadError):
        load_model(tmp_path)
