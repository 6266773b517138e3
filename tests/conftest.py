"""Shared test set-up: quiet TensorFlow, seeded tiny models, the sample-model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_MODELS = REPO / "sample_models"


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
