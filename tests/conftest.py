"""Shared test set-up: quiet TensorFlow, seeded tiny models, the sample-model folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite runs Keras on TensorFlow even from a shell set up for another backend (the
# tests that check how gradscope treats KERAS_BACKEND set it in their own subprocesses).
os.environ["KERAS_BACKEND"] = "tensorflow"
# `gradscope --help` in a test's subprocess leaves no help cache in the user's home;
# tests/test_help_cache.py turns it on with a cache folder of its own.
os.environ["GRADSCOPE_HELP_CACHE"] = "0"

REPO = Path(__file__).resolve().parent.parent
# GRADSCOPE_SAMPLE_DIR: samples rebuilt by `sample_models/build.py --out DIR` (the
# minimum-versions CI step: an older Keras cannot load the committed .keras files).
SAMPLE_MODELS = Path(os.environ.get("GRADSCOPE_SAMPLE_DIR") or REPO / "sample_models")

# (model file, data file) of every shipped sample.
SAMPLE_PAIRS = {
    "mlp": ("mlp.keras", "mlp.npz"),
    "cnn": ("cnn.keras", "cnn.npz"),
    "text_lstm": ("text_lstm.keras", "text_lstm.npz"),
    "multi_io": ("multi_io.keras", "multi_io.npz"),
    "nested": ("nested.keras", "nested.npz"),
    "deep_sigmoid": ("deep_sigmoid.keras", "deep_sigmoid.npz"),
    "legacy_keras2": ("legacy_keras2.h5", "legacy_keras2.npz"),
    "regression_keras3": ("regression_keras3.h5", "regression_keras3.npz"),
}


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The folder of shipped sample models and their batches."""
    return SAMPLE_MODELS


@pytest.fixture(scope="session")
def keras():  # type: ignore[no-untyped-def]
    """Keras 3, imported quietly through gradscope."""
    from gradscope import _tf

    return _tf.keras()


@pytest.fixture(scope="session")
def tf():  # type: ignore[no-untyped-def]
    """TensorFlow, imported quietly through gradscope."""
    from gradscope import _tf

    return _tf.tensorflow()


@pytest.fixture(scope="session")
def regression(keras):  # type: ignore[no-untyped-def]
    """Linear regression without bias, two outputs, mse: H = (2 / (N * outputs)) X^T X."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 5)).astype(np.float32)
    y = rng.standard_normal((24, 2)).astype(np.float32)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inputs))
    model.compile(loss="mse")
    return model, x, y
