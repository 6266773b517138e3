"""Several batches whose sequences differ in length (a ``padded_batch`` pipeline).

Each batch's layer outputs have their own number of entries, so the merged statistics
must count the entries of each batch as it ran.  The batches alternate between two
lengths: a compiled step reused for a length it was traced on earlier must still count
that batch's entries, not those of the latest trace.  The expected values come from one
tape per batch on a hand-split model (embedding output watched), scaled by the batch's
row weight, and numpy statistics over every entry of every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import gradscope

VOCAB = 9
SHAPES = [(3, 5), (2, 8), (3, 5), (4, 8)]  # (rows, tokens), lengths alternate


@pytest.fixture(scope="module")
def token_model(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(11)
    ids = keras.Input((None,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(VOCAB, 4, name="embed")(ids)
    logits = keras.layers.Dense(VOCAB, name="head")(hidden)
    model = keras.Model(ids, logits)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2)
    out = []
    for rows, tokens in SHAPES:
        ids = rng.integers(0, VOCAB, (rows, tokens)).astype(np.int32)
        out.append((ids, np.roll(ids, -1, axis=1)))
    return out


def _embedding_gradients(model: Any, batches: list[Any], tf: Any) -> tuple[list[Any], list[Any]]:
    """Per batch: the embedding output and the loss gradient at it, row-weighted."""
    total = sum(ids.shape[0] for ids, _ in batches)
    values, grads = [], []
    for ids, targets in batches:
        with tf.GradientTape() as tape:
            hidden = model.get_layer("embed")(ids)
            tape.watch(hidden)
            logits = model.get_layer("head")(hidden)
            loss = model.compute_loss(x=ids, y=targets, y_pred=logits)
        weight = ids.shape[0] / total
        values.append(np.asarray(hidden, np.float64))
        grads.append(weight * np.asarray(tape.gradient(loss, hidden), np.float64))
    return values, grads


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def test_merged_layer_statistics_count_each_batch_as_it_ran(token_model, batches, tf) -> None:  # type: ignore[no-untyped-def]
    def pipeline() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from batches

    report = gradscope.inspect(token_model, pipeline())
    row = next(r for r in report.activations if r.path == "embed")
    values, grads = _embedding_gradients(token_model, batches, tf)
    grad, value = _flat(grads), _flat(values)
    assert row.grad is not None
    assert row.value is not None
    assert row.grad.l2 == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    assert row.grad.mean == pytest.approx(grad.mean(), rel=1e-4, abs=1e-9)
    assert row.grad.std == pytest.approx(grad.std(), rel=1e-4)
    assert row.value.mean == pytest.approx(value.mean(), rel=1e-5)
    assert row.value.std == pytest.approx(value.std(), rel=1e-5)
