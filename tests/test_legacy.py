"""Legacy HDF5 models written by Keras 2 (tf_keras): their saved loss must be used.

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
