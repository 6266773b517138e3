"""Models whose output length depends on the input: the loss pre-flight must not invent it.

A causal language model returns ``(batch, tokens, vocabulary)`` with ``tokens`` unknown
until it runs.  The pre-flight loss check once filled unknown dimensions with 1 and so
refused every such model (exit 6).  The expected gradients come from a plain
``tf.GradientTape`` over ``model.compute_loss``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gradscope
from tests.cli_helpers import invoke

VOCAB, TOKENS, ROWS = 11, 7, 4


@pytest.fixture(scope="module")
def token_model(keras):  # type: ignore[no-untyped-def]
    """Embedding -> Dense over a sequence of unknown length, sparse crossentropy."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int32", name="ids")
    hidden = keras.layers.Embedding(VOCAB, 5, name="embed")(ids)
    logits = keras.layers.Dense(VOCAB, name="head")(hidden)
    model = keras.Model(ids, logits, name="token_lm")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def token_batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, (ROWS, TOKENS)).astype(np.int32)
    return ids, np.roll(ids, -1, axis=1)


def _tape_gradients(model, ids, targets, tf):  # type: ignore[no-untyped-def]
    with tf.GradientTape() as tape:
        logits = model(ids, training=False)
        loss = model.compute_loss(x=ids, y=targets, y_pred=logits)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), {
        v.path: np.asarray(tf.convert_to_tensor(g))
        for v, g in zip(model.trainable_variables, grads, strict=True)
    }


def test_unknown_output_length_is_not_refused(token_model, token_batch, tf) -> None:  # type: ignore[no-untyped-def]
    ids, targets = token_batch
    report = gradscope.inspect(token_model, ids, targets, keep_tensors=True)
    loss, expected = _tape_gradients(token_model, ids, targets, tf)
    assert report.loss.value == pytest.approx(loss, rel=1e-6)
    assert report.tensors is not None
    for path, gradient in expected.items():
        np.testing.assert_allclose(report.tensors.variables[path], gradient, atol=1e-7)


def test_cli_on_a_saved_sequence_model(token_model, token_batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, targets = token_batch
    model_path, data_path = tmp_path / "lm.keras", tmp_path / "lm.npz"
    token_model.save(model_path)
    np.savez(data_path, ids=ids, y=targets)
    result = invoke("inspect", model_path, "--data", data_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"kind": "compiled"' in result.stdout


def test_wrong_targets_are_still_refused_before_running(token_model, token_batch) -> None:  # type: ignore[no-untyped-def]
    ids, _ = token_batch
    wrong = np.zeros((ROWS, TOKENS + 2), dtype=np.int32)
    with pytest.raises(gradscope.errors.LossError, match="cannot be computed"):
        gradscope.inspect(token_model, ids, wrong)
