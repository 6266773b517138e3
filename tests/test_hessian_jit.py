"""``hessian --jit``: products compiled by XLA, and the fallback when XLA cannot compile.

Every product is checked against the closed-form Hessian of linear least squares,
``H = kron(2 / (N * outputs) X^T X, I_outputs)`` (Keras's mse averages over the rows and
the outputs; the kernel is flattened row-major).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gradscope.commands.hessian import HessianOptions
from gradscope.commands.hessian import run as hessian_run
from gradscope.commands.inspect.options import InspectOptions
from gradscope.engine.hessian import HessianOperator
from gradscope.errors import UsageError
from gradscope.loading.signature import model_signature
from gradscope.session import batch_from_arrays, prepare_loss_and_batch


def _closed_form(x: np.ndarray, outputs: int) -> np.ndarray:
    wide = x.astype(np.float64)
    return np.kron(2.0 / (len(x) * outputs) * wide.T @ wide, np.eye(outputs))


def _operator(model: Any, x: np.ndarray, y: np.ndarray, jit: bool) -> HessianOperator:
    signature = model_signature(model)
    spec, batch = prepare_loss_and_batch(
        model, signature, batch_from_arrays(signature, x, y), InspectOptions()
    )
    return HessianOperator(model, signature, spec, batch, model.trainable_variables, jit=jit)


def _host_round_trip(keras: Any) -> Any:
    """A layer that adds zeros computed on the host (``tf.numpy_function``: XLA has no
    kernel for it); its value and derivatives are those of the identity."""
    import tensorflow as tf

    class HostZeros(keras.layers.Layer):
        def call(self, inputs: Any) -> Any:
            zeros = tf.numpy_function(np.zeros_like, [inputs], tf.float32, stateful=False)
            return inputs + tf.stop_gradient(tf.reshape(zeros, tf.shape(inputs)))

    return HostZeros()


def test_xla_products_are_the_closed_form(regression) -> None:  # type: ignore[no-untyped-def]
    model, x, y = regression
    operator = _operator(model, x, y, jit=True)
    vectors = np.random.default_rng(5).standard_normal((3, operator.size))
    expected = _closed_form(x, 2)
    for vector in vectors:
        np.testing.assert_allclose(operator.hvp(vector), expected @ vector, rtol=2e-5, atol=1e-6)
    assert operator.jit is True
    assert operator.notes == []


def test_an_op_xla_cannot_compile_falls_back_with_a_note(keras, regression) -> None:  # type: ignore[no-untyped-def]
    _, x, y = regression
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(2, use_bias=False)(inputs)
    model = keras.Model(inputs, _host_round_trip(keras)(hidden))
    model.compile(loss="mse")
    operator = _operator(model, x, y, jit=True)
    vector = np.random.default_rng(6).standard_normal(operator.size)
    product = operator.hvp(vector)
    np.testing.assert_allclose(product, _closed_form(x, 2) @ vector, rtol=2e-5, atol=1e-6)
    (note,) = operator.notes
    assert note.startswith("XLA could not compile the products (")
    assert note.endswith("); ran them without --jit")
    assert operator.jit is False
    operator.hvp(vector)  # no second attempt, no second note
    assert len(operator.notes) == 1


def test_jit_reaches_the_report(regression) -> None:  # type: ignore[no-untyped-def]
    model, x, y = regression
    options = HessianOptions(block="model", method="lanczos", top_k=2, jit=True, tol=1e-6)
    report = hessian_run.hessian(model, x, y, options=options)
    # Every eigenvalue of the Gram part appears twice (the I_2 factor); single-vector
    # Lanczos sees one copy of each, so the top two are the Gram part's top two.
    wide = x.astype(np.float64)
    expected = np.linalg.eigvalsh(2.0 / (len(x) * 2) * wide.T @ wide)[::-1][:2]
    np.testing.assert_allclose(report.blocks[0].eigenvalues, expected, rtol=1e-4)


@pytest.mark.parametrize("value", [None, 1, "yes"])
def test_jit_must_be_a_flag(value: Any) -> None:
    with pytest.raises(UsageError, match="jit"):
        HessianOptions(jit=value)
