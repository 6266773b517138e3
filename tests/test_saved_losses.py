"""Saved losses must be used: legacy HDF5 files from Keras 2, and Keras 3 loss objects.

The fixtures were saved by tf_keras 2.21 with loss *objects* (``MeanSquaredError()``,
``CategoricalCrossentropy()``), whose Keras 2 configs (``reduction='auto'``, an ``fn``
key) Keras 3 cannot deserialize as they are.  The expected loss values are computed
here in numpy from the model's predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gradscope
from gradscope.loading.models import load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_keras2_loss_object_is_restored(rng: np.random.Generator) -> None:
    model = load_model(FIXTURES / "keras2_mse_object.h5").model
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = rng.standard_normal((6, 2)).astype(np.float32)
    report = gradscope.inspect(model, x, y)
    prediction = model.predict(x, verbose=0).astype(np.float64)
    expected = np.mean((prediction - y) ** 2)
    assert report.loss.kind == "compiled"
    assert "mean_squared_error" in report.loss.source
    assert report.loss.value == pytest.approx(expected, rel=1e-6)


def test_keras2_multi_output_losses_and_weights(rng: np.random.Generator) -> None:
    model = load_model(FIXTURES / "keras2_multi_output.h5").model
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y_a = rng.standard_normal((8, 1)).astype(np.float32)
    y_b = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    report = gradscope.inspect(model, x, {"a": y_a, "b": y_b})
    pred_a, pred_b = (p.astype(np.float64) for p in model.predict(x, verbose=0))
    mse = np.mean((pred_a - y_a) ** 2)
    probs = np.clip(pred_b / pred_b.sum(axis=-1, keepdims=True), 1e-7, 1 - 1e-7)
    cce = np.mean(-np.sum(y_b * np.log(probs), axis=-1))
    assert report.loss.source == "compiled: {a: mse ×0.3, b: categorical_crossentropy ×1}"
    assert report.loss.value == pytest.approx(0.3 * mse + 1.0 * cce, rel=1e-5)


def test_keras2_h5_cli_uses_saved_loss() -> None:
    report = gradscope.inspect_file(FIXTURES / "keras2_multi_output.h5")
    assert report.loss.kind == "compiled"
    assert report.model.format == "h5"


def test_keras3_loss_objects_with_arguments_survive_saving(tmp_path: Path, keras) -> None:  # type: ignore[no-untyped-def]
    """Loss objects with non-default arguments, per output, with loss weights.

    gradscope loads with ``compile=False`` and compiles from the saved config; the loss
    must equal the one Keras computes on the model it loads with ``compile=True``.
    """
    inputs = keras.Input((4,), name="inp")
    logits = keras.layers.Dense(3, name="a")(inputs)
    probs = keras.layers.Dense(2, activation="sigmoid", name="b")(inputs)
    model = keras.Model(inputs, [logits, probs])
    model.compile(
        loss={
            "a": keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2),
            "b": keras.losses.BinaryFocalCrossentropy(gamma=3.0),
        },
        loss_weights={"a": 0.7, "b": 2.0},
    )
    path = tmp_path / "loss_objects.keras"
    model.save(path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y_a = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)]
    y_b = rng.integers(0, 2, (5, 2)).astype(np.float32)
    reference = keras.saving.load_model(path)
    expected = float(reference.compute_loss(x=x, y=[y_a, y_b], y_pred=reference(x)))
    report = gradscope.inspect(load_model(path).model, x, {"a": y_a, "b": y_b})
    assert report.loss.source == (
        "compiled: {a: categorical_crossentropy ×0.7, b: binary_focal_crossentropy ×2}"
    )
    assert report.loss.value == pytest.approx(expected, rel=1e-6)
